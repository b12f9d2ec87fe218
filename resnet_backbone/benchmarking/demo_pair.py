"""The demo's detector trained through tools/train_net.py, the plugin's next to detectron2's built-in.

Both runs use configs/coco/frcnn_r101.yaml with the demo's small-scale overrides (configs/demo, from scratch on
the embedded data); the built-in run swaps in detectron2's own backbone and C4 head (build_resnet_backbone +
Res5ROIHeads), as the benchmark's c4 section does. Seconds per iteration come from each run's metrics.json
(detectron2's IterationTimer, a median over its window) after the first WARMUP_ITERS iterations; AP50 from its
eval_results.json.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["BUILTIN_C4", "WARMUP_ITERS", "demo_opts", "seconds_per_iteration", "run_demo_pair"]

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/coco/frcnn_r101.yaml"
SMALL_SCALE = "configs/demo/shapes_small_scale.yaml"
BUILTIN_C4 = ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
              "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"]
WARMUP_ITERS = 20  # first iterations left out: allocator / cuDNN autotuning / data loader start


def demo_opts(device: str, iters: int) -> List[str]:
    """KEY VALUE overrides of the demo's ResNet-101 run (configs/demo's common + resnet sections), on `device`,
    for `iters` iterations, a metrics record every 5 iterations."""
    from ..engine.overrides import load_override_sections, overrides_to_opts

    sections = load_override_sections(REPO / SMALL_SCALE)
    return overrides_to_opts(sections["common"], sections["resnet"]) + [
        "MODEL.DEVICE", device, "SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)",
        "SOLVER.CHECKPOINT_PERIOD", str(iters), "RB_TRAIN.LOG_PERIOD", "5"]


def seconds_per_iteration(metrics_file: Path, skip: int = WARMUP_ITERS) -> Optional[float]:
    """Median of the "time" records of a detectron2 metrics.json after iteration `skip` (None if there are none)."""
    from ..engine.pretrain.metrics import read_metrics

    times = [float(r["time"]) for r in read_metrics(str(metrics_file))
             if "time" in r and r.get("iteration", -1) >= skip]
    return statistics.median(times) if times else None


def _ap50(eval_file: Path) -> Dict[str, float]:
    payload = json.loads(eval_file.read_text())
    return {ds: round(float(res["bbox"]["AP50"]), 2) for ds, res in payload["results"].items() if "bbox" in res}


def run_demo_pair(output_dir: str, *, device: str, iters: int = 100, log=print) -> dict:
    """Train the demo's detector for `iters` iterations with the plugin's code and with detectron2's built-in, one
    after the other (tools/train_net.py, its own process each); returns seconds per iteration, wall time and AP50
    of each and the plugin / built-in time ratio. A run that fails is reported with the end of its log."""
    from ..data.register import ensure_synthetic_dataset

    if iters <= WARMUP_ITERS:
        raise ValueError(f"iters must be > {WARMUP_ITERS} (the warm-up iterations left out of the timing), got {iters}")
    ensure_synthetic_dataset()
    out = Path(output_dir)
    results = {}
    for name, extra in (("plugin", []), ("detectron2", BUILTIN_C4)):
        run_dir = out / name
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(REPO / CONFIG),
               *demo_opts(device, iters), *extra, "OUTPUT_DIR", str(run_dir)]
        log(f"demo detector, {name}: {iters} iterations on {device}")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - start
        entry = {"ok": proc.returncode == 0, "wall_s": wall}
        if proc.returncode == 0:
            entry["seconds_per_iteration"] = seconds_per_iteration(run_dir / "metrics.json")
            entry["AP50"] = _ap50(run_dir / "eval_results.json")
        else:
            entry["error"] = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
            log(f"demo detector, {name}: tools/train_net.py failed ({proc.returncode}):\n{entry['error']}")
        results[name] = entry
    p, d = (results[k].get("seconds_per_iteration") for k in ("plugin", "detectron2"))
    return {"config": CONFIG, "overrides": SMALL_SCALE, "device": device, "iterations": iters,
            "warmup_iterations": WARMUP_ITERS, "contenders": results,
            "time_ratio_plugin_over_detectron2": (p / d) if p and d else None}
