"""Comparison of finished detection runs (ours) with the paper's Tables 7-8: a table and a PNG plot.

A run directory is what tools/train_net.py leaves in OUTPUT_DIR: `eval_results.json` (written by the plugin's
Trainer) and detectron2's `metrics.json` (one JSON object per line; training losses by iteration).
"""
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .engine.pretrain.metrics import read_metrics
from .paper_tables import DETECTION_TABLE
from .utils.figures import new_figure, save_figure

METRICS = (("AP50", "mAP@.5"), ("AP", "mAP@[.5,.95]"))


@dataclass
class Run:
    path: str
    label: str  # "ResNet-101", "VGG-16", ...
    results: Dict[str, dict]  # dataset -> {"format": "coco"|"pascal_voc", "bbox": {"AP": .., "AP50": ..}}
    losses: List[tuple] = field(default_factory=list)  # (iteration, total_loss)


def read_run_json(run_dir: str, filename: str, tool: str):
    """A results file that a finished `tool` run wrote in its OUTPUT_DIR; a missing one names the folder and tool."""
    path = os.path.join(run_dir, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir!r} the OUTPUT_DIR of a finished {tool} run?")
    with open(path) as f:
        return json.load(f)


def load_run(path: str) -> Run:
    payload = read_run_json(path, "eval_results.json", "tools/train_net.py (training or --eval-only)")
    losses = sorted((int(r["iteration"]), float(r["total_loss"])) for r in read_metrics(path)
                    if "total_loss" in r and "iteration" in r)
    return Run(path=path, label=payload.get("label", os.path.basename(path.rstrip("/"))),
               results=payload.get("results", {}), losses=losses)


def _benchmark_of(fmt: str) -> Optional[str]:
    return {"coco": "COCO val", "pascal_voc": "PASCAL VOC 2007 test"}.get(fmt)


def comparison_rows(runs: List[Run]) -> List[dict]:
    """One row per (dataset, metric): ours for each run label next to the paper's VGG-16 and ResNet-101."""
    rows = []
    labels = sorted({r.label for r in runs})
    datasets = []
    for run in runs:
        for ds, res in run.results.items():
            if (ds, res.get("format")) not in datasets:
                datasets.append((ds, res.get("format")))
    for ds, fmt in datasets:
        bench = _benchmark_of(fmt)
        for key, metric in METRICS:
            if fmt == "pascal_voc" and key == "AP":
                continue  # the paper reports VOC mAP@.5 only
            row = {"dataset": ds, "format": fmt, "metric": metric}
            for label in labels:
                vals = [r.results[ds]["bbox"].get(key) for r in runs if r.label == label and ds in r.results]
                row[f"ours {label}"] = vals[-1] if vals else None
            for model in ("VGG-16", "ResNet-101"):
                row[f"paper {model}"] = DETECTION_TABLE.get((bench, metric), {}).get(model)
            row["paper benchmark"] = bench or "-"
            rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    if not rows:
        return "(no results)"
    cols = list(rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(c) for c in cells])


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.1f}"
    return str(v)


def plot_comparison(runs: List[Run], rows: List[dict], out_png: str) -> str:
    fig = new_figure((13, 4.8))
    ax_bar, ax_loss = fig.subplots(1, 2)
    numeric = lambda c: all(isinstance(r.get(c), (int, float, type(None))) for r in rows)  # noqa: E731
    series = [c for c in rows[0] if c.startswith(("ours ", "paper ")) and numeric(c)] if rows else []
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        vals = [r.get(name) if r.get(name) is not None else 0.0 for r in rows]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax_bar.bar(xs, vals, width, label=name, hatch="//" if name.startswith("paper") else None)
    ax_bar.set_xticks(range(len(rows)))
    ax_bar.set_xticklabels([f"{r['dataset']}\n{r['metric']}" for r in rows], fontsize=8)
    ax_bar.set_ylabel("AP (%)")
    ax_bar.set_title("Faster R-CNN: ours vs paper (Tables 7-8)")
    ax_bar.legend(fontsize=8)
    for run in runs:
        if run.losses:
            it, loss = zip(*run.losses)
            ax_loss.plot(it, loss, label=f"{run.label} ({os.path.basename(run.path.rstrip('/'))})")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("total training loss")
    ax_loss.set_title("Training loss")
    ax_loss.legend(fontsize=8)
    return save_figure(fig, out_png, dpi=100)


def compare_runs(paths, png, markdown=None, echo=print) -> List[dict]:
    """Load finished runs, print the table (and write it as markdown), write the PNG; returns the rows."""
    runs = [load_run(str(p)) for p in paths]
    rows = comparison_rows(runs)
    table = format_table(rows)
    echo(table)
    if markdown:
        os.makedirs(os.path.dirname(os.path.abspath(markdown)), exist_ok=True)
        with open(markdown, "w") as f:
            f.write(table + "\n")
    echo(f"plot written to {plot_comparison(runs, rows, str(png))}")
    return rows
