"""Fold BatchNorm into the preceding convolutions (inference only).

Every detectron2 `Conv2d` whose `norm` is a `FrozenBatchNorm2d`, or a BatchNorm in eval mode with running
statistics, gets `W' = W * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`, and its norm
removed. Norms that depend on the batch (GroupNorm, BN in training mode) are left in place.
"""
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["fold_batchnorm"]


def _foldable(norm: nn.Module) -> bool:
    """True for a norm that is a fixed per-channel affine map at inference (so it can go into the conv)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    # eval-mode BatchNorm / SyncBatchNorm uses its running statistics; without them it normalises with the
    # statistics of the batch, which no fixed affine map reproduces
    return isinstance(norm, _BatchNorm) and not norm.training and norm.running_mean is not None


def _wide_dtype(device: torch.device):
    # fold in float64 so the folded weights round once; MPS has no float64
    return torch.float32 if device.type == "mps" else torch.float64


def _affine_of(norm: nn.Module, dtype):
    """(scale, shift) with norm(x) = x * scale + shift per channel."""
    mean = norm.running_mean.detach().to(dtype)
    var = norm.running_var.detach().to(dtype)
    weight = norm.weight.detach().to(dtype) if norm.weight is not None else torch.ones_like(mean)
    bias = norm.bias.detach().to(dtype) if norm.bias is not None else torch.zeros_like(mean)
    scale = weight * torch.rsqrt(var + norm.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def _fold_into(conv: Conv2d):
    weight = conv.weight.detach()
    wide = _wide_dtype(weight.device)
    scale, shift = _affine_of(conv.norm, wide)
    folded_w = weight.to(wide) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    conv_bias = conv.bias.detach().to(wide) if conv.bias is not None else torch.zeros_like(scale)
    folded_b = conv_bias * scale + shift
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(folded_w.to(weight.dtype).contiguous(memory_format=_memory_format_of(weight)),
                               requires_grad=requires_grad)
    conv.bias = nn.Parameter(folded_b.to(weight.dtype), requires_grad=requires_grad)
    conv.norm = None


def _memory_format_of(t: torch.Tensor):
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable norm into its detectron2 `Conv2d`, in place; returns the number of folded norms.

    Raises ValueError when the model is in training mode: folding changes which tensor the optimizer would update
    (W * s instead of W), so it is for inference only (call `model.eval()` first).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fold_batchnorm takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fold_batchnorm is for inference: the model is in training mode; call model.eval() first")
    folded = 0
    for module in model.modules():
        if isinstance(module, Conv2d) and module.norm is not None and _foldable(module.norm):
            _fold_into(module)
            folded += 1
    return folded



