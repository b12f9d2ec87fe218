"""The only way weights are read from disk in this project: loaders that cannot run code.

A pickle can name any importable function and call it while loading (``os.system`` included), so a
downloaded checkpoint is as dangerous as a downloaded script. Here:

* ``.pth`` / ``.pt`` / ``.ckpt`` / ``.pyth`` go through ``torch.load(..., weights_only=True)``, PyTorch's own
  restricted unpickler (tensors, dtypes and plain containers only);
* ``.pkl`` (detectron2 model-zoo files and the MSRA / Caffe2 Detectron pickles, written by Python 2) go
  through :class:`RestrictedUnpickler`, which admits containers, numbers, strings and numpy arrays only.
  Other pickled data (the CIFAR-10 batches) is read with the same unpickler through :func:`restricted_load`.

Anything else in the file raises :class:`UnsafeCheckpointError` before it is called.
"""
import _compat_pickle
import builtins
import errno
import importlib
import os
import pickle
import re
from collections import OrderedDict
from typing import Any, BinaryIO, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "ALLOWED_EXTENSIONS",
    "CorruptCheckpointError",
    "RestrictedUnpickler",
    "UnsafeCheckpointError",
    "load_file",
    "load_pkl",
    "load_torch",
    "restricted_load",
    "state_dict_from",
]

# torch.save formats; ".pyth" is pycls' extension, which detectron2's DetectionCheckpointer also reads.
TORCH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".pyth")
PICKLE_EXTENSIONS = (".pkl",)
ALLOWED_EXTENSIONS = TORCH_EXTENSIONS + PICKLE_EXTENSIONS


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks to import or call something other than plain data; nothing in it was run."""

    def __init__(self, path: str, refused: str, allowed: str):
        self.path = path
        self.refused = refused
        super().__init__(f"refusing to load {refused} from {path}: {allowed}")


class CorruptCheckpointError(RuntimeError):
    """The file is truncated or is not a checkpoint of the format its extension says."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(
            f"checkpoint {path} is truncated or corrupt ({reason}). If a job was killed while writing it, "
            "load the previous checkpoint in the same directory instead."
        )


# ---------------------------------------------------------------------------------------------------------
# .pkl: a restricted unpickler
# ---------------------------------------------------------------------------------------------------------

_PKL_ALLOWED = "only containers, numbers, strings and numpy arrays are allowed"

# Builtins a pickle may name: containers and scalar constructors; none of them can reach code.
_SAFE_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                  "str", "int", "float", "complex", "bool")

# numpy reconstructs arrays and scalars through these (ndarray.__reduce_ex__; scalar pickles). numpy 2
# moved numpy.core to numpy._core, and pickles name whichever module wrote them, so both spellings are
# admitted and resolved against the numpy that is installed.
_NUMPY_CORE_GLOBALS = (
    ("multiarray", "_reconstruct"),  # ndarray, protocols 0-4
    ("multiarray", "scalar"),        # numpy scalars, e.g. np.float32(1.0)
    ("numeric", "_frombuffer"),      # ndarray, protocol 5 (in-band buffer)
)
_NUMPY_CORE_PACKAGES = ("numpy.core", "numpy._core")
_INSTALLED_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


class _Refused(Exception):
    """Raised inside the unpickler by an admitted function called with refused arguments."""


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles use to write ``bytes`` (numpy array
    data included: pickle.py ``save_bytes``). Only the latin-1 codec they use is allowed."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1", "l1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {("builtins", n): getattr(builtins, n) for n in _SAFE_BUILTINS}
    allowed[("collections", "OrderedDict")] = OrderedDict
    allowed[("_codecs", "encode")] = _latin1_encode
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for submodule, name in _NUMPY_CORE_GLOBALS:
        obj = getattr(importlib.import_module(f"{_INSTALLED_NUMPY_CORE}.{submodule}"), name)
        for package in _NUMPY_CORE_PACKAGES:
            allowed[(f"{package}.{submodule}", name)] = obj
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS`` (pickle docs, "Restricting
    Globals"). Every opcode that builds an object from a name goes through ``find_class``, so this is
    the single gate."""

    def __init__(self, file, *, path: str, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name e.g. "__builtin__.set"; map as pickle.Unpickler.find_class does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(self._path, f"{module}.{name}", _PKL_ALLOWED) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(self._path, f"persistent id {pid!r}", _PKL_ALLOWED)


def restricted_load(file: BinaryIO, *, path: Optional[str] = None, encoding: str = "latin1") -> Any:
    """Unpickle one object from the open binary ``file`` with :class:`RestrictedUnpickler`.

    ``path`` names the source in errors (default: the file's name). ``encoding`` decodes Python 2 ``str``:
    "latin1" for the model-zoo pickles (numpy array data written as py2 ``str``, as detectron2 reads them),
    "bytes" for the CIFAR-10 batches (whose keys are py2 ``str`` and stay bytes).

    Raises:
        UnsafeCheckpointError: the pickle names anything but plain data; nothing it names was called.
        Anything a damaged stream raises (EOFError, pickle.UnpicklingError, ...) propagates unchanged.
    """
    path = str(path if path is not None else getattr(file, "name", "<stream>"))
    try:
        return RestrictedUnpickler(file, path=path, encoding=encoding).load()
    except _Refused as e:
        raise UnsafeCheckpointError(path, str(e), _PKL_ALLOWED) from None


def load_pkl(path: str) -> Any:
    """:func:`restricted_load` of the file ``path``; a damaged file raises :class:`CorruptCheckpointError`."""
    with open(path, "rb") as f:
        try:
            return restricted_load(f, path=path)
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # anything a damaged byte stream can raise: EOFError, UnpicklingError, ...
            raise CorruptCheckpointError(path, f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------------------
# .pth: torch.load(weights_only=True)
# ---------------------------------------------------------------------------------------------------------

# torch's weights-only unpickler refuses with these messages (torch/_weights_only_unpickler.py;
# "Unsupported class" is torch 1.13-2.0's spelling). Other UnpicklingErrors mean a damaged stream.
_TORCH_REFUSALS = (
    "was not an allowed global", "Unsupported class", "is blocked", "unrecognized function",
    "Can only create new object", "Can only build", "Unsupported operand", "unsupported persistent id",
    "must be imported to load",
)
_TORCH_GLOBAL = re.compile(r"(?:GLOBAL|Unsupported class|unsupported GLOBAL) (\S+)")
_TORCH_OPCODE = re.compile(r"Unsupported operand (\S+)")
_TORCH_ALLOWED = ("torch.load(weights_only=True) admits only tensors, dtypes and plain containers; "
                  "if the file holds a pickled model or other objects, re-save its state_dict() from a "
                  "trusted environment")


def load_torch(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with refusals and damage translated to
    :class:`UnsafeCheckpointError` / :class:`CorruptCheckpointError`."""
    # Opened here so that a missing or unreadable file raises its own OSError; once open, every failure
    # is the content's (torch's zip reader raises OSError EINVAL when a truncated file has no central
    # directory to seek to).
    with open(path, "rb") as f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            message = str(e)
            if any(phrase in message for phrase in _TORCH_REFUSALS):
                found, opcode = _TORCH_GLOBAL.search(message), _TORCH_OPCODE.search(message)
                if found:
                    refused = found.group(1).rstrip(".")
                elif opcode:  # also what random bytes give: the file may be damaged rather than hostile
                    refused = f"pickle opcode {opcode.group(1)} (damaged file or not a weights checkpoint)"
                else:
                    refused = "non-tensor content"
                raise UnsafeCheckpointError(path, refused, _TORCH_ALLOWED) from e
            raise CorruptCheckpointError(path, f"{type(e).__name__}: {message.strip().splitlines()[-1]}") from e
        except Exception as e:  # truncated zip ("failed finding central directory"), EOFError, bad magic ...
            raise CorruptCheckpointError(path, f"{type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------------


def load_file(path) -> dict:
    """Read a checkpoint from a local file without running any code stored in it.

    Args:
        path: a ``.pth``, ``.pt``, ``.ckpt``, ``.pyth`` (torch.save) or ``.pkl`` (pickle) file.
    Returns:
        the dict stored in the file, tensors on the CPU (``.pkl`` files keep their numpy arrays).
    Raises:
        ValueError: unknown extension, or the file holds something other than a dict.
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file names a global other than plain data (nothing was run).
        CorruptCheckpointError: the file is truncated or damaged.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in ALLOWED_EXTENSIONS:
        raise ValueError(
            f"cannot load checkpoint {path!r}: unknown extension {ext or '(none)'!r}; "
            f"allowed: {', '.join(ALLOWED_EXTENSIONS)}"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "checkpoint path is a directory, not a file", path)
    data = load_pkl(path) if ext in PICKLE_EXTENSIONS else load_torch(path)
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint {path} holds a {type(data).__name__}; expected a dict (a state dict "
                         "or a dict containing one)")
    return data


# Where common checkpoint layouts keep the model's weights, tried in order: fvcore / detectron2
# ("model"), Lightning and many repos ("state_dict"), pycls ("model_state"), Caffe2 Detectron ("blobs").
_STATE_DICT_KEYS = ("model", "state_dict", "model_state", "blobs")


def state_dict_from(obj: Mapping[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """Pull a model state dict out of a loaded checkpoint.

    Accepts ``{"model": sd}``, ``{"state_dict": sd}``, ``{"model_state": sd}``, ``{"blobs": sd}`` or a bare
    ``sd``; numpy arrays and numpy scalars become tensors, and a ``"module."`` prefix on every key (a model
    saved inside DistributedDataParallel) is removed. Key order is kept.

    Raises:
        ValueError: a value that is neither a tensor nor a numpy array (naming the key and its type).
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a dict-like checkpoint, got {type(obj).__name__}")
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in obj.items():
        if isinstance(value, (np.ndarray, np.generic)):
            value = torch.as_tensor(np.asarray(value))
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor or numpy array; "
                f"expected a state dict, bare or under one of {list(_STATE_DICT_KEYS)}"
            )
        out[key] = value
    prefix = "module."
    if out and all(k.startswith(prefix) for k in out):
        out = OrderedDict((k[len(prefix):], v) for k, v in out.items())
    return out
