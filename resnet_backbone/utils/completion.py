"""The project's one "this output is complete" record, for everything it makes that takes a while and is read later:
the generated data sets, the demo's stages, the Winograd build.

A record is a small JSON file written through utils/atomic (so a reader sees the old record or the new one, never
half of one): the *key* the output was made from (its parameters, command or source hash: any JSON value), whether
it was finished, and what else the maker wants to say. One rule on reading it back, everywhere:

- ``COMPLETE``: a finished record with the same key (and every file it lists there): use the output as it is;
- ``STARTED``: a record with the same key, not finished: the same work was interrupted; its maker may resume it;
- ``STALE``: no record, an unreadable one, or one with another key: the output is not this key's; its maker removes
  it and makes it again (outputs are derived, so nothing is lost that cannot be made again).

Makers write ``mark_started`` before they begin and ``mark_complete`` last.
"""
import json
import os
from typing import Any, Iterable, Optional

from .atomic import atomic_write_text

__all__ = ["COMPLETE", "STARTED", "STALE", "mark_complete", "mark_started", "read_record", "state"]

COMPLETE, STARTED, STALE = "complete", "started", "stale"


def _normal(key: Any) -> Any:
    # tuples and lists compare equal once written; a key must be JSON (ValueError otherwise, before anything runs)
    try:
        return json.loads(json.dumps(key, sort_keys=True))
    except TypeError as e:
        raise ValueError(f"a completion key must be JSON-serialisable, got {key!r}: {e}") from None


def read_record(path) -> Optional[dict]:
    """The record at ``path``, or None when there is none or it is unreadable."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "key" in record else None


def state(path, key: Any, files: Iterable[str] = ()) -> str:
    """COMPLETE, STARTED or STALE (see the module docstring). ``files`` (relative to the record's folder) and the
    record's own ``files`` must all exist for COMPLETE."""
    record = read_record(path)
    if record is None or record["key"] != _normal(key):
        return STALE
    if record.get("complete") is not True:
        return STARTED
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    wanted = list(files) + list(record.get("files", ()))
    return COMPLETE if all(os.path.isfile(os.path.join(folder, f)) for f in wanted) else STARTED


def _write(path, key, complete: bool, info: dict) -> dict:
    record = {"key": _normal(key), "complete": complete, **info}
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def mark_started(path, key: Any, **info) -> dict:
    """Record that the output of ``key`` is being made (not complete yet); returns the record."""
    return _write(path, key, False, info)


def mark_complete(path, key: Any, **info) -> dict:
    """Record that the output of ``key`` is complete (write it last); ``info`` may list ``files`` that must stay."""
    return _write(path, key, True, info)
