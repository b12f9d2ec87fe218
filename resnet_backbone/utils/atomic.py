"""The project's one atomic file writer: a reader (or a resumed job) sees either the old file or the complete new one.

A write goes to a temporary file in the destination's directory, is flushed and fsynced, then renamed over the
destination with ``os.replace`` (atomic on POSIX and Windows when both paths are on the same filesystem, hence the
same directory); the directory is fsynced so that the rename itself survives a crash (see the "fsync the directory"
note in fsync(2)). If anything fails before the rename, the temporary file is removed and the destination is
untouched. Only a process killed mid-write leaves its temporary behind: :func:`temporary_target` recognises one.
"""
import contextlib
import os
import re
import secrets
from typing import Any, BinaryIO, Callable, Iterator, Optional

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "temporary_target"]

# "." + destination name + ".tmp-<pid>-<8 hex digits>": hidden, and never a name any writer here targets.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.tmp-\d+-[0-9a-f]{8}$")


def _temporary_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def temporary_target(filename: str) -> Optional[str]:
    """The file name that the temporary ``filename`` (a base name) was written to replace, or None when
    ``filename`` is not a temporary of this module. Lets a caller clean up after a killed writer."""
    match = _TEMPORARY.match(filename)
    return match.group("target") if match else None


def _fsync_directory(directory: str) -> None:
    # Directories cannot be opened for fsync on Windows; there the rename is all we can do.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on a directory (EINVAL); the rename stands
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Context manager yielding a file object that replaces ``path`` only if the block completes.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). The file gets the usual permissions (0o666 minus the
    umask), like one made by ``open(path, "w")``. The destination's directory must exist.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    tmp = _temporary_path(path)
    # O_EXCL: never reuse a stale temporary; 0o666 lets the umask decide the final permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_directory(os.path.dirname(path))


def _write_with(path, mode: str, write: Callable[[Any], None]) -> None:
    with atomic_write(path, mode) as f:
        write(f)


def atomic_save(obj: Any, path) -> None:
    """``torch.save(obj, path)``, atomically: a crash or an exception mid-write leaves any previous
    ``path`` intact and no partial file under that name."""
    _write_with(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _write_with(path, "wb", lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, e.g. detectron2's ``last_checkpoint`` tag."""
    _write_with(path, "w", lambda f: f.write(text))
