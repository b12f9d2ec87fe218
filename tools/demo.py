#!/usr/bin/env python
"""The README's main job: the paper's two stages on the embedded data (no downloads), for ResNet-101 and VGG-16.

  1. pretraining (tools/pretrain_net.py, configs/imagenet/{resnet101,vgg16}.yaml): the paper's classification
     recipe on the shapes classes (resnet_backbone/data/synthetic_shape_classes.py: the detection set's shapes and
     colours as 16 classes), exporting detectron2-format weights with their provenance;
  2. Faster R-CNN fine-tuning (tools/train_net.py, configs/coco/frcnn_{r101,vgg16}.yaml) from those weights with the
     paper's detection recipe (FrozenBN, FREEZE_AT 2, VGG-16's frozen conv1-2, its lr scaled for the batch);
  3. the control: Faster R-CNN ResNet-101 from scratch (trainable BN, nothing frozen, zero-init; --vgg16-scratch
     adds VGG-16 from scratch);
  4. every detector evaluated in COCO format (pycocotools) and VOC format on the same validation images, prediction
     pictures (tools/predict.py), the table next to the paper's Tables 7-8 and a plot.

Every change to the paper's configs, with its reason, is in configs/demo/shapes_small_scale.yaml. Each stage prints
one line (what it does, where its log is) and relays the training progress; the full command heads its log. A stage
that finished is not run again (its outputs are kept under --output with the command that made them); an
interrupted one resumes from its last checkpoint; --fresh starts over. Seeded end to end: two runs print the same
table.
"""
import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = REPO / "configs" / "demo" / "shapes_small_scale.yaml"
STAGE_RECORD = "demo_stage.json"  # written into a stage's folder when it has finished
PREDICTION_IMAGES = {"full": 4, "tiny": 2}  # validation images drawn per detector
TINY_DETECTION_SET = {"num_train": 4, "num_val": 2}  # --tiny: the detection set's size (VOC needs >= 2 per split)

# (name, backbone label, pretraining config, override sections)
PRETRAININGS = (("pretrain_r101", "ResNet-101", "configs/imagenet/resnet101.yaml", ("pretrain",)),
                ("pretrain_vgg16", "VGG-16", "configs/imagenet/vgg16.yaml", ("pretrain", "pretrain_vgg16")))
# (name, detection config, override sections after `common`, pretraining it starts from or None)
DETECTORS = (("frcnn_r101_pretrained", "configs/coco/frcnn_r101.yaml", ("resnet_pretrained",), "pretrain_r101"),
             ("frcnn_vgg16_pretrained", "configs/coco/frcnn_vgg16.yaml", ("vgg16_pretrained",), "pretrain_vgg16"),
             ("frcnn_r101_scratch", "configs/coco/frcnn_r101.yaml", ("resnet",), None),
             ("frcnn_vgg16_scratch", "configs/coco/frcnn_vgg16.yaml", ("vgg16",), None))
OPTIONAL_DETECTORS = ("frcnn_vgg16_scratch",)  # only with --vgg16-scratch
# progress lines relayed from a stage's output: detectron2's training lines and evaluation progress
PROGRESS = re.compile(r"\beta: |ETA=|Inference done")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_PREFIX = re.compile(r"^\[\d\d/\d\d \d\d:\d\d:\d\d [^\]]*\]:?\s*")  # detectron2's "[12/02 07:04:08 d2.x]: "


def log(msg):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    what: str  # one line for the console
    command: List[str]
    output_dir: Path
    outputs: List[str]  # files under output_dir that must exist when it has finished
    depends: List["Stage"] = field(default_factory=list)
    env: Optional[dict] = None

    def key(self) -> str:
        """What the stage's outputs are a function of: its command and the stages it reads from."""
        text = json.dumps([self.command, [d.key() for d in self.depends]])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _record(stage: Stage) -> Optional[dict]:
    try:
        return json.loads((stage.output_dir / STAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _relay(line: str) -> None:
    if PROGRESS.search(line):
        print("    " + LOG_PREFIX.sub("", ANSI.sub("", line).strip()), flush=True)


def run_stage(stage: Stage, logs: Path, index: int, total: int) -> None:
    """Run one stage unless it already finished with the same key; resume one that was interrupted."""
    log_file = logs / f"{stage.name}.log"
    head = f"{index}/{total} {stage.what}"
    record = _record(stage)
    if record and record.get("key") == stage.key() and all((stage.output_dir / o).is_file() for o in stage.outputs):
        log(f"{head}: done before, kept ({stage.output_dir})")
        return
    started = stage.output_dir / (STAGE_RECORD + ".started")
    if stage.output_dir.exists():
        if started.is_file() and started.read_text().strip() == stage.key():
            log(f"{head}: resuming an interrupted run (log: {log_file})")
        else:  # made by another command, or finished before an input changed: start this stage over
            shutil.rmtree(stage.output_dir)
            log(f"{head} (log: {log_file})")
    else:
        log(f"{head} (log: {log_file})")
    stage.output_dir.mkdir(parents=True, exist_ok=True)
    started.write_text(stage.key() + "\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(stage.env or {}))
    t0, cpu0 = time.time(), _children_cpu()
    with open(log_file, "a") as f:
        f.write("$ " + " ".join(_quote(c) for c in stage.command) + "\n")
        f.flush()
        with subprocess.Popen(stage.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                              env=env) as proc:
            for line in proc.stdout:
                f.write(line)
                _relay(line)
            proc.wait()
    missing = [o for o in stage.outputs if not (stage.output_dir / o).is_file()]
    if proc.returncode != 0 or missing:
        why = f"exit status {proc.returncode}" if proc.returncode else f"no {', '.join(missing)}"
        raise StageFailed(f"stage {stage.name} failed ({why}); see its log {log_file}")
    seconds, cpu = time.time() - t0, _children_cpu() - cpu0
    (stage.output_dir / STAGE_RECORD).write_text(json.dumps(
        {"key": stage.key(), "command": stage.command, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1)},
        indent=2))
    started.unlink()
    log(f"    {stage.name} finished in {seconds:.0f} s ({cpu:.0f} s of CPU time)")


def _children_cpu() -> float:
    # CPU time of the finished stage processes: comparable across machines where wall time depends on the load
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./()\[\]-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def build_stages(out: Path, *, tiny: bool, device: str, vgg16_scratch: bool):
    from resnet_backbone.data.register import default_root
    from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts

    sections = load_override_sections(OVERRIDES)
    py = sys.executable
    base = ["MODEL.DEVICE", device]
    env = {"RB_DATASETS": str(out / "datasets")} if tiny else None
    data_root = Path(env["RB_DATASETS"]) / "rb_shapes" if tiny else Path(default_root())
    pretrain_stages = {}
    for name, label, config, names in PRETRAININGS:
        opts = overrides_to_opts(*(sections[s] for s in names + (("tiny_pretrain",) if tiny else ())))
        iters = dict(zip(opts[::2], opts[1::2]))["PRETRAIN.SOLVER.MAX_ITER"]
        pretrain_stages[name] = (label, Stage(
            name, f"pretrain {label} on the shapes classes ({iters} iterations, {config})",
            [py, str(REPO / "tools" / "pretrain_net.py"), "--resume", "--config", config] + opts + base
            + ["OUTPUT_DIR", str(out / name)], out / name,
            ["pretrain_results.json", "model_final_d2.pkl", "model_final_d2.pkl.provenance.json"], env=env))
    detector_stages = {}
    for name, config, names, pretrained in DETECTORS:
        if name in OPTIONAL_DETECTORS and not vgg16_scratch:
            continue
        opts = overrides_to_opts(sections["common"], *(sections[s] for s in names),
                                 *((sections["tiny_detection"],) if tiny else ()))
        depends, label = [], "ResNet-101" if "r101" in name else "VGG-16"
        if pretrained:
            depends = [pretrain_stages[pretrained][1]]
            opts += ["MODEL.WEIGHTS", str(out / pretrained / "model_final_d2.pkl")]
        iters = dict(zip(opts[::2], opts[1::2]))["SOLVER.MAX_ITER"]
        init = "from the pretraining stage's weights" if pretrained else "from scratch"
        detector_stages[name] = (config, opts, Stage(
            name, f"Faster R-CNN {label} {init} ({iters} iterations, {config}), COCO + VOC evaluation",
            [py, str(REPO / "tools" / "train_net.py"), "--resume", "--config", config] + opts + base
            + ["OUTPUT_DIR", str(out / name)], out / name, ["eval_results.json", "model_final.pth"], depends, env))
    return pretrain_stages, detector_stages, data_root


def prediction_stage(name, config, opts, trained: Stage, images: List[Path], out: Path, device: str, env):
    folder = out / "predictions" / name
    command = [sys.executable, str(REPO / "tools" / "predict.py"), "--config", config, "--input"]
    command += [str(p) for p in images] + ["--output", str(folder), "--confidence", "0.5"]
    command += opts + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", str(trained.output_dir / "model_final.pth")]
    return Stage(f"predict_{name}", f"prediction pictures of {name} ({len(images)} validation images)", command,
                 folder, ["predictions.json"] + [p.name for p in images], [trained], env)


def ensure_detection_data(root: Path, tiny: bool) -> dict:
    """The detection set at the demo's size (the generator's defaults; idempotent): written unless already there."""
    from resnet_backbone.data.synthetic_detection import generate_dataset

    return generate_dataset(str(root), **(TINY_DETECTION_SET if tiny else {}))


def write_report(out: Path, pretrain_stages, detector_stages, predictions) -> dict:
    from resnet_backbone.demo_report import (
        format_markdown,
        load_detector,
        load_pretraining,
        plot_demo,
        prediction_montage,
        table_rows,
    )

    pretrained = {name: load_pretraining(label, str(stage.output_dir)) for name, (label, stage) in
                  pretrain_stages.items()}
    detectors = []
    for name, (_, _, stage) in detector_stages.items():
        source = next((p for n, _, _, p in DETECTORS if n == name), None)
        detectors.append(load_detector(name, "pretrained" if source else "from scratch", str(stage.output_dir),
                                       pretrained.get(source)))
    rows = table_rows(detectors)
    table = format_markdown(rows)
    (out / "results.md").write_text(table + "\n")
    plot = plot_demo(detectors, list(pretrained.values()), str(out / "comparison.png"))
    montage = prediction_montage([(f"{d.label} {d.init}", [predictions[d.name] / image for image in
                                                           predictions["images"]]) for d in detectors],
                                 str(out / "predictions.png"))
    summary = {
        "pretraining": {n: {"label": p.label, "iterations": p.iterations, "val_top1_err": p.top1_err,
                            "val_top5_err": p.top5_err, "val10_top1_err": p.top1_err_10crop,
                            "weights": str(Path(p.path) / "model_final_d2.pkl")} for n, p in pretrained.items()},
        "detectors": {d.name: {"label": d.label, "init": d.init, "coco_AP50": d.coco_ap50, "coco_AP": d.coco_ap,
                               "voc_AP50": d.voc_ap50, "eval_results": str(Path(d.path) / "eval_results.json")}
                      for d in detectors},
        "rows": rows, "table": str(out / "results.md"), "plot": plot, "predictions": montage,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo", help="folder for every stage, the table and the plots")
    parser.add_argument("--fresh", action="store_true", help="delete --output first: every stage runs again")
    parser.add_argument("--tiny", action="store_true",
                        help="the same pipeline with a few iterations per stage and a tiny detection set under "
                             "OUTPUT/datasets (the sections tiny_* of the overrides file; for the end-to-end test)")
    parser.add_argument("--vgg16-scratch", action="store_true", help="also train VGG-16 from scratch")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE of every stage (default: cuda if available)")
    args = parser.parse_args(argv)
    t0 = time.time()
    out = Path(args.output).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    pretrain_stages, detector_stages, data_root = build_stages(out, tiny=args.tiny, device=args.device,
                                                               vgg16_scratch=args.vgg16_scratch)
    manifest = ensure_detection_data(data_root, args.tiny)
    p = manifest["params"]
    log(f"embedded detection set: {p['num_train']} train / {p['num_val']} val images of {p['image_size'][0]}x"
        f"{p['image_size'][1]} at {data_root} (the pretraining set is written on first use by its stage)")
    val_images = sorted((data_root / "coco" / "images" / "val").iterdir())
    val_images = val_images[:PREDICTION_IMAGES["tiny" if args.tiny else "full"]]
    env = {"RB_DATASETS": str(data_root.parent)} if args.tiny else None
    stages = [s for _, s in pretrain_stages.values()] + [s for _, _, s in detector_stages.values()]
    predict = [prediction_stage(name, config, opts, stage, val_images, out, args.device, env)
               for name, (config, opts, stage) in detector_stages.items()]
    stages += predict
    try:
        for i, stage in enumerate(stages, start=1):
            run_stage(stage, logs, i, len(stages) + 1)
    except StageFailed as e:
        log(str(e))
        raise SystemExit(1) from None
    log(f"{len(stages) + 1}/{len(stages) + 1} report: table {out / 'results.md'}, plot {out / 'comparison.png'}, "
        f"prediction pictures {out / 'predictions.png'}")
    predictions = {name: s.output_dir for name, s in zip(detector_stages, predict)}
    predictions["images"] = [p.name for p in val_images]
    summary = write_report(out, pretrain_stages, detector_stages, predictions)
    for name, r in summary["pretraining"].items():
        ten = "-" if r["val10_top1_err"] is None else f"{100 * r['val10_top1_err']:.1f}%"
        log(f"pretraining {r['label']}: validation top-1 error {100 * r['val_top1_err']:.1f}% (1-crop), {ten} "
            f"(10-crop) after {r['iterations']} iterations; weights {r['weights']}")
    print(Path(summary["table"]).read_text(), flush=True)
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {summary['minutes']} min; summary in {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
