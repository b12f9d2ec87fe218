"""oneDNN's inference convolution ops from torch.ops.mkldnn (what torch.compile's CPU backend emits)."""
import functools

import torch

__all__ = ["onednn_ops", "onednn_add_inplace"]


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


@functools.lru_cache(maxsize=None)
def onednn_add_inplace():
    """The convolution that adds into its `other` tensor in place (oneDNN's sum post-op, what torch.compile emits
    for conv + add when the addend is dead afterwards), or None where this torch build lacks it."""
    if onednn_ops() is None:
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise_.binary
    except (AttributeError, RuntimeError):
        return None
