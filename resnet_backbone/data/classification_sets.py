"""The pretraining data sets by name (PRETRAIN.DATASET.NAME): how each is read and which input pipeline it takes.

Adding a pretraining data set is one entry in ``DATASETS`` (plus, for a new file format, its reader in
data/classification.py). ``pipeline`` picks the paper's transforms (engine/pretrain/data.py): "imagenet" = scale
augmentation, 224 crops, 10-crop test (Sec 3.4); "cifar" = 4-pixel padding and 32x32 crops (Sec 4.2).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from detectron2.utils import comm
from torch.utils.data import Dataset

from ..modeling.options import check_choice
from .classification import CIFAR10Dataset, ImageNetFolder
from .register import default_root
from .digits import generate_digit_classes
from .synthetic_classification import generate_classification_set

__all__ = ["DATASETS", "PIPELINES", "ClassificationSet", "build_classification_set", "classification_set",
           "resolve_data_root"]

PIPELINES = ("imagenet", "cifar")


@dataclass(frozen=True)
class ClassificationSet:
    """One entry of DATASETS.

    pipeline: one of PIPELINES.
    read: (root, split "train" / "val", transform, the PRETRAIN.DATASET config node) -> the data set.
    generated: for the embedded sets, (root, the PRETRAIN.DATASET config node) -> None, which writes the set under
        the root first (idempotent).
    """

    pipeline: str
    read: Callable[[str, str, Optional[Callable], object], Dataset]
    generated: Optional[Callable[[str, object], object]] = None


def _imagenet(root, split, transform, d) -> Dataset:
    return ImageNetFolder(root, split, transform, skip_corrupt=d.SKIP_CORRUPT)


def _cifar10(root, split, transform, d) -> Dataset:
    # "val" is the held-out part of the training batches when VAL_SIZE > 0 (the paper's 45k/5k), else the test batch
    cifar_split = split if split == "train" or d.VAL_SIZE else "test"
    return CIFAR10Dataset(root, cifar_split, transform, val_size=d.VAL_SIZE)


def _generated(layout: str):
    # synthetic_classification's set in one of its layouts
    def write(root, d):
        generate_classification_set(root, num_classes=d.GENERATED_NUM_CLASSES,
                                    train_per_class=d.GENERATED_TRAIN_PER_CLASS,
                                    val_per_class=d.GENERATED_VAL_PER_CLASS, seed=d.GENERATED_SEED, layout=layout)
    return write


def _digits(root, d):
    # scikit-learn's real handwritten digits on cluttered backgrounds (data/digits.py), ImageNet folder layout; its
    # size is fixed by the digit pools (the GENERATED_*_PER_CLASS keys do not apply)
    generate_digit_classes(root, seed=d.GENERATED_SEED)


DATASETS = {
    "imagenet": ClassificationSet("imagenet", _imagenet),
    "cifar10": ClassificationSet("cifar", _cifar10),
    "generated_imagenet": ClassificationSet("imagenet", _imagenet, generated=_generated("imagenet")),
    "generated_cifar10": ClassificationSet("cifar", _cifar10, generated=_generated("cifar")),
    "digits": ClassificationSet("imagenet", _imagenet, generated=_digits),
}


def classification_set(name: str) -> ClassificationSet:
    """The DATASETS entry of ``name``; ValueError naming the known ones otherwise."""
    return DATASETS[check_choice("PRETRAIN.DATASET.NAME", name, tuple(DATASETS))]


def resolve_data_root(root: str) -> str:
    """A relative PRETRAIN.DATASET.ROOT is under $RB_DATASETS, else <repo>/datasets (where the detection sets of
    data/register.py live too)."""
    root = os.path.expanduser(root)
    return root if os.path.isabs(root) else os.path.join(os.path.dirname(default_root()), root)


def _ensure_generated(d, root: str, write) -> None:
    # One writer per machine; the others wait (the generators are idempotent, but not safe to run concurrently).
    if comm.get_local_rank() == 0:
        write(root, d)
    comm.synchronize()


def build_classification_set(d, split: str, transform: Optional[Callable]) -> Dataset:
    """The "train" or "val" split of the data set the PRETRAIN.DATASET node ``d`` describes, with ``transform``."""
    check_choice("split", split, ("train", "val"))
    entry = classification_set(d.NAME)
    root = resolve_data_root(d.ROOT)
    if entry.generated:
        _ensure_generated(d, root, entry.generated)
    return entry.read(root, split, transform, d)
