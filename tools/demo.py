#!/usr/bin/env python
"""The README's main job: Faster R-CNN ResNet-101 vs VGG-16 on the embedded generated data (no downloads).

For each detector (configs/coco/frcnn_{r101,vgg16}.yaml with the small-scale overrides of
configs/demo/shapes_small_scale.yaml):
  1. evaluate the untrained model (the baseline "learning" is measured against),
  2. train with tools/train_net.py, evaluating in COCO format (pycocotools) and VOC format (mAP@.5),
then print the comparison table next to the paper's Tables 7-8 and write a PNG (mAP bars + loss curves).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (run name, the paper's config, section of the small-scale overrides)
DETECTORS = (("frcnn_r101", "configs/coco/frcnn_r101.yaml", "resnet"),
             ("frcnn_vgg16", "configs/coco/frcnn_vgg16.yaml", "vgg16"))
SMALL_SCALE = "configs/demo/shapes_small_scale.yaml"


def log(msg):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_train_net(config, output_dir, extra, eval_only=False):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(REPO / config)]
    cmd += ["--eval-only"] if eval_only else []
    cmd += ["OUTPUT_DIR", str(output_dir)] + list(extra)
    log("$ " + " ".join(cmd))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO) as proc:
        for line in proc.stdout:
            # progress: detectron2's periodic iteration lines, evaluation summaries and errors
            if any(k in line for k in (" iter: ", "Evaluation results", "| AP ", "|  AP", "Error", "Traceback",
                                       "Inference done", "Total inference time", "mAP")):
                print("    " + line.rstrip(), flush=True)
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"tools/train_net.py failed ({proc.returncode}) for {config}; see {output_dir}/log.txt")
    with open(Path(output_dir) / "eval_results.json") as f:
        return json.load(f)


def ap50_by_dataset(payload):
    return {ds: res["bbox"]["AP50"] for ds, res in payload["results"].items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/demo", help="folder for the runs, the table and the plot")
    parser.add_argument("--iters", type=int, default=None, help="override SOLVER.MAX_ITER of both detectors")
    parser.add_argument("--detectors", nargs="+", default=[d[0] for d in DETECTORS],
                        choices=[d[0] for d in DETECTORS], help="which detectors to run (default: both)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides passed to both detectors")
    args = parser.parse_args(argv)
    t0 = time.time()
    out = Path(args.output).resolve()
    import torch

    from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts

    sections = load_override_sections(REPO / SMALL_SCALE)
    extra = ["MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu"] + list(args.opts or [])
    if args.iters is not None:
        extra += ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", f"({int(args.iters * 0.8)},)"]

    from resnet_backbone.data.register import ensure_synthetic_dataset

    log(f"embedded data at {ensure_synthetic_dataset()}")
    summary = {}
    chosen = [d for d in DETECTORS if d[0] in args.detectors]
    for name, config, family in chosen:
        opts = overrides_to_opts(sections["common"], sections[family]) + extra
        log(f"{name}: evaluating the untrained model (COCO format; the VOC copy holds the same images)")
        base = run_train_net(config, out / f"{name}_untrained", opts + ["DATASETS.TEST", "('rb_shapes_coco_val',)"],
                             eval_only=True)
        log(f"{name}: training")
        trained = run_train_net(config, out / name, opts)
        summary[name] = {"untrained_AP50": ap50_by_dataset(base), "trained_AP50": ap50_by_dataset(trained)}
        log(f"{name}: AP50 untrained {summary[name]['untrained_AP50']} -> trained {summary[name]['trained_AP50']}")

    from resnet_backbone.compare import compare_runs

    rows = compare_runs([out / d[0] for d in chosen], out / "comparison.png", markdown=out / "comparison.md")
    summary["minutes"] = round((time.time() - t0) / 60, 1)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    log(f"done in {summary['minutes']} min; summary in {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
