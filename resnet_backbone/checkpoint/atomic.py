"""Atomic file writes: a reader (or a resumed job) sees either the old file or the complete new one.

Each writer writes a temporary file in the destination's directory, flushes and fsyncs it, renames it
over the destination with ``os.replace`` (atomic on POSIX and Windows when both paths are on the same
filesystem, hence the same directory), then fsyncs the directory so the rename itself survives a crash
(see the "fsync the directory" note in fsync(2)). If anything fails before the rename, the temporary
file is removed and the destination is untouched.
"""
import contextlib
import os
import pickle
import secrets
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_text", "save_pkl"]

# Protocol 2 is the newest one Python 2 reads, i.e. the one the MSRA / Caffe2 model-zoo pkls could use;
# every Python 3 and detectron2's DetectionCheckpointer (pickle.load(f, encoding="latin1")) read it too.
PKL_PROTOCOL = 2


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
    umask), like one made by ``open(path, "w")``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
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
    _fsync_directory(directory)


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


# What a .pkl written here may hold: exactly what safe_load's restricted unpickler reads back.
_PKL_LEAF_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic, np.dtype)


def _as_plain_data(obj: Any, where: str) -> Any:
    """Copy of ``obj`` with tensors turned into numpy arrays; ValueError on anything safe_load refuses."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise ValueError(f"{where} is a numpy array of Python objects; save_pkl writes numeric arrays only")
        return obj
    if isinstance(obj, _PKL_LEAF_TYPES):
        return obj
    if isinstance(obj, dict):  # OrderedDict stays one; other dict subclasses become dicts
        kind = OrderedDict if isinstance(obj, OrderedDict) else dict
        return kind((k, _as_plain_data(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)) and type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_as_plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise ValueError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a .pkl checkpoint may hold only "
        "containers, numbers, strings, numpy arrays and tensors (written as numpy arrays)"
    )


def save_pkl(obj: Any, path) -> None:
    """Pickle ``obj`` to ``path`` atomically (protocol 2), e.g. a converted detectron2-format model
    ``{"model": {name: array}, "__author__": ..., "matching_heuristics": True}``.

    Tensors are written as numpy arrays (the form detectron2's model-zoo pkls use). Anything that
    :func:`resnet_backbone.checkpoint.safe_load.load_file` would refuse to read back raises ValueError
    before the file is touched.
    """
    data = _as_plain_data(obj, "checkpoint")
    _write_with(path, "wb", lambda f: pickle.dump(data, f, protocol=PKL_PROTOCOL))
