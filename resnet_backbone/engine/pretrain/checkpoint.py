"""Resumable checkpoints of the pretraining stage: the detection checkpointer's layout with the pretraining extras.

`PretrainCheckpointer` is `SafeDetectionCheckpointer` (``OUTPUT_DIR/{name}.pth`` + ``last_checkpoint``, atomic
writes, reads that cannot run code, strict loads) holding the model, the optimizer (momentum buffers) and the lr
schedule as fvcore checkpointables. On top: the files are ``model_{iteration:07d}.pth`` (iterations completed) and
``model_final.pth``, the newest ``keep`` periodic ones are kept, and a checkpoint also records the run's seed, its
position (the iteration, which fixes the data position too: data.IterationBatchSampler) and every rank's
torch / numpy / python RNG states (engine/resume.py, shared with the detection stage), so a resumed run continues
as if it had never stopped. Resuming checks first that the checkpoint belongs to this run's model.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from ...checkpoint.checkpointer import SafeDetectionCheckpointer
from ...modeling.options import check_int

__all__ = ["FINAL_NAME", "PretrainCheckpointer"]

FINAL_NAME = "model_final"
# What a pretraining checkpoint holds besides the model and the checkpointables.
EXTRAS = ("iteration", "seed", "rng", "model_name", "num_classes", "precise_bn_done")


def periodic_name(iteration: int) -> str:
    return f"model_{iteration:07d}"


def _is_periodic(filename: str) -> bool:
    """model_<7 digits>.pth: a periodic checkpoint (FINAL_NAME is never pruned)."""
    stem = filename[len("model_"):-len(".pth")]
    return filename.startswith("model_") and filename.endswith(".pth") and len(stem) == 7 and stem.isdigit()


class PretrainCheckpointer(SafeDetectionCheckpointer):
    """Checkpoints of one pretraining run in ``save_dir``: ``save(name, **extras)`` / ``resume(expect)``.

    model, optimizer, schedule: what each checkpoint holds (the model unwrapped from DistributedDataParallel).
    keep: the newest ``keep`` periodic checkpoints are kept (0: all); model_final.pth always.
    Only the main process writes; every process reads.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str, *, keep: int = 0, **checkpointables):
        super().__init__(model, save_dir, strict=True, **checkpointables)
        self.keep = check_int("PRETRAIN.KEEP_CHECKPOINTS", keep, 0)
        self._expect: Mapping | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.save_dir, f"{name}.pth")

    def save(self, name: str, **extras) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables, ``extras``) and its tag, then prune."""
        super().save(name, **extras)
        if self.save_to_disk and self.keep:
            periodic = sorted(f for f in os.listdir(self.save_dir) if _is_periodic(f) and f != f"{name}.pth")
            for old in periodic[:max(0, len(periodic) - (self.keep - 1))]:
                os.remove(os.path.join(self.save_dir, old))

    def resume(self, expect: Mapping) -> tuple[str, dict] | tuple[None, None]:
        """Load the tagged checkpoint into the model and checkpointables; returns (path, its extras), or
        (None, None) when the run has saved none yet. ``expect``: extras that must match this run (model_name,
        num_classes), checked before anything is loaded."""
        if not self.has_checkpoint():
            return None, None
        path = self.get_checkpoint_file()
        self._expect = expect
        try:
            return path, self.load(path)
        finally:
            self._expect = None

    def _load_file(self, filename: str) -> dict:
        data = super()._load_file(filename)
        if self._expect is not None:
            lacking = [k for k in ("model", *self.checkpointables, *EXTRAS) if k not in data]
            if lacking:
                raise ValueError(f"{filename} is not a pretraining checkpoint of this package: it lacks {lacking} "
                                 f"(has {sorted(data)})")
            for key, have in self._expect.items():
                if data[key] != have:
                    raise ValueError(f"cannot resume from {filename}: it was saved with {key}={data[key]!r}, this "
                                     f"config has {have!r}; use another OUTPUT_DIR or drop --resume")
        return data
