"""Metrics of the pretraining stage through detectron2's EventStorage and writers, as tools/train_net.py writes its
own: OUTPUT_DIR/metrics.json (JSONWriter), TensorBoard event files (TensorboardXWriter, when tensorboard is
installed) and the console line (CommonMetricPrinter). Only the main process writes.

The storage's iteration is the number of completed iterations. Training scalars, put every iteration and smoothed
by the writers over PRETRAIN.LOG_PERIOD iterations: "loss" (cross-entropy), "train_top1_err", "images_per_s",
"time", "data_time", and "lr"; CommonMetricPrinter adds "eta_seconds". Evaluation scalars: "val/top1_err",
"val/top5_err", "val/cross_entropy" ("val10/..." for 10-crop). A resumed run first drops the records after its
start iteration (written by the killed run after its last checkpoint), so metrics.json describes one run without
duplicates.
"""
from __future__ import annotations

import importlib.util
import json
import os

from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter

from ...utils.atomic import atomic_write_text

__all__ = ["METRICS_FILE", "evaluation_scalars", "read_metrics", "training_writers", "write_scalars"]

METRICS_FILE = "metrics.json"  # detectron2's name, so the same tools read both stages' logs


def read_metrics(path: str) -> list:
    """The records of a metrics.json file (or of the one in the folder ``path``), detectron2's or the pretraining
    stage's; a missing file has none, and a torn last line (a killed run) is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _tensorboard_writer(output_dir: str, window: int, purge_step: int | None):
    if importlib.util.find_spec("tensorboard") is None:  # optional: metrics.json carries the same numbers
        return None
    return TensorboardXWriter(output_dir, window_size=window, purge_step=purge_step)


def training_writers(output_dir: str, *, max_iter: int, window: int, start_iter: int) -> list:
    """The writers of a training run that starts after ``start_iter`` completed iterations (0: a fresh run)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, METRICS_FILE)
    # a record of iteration n was written before the checkpoint of iteration n: it stays
    kept = [r for r in read_metrics(path) if r.get("iteration", 0) <= start_iter] if start_iter else []
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    # CommonMetricPrinter counts iterations from 0 (ETA = time x (max_iter - iter - 1), nothing printed at
    # iter == max_iter); the storage here counts completed ones, 1..MAX_ITER, hence MAX_ITER + 1.
    writers = [CommonMetricPrinter(max_iter + 1, window_size=window), JSONWriter(path, window_size=window)]
    tensorboard = _tensorboard_writer(output_dir, window, start_iter or None)
    return writers + ([tensorboard] if tensorboard is not None else [])


def evaluation_scalars(results: dict) -> dict:
    """{"val/top1_err": ..., ...} for results {kind: evaluate_classifier's dict}."""
    names = {"top1_err": "top1_err", "top5_err": "top5_err", "loss": "cross_entropy"}
    return {f"{kind}/{names[k]}": v for kind, r in results.items() for k, v in r.items() if k in names}


def write_scalars(output_dir: str, iteration: int, scalars: dict) -> None:
    """One record of ``scalars`` at ``iteration``, appended to metrics.json (and TensorBoard), outside training."""
    writers = [JSONWriter(os.path.join(output_dir, METRICS_FILE))]
    tensorboard = _tensorboard_writer(output_dir, 1, None)
    writers += [tensorboard] if tensorboard is not None else []
    with EventStorage(iteration) as storage:
        storage.put_scalars(smoothing_hint=False, **scalars)
        for writer in writers:
            writer.write()
            writer.close()
