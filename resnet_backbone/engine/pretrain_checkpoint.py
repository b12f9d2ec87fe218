"""Resumable checkpoints of the pretraining stage: written atomically, read without running code.

A checkpoint holds everything a run needs to continue as if it had never stopped: the model, the optimizer
(momentum buffers), the lr schedule's state, the next iteration (which also fixes the data position, see
pretrain_data.IterationBatchSampler), the run's seed and every rank's torch / numpy / python RNG states.
Files are `OUTPUT_DIR/model_{iteration:07d}.pth` and `model_final.pth`, with detectron2's `last_checkpoint` tag
naming the newest one; both are replaced atomically (temporary file + rename), so a run killed while saving
leaves the previous checkpoint and its tag intact.
"""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from ..checkpoint.safe_load import load_file
from ..utils.atomic import atomic_save, atomic_write_text, temporary_target

__all__ = ["PretrainCheckpointer", "capture_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)

TAG_FILE = "last_checkpoint"  # detectron2's name for the tag
FINAL_NAME = "model_final"


def _is_periodic(name: str) -> bool:
    """model_<7 digits>.pth: a periodic checkpoint (FINAL_NAME is never pruned)."""
    stem = name[len("model_"):-len(".pth")]
    return name.startswith("model_") and name.endswith(".pth") and len(stem) == 7 and stem.isdigit()


def _is_checkpoint(name: str) -> bool:
    return _is_periodic(name) or name == f"{FINAL_NAME}.pth"


def capture_rng_state() -> dict:
    """This process's RNG states, as tensors and plain values (readable by torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PretrainCheckpointer:
    """Saves and finds the run's checkpoints in ``save_dir``; keeps the newest ``keep`` periodic ones (0: all)."""

    def __init__(self, save_dir: str, keep: int = 0):
        if keep < 0:
            raise ValueError(f"PRETRAIN.KEEP_CHECKPOINTS must be >= 0, got {keep}")
        self.save_dir, self.keep = save_dir, keep

    def path(self, name: str) -> str:
        return os.path.join(self.save_dir, f"{name}.pth")

    def save(self, name: str, state: dict) -> str:
        """Write ``state`` to ``{save_dir}/{name}.pth`` and point the tag at it, both atomically."""
        os.makedirs(self.save_dir, exist_ok=True)
        path = self.path(name)
        atomic_save(state, path)
        atomic_write_text(os.path.join(self.save_dir, TAG_FILE), os.path.basename(path))
        logger.info("saved checkpoint %s", path)
        self._prune(keep_name=os.path.basename(path))
        return path

    def _prune(self, keep_name: str) -> None:
        if not self.keep:
            return
        periodic = sorted(f for f in os.listdir(self.save_dir) if _is_periodic(f) and f != keep_name)
        for old in periodic[:max(0, len(periodic) - (self.keep - 1))]:
            os.remove(os.path.join(self.save_dir, old))

    def remove_stale_temporaries(self) -> list:
        """Delete checkpoint temporaries left by a killed save (call only when no other process writes here)."""
        if not os.path.isdir(self.save_dir):
            return []
        stale = sorted(f for f in os.listdir(self.save_dir) if _is_checkpoint(temporary_target(f) or ""))
        for name in stale:
            os.remove(os.path.join(self.save_dir, name))
            logger.info("removed %s, left by a save that did not complete", name)
        return stale

    def last_checkpoint(self) -> str | None:
        """The tagged checkpoint, or None when the run has saved none yet."""
        tag = os.path.join(self.save_dir, TAG_FILE)
        if not os.path.isfile(tag):
            return None
        with open(tag) as f:
            name = f.read().strip()
        path = os.path.join(self.save_dir, name)
        if not name or os.path.basename(name) != name or not os.path.isfile(path):
            raise FileNotFoundError(f"{tag} names {name!r}, but {path} does not exist; delete the tag to start the "
                                    f"run afresh, or point it at one of the model_*.pth files in {self.save_dir}")
        return path

    @staticmethod
    def load(path: str) -> dict:
        """A checkpoint's contents (safe_load: no code runs; a truncated file raises CorruptCheckpointError)."""
        state = load_file(path)
        missing = [k for k in ("model", "optimizer", "schedule", "iteration", "seed", "rng") if k not in state]
        if missing:
            raise ValueError(f"{path} is not a pretraining checkpoint of this package: it lacks {missing} "
                             f"(has {sorted(state)})")
        return state
