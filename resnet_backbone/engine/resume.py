"""Exact resume, shared by the detection and pretraining stages: what a checkpoint must hold besides the weights so
that a resumed run continues bit for bit.

* RNG states: `capture_rng_state` / `restore_rng_state` for one process (torch, numpy, python, CUDA),
  `gather_rng_states` (every rank's, a collective) and `restore_rank_rng_state` (this rank's, or a reseed with a
  warning when the world size changed).
* Per-sample randomness: `sample_seed(seed, *position)` and `seeded(seed)` draw a sample's augmentation from a seed
  of its position in the sample stream, so that it does not depend on which loader worker (or which restart)
  mapped it; the loader workers' own seeds then matter for nothing.
* `preserved_rng()`: evaluation during training leaves the training streams where they were (a resumed run does not
  replay the evaluations before it).
"""
from __future__ import annotations

import contextlib
import logging
import random
from typing import Iterator, Sequence

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

__all__ = ["capture_rng_state", "gather_rng_states", "preserved_rng", "restore_rank_rng_state", "restore_rng_state",
           "sample_seed", "seeded"]

logger = logging.getLogger(__name__)


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


def gather_rng_states() -> list:
    """Every rank's `capture_rng_state()`, in rank order (a collective: every rank must call it)."""
    return comm.all_gather(capture_rng_state())


def restore_rank_rng_state(states: Sequence[dict], *, fallback_seed: int, source: str = "the checkpoint") -> bool:
    """Restore this rank's entry of `states` (from `gather_rng_states`). A checkpoint of another world size cannot
    be continued exactly: then every rank reseeds from `fallback_seed` + its rank, with a warning. Returns whether
    the states were restored."""
    if len(states) == comm.get_world_size():
        restore_rng_state(states[comm.get_rank()])
        return True
    logger.warning("%s holds RNG states of %d processes, this run has %d: reseeding (the run continues, but not "
                   "bit for bit)", source, len(states), comm.get_world_size())
    seed_all_rng(int(fallback_seed) + comm.get_rank())
    return False


def sample_seed(seed: int, *position: int) -> int:
    """A 63-bit seed for the sample at `position` (e.g. rank, index in the stream) of the stream seeded `seed`:
    independent streams per position."""
    return int(np.random.SeedSequence([int(seed), *map(int, position)]).generate_state(1, np.uint64)[0]) >> 1


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without moving this process's torch / numpy / python RNG streams (CUDA's included)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch, numpy and python RNGs seeded by `seed`, the caller's streams restored afterwards."""
    with preserved_rng():
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
