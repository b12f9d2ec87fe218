"""Norm layers: detectron2's `get_norm`, with the plugin's FrozenBatchNorm2d for "FrozenBN"."""
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d as _D2FrozenBatchNorm2d
from detectron2.layers import get_norm as _d2_get_norm

__all__ = ["FrozenBatchNorm2d", "get_norm"]


class FrozenBatchNorm2d(_D2FrozenBatchNorm2d):
    """detectron2's FrozenBatchNorm2d (same buffers and state dict, an instance of detectron2's class) whose
    training-time forward applies the fixed affine map in one op, addcmul(shift, x, scale), instead of
    x * scale + shift: one pass over the activation and one activation-sized temporary less, same values (up to
    the rounding of one fused multiply-add), hence a lower training peak memory (README, Speed). Without gradients
    it is detectron2's fused F.batch_norm."""

    def forward(self, x):
        if not x.requires_grad:
            # detectron2's inference branch, written out: TorchScript cannot compile super().forward
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                                eps=self.eps)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift.reshape(1, -1, 1, 1).to(x.dtype), x, scale.reshape(1, -1, 1, 1).to(x.dtype))


def get_norm(norm, out_channels: int):
    """detectron2's get_norm, except that "FrozenBN" gives the plugin's FrozenBatchNorm2d."""
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(out_channels)
    return _d2_get_norm(norm, out_channels)
