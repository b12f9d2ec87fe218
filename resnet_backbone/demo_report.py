"""The demo's report (tools/demo.py): its detectors next to the paper's Tables 7-8, and one picture of the whole run.

Inputs are the folders the two stages leave: a pretraining run (tools/pretrain_net.py: pretrain_results.json,
metrics.json with "loss" / "train_top1_err" / "val/top1_err" by iteration) and a detection run (tools/train_net.py:
eval_results.json with the COCO-format and VOC-format results of the same validation images, metrics.json with
"total_loss" by iteration). The paper's numbers come from paper_tables.DETECTION_TABLE; the paper has no detector
trained from scratch, so those rows have no paper numbers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .compare import load_run, read_run_json
from .engine.pretrain.metrics import read_metrics
from .paper_tables import DETECTION_TABLE
from .utils.figures import new_figure, save_figure

__all__ = ["DetectorEntry", "PretrainEntry", "PAPER_COLUMNS", "load_detector", "load_pretraining", "table_rows",
           "format_markdown", "plot_demo", "prediction_montage"]

# (column, (benchmark, metric) of DETECTION_TABLE)
PAPER_COLUMNS = (("paper VOC07 mAP@.5", ("PASCAL VOC 2007 test", "mAP@.5")),
                 ("paper COCO mAP@.5", ("COCO val", "mAP@.5")),
                 ("paper COCO mAP@[.5,.95]", ("COCO val", "mAP@[.5,.95]")))


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


def table_rows(detectors: Sequence[DetectorEntry]) -> List[dict]:
    """One row per detector: its pretraining error, its COCO- and VOC-format AP, the paper's numbers for its
    backbone (ImageNet-pretrained detectors only)."""
    rows = []
    for d in detectors:
        p = d.pretraining
        row = {"detector": f"Faster R-CNN {d.label}", "init": d.init,
               "pretraining val top-1 err (10-crop)": "-" if p is None else
               f"{_pct(p.top1_err, 100)} ({_pct(p.top1_err_10crop, 100)})",
               "COCO-format AP50": d.coco_ap50, "COCO-format AP": d.coco_ap, "VOC-format mAP@.5": d.voc_ap50}
        for column, key in PAPER_COLUMNS:
            row[column] = DETECTION_TABLE[key].get(d.label) if d.init == "pretrained" else None
        rows.append(row)
    return rows


def format_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no detectors)"
    cols = list(rows[0])
    cells = [[_pct(v) if isinstance(v, float) or v is None else str(v) for v in (r[c] for c in cols)] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells])


def plot_demo(detectors: Sequence[DetectorEntry], pretraining: Sequence[PretrainEntry], out_png: str) -> str:
    """mAP bars (ours and the paper's), pretraining curves (training loss, validation top-1 error), detection
    training losses: one PNG."""
    fig = new_figure((18, 5))
    ax_bar, ax_pre, ax_det = fig.subplots(1, 3)
    metrics = (("COCO-format\nAP50", "coco_ap50", ("COCO val", "mAP@.5")),
               ("COCO-format\nAP", "coco_ap", ("COCO val", "mAP@[.5,.95]")),
               ("VOC-format\nmAP@.5", "voc_ap50", ("PASCAL VOC 2007 test", "mAP@.5")))
    series = [(f"{d.label} {d.init}", [getattr(d, attr) for _, attr, _ in metrics], None) for d in detectors]
    for label in dict.fromkeys(d.label for d in detectors if d.init == "pretrained"):
        series.append((f"paper {label}", [DETECTION_TABLE[key].get(label, 0.0) for _, _, key in metrics], "//"))
    width = 0.8 / max(len(series), 1)
    for i, (name, values, hatch) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(metrics))]
        ax_bar.bar(xs, values, width, label=name, hatch=hatch, alpha=0.6 if hatch else 1.0)
    ax_bar.set_xticks(range(len(metrics)))
    ax_bar.set_xticklabels([m[0] for m in metrics])
    ax_bar.set_ylabel("AP (%)")
    ax_bar.set_title("Faster R-CNN on the shapes val set vs the paper (Tables 7-8)")
    ax_bar.legend(fontsize=8)

    ax_err = ax_pre.twinx()
    for i, p in enumerate(pretraining):
        colour = f"C{i}"
        train = [(r["iteration"], r["loss"]) for r in p.curve if "loss" in r]
        val = [(r["iteration"], 100 * r["val/top1_err"]) for r in p.curve if "val/top1_err" in r]
        if train:
            ax_pre.plot(*zip(*train), color=colour, label=f"{p.label} training loss")
        if val:
            ax_err.plot(*zip(*val), color=colour, linestyle="--", marker="o", label=f"{p.label} val top-1 err")
    ax_pre.set_xlabel("iteration")
    ax_pre.set_ylabel("training loss (cross-entropy)")
    ax_err.set_ylabel("validation top-1 error (%), 1-crop")
    ax_pre.set_title("Pretraining on the shapes classes")
    handles = ax_pre.get_legend_handles_labels()
    extra = ax_err.get_legend_handles_labels()
    ax_pre.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8)

    for d in detectors:
        if d.losses:
            ax_det.plot(*zip(*d.losses), label=f"{d.label} {d.init}")
    ax_det.set_xlabel("iteration")
    ax_det.set_ylabel("total training loss")
    ax_det.set_title("Detection training")
    ax_det.legend(fontsize=8)
    return save_figure(fig, out_png, dpi=100)


def prediction_montage(rows: Sequence[tuple], out_png: str) -> str:
    """One picture of prediction pictures: ``rows`` = [(label, [image paths])], one row per detector, labelled."""
    from PIL import Image, ImageDraw

    images = [[Image.open(p).convert("RGB") for p in paths] for _, paths in rows]
    if not images or not all(images):
        raise ValueError("prediction_montage needs at least one picture per row")
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
