#!/usr/bin/env python
"""The README's main job: the paper's two stages on real images that scikit-learn ships (no downloads), for
ResNet-101 and VGG-16.

  1. pretraining (tools/pretrain_net.py, configs/imagenet/{resnet101,vgg16}.yaml): the paper's classification
     recipe on 1000 real handwritten digits, black on white as scanned (data/digits.py), exporting detectron2-format
     weights with their provenance;
  2. Faster R-CNN fine-tuning (tools/train_net.py, configs/coco/frcnn_{r101,vgg16}.yaml) from those weights with the
     paper's detection recipe (FrozenBN, frozen stem + res2, VGG-16's frozen conv1-2, step schedule) on images of
     2-4 digits in dark ink on cluttered light paper;
  3. the control: Faster R-CNN ResNet-101 from scratch (trainable BN, nothing frozen, zero-init);
  4. every detector evaluated in COCO format (pycocotools) and VOC format on the same validation images, whose
     digits no stage trains on; prediction pictures (tools/predict.py) beside the ground truth, the table with
     mean and standard deviation over --seeds, one line per finding, a plot beside the paper's Tables 7-8.

Every change to the paper's configs, with its reason, is in configs/demo/digits_small_scale.yaml, the learning rates
included: each arm's is the best of one grid on held-out training data (`--tune` runs the grid and records it
there; without it the recorded choice is used). Each stage prints one line (what it does, where its log is) and
relays the training progress; the full command heads its log. A finished stage is kept (its completion record,
utils/completion, holds its command and the stages it read); an interrupted one resumes from its last checkpoint;
one whose command or inputs changed runs again; --fresh starts over. Seeded end to end.
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = REPO / "configs" / "demo" / "digits_small_scale.yaml"
STAGE_RECORD = "demo_stage.json"  # a stage's completion record (resnet_backbone/utils/completion.py)
PREDICTION_IMAGES = {"full": 4, "tiny": 2}  # validation images drawn per detector
TINY_DETECTION_SET = {"num_train": 5, "num_val": 2}  # --tiny: the detection set's size (VOC needs >= 2 per split)

# (name, backbone label, pretraining config, override sections)
PRETRAININGS = (
    ("pretrain_r101", "ResNet-101", "configs/imagenet/resnet101.yaml", ("pretrain", "pretrain_resnet101")),
    ("pretrain_vgg16", "VGG-16", "configs/imagenet/vgg16.yaml", ("pretrain", "pretrain_vgg16")))
# (name, detection config, override sections after `common`, pretraining it starts from or None)
DETECTORS = (("frcnn_r101_pretrained", "configs/coco/frcnn_r101.yaml", ("resnet_pretrained",), "pretrain_r101"),
             ("frcnn_vgg16_pretrained", "configs/coco/frcnn_vgg16.yaml", ("vgg16_pretrained",), "pretrain_vgg16"),
             ("frcnn_r101_scratch", "configs/coco/frcnn_r101.yaml", ("resnet_scratch",), None))
PRETRAIN_OUTPUTS = ["pretrain_results.json", "model_final_d2.pkl", "model_final_d2.pkl.provenance.json"]
DETECTOR_OUTPUTS = ["eval_results.json", "model_final.pth"]
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
    data: Optional[dict] = None  # the completion record key of the data set it reads (its parameters, version)

    def key(self) -> list:
        """What the stage's outputs are a function of: its command, its data set and the stages it reads from."""
        return [self.command, self.data, [d.key() for d in self.depends]]


def _relay(line: str) -> None:
    if PROGRESS.search(line):
        print("    " + LOG_PREFIX.sub("", ANSI.sub("", line).strip()), flush=True)


def run_stage(stage: Stage, logs: Path, index: int, total: int) -> None:
    """Run one stage unless it already finished with the same key; resume one that was interrupted."""
    from resnet_backbone.utils.completion import COMPLETE, STARTED, mark_complete, mark_started, state

    log_file = logs / f"{stage.name}.log"
    head = f"{index}/{total} {stage.what}"
    record = stage.output_dir / STAGE_RECORD
    found = state(record, stage.key(), stage.outputs)
    if found == COMPLETE:
        log(f"{head}: done before, kept ({stage.output_dir})")
        return
    if found == STARTED:
        log(f"{head}: resuming an interrupted run (log: {log_file})")
    else:  # nothing there, or made by another command or from other inputs: start this stage over
        shutil.rmtree(stage.output_dir, ignore_errors=True)
        log(f"{head} (log: {log_file})")
    mark_started(record, stage.key())
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(stage.env or {}))
    t0, cpu0 = time.time(), _children_cpu()
    log_file.parent.mkdir(parents=True, exist_ok=True)
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
    mark_complete(record, stage.key(), command=stage.command, seconds=round(seconds, 1), cpu_seconds=round(cpu, 1),
                  files=stage.outputs)
    log(f"    {stage.name} finished in {seconds:.0f} s ({cpu:.0f} s of CPU time)")


def _children_cpu() -> float:
    # CPU time of the finished stage processes: comparable across machines where wall time depends on the load
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./()\[\]-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


@dataclass
class Plan:
    """How stages are made: the overrides file's sections, the device, --tiny and the environment of each stage."""
    sections: dict
    out: Path
    device: str
    tiny: bool
    env: Optional[dict]
    data: dict = field(default_factory=dict)  # {"pretraining" / "detection": the data set's record key}

    def pretraining(self, name: str, folder: Path, *, seed: int, lr: dict, schedule: dict = None) -> Stage:
        from resnet_backbone.engine.overrides import overrides_to_opts

        _, label, config, names = next(p for p in PRETRAININGS if p[0] == name)
        s = self.sections
        opts = overrides_to_opts(*(s[n] for n in names), lr, schedule or {}, {"SEED": seed},
                                 *((s["tiny_pretrain"],) if self.tiny else ()))
        values = dict(zip(opts[::2], opts[1::2]))
        command = [sys.executable, str(REPO / "tools" / "pretrain_net.py"), "--resume", "--config", config] + opts
        command += ["MODEL.DEVICE", self.device, "OUTPUT_DIR", str(folder)]
        what = (f"pretrain {label} on the digits (seed {seed}, lr {values['PRETRAIN.SOLVER.BASE_LR']} per 256, "
                f"{values['PRETRAIN.SOLVER.MAX_ITER']} iterations, {config})")
        return Stage(f"{folder.parent.name}_{folder.name}", what, command, folder, PRETRAIN_OUTPUTS, env=self.env,
                     data=self.data.get("pretraining"))

    def detection(self, name: str, folder: Path, *, seed: int, lr: dict, weights: Optional[Stage],
                  schedule: dict = None):
        """(config, opts, Stage) of one detector: trained, then evaluated on DATASETS.TEST."""
        from resnet_backbone.engine.overrides import overrides_to_opts

        _, config, names, pretrained = next(d for d in DETECTORS if d[0] == name)
        s = self.sections
        opts = overrides_to_opts(s["common"], *(s[n] for n in names), lr, schedule or {}, {"SEED": seed},
                                 *((s["tiny_detection"],) if self.tiny else ()))
        depends = []
        if weights is not None:
            depends = [weights]
            opts += ["MODEL.WEIGHTS", str(weights.output_dir / "model_final_d2.pkl")]
        values = dict(zip(opts[::2], opts[1::2]))
        label = "ResNet-101" if "r101" in name else "VGG-16"
        init = "from its pretraining's weights" if pretrained else "from scratch"
        command = [sys.executable, str(REPO / "tools" / "train_net.py"), "--resume", "--config", config] + opts
        command += ["MODEL.DEVICE", self.device, "OUTPUT_DIR", str(folder)]
        what = (f"Faster R-CNN {label} {init} (seed {seed}, lr {values['SOLVER.BASE_LR']}, "
                f"{values['SOLVER.MAX_ITER']} iterations, {config}), evaluated on {values['DATASETS.TEST']}")
        stage = Stage(f"{folder.parent.name}_{folder.name}", what, command, folder, DETECTOR_OUTPUTS, depends, self.env,
                      self.data.get("detection"))
        return config, opts, stage

    def prediction(self, name, config, opts, trained: Stage, images: List[Path]) -> Stage:
        folder = self.out / "predictions" / name
        command = [sys.executable, str(REPO / "tools" / "predict.py"), "--config", config, "--input"]
        command += [str(p) for p in images] + ["--output", str(folder), "--confidence", "0.5"]
        command += opts + ["MODEL.DEVICE", self.device, "MODEL.WEIGHTS", str(trained.output_dir / "model_final.pth")]
        return Stage(f"predict_{name}", f"prediction pictures of {name} ({len(images)} validation images)", command,
                     folder, ["predictions.json"] + [p.name for p in images], [trained], self.env)

    def tuned(self, name: str) -> dict:
        return self.sections["tuned"][name]

    def seed_pretraining(self, name: str, seed: int, lr: Optional[dict] = None) -> Stage:
        """The main run's pretraining of arm `name` for `seed`, at `lr` (default: its tuned lr); --tune's detection
        grid reads seed 0's."""
        return self.pretraining(name, self.out / f"seed{seed}" / name, seed=seed, lr=lr or self.tuned(name))


def run_stages(stages: List[Stage], logs: Path, first: int, total: int) -> int:
    try:
        for i, stage in enumerate(stages, start=first):
            run_stage(stage, logs, i, total)
    except StageFailed as e:
        log(str(e))
        raise SystemExit(1) from None
    return first + len(stages)


# ---- the lr grid (--tune) ----

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_lr(scores: Dict[float, float], lower_is_better: bool) -> float:
    """The grid's best lr: lowest error / highest AP; a run that ended without a number (NaN: diverged) loses;
    ties go to the smaller lr."""
    usable = {lr: v for lr, v in scores.items() if _finite(v)}
    if not usable:
        raise ValueError(f"every lr of the grid failed (scores {scores}): widen the grid in {OVERRIDES}")
    return sorted(usable, key=lambda lr: ((usable[lr] if lower_is_better else -usable[lr]), lr))[0]


def _run_grid(stages: List[Stage], logs: Path, first: int, total: int) -> set:
    """Run the grid's stages; one that fails (a diverged lr: detectron2 stops on a non-finite loss) scores NaN
    instead of stopping the grid. Returns the names of those that finished."""
    done = set()
    for i, stage in enumerate(stages, start=first):
        try:
            run_stage(stage, logs, i, total)
            done.add(stage.name)
        except StageFailed as e:
            log(f"    {e}: this lr scores NaN")
    return done


def _coco_ap50(folder: Path) -> float:
    results = json.loads((folder / "eval_results.json").read_text())["results"]
    return float(next(r["bbox"]["AP50"] for r in results.values() if r.get("format") == "coco"))


def tune(plan: Plan, logs: Path) -> dict:
    """Run the grid: every pretraining arm at every lr of grid.pretrain_lrs, scored by its validation top-1 error;
    then each arm's seed-0 pretraining at its chosen lr (the main run's own stage, kept for it); every detector at
    every lr of grid.detection_lrs on tune_train (pretrained ones from that pretraining: the lr is chosen for the
    weights the main run fine-tunes, not for a shortened pretraining's), scored by COCO AP50 on tune_val (AP at IoU
    .5: it still separates detectors that AP at [.5, .95] puts at 0 after a short schedule). Returns {"tuned": ...,
    "grid_results": ...}."""
    grid = plan.sections["grid"]
    folder = plan.out / "tune"
    pre = {name: [plan.pretraining(name, folder / f"{name}_lr{lr}", seed=0, lr={"PRETRAIN.SOLVER.BASE_LR": lr},
                                   schedule=grid["pretrain_schedule"]) for lr in grid["pretrain_lrs"]]
           for name, *_ in PRETRAININGS}
    total = sum(map(len, pre.values())) + len(PRETRAININGS) + len(DETECTORS) * len(grid["detection_lrs"])
    log(f"lr grid: {total} runs, scored on held-out training data ({OVERRIDES.name}, section grid)")
    first = [s for stages in pre.values() for s in stages]
    done = _run_grid(first, logs, 1, total)
    tuned, results, chosen = {}, {}, {}
    for name, stages in pre.items():
        scores = {}
        for lr, stage in zip(grid["pretrain_lrs"], stages):
            err = json.loads((stage.output_dir / "pretrain_results.json").read_text())["val"]["top1_err"] \
                if stage.name in done else float("nan")
            scores[lr] = round(100 * float(err), 1) if _finite(err) else float("nan")
        lr = best_lr(scores, lower_is_better=True)
        tuned[name], results[name] = {"PRETRAIN.SOLVER.BASE_LR": lr}, scores
        chosen[name] = plan.seed_pretraining(name, 0, tuned[name])
        log(f"    {name}: validation top-1 error (%) by lr {scores} -> lr {lr}")
    from resnet_backbone.demo_report import plot_grid

    plot = plot_grid({name: {lr: str(st.output_dir) for lr, st in zip(grid["pretrain_lrs"], stages)
                             if st.name in done} for name, stages in pre.items()}, str(folder / "grid.png"))
    log(f"    pretraining curves of the grid: {plot}")
    run_stages(list(chosen.values()), logs, len(first) + 1, total)
    det = {}
    for name, _, _, pretrained in DETECTORS:
        det[name] = [plan.detection(name, folder / f"{name}_lr{lr}", seed=0, lr={"SOLVER.BASE_LR": lr},
                                    weights=chosen.get(pretrained), schedule=grid["detection_schedule"])[2]
                     for lr in grid["detection_lrs"]]
    done = _run_grid([s for stages in det.values() for s in stages], logs, len(first) + len(chosen) + 1, total)
    for name, stages in det.items():
        scores = {lr: round(_coco_ap50(s.output_dir), 1) if s.name in done else float("nan")
                  for lr, s in zip(grid["detection_lrs"], stages)}
        lr = best_lr(scores, lower_is_better=False)
        tuned[name], results[name] = {"SOLVER.BASE_LR": lr}, scores
        log(f"    {name}: COCO AP50 on tune_val by lr {scores} -> lr {lr}")
    return {"tuned": tuned, "grid_results": results}


def _yaml_number(value) -> str:
    return str(value) if _finite(value) else ".nan"  # a diverged run: YAML's NaN


def write_tuned(path: Path, choice: dict) -> None:
    """Replace the `tuned` and `grid_results` sections of the overrides file (the rest, comments included, stays)."""
    from resnet_backbone.utils.atomic import atomic_write_text

    lines = ["tuned:"]
    for name, opts in choice["tuned"].items():
        lines.append(f"  {name}:")
        lines += [f"    {k}: {v}" for k, v in opts.items()]
    lines += ["grid_results:",
              "  # pretraining: 1-crop validation top-1 error (%) by lr; detection: COCO AP50 on tune_val by lr"]
    for name, scores in choice["grid_results"].items():
        lines.append(f"  {name}: {{{', '.join(f'{lr}: {_yaml_number(v)}' for lr, v in scores.items())}}}")
    text = path.read_text()
    start = text.index("\ntuned:") + 1
    end = text.index("\n# ----", start) + 1
    atomic_write_text(path, text[:start] + "\n".join(lines) + "\n\n" + text[end:])


# ---- data ----

def ensure_data(plan: Plan, data_root: Path) -> dict:
    """Both digit sets (written unless complete), the split they use, and whether it is disjoint."""
    from resnet_backbone.data.classification_sets import resolve_data_root
    from resnet_backbone.data.digits import generate_digit_classes, generate_digit_detection

    detection = generate_digit_detection(data_root, **(TINY_DETECTION_SET if plan.tiny else {}))
    if plan.env:  # --tiny: relative roots are under its RB_DATASETS
        classes_root = Path(plan.env["RB_DATASETS"]) / plan.sections["pretrain"]["PRETRAIN.DATASET.ROOT"]
    else:
        classes_root = Path(resolve_data_root(plan.sections["pretrain"]["PRETRAIN.DATASET.ROOT"]))
    classes = generate_digit_classes(classes_root)
    val = set(detection["digits"]["val"])
    seen = set(detection["digits"]["train"]) | set(classes["digits"]["train"]) | set(classes["digits"]["val"])
    return {"detection_root": str(data_root), "classes_root": str(classes_root),
            "detection_val_digits": len(val), "detection_train_digits": len(detection["digits"]["train"]),
            "pretrain_train_digits": len(classes["digits"]["train"]),
            "pretrain_val_digits": len(classes["digits"]["val"]), "overlap": sorted(val & seen),
            "detection_images": detection["key"], "pretraining_images": classes["key"]}


def write_report(out: Path, seeds: int, pretrain_stages, detector_stages, predictions, split) -> dict:
    from resnet_backbone.demo_report import (
        findings,
        format_markdown,
        ground_truth_pictures,
        load_detector,
        load_pretraining,
        plot_demo,
        prediction_montage,
        table_rows,
    )

    pretrained = {name: [load_pretraining(label, str(stages[s].output_dir)) for s in range(seeds)]
                  for name, (label, stages) in pretrain_stages.items()}
    groups = []
    for name, (_, _, stages) in detector_stages.items():
        source = next(p for n, _, _, p in DETECTORS if n == name)
        groups.append([load_detector(name, "pretrained" if source else "from scratch", str(stages[s].output_dir),
                                     pretrained[source][s] if source else None) for s in range(seeds)])
    rows = table_rows(groups)
    table = format_markdown(rows)
    lines = findings(groups, list(pretrained.values()))
    (out / "results.md").write_text(table + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    plot = plot_demo(groups, list(pretrained.values()), str(out / "comparison.png"))
    truth = ground_truth_pictures(split["detection_root"], predictions["images"], out / "predictions" / "truth")
    montage = prediction_montage([("ground truth", truth)] + [
        (f"{g[0].label} {g[0].init}", [predictions[g[0].name] / image for image in predictions["images"]])
        for g in groups], str(out / "predictions.png"))
    summary = {
        "seeds": seeds,
        "split": split,
        "pretraining": {n: [{"label": p.label, "iterations": p.iterations, "val_top1_err": p.top1_err,
                             "val_top5_err": p.top5_err, "val10_top1_err": p.top1_err_10crop,
                             "weights": str(Path(p.path) / "model_final_d2.pkl")} for p in runs]
                        for n, runs in pretrained.items()},
        "detectors": {g[0].name: [{"label": d.label, "init": d.init, "coco_AP50": d.coco_ap50, "coco_AP": d.coco_ap,
                                   "voc_AP50": d.voc_ap50, "eval_results": str(Path(d.path) / "eval_results.json")}
                                  for d in g] for g in groups},
        "rows": rows, "findings": lines, "table": str(out / "results.md"), "plot": plot, "predictions": montage,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _stage_times(stages: List[Stage]) -> Dict[str, dict]:
    from resnet_backbone.utils.completion import read_record

    times = {}
    for stage in stages:
        record = read_record(stage.output_dir / STAGE_RECORD) or {}
        times[stage.name] = {k: record.get(k) for k in ("seconds", "cpu_seconds")}
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo", help="folder for every stage, the table and the plots")
    parser.add_argument("--fresh", action="store_true", help="delete --output first: every stage runs again")
    parser.add_argument("--tiny", action="store_true",
                        help="the same pipeline with a few iterations per stage and a tiny detection set under "
                             "OUTPUT/datasets (the sections tiny_* of the overrides file; for the end-to-end test)")
    parser.add_argument("--seeds", type=int, default=1, help="run every stage with seeds 0..N-1; the table shows "
                                                             "the mean and standard deviation (default 1)")
    parser.add_argument("--tune", action="store_true",
                        help="first run the lr grid (section grid of the overrides file) and record each arm's best "
                             "lr in its section tuned (with --tiny: in OUTPUT/tuned.yaml only)")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE of every stage (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")
    t0 = time.time()
    out = Path(args.output).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    from resnet_backbone.data.register import digits_root
    from resnet_backbone.engine.overrides import load_override_sections

    env = {"RB_DATASETS": str(out / "datasets")} if args.tiny else None
    plan = Plan(load_override_sections(OVERRIDES), out, args.device, args.tiny, env)
    data_root = out / "datasets" / "rb_digits" if args.tiny else Path(digits_root())
    split = ensure_data(plan, data_root)
    plan.data = {"pretraining": split["pretraining_images"], "detection": split["detection_images"]}
    log(f"data: scikit-learn's handwritten digits, split into disjoint pools: pretraining {split['pretrain_train_digits']}"
        f" train / {split['pretrain_val_digits']} val digits, detection training {split['detection_train_digits']}, "
        f"detection validation {split['detection_val_digits']} digits (shared with earlier stages: "
        f"{len(split['overlap'])}); detection images at {data_root}")
    if split["overlap"]:
        raise SystemExit(f"the detection validation digits {split['overlap'][:10]} ... are also used for training")
    if args.tune:
        choice = tune(plan, logs)
        if args.tiny:
            import yaml

            (out / "tuned.yaml").write_text(yaml.safe_dump(choice))
        else:
            write_tuned(OVERRIDES, choice)
            log(f"recorded in {OVERRIDES} (sections tuned, grid_results)")
        plan.sections.update(choice)

    pretrain_stages, detector_stages = {}, {}
    for name, label, _, _ in PRETRAININGS:
        pretrain_stages[name] = (label, [plan.seed_pretraining(name, s) for s in range(args.seeds)])
    for name, config, _, pretrained in DETECTORS:
        built = [plan.detection(name, out / f"seed{s}" / name, seed=s, lr=plan.tuned(name),
                                weights=pretrain_stages[pretrained][1][s] if pretrained else None)
                 for s in range(args.seeds)]
        detector_stages[name] = (config, built[0][1], [b[2] for b in built])
    val_images = sorted((data_root / "coco" / "images" / "val").iterdir())
    val_images = val_images[:PREDICTION_IMAGES["tiny" if args.tiny else "full"]]
    stages = [st for s in range(args.seeds) for st in
              [v[1][s] for v in pretrain_stages.values()] + [v[2][s] for v in detector_stages.values()]]
    predict = [plan.prediction(name, config, opts, runs[0], val_images)
               for name, (config, opts, runs) in detector_stages.items()]
    stages += predict
    run_stages(stages, logs, 1, len(stages) + 1)
    log(f"{len(stages) + 1}/{len(stages) + 1} report: table {out / 'results.md'}, plot {out / 'comparison.png'}, "
        f"prediction pictures {out / 'predictions.png'}")
    predictions = {name: s.output_dir for name, s in zip(detector_stages, predict)}
    predictions["images"] = [p.name for p in val_images]
    summary = write_report(out, args.seeds, pretrain_stages, detector_stages, predictions, split)
    print(Path(summary["table"]).read_text(), flush=True)
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    summary["stage_times"] = _stage_times(stages)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done in {summary['minutes']} min; summary in {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
