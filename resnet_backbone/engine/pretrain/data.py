"""Data of the pretraining stage, built from cfg.PRETRAIN: the data set (by name: data/classification_sets.py), the
paper's transforms for its pipeline, resumable loaders.

Training batches are a pure function of (seed, iteration): `IterationBatchSampler` lays consecutive random
permutations of the data set end to end and hands iteration ``it`` the slice ``[it * B, (it + 1) * B)`` (its own
share of it on each rank), and every sample carries a seed derived from (seed, position) that `SeededSamples`
uses for its random augmentation. Worker processes, their number and a restart therefore change nothing: a run
resumed at iteration ``it`` sees exactly the batches an uninterrupted run sees from ``it`` on, with no need to
replay the data before it (detectron2's TrainingSampler is an infinite stream with the same idea, but it cannot
start in the middle).
"""
from __future__ import annotations

import numpy as np
import torch
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ...data.classification import build_classification_loader
from ...data.classification_sets import build_classification_set, classification_set
from ...data.transforms import (
    Preprocessing,
    cifar_eval_transform,
    cifar_train_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
)
from ...modeling.options import check_int
from ..resume import sample_seed, seeded

__all__ = [
    "IterationBatchSampler",
    "SeededSamples",
    "build_eval_loader",
    "build_pretrain_dataset",
    "build_train_loader",
    "preprocessing_from_cfg",
    "uses_ten_crop",
]


def _pipeline(cfg) -> str:
    return classification_set(cfg.PRETRAIN.DATASET.NAME).pipeline


def uses_ten_crop(cfg) -> bool:
    """Whether the final evaluation adds the 10-crop test (ImageNet-style sets with PRETRAIN.TEST.TEN_CROP)."""
    return bool(cfg.PRETRAIN.TEST.TEN_CROP) and _pipeline(cfg) == "imagenet"


def preprocessing_from_cfg(cfg) -> Preprocessing:
    """PRETRAIN.INPUT.{PIXEL_MEAN, PIXEL_STD, FORMAT} as a Preprocessing (pixels in [0, 255])."""
    i = cfg.PRETRAIN.INPUT
    try:
        return Preprocessing(tuple(i.PIXEL_MEAN), tuple(i.PIXEL_STD), i.FORMAT, 255)
    except ValueError as e:
        raise ValueError(f"PRETRAIN.INPUT: {e}") from None


def _transform(cfg, train: bool, ten_crop: bool = False):
    i, prep = cfg.PRETRAIN.INPUT, preprocessing_from_cfg(cfg)
    if _pipeline(cfg) == "cifar":
        if train:
            return cifar_train_transform(prep, padding=i.CIFAR_PADDING, flip=i.FLIP)
        return cifar_eval_transform(prep)
    if train:
        if len(i.SCALE) != 2:
            raise ValueError(f"PRETRAIN.INPUT.SCALE must be (min, max), got {tuple(i.SCALE)}")
        return imagenet_train_transform(prep, scale=tuple(i.SCALE), crop_size=i.CROP_SIZE, flip=i.FLIP,
                                        lighting_std=i.LIGHTING_STD)
    return imagenet_eval_transform(prep, resize_size=i.TEST_RESIZE, crop_size=i.CROP_SIZE, ten_crop=ten_crop)


def build_pretrain_dataset(cfg, split: str, *, ten_crop: bool = False) -> Dataset:
    """The "train" or "val" set of PRETRAIN.DATASET with the transform of its pipeline (10 crops with ``ten_crop``)."""
    return build_classification_set(cfg.PRETRAIN.DATASET, split, _transform(cfg, split == "train", ten_crop))


class IterationBatchSampler(Sampler):
    """Per-iteration batches of ``(index, sample_seed)`` for iterations ``start_iter .. max_iter - 1``.

    The sample stream is epoch after epoch of a permutation of ``range(size)`` drawn from (seed, epoch); iteration
    ``it`` takes stream positions ``[it * batch_size, (it + 1) * batch_size)`` (``batch_size`` = the global batch),
    rank ``r`` of ``world_size`` the r-th contiguous share of them. Every image is seen once per epoch, and the
    stream does not depend on where a run starts.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, start_iter: int, max_iter: int, rank: int = 0,
                 world_size: int = 1):
        if size < 1:
            raise ValueError(f"cannot sample batches from an empty data set (size={size})")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} must be a positive multiple of the {world_size} "
                             f"processes")
        if not 0 <= start_iter <= max_iter:
            raise ValueError(f"need 0 <= start_iter <= max_iter, got {start_iter}, {max_iter}")
        self.size, self.batch_size, self.seed = size, batch_size, int(seed)
        self.start_iter, self.max_iter = start_iter, max_iter
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size
        self._perms: dict = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perms[epoch]

    def sample_seed(self, position: int) -> int:
        """A 63-bit seed for the sample at stream position ``position`` (independent streams per position)."""
        return sample_seed(self.seed, position)

    def batch(self, iteration: int) -> list:
        first = iteration * self.batch_size + self.rank * self.per_rank
        out = []
        for p in range(first, first + self.per_rank):
            epoch, offset = divmod(p, self.size)
            out.append((int(self._permutation(epoch)[offset]), self.sample_seed(p)))
        return out

    def __iter__(self):
        for it in range(self.start_iter, self.max_iter):
            yield self.batch(it)

    def __len__(self) -> int:
        return self.max_iter - self.start_iter


class SeededSamples(Dataset):
    """Wraps a data set so that item ``(index, seed)`` is ``dataset[index]`` drawn with torch, numpy and random
    seeded by ``seed``; the caller's random states are restored afterwards (the main process's stream, which
    dropout and drop-path use, is left alone when ``num_workers=0``)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with seeded(seed):
            return self.dataset[index]


def build_train_loader(cfg, dataset: Dataset, *, seed: int, start_iter: int, max_iter: int,
                       batch_size: int | None = None) -> DataLoader:
    """Training batches for iterations start_iter..max_iter-1 on this rank (a share of the global batch)."""
    batch_size = batch_size or cfg.PRETRAIN.SOLVER.IMS_PER_BATCH
    sampler = IterationBatchSampler(len(dataset), batch_size, seed=seed, start_iter=start_iter, max_iter=max_iter,
                                    rank=comm.get_rank(), world_size=comm.get_world_size())
    workers = check_int("PRETRAIN.NUM_WORKERS", cfg.PRETRAIN.NUM_WORKERS, 0)
    # build_classification_loader takes no batch sampler: the loader is built here with the same defaults.
    # A generator of its own: creating the iterator draws a base seed, which must not advance the global stream
    # (a resumed run creates its iterator at another point of that stream).
    return DataLoader(SeededSamples(dataset), batch_sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))


def _shard(dataset: Dataset) -> Dataset:
    """This rank's share for evaluation: every world_size-th image, no padding (each image counted once)."""
    world, rank = comm.get_world_size(), comm.get_rank()
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def build_eval_loader(cfg, dataset: Dataset) -> DataLoader:
    return build_classification_loader(_shard(dataset), cfg.PRETRAIN.TEST.IMS_PER_BATCH, train=False,
                                       num_workers=cfg.PRETRAIN.NUM_WORKERS, drop_last=False)
