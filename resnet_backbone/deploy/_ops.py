"""oneDNN's inference convolution ops from torch.ops.mkldnn (what torch.compile's CPU backend emits)."""
import functools

import torch

__all__ = ["onednn_ops"]


@functools.lru_cache(maxsize=None)
def onednn_ops():
    """(conv, conv + binary, weight packing) from torch.ops.mkldnn, or None where this torch build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        ops = torch.ops.mkldnn
        return ops._convolution_pointwise.default, ops._convolution_pointwise.binary, ops._reorder_convolution_weight
    except (AttributeError, RuntimeError):
        return None
