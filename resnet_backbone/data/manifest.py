"""The manifest of a generated data set, written last: it records the generator's parameters and files, so that
generating again with the same parameters does nothing and with other parameters is refused (not mixed)."""
import dataclasses
import json
from pathlib import Path
from typing import Sequence, Tuple

from ..utils.atomic import atomic_write_text

__all__ = ["GeneratedClassificationSet", "manifest_matches", "write_manifest"]


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


def manifest_matches(path: Path, params: dict, what: str) -> bool:
    """True when ``path`` records a complete set made with ``params`` (every file it lists is there); False when
    there is none or it is incomplete. ValueError when it records other parameters (``what`` names the set)."""
    path = Path(path)
    if not path.is_file():
        return False
    existing = json.loads(path.read_text())
    if existing.get("params") != params:
        raise ValueError(f"{str(path.parent)!r} already holds a generated {what} set with parameters "
                         f"{existing.get('params')}, not {params}; use another root or delete it")
    return all((path.parent / rel).is_file() for rel in existing.get("files", ()))


def write_manifest(path: Path, params: dict, classes: Sequence[str], files: Sequence[str]) -> None:
    """Record a finished set: its parameters, class names and files (relative to the manifest's folder)."""
    atomic_write_text(path, json.dumps({"params": params, "classes": list(classes), "files": list(files)}, indent=1))
