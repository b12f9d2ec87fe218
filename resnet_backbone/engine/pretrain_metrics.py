"""Metrics of the pretraining stage: JSON lines in OUTPUT_DIR/metrics.json (detectron2's file name) and, when
the tensorboard package is installed, TensorBoard scalars; only the main process writes.

Each line is one record: ``{"iteration": n, ...}`` where n counts completed iterations. Training records hold
"loss", "train_top1_err", "lr", "images_per_s", "eta_s"; evaluation records hold "val/top1_err", "val/top5_err",
"val/loss" (and "val10/..." for 10-crop). A resumed run first drops the records after its start iteration
(written by the killed run after its last checkpoint), so the file describes one run without duplicates.
"""
from __future__ import annotations

import json
import logging
import math
import os

from ..utils.atomic import atomic_write_text

__all__ = ["MetricsWriter", "read_metrics", "format_eta"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def read_metrics(path: str) -> list:
    """The records of a metrics.json file (a missing file has none); a torn last line (killed run) is skipped."""
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


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _json_value(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)


class MetricsWriter:
    """Appends records to metrics.json and TensorBoard; a no-op where ``enabled`` is False (non-main ranks)."""

    def __init__(self, output_dir: str, *, enabled: bool = True, start_iter: int | None = 0,
                 tensorboard: bool = True):
        """start_iter: records after it are dropped first (0: a fresh file); None appends to the file."""
        self.enabled = enabled
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if start_iter is not None:
            # a record of iteration n was written before the checkpoint of iteration n: it stays
            kept = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= start_iter] if start_iter else []
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; the JSON lines carry the same numbers
                logger.info("tensorboard is not installed: metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(output_dir, purge_step=start_iter or None)

    def write(self, iteration: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"iteration": int(iteration), **{k: _json_value(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), iteration)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
