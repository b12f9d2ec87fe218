"""A detection training loader that can start in the middle: detectron2's build_detection_train_loader with the
same sampling, grouping and batch size, whose position is part of the checkpoint.

detectron2's loader (TrainingSampler -> ToIterableDataset sharded over the workers -> DataLoader ->
AspectRatioGroupedDataset) cannot be resumed: its order depends on how the workers interleave, augmentations on
the workers' RNGs, and a restarted loader begins its stream again. Here:

* the sampler is the one detectron2 builds (TrainingSampler by default, any seeded, infinite sampler of this rank's
  indices), iterated in the main process;
* batches are formed from indices: aspect-ratio grouping (width > height or not, as AspectRatioGroupedDataset) reads
  the dataset dicts' "width" / "height", so no image is loaded to group it;
* sample ``p`` of this rank's stream is mapped with torch / numpy / python seeded from (seed, rank, p)
  (engine/resume.py), whichever worker maps it; DataLoader keeps the batch order;
* the state is the number of batches handed out and the seed: resuming replays the index stream up to there
  (integers only, cheap) and continues.
"""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Iterator, List, Optional, Sequence

import torch
from detectron2.data.build import _train_loader_from_config, trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

from ..engine.resume import sample_seed, seeded

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader", "instantiate_train_loader",
           "resumable_train_loader_from_cfg"]

logger = logging.getLogger(__name__)

# How many other samples to try, as detectron2's MapDataset does, when the mapper drops one (an unreadable image
# with RB_TRAIN.SKIP_UNREADABLE_IMAGES).
_MAX_RETRIES = 20


def _buckets(dicts: Sequence[dict]) -> List[int]:
    """0 for landscape (width > height), 1 otherwise: AspectRatioGroupedDataset's two groups, per dataset index."""
    out = []
    for i, d in enumerate(dicts):
        if "width" not in d or "height" not in d:
            raise ValueError(f"aspect-ratio grouping needs 'width' and 'height' in every dataset dict; dict {i} "
                             f"({d.get('file_name', '?')}) lacks them. Add them to the dataset, or set "
                             f"DATALOADER.ASPECT_RATIO_GROUPING False (LazyConfig: aspect_ratio_grouping=False)")
        out.append(0 if d["width"] > d["height"] else 1)
    return out


class _IndexBatches:
    """This rank's batches of (dataset index, stream position), from batch ``start`` on."""

    def __init__(self, sampler, batch_size: int, buckets: Optional[List[int]], start: int):
        self.sampler, self.batch_size, self.buckets, self.start = sampler, batch_size, buckets, start

    def __iter__(self) -> Iterator[list]:
        stream = enumerate(iter(self.sampler))  # (position, index): a fresh iterator restarts the seeded stream
        if self.buckets is None:
            batches = iter(lambda: [(int(i), p) for p, i in itertools.islice(stream, self.batch_size)], [])
        else:
            batches = self._grouped(stream)
        return itertools.islice(batches, self.start, None)

    def _grouped(self, stream) -> Iterator[list]:
        groups = ([], [])
        for position, index in stream:
            group = groups[self.buckets[index]]
            group.append((int(index), position))
            if len(group) == self.batch_size:
                yield group[:]
                del group[:]


class _SeededMapping(Dataset):
    """Item (index, position) = mapper(dicts[index]) drawn with RNGs seeded from (seed, rank, position); a sample
    the mapper drops (None) is replaced by another index drawn from the same seed."""

    def __init__(self, dicts, mapper, seed: int, rank: int):
        self.dicts, self.mapper, self.seed, self.rank = dicts, mapper, seed, rank

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, item):
        index, position = item
        with seeded(sample_seed(self.seed, self.rank, position)):
            for _ in range(_MAX_RETRIES):
                out = self.mapper(self.dicts[index])
                if out is not None:
                    return out
                index = int(torch.randint(len(self.dicts), ()))
        raise RuntimeError(f"the mapper dropped {_MAX_RETRIES} samples in a row (last index {index}): is every "
                           f"image unreadable?")


class ResumableTrainLoader:
    """An iterable of this rank's training batches (lists of mapped dicts) whose position is saved:
    ``state_dict()`` = {"batches": handed out so far, "seed": the sample stream's seed}; ``load_state_dict`` makes
    the next ``iter()`` start there."""

    def __init__(self, dicts, mapper, sampler, batch_size: int, *, buckets: Optional[List[int]], num_workers: int,
                 collate_fn=None):
        self.dicts = dicts
        self.mapper, self.sampler, self.batch_size = mapper, sampler, batch_size
        self.buckets = buckets  # None: no aspect-ratio grouping
        self.num_workers = num_workers
        self.collate_fn = collate_fn or trivial_batch_collator
        self.seed = int(getattr(sampler, "_seed", 0))  # detectron2's training samplers keep their seed here
        if self.seed < 0:
            # SEED < 0 (detectron2's default) means a random seed: one drawn for all ranks, which the checkpoint
            # records, so a resumed run continues this stream (the per-sample seeds need a non-negative one)
            self.seed = comm.shared_random_seed()
            if hasattr(sampler, "_seed"):
                sampler._seed = self.seed
        self.batches = 0

    def state_dict(self) -> dict:
        return {"batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        seed = int(state["seed"])
        if seed != self.seed:  # SEED < 0 draws a new seed per run: continue the checkpoint's stream
            logger.info("train loader: continuing the sample stream of seed %d (this run drew %d)", seed, self.seed)
            self.seed = seed
            if hasattr(self.sampler, "_seed"):
                self.sampler._seed = seed

    def __iter__(self):
        index_batches = _IndexBatches(self.sampler, self.batch_size, self.buckets, self.batches)
        loader = DataLoader(_SeededMapping(self.dicts, self.mapper, self.seed, comm.get_rank()),
                            batch_sampler=index_batches, num_workers=self.num_workers, collate_fn=self.collate_fn,
                            pin_memory=torch.cuda.is_available(),
                            # its own generator: creating the iterator must not advance the global torch stream
                            generator=torch.Generator().manual_seed(self.seed),
                            persistent_workers=False)
        for batch in loader:
            self.batches += 1
            yield batch


def build_resumable_train_loader(dataset, *, mapper, sampler=None, total_batch_size: int,
                                 aspect_ratio_grouping: bool = True, num_workers: int = 0, collate_fn=None,
                                 **unsupported) -> ResumableTrainLoader:
    """detectron2's build_detection_train_loader arguments (dataset dicts, mapper, sampler, total batch size over
    all ranks, aspect-ratio grouping, workers), as a `ResumableTrainLoader`."""
    if unsupported:
        raise ValueError(f"the resumable train loader does not take {sorted(unsupported)}; it takes dataset, mapper, "
                         "sampler, total_batch_size, aspect_ratio_grouping, num_workers, collate_fn")
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise ValueError("the resumable train loader needs a list of dataset dicts (a map-style dataset), got an "
                         f"IterableDataset {type(dataset).__name__}")
    world = comm.get_world_size()
    if total_batch_size < 1 or total_batch_size % world:
        raise ValueError(f"the total batch size {total_batch_size} (SOLVER.IMS_PER_BATCH) must be a positive "
                         f"multiple of the {world} processes")
    if sampler is None:
        from detectron2.data.samplers import TrainingSampler

        sampler = TrainingSampler(len(dataset))
    buckets = _buckets(dataset) if aspect_ratio_grouping else None  # from the plain dicts, before serializing
    dicts = DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
    return ResumableTrainLoader(dicts, mapper, sampler, total_batch_size // world, buckets=buckets,
                                num_workers=num_workers, collate_fn=collate_fn)


def resumable_train_loader_from_cfg(cfg, mapper) -> ResumableTrainLoader:
    """The loader build_detection_train_loader(cfg, mapper=mapper) builds (DATASETS.TRAIN, DATALOADER.*,
    SOLVER.IMS_PER_BATCH, SEED), resumable."""
    return build_resumable_train_loader(**_train_loader_from_config(cfg, mapper))


def instantiate_train_loader(node):
    """A LazyConfig's dataloader.train: detectron2's build_detection_train_loader (the shipped configs') is built
    with the same arguments as a resumable loader; any other target as the config says."""
    from detectron2.config import instantiate

    target = node.get("_target_")
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if not name.rpartition(".")[2] == "build_detection_train_loader":
        return instantiate(node)
    node = copy.deepcopy(node)
    node._target_ = build_resumable_train_loader
    return instantiate(node)
