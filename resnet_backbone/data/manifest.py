"""The completion record of a generated data set, with the project's one rule (utils/completion): written last, it
holds the generator's parameters (its key), class names and files; generating again with the same parameters finds
it and writes nothing; other parameters, or an interrupted run, make the set again from scratch."""
import dataclasses
import shutil
from pathlib import Path
from typing import Sequence, Tuple

from ..utils.completion import COMPLETE, mark_complete, mark_started, state

__all__ = ["GeneratedClassificationSet", "prepare", "write_manifest"]


@dataclasses.dataclass(frozen=True)
class GeneratedClassificationSet:
    """Where a generated classification set lies and what it holds. Read it with ImageNetFolder(root, split)
    (layout "imagenet") or CIFAR10Dataset(root, split) (layout "cifar", where the generator's split "val" is
    CIFAR's "test")."""

    root: Path
    layout: str
    classes: Tuple[str, ...]
    num_train: int
    num_val: int
    image_size: int
    manifest: Path
    created: bool  # False when a complete set with the same parameters was found


def prepare(path: Path, params: dict, owned: Sequence[str]) -> bool:
    """True when ``path`` records a complete set made with ``params`` (every file it lists is there). Otherwise the
    folders ``owned`` (relative to the record's folder: what the generator writes) are removed, the record says the
    set is being made, and False is returned."""
    path = Path(path)
    if state(path, params) == COMPLETE:
        return True
    for name in owned:
        shutil.rmtree(path.parent / name, ignore_errors=True)
    mark_started(path, params)
    return False


def write_manifest(path: Path, params: dict, classes: Sequence[str], files: Sequence[str], **info) -> dict:
    """Record a finished set: its parameters, class names and files (relative to the record's folder)."""
    return mark_complete(path, params, params=params, classes=list(classes), files=list(files), **info)
