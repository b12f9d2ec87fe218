"""Writing ``.pkl`` checkpoints that :mod:`resnet_backbone.checkpoint.safe_load` reads back (and detectron2 too)."""
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from ..utils.atomic import atomic_write

__all__ = ["PKL_PROTOCOL", "save_pkl"]

# Protocol 2 is the newest one Python 2 reads, i.e. the one the MSRA / Caffe2 model-zoo pkls could use;
# every Python 3 and detectron2's DetectionCheckpointer (pickle.load(f, encoding="latin1")) read it too.
PKL_PROTOCOL = 2

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
    with atomic_write(path, "wb") as f:
        pickle.dump(data, f, protocol=PKL_PROTOCOL)
