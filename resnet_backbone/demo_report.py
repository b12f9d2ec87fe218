"""The demo's report (tools/demo.py): its detectors (mean and standard deviation over seeds) next to the paper's Tables
7-8, one line per finding, one plot of the whole run and one picture of the predictions beside the ground truth.

Inputs are the folders the two stages leave: a pretraining run (tools/pretrain_net.py: pretrain_results.json,
metrics.json with "loss" / "train_top1_err" / "val/top1_err" by iteration) and a detection run (tools/train_net.py:
eval_results.json with the COCO-format and VOC-format results of the same validation images, metrics.json with
"total_loss" by iteration). The paper's numbers come from paper_tables.DETECTION_TABLE; the paper has no detector
trained from scratch, so those rows have no paper numbers.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .compare import load_run, read_run_json
from .engine.pretrain.metrics import read_metrics
from .paper_tables import DETECTION_TABLE
from .utils.figures import new_figure, save_figure

__all__ = ["DetectorEntry", "PretrainEntry", "PAPER_COLUMNS", "METRICS", "load_detector", "load_pretraining",
           "mean_std", "table_rows", "findings", "format_markdown", "plot_demo", "plot_grid", "ground_truth_pictures",
           "prediction_montage"]

# (column, (benchmark, metric) of DETECTION_TABLE)
PAPER_COLUMNS = (("paper VOC07 mAP@.5", ("PASCAL VOC 2007 test", "mAP@.5")),
                 ("paper COCO mAP@.5", ("COCO val", "mAP@.5")),
                 ("paper COCO mAP@[.5,.95]", ("COCO val", "mAP@[.5,.95]")))

# (table column, DetectorEntry attribute, DETECTION_TABLE key of the paper's number)
METRICS = (("COCO-format AP50", "coco_ap50", ("COCO val", "mAP@.5")),
           ("COCO-format AP", "coco_ap", ("COCO val", "mAP@[.5,.95]")),
           ("VOC-format mAP@.5", "voc_ap50", ("PASCAL VOC 2007 test", "mAP@.5")))
CHANCE_TOP1_ERR = 0.9  # 10 classes
VOC_TARGET = 70.0  # the target for the pretrained ResNet-101 (the paper's VOC 2007 figure is 76.4)


@dataclass
class PretrainEntry:
    label: str  # "ResNet-101"
    path: str
    iterations: int
    top1_err: float  # final 1-crop validation errors, fractions
    top5_err: float
    top1_err_10crop: Optional[float]
    curve: List[dict] = field(default_factory=list)  # metrics.json records


@dataclass
class DetectorEntry:
    name: str  # "frcnn_r101_pretrained"
    label: str  # "ResNet-101"
    init: str  # "pretrained" | "from scratch"
    path: str
    coco_ap50: float
    coco_ap: float
    voc_ap50: float
    losses: List[tuple] = field(default_factory=list)  # (iteration, total_loss)
    pretraining: Optional[PretrainEntry] = None


def load_pretraining(label: str, path: str) -> PretrainEntry:
    results = read_run_json(path, "pretrain_results.json", "tools/pretrain_net.py")
    ten = results.get("val10", {}).get("top1_err")
    return PretrainEntry(label=label, path=path, iterations=int(results["iteration"]),
                         top1_err=float(results["val"]["top1_err"]), top5_err=float(results["val"]["top5_err"]),
                         top1_err_10crop=None if ten is None else float(ten), curve=read_metrics(path))


def _by_format(results: Dict[str, dict], fmt: str) -> dict:
    found = [res["bbox"] for res in results.values() if res.get("format") == fmt and "bbox" in res]
    if len(found) != 1:
        raise ValueError(f"expected one {fmt!r} evaluation in eval_results.json, found {len(found)} "
                         f"(datasets: {sorted(results)})")
    return found[0]


def load_detector(name: str, init: str, path: str, pretraining: Optional[PretrainEntry] = None) -> DetectorEntry:
    run = load_run(path)
    coco, voc = _by_format(run.results, "coco"), _by_format(run.results, "pascal_voc")
    return DetectorEntry(name=name, label=run.label, init=init, path=path, coco_ap50=float(coco["AP50"]),
                         coco_ap=float(coco["AP"]), voc_ap50=float(voc["AP50"]), losses=run.losses,
                         pretraining=pretraining)


def _pct(v: Optional[float], scale: float = 1.0) -> str:
    if v is None:
        return "-"
    v = v * scale
    return "nan" if math.isnan(v) else f"{v:.1f}"


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN when any value is NaN."""
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(mean: float, std: float, seeds: int) -> str:
    return _pct(mean) if seeds == 1 else f"{_pct(mean)} ± {_pct(std)}"


def table_rows(groups: Sequence[Sequence[DetectorEntry]]) -> List[dict]:
    """One row per detector (``groups``: its runs, one per seed): its pretraining's top-1 error, its COCO- and
    VOC-format AP as mean and standard deviation over the seeds (keys "<column>" and "<column> std"), the paper's
    numbers for its backbone (pretrained detectors only)."""
    rows = []
    for runs in groups:
        d = runs[0]
        row = {"detector": f"Faster R-CNN {d.label}", "init": d.init, "seeds": len(runs)}
        if d.pretraining is None:
            row["pretraining val top-1 err"] = "-"
        else:
            m, sd = mean_std([100 * r.pretraining.top1_err for r in runs])
            row["pretraining val top-1 err"] = _cell(m, sd, len(runs))
        for column, attr, _ in METRICS:
            row[column], row[f"{column} std"] = mean_std([getattr(r, attr) for r in runs])
        for column, key in PAPER_COLUMNS:
            row[column] = DETECTION_TABLE[key].get(d.label) if d.init == "pretrained" else None
        rows.append(row)
    return rows


def format_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no detectors)"
    cols = [c for c in rows[0] if not c.endswith(" std") and c != "seeds"]
    cells = []
    for r in rows:
        line = []
        for c in cols:
            v = r[c]
            if f"{c} std" in r:
                line.append(_cell(v, r[f"{c} std"], r["seeds"]))
            else:
                line.append(_pct(v) if isinstance(v, float) or v is None else str(v))
        cells.append(line)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells])


def _beats(a: Sequence[DetectorEntry], b: Sequence[DetectorEntry], attr: str, column: str) -> str:
    (ma, sa), (mb, sb) = mean_std([getattr(r, attr) for r in a]), mean_std([getattr(r, attr) for r in b])
    margin, bar = ma - mb, 2 * max(sa, sb)
    held = "held" if margin > bar and not math.isnan(margin) else "did not hold"
    spread = f"2 x the larger std = {bar:.1f}" if len(a) > 1 else "one seed: no std"
    return (f"{a[0].label} {a[0].init} beats {b[0].label} {b[0].init} in {column}: {held} "
            f"({ma:.1f} vs {mb:.1f}, by {margin:+.1f}; {spread})")


def findings(groups: Sequence[Sequence[DetectorEntry]], pretraining: Sequence[Sequence[PretrainEntry]]) -> List[str]:
    """One line per finding of the paper the demo checks, each saying whether it held at this scale and by how much:
    pretraining helps ResNet-101, ResNet-101 beats VGG-16 (COCO AP and VOC mAP@.5 each, by more than twice the
    larger standard deviation), the pretrained ResNet-101 reaches the VOC target, both classifiers learned."""
    by = {(g[0].label, g[0].init): g for g in groups}
    r101, scratch, vgg = (by.get(k) for k in (("ResNet-101", "pretrained"), ("ResNet-101", "from scratch"),
                                              ("VGG-16", "pretrained")))
    lines = []
    for other in (scratch, vgg):
        if r101 and other:
            lines += [_beats(r101, other, attr, column) for column, attr, _ in METRICS if attr != "coco_ap50"]
    if r101:
        m, _ = mean_std([r.voc_ap50 for r in r101])
        lines.append(f"ResNet-101 pretrained reaches VOC-format mAP@.5 >= {VOC_TARGET:.0f} (the paper: 76.4 on VOC "
                     f"2007): {'held' if m >= VOC_TARGET else 'did not hold'} ({m:.1f})")
    for runs in pretraining:
        m, sd = mean_std([100 * p.top1_err for p in runs])
        bar = 100 * CHANCE_TOP1_ERR / 2
        reached = f"{m:.1f}%" if len(runs) == 1 else f"{m:.1f}% ± {sd:.1f}"
        lines.append(f"{runs[0].label} pretraining learned the digits (validation top-1 error below {bar:.0f}%, half "
                     f"of chance's {100 * CHANCE_TOP1_ERR:.0f}%): {'held' if m < bar else 'did not hold'} ({reached})")
    return lines


def plot_demo(groups: Sequence[Sequence[DetectorEntry]], pretraining: Sequence[Sequence[PretrainEntry]],
              out_png: str) -> str:
    """mAP bars with error bars (one standard deviation over the seeds) beside the paper's, the pretraining curves
    (training loss, validation top-1 error) and the detection training losses of the first seed: one PNG."""
    fig = new_figure((18, 5))
    ax_bar, ax_pre, ax_det = fig.subplots(1, 3)
    series = []
    for runs in groups:
        stats = [mean_std([getattr(r, attr) for r in runs]) for _, attr, _ in METRICS]
        series.append((f"{runs[0].label} {runs[0].init} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
                       [m for m, _ in stats], [sd for _, sd in stats], None))
    for label in dict.fromkeys(g[0].label for g in groups if g[0].init == "pretrained"):
        series.append((f"paper {label}", [DETECTION_TABLE[key].get(label, 0.0) for _, _, key in METRICS], None, "//"))
    width = 0.8 / max(len(series), 1)
    for i, (name, values, errors, hatch) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(METRICS))]
        ax_bar.bar(xs, [0.0 if math.isnan(v) else v for v in values], width, yerr=errors, capsize=3, label=name,
                   hatch=hatch, alpha=0.6 if hatch else 1.0)
    ax_bar.set_xticks(range(len(METRICS)))
    ax_bar.set_xticklabels([m[0].replace("-format ", "-format\n") for m in METRICS])
    ax_bar.set_ylabel("AP (%)")
    ax_bar.set_title("Faster R-CNN on the digits' validation images vs the paper (Tables 7-8)")
    ax_bar.legend(fontsize=8)

    ax_err = ax_pre.twinx()
    for i, runs in enumerate(pretraining):
        p, colour = runs[0], f"C{i}"
        train = [(r["iteration"], r["loss"]) for r in p.curve if "loss" in r]
        val = [(r["iteration"], 100 * r["val/top1_err"]) for r in p.curve if "val/top1_err" in r]
        if train:
            ax_pre.plot(*zip(*train), color=colour, label=f"{p.label} training loss")
        if val:
            ax_err.plot(*zip(*val), color=colour, linestyle="--", marker="o", label=f"{p.label} val top-1 err")
    ax_err.axhline(100 * CHANCE_TOP1_ERR, color="grey", linestyle=":", label="chance")
    ax_pre.set_xlabel("iteration")
    ax_pre.set_ylabel("training loss (cross-entropy)")
    ax_err.set_ylabel("validation top-1 error (%), 1-crop")
    ax_pre.set_title("Pretraining on the digits (seed 0)")
    handles = ax_pre.get_legend_handles_labels()
    extra = ax_err.get_legend_handles_labels()
    ax_pre.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8)

    for runs in groups:
        d = runs[0]
        if d.losses:
            ax_det.plot(*zip(*d.losses), label=f"{d.label} {d.init}")
    ax_det.set_xlabel("iteration")
    ax_det.set_ylabel("total training loss")
    ax_det.set_title("Detection training (seed 0)")
    ax_det.legend(fontsize=8)
    return save_figure(fig, out_png, dpi=100)


def plot_grid(runs: Dict[str, Dict[float, str]], out_png: str) -> str:
    """The lr grid's pretraining runs (``runs``: arm -> {lr: run folder}): training loss and validation top-1 error
    by iteration, one panel per arm, one colour per lr."""
    fig = new_figure((6 * max(len(runs), 1), 4.5))
    axes = fig.subplots(1, max(len(runs), 1), squeeze=False)[0]
    for ax, (arm, by_lr) in zip(axes, runs.items()):
        ax_err = ax.twinx()
        for i, (lr, path) in enumerate(by_lr.items()):
            curve = read_metrics(path)
            train = [(r["iteration"], r["loss"]) for r in curve if "loss" in r]
            val = [(r["iteration"], 100 * r["val/top1_err"]) for r in curve if "val/top1_err" in r]
            if train:
                ax.plot(*zip(*train), color=f"C{i}", label=f"lr {lr}: training loss")
            if val:
                ax_err.plot(*zip(*val), color=f"C{i}", linestyle="--", marker="o", label=f"lr {lr}: val top-1 err")
        ax_err.axhline(100 * CHANCE_TOP1_ERR, color="grey", linestyle=":", label="chance")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (cross-entropy)")
        ax_err.set_ylabel("validation top-1 error (%)")
        ax.set_title(f"lr grid: {arm}")
        handles, extra = ax.get_legend_handles_labels(), ax_err.get_legend_handles_labels()
        ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7)
    return save_figure(fig, out_png, dpi=100)


def ground_truth_pictures(root: str, file_names: Sequence[str], out_dir) -> List[str]:
    """The validation images ``file_names`` of the digits' detection set at ``root`` with their ground-truth boxes
    and digit names, drawn by detectron2's Visualizer as tools/predict.py draws predictions; returns the paths."""
    import numpy as np
    from detectron2.structures import BoxMode
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from .data.digits import CLASS_NAMES, detection_paths

    json_file, image_root = detection_paths(root)["coco_val"]
    coco = json.loads(Path(json_file).read_text())
    ids = {im["file_name"]: im["id"] for im in coco["images"]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in file_names:
        image = np.asarray(Image.open(Path(image_root) / name).convert("RGB"))
        record = {"annotations": [{"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": a["category_id"] - 1}
                                  for a in coco["annotations"] if a["image_id"] == ids[name]]}
        drawn = Visualizer(image, metadata=_Names(CLASS_NAMES)).draw_dataset_dict(record)
        path = out_dir / name
        Image.fromarray(drawn.get_image()).save(path)
        paths.append(str(path))
    return paths


class _Names:
    # the metadata Visualizer reads: class names only
    def __init__(self, names):
        self.thing_classes = list(names)

    def get(self, key, default=None):
        return getattr(self, key, default)


def prediction_montage(rows: Sequence[tuple], out_png: str, zoom: int = 2) -> str:
    """One picture of pictures: ``rows`` = [(label, [image paths])], one labelled row each (e.g. the ground truth,
    then each detector's predictions on the same images), each picture enlarged ``zoom`` times."""
    from PIL import Image, ImageDraw

    images = [[Image.open(p).convert("RGB") for p in paths] for _, paths in rows]
    if not images or not all(images):
        raise ValueError("prediction_montage needs at least one picture per row")
    images = [[im.resize((im.width * zoom, im.height * zoom), Image.NEAREST) for im in row] for row in images]
    cell_w = max(im.width for row in images for im in row)
    cell_h = max(im.height for row in images for im in row)
    label_h = 18
    columns = max(len(row) for row in images)
    canvas = Image.new("RGB", (columns * cell_w, len(rows) * (cell_h + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, ((label, _), row) in enumerate(zip(rows, images)):
        top = r * (cell_h + label_h)
        draw.text((4, top + 3), label, fill="black")
        for c, im in enumerate(row):
            canvas.paste(im, (c * cell_w, top + label_h))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    canvas.save(out_png)
    return out_png
