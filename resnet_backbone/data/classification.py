"""Classification data sets for the ImageNet pretraining stage and the CIFAR-10 study (He et al., 2016, Sec. 4.2).

- `ImageNetFolder`: the standard folder layout ``root/{train,val}/<wnid>/<image>``, class index = position of the
  wnid in sorted order (the order every ImageNet model, torchvision's included, uses).
- `CIFAR10Dataset`: the python-pickle batches of ``cifar-10-batches-py``, read with checkpoint.safe_load's
  restricted unpickler (numpy arrays and builtin values only: a pickle can otherwise run arbitrary code), with the
  paper's optional 45k/5k train/val split.
- `build_classification_loader`: a DataLoader with workers, pinned memory on CUDA, persistent workers and a
  DistributedSampler when asked; `measure_loader_throughput`: images/s of a loader.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..checkpoint.safe_load import UnsafeCheckpointError, restricted_load
from ..modeling.options import check_choice, check_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "load_rgb_image",
    "ImageNetFolder",
    "read_cifar_batch",
    "CIFAR10Dataset",
    "build_classification_loader",
    "set_loader_epoch",
    "measure_loader_throughput",
]

# Matched case-insensitively (ImageNet ships ".JPEG").
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully into an RGB PIL image; CorruptImageError naming the file if that fails."""
    try:
        with Image.open(path) as img:
            # convert() forces the full decode, so truncated files fail here and not later in a transform.
            return img.convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise CorruptImageError(f"cannot read image {os.fspath(path)!r}: {type(e).__name__}: {e}") from e


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class ImageNetFolder(Dataset):
    """Images in ``root/<split>/<class>/<file>``; items are ``(transform(image), class_index)``.

    root: the folder holding ``train/`` and ``val/`` (the validation images must already be sorted into one
        folder per wnid, as the common ImageNet preparation scripts do).
    split: the sub-folder to read, usually "train" or "val".
    transform: applied to the RGB PIL image (None: the PIL image itself is returned).
    skip_corrupt: False (default) -> an unreadable image raises CorruptImageError naming the file.
        True -> a warning naming the file, and the next readable sample in index order is returned in its place.
    verify: decode every image once at construction, so corrupt files fail (or, with ``skip_corrupt``, are
        dropped with a warning) before training starts. Costs a full pass over the data.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None, *,
                 skip_corrupt: bool = False, verify: bool = False):
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        if not self.split_dir.is_dir():
            raise FileNotFoundError(f"ImageNet split folder {str(self.split_dir)!r} does not exist "
                                    f"(expected the layout root/{split}/<wnid>/<image>)")
        self.classes = sorted(e.name for e in os.scandir(self.split_dir) if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise ValueError(f"no class folders in {str(self.split_dir)!r} (expected root/{split}/<wnid>/<image>)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        for c in self.classes:
            class_dir = self.split_dir / c
            files = sorted(e.name for e in os.scandir(class_dir) if e.is_file() and _is_image_file(e.name))
            if not files:
                raise ValueError(f"class folder {str(class_dir)!r} holds no images "
                                 f"(extensions allowed: {', '.join(IMAGE_EXTENSIONS)})")
            self.samples += [(str(class_dir / f), self.class_to_idx[c]) for f in files]
        if verify:
            self._verify()
        self._known_bad: set[int] = set()

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def _verify(self):
        kept = []
        for path, target in self.samples:
            try:
                load_rgb_image(path)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                warnings.warn(f"skipping corrupt image: {e}")
                continue
            kept.append((path, target))
        if not kept:
            raise ValueError(f"no readable images in {str(self.split_dir)!r}")
        self.samples = kept

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        n = len(self.samples)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._known_bad:
                continue
            path, target = self.samples[i]
            try:
                img = load_rgb_image(path)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                self._known_bad.add(i)
                warnings.warn(f"skipping corrupt image: {e}")
                continue
            return (self.transform(img) if self.transform is not None else img), target
        raise ValueError(f"no readable images in {str(self.split_dir)!r}")

    def __repr__(self):
        return (f"{type(self).__name__}(split_dir={str(self.split_dir)!r}, classes={len(self.classes)}, "
                f"images={len(self.samples)})")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10


def _field(d: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"CIFAR file {str(path)!r} has no {key!r} entry (keys: {sorted(map(repr, d))})")


def _load_cifar_pickle(path: Path) -> Any:
    """One CIFAR file's pickle through safe_load's restricted unpickler; ``encoding="bytes"`` keeps the Python 2
    ``str`` keys of the official files as bytes (b"data", b"labels")."""
    with open(path, "rb") as f:
        try:
            return restricted_load(f, path=str(path), encoding="bytes")
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            raise ValueError(f"CIFAR file {str(path)!r} is not a readable pickle: {type(e).__name__}: {e}") from e


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (images uint8 [N, 32, 32, 3] RGB, labels int64 [N]).

    The file is a pickled dict with b"data" (uint8 [N, 3072]: 1024 red, then green, then blue values, each a
    row-major 32x32 plane) and b"labels" (N ints) - the layout documented on the CIFAR web page.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch file {str(path)!r} does not exist")
    d = _load_cifar_pickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR batch file {str(path)!r} holds a {type(d).__name__}, expected a dict")
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR batch file {str(path)!r}: data must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"CIFAR batch file {str(path)!r}: need {data.shape[0]} integer labels, got "
                         f"{labels.dtype} {labels.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


class CIFAR10Dataset(Dataset):
    """CIFAR-10 from its python batches; items are ``(transform(image), label)`` with a 32x32 RGB PIL image.

    root: a folder holding ``cifar-10-batches-py/`` (or that folder itself), with data_batch_1..5, test_batch
        and batches.meta.
    split: "train", "val" or "test". With ``val_size=0`` (default) "train" is all 50k training images.
        With ``val_size=5000`` the training images are split 45k/5k into "train"/"val" (the paper's split for
        choosing the schedule, Sec. 4.2), by a random permutation drawn from ``split_seed`` (deterministic; the two
        parts are disjoint and together cover the training set). "test" is the 10k test batch.
    Attributes: ``images`` (uint8 [N, 32, 32, 3]), ``targets`` (int64 [N]), ``classes`` (label names).
    """

    FOLDER = "cifar-10-batches-py"
    TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
    TEST_FILE = "test_batch"
    META_FILE = "batches.meta"
    SPLITS = ("train", "val", "test")

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None, *,
                 val_size: int = 0, split_seed: int = 0):
        check_choice("CIFAR split", split, self.SPLITS)
        val_size = check_int("val_size", val_size, 0)
        if split == "val" and val_size == 0:
            raise ValueError("split='val' needs val_size > 0 (the paper holds out 5000 training images)")
        root = Path(root)
        self.folder = root / self.FOLDER if (root / self.FOLDER).is_dir() else root
        if not (self.folder / self.META_FILE).is_file():
            raise FileNotFoundError(f"no CIFAR-10 batches found: expected {str(root / self.FOLDER / self.META_FILE)!r} "
                                    f"(the python version of CIFAR-10, unpacked)")
        self.split, self.transform = split, transform
        meta = _load_cifar_pickle(self.folder / self.META_FILE)
        names = _field(meta, "label_names", self.folder / self.META_FILE)
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

        files = [self.TEST_FILE] if split == "test" else list(self.TRAIN_FILES)
        parts = [read_cifar_batch(self.folder / name) for name in files]
        images = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        if split != "test" and val_size:
            if val_size >= len(images):
                raise ValueError(f"val_size={val_size} must be smaller than the {len(images)} training images")
            order = np.random.default_rng(split_seed).permutation(len(images))
            keep = np.sort(order[:val_size] if split == "val" else order[val_size:])
            images, targets = images[keep], targets[keep]
        if len(targets) and (targets.min() < 0 or targets.max() >= len(self.classes)):
            raise ValueError(f"labels in {str(self.folder)!r} outside [0, {len(self.classes)}) "
                             f"(batches.meta lists {len(self.classes)} classes)")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform is not None else img), int(self.targets[index])

    def __repr__(self):
        return f"{type(self).__name__}(folder={str(self.folder)!r}, split={self.split!r}, images={len(self)})"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def build_classification_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int,
                                distributed: bool = False, seed: int = 0, drop_last: bool | None = None,
                                pin_memory: bool | None = None, persistent_workers: bool | None = None,
                                prefetch_factor: int | None = None, collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader for classification training (``train=True``: shuffled) or evaluation (in order).

    batch_size: per process. drop_last: defaults to ``train``.
    distributed: shard with a DistributedSampler (needs torch.distributed initialised); call
        ``set_loader_epoch(loader, epoch)`` every epoch so shuffles differ. At evaluation the sampler pads the last
        shard with repeated images so every rank gets the same count (DistributedSampler's behaviour).
    seed: seeds the shuffle and the per-worker RNGs (torch seeds each worker's torch, numpy and random from it),
        so a run is repeatable.
    pin_memory: defaults to whether CUDA is available. persistent_workers: defaults to ``num_workers > 0``.
    """
    check_int("batch_size", batch_size, 1)
    check_int("num_workers", num_workers, 0)
    drop_last = train if drop_last is None else drop_last
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    persistent_workers = num_workers > 0 if persistent_workers is None else persistent_workers
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers=True needs num_workers > 0")
    rank = 0
    sampler = None
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True but torch.distributed is not initialised "
                               "(call init_process_group, e.g. through detectron2's launch, first)")
        rank = torch.distributed.get_rank()
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last)
    extra = {}
    if num_workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers,
        # Different ranks get different worker seeds, so their augmentations are not correlated.
        generator=torch.Generator().manual_seed(seed + rank),
        collate_fn=collate_fn,
        **extra,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a DistributedSampler (if the loader has one) which epoch starts, so each epoch shuffles anew."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def _count_images(batch) -> int:
    while isinstance(batch, (list, tuple, dict)):
        if not batch:
            raise ValueError("cannot count images in an empty batch")
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0] if hasattr(batch, "shape") else len(batch)


def measure_loader_throughput(loader: Iterable, num_batches: int, *, warmup_batches: int = 1) -> float:
    """Images per second delivered by ``loader`` over ``num_batches`` batches.

    The first ``warmup_batches`` (worker start-up) are not timed. The image count of a batch is the leading
    dimension of its first element (a [N, 10, C, H, W] 10-crop batch counts N images). The loader is iterated
    again from the start if it runs out.
    """
    if num_batches < 1 or warmup_batches < 0:
        raise ValueError(f"need num_batches >= 1 and warmup_batches >= 0, got {num_batches}, {warmup_batches}")

    def batches():
        while True:
            empty = True
            for b in loader:
                empty = False
                yield b
            if empty:
                raise ValueError("the loader yields no batches")

    stream = batches()
    try:
        for _ in range(warmup_batches):
            next(stream)
        images = 0
        start = time.perf_counter()
        for _ in range(num_batches):
            images += _count_images(next(stream))
        elapsed = time.perf_counter() - start
    finally:
        stream.close()  # shuts down the loader's (non-persistent) workers now
    return images / max(elapsed, 1e-9)
