"""The manifest of a generated data set, written last: it records the generator's parameters and files, so that
generating again with the same parameters does nothing and with other parameters is refused (not mixed)."""
import json
from pathlib import Path
from typing import Sequence

from ..utils.atomic import atomic_write_text

__all__ = ["manifest_matches", "write_manifest"]


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
