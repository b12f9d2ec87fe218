"""Residual blocks of the paper (Sec 3.3, Fig. 5): basic [3x3, 3x3] and bottleneck [1x1, 3x3, 1x1].

BN follows every convolution and the ReLU comes after the addition (paper Sec 3.4). The shortcut is a first-class
argument: "A" (identity, zero-padded channels, parameter-free), "B" (projection where dimensions change),
"C" (projection on every block) or "none" (the plain nets of Sec 4.1 / 4.2).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d
from torch import nn

from .options import SHORTCUT_OPTIONS, check_choice
from .norms import get_norm
from .init import init_conv

__all__ = ["BasicBlock", "BottleneckBlock", "DropPath", "PadShortcut", "make_shortcut"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample while training.

    Kept branches are scaled by 1/(1-p) so eval mode (identity) needs no rescaling.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {drop_prob!r}")
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (x.dim() - 1)  # one draw per sample (a list: TorchScript has no tuple +)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class PadShortcut(nn.Module):
    """Option A (paper Sec 3.3): identity with stride-`s` subsampling and zero-padded extra channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            # pad channels at the end (the CIFAR models of the paper pad the new channels with zeros)
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self):
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}"


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int, norm) -> Optional[nn.Module]:
    """The shortcut module of one block for an option; None means identity (or, for "none", no shortcut at all)."""
    check_choice("shortcut", option, SHORTCUT_OPTIONS)
    changes = in_channels != out_channels or stride != 1
    if option == "none" or (option in ("A", "B") and not changes):
        return None
    if option == "A":
        return PadShortcut(in_channels, out_channels, stride)
    # B (only where dimensions change) and C (every block): 1x1 projection + norm
    return Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, norm=get_norm(norm, out_channels))


class _ResidualBlock(CNNBlockBase):
    """Shared wiring: out = relu(branch(x) [+ shortcut(x)])."""

    def _finish(self, shortcut, in_channels, out_channels, stride, norm, drop_path, zero_init_last):
        self.shortcut_option = shortcut
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, norm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for m in self.children():
            if isinstance(m, Conv2d):
                init_conv(m)
        if zero_init_last:
            # Goyal et al. 2017: the last norm of each residual branch starts at 0, so each block starts as identity
            # Only a trainable norm (weight is a Parameter): FrozenBN's weight is a buffer that would stay 0 forever.
            last_norm = self.last_conv.norm
            if isinstance(getattr(last_norm, "weight", None), nn.Parameter):
                nn.init.zeros_(last_norm.weight)

    def _combine(self, x, branch):
        if self.shortcut_option == "none":
            return F.relu_(branch)
        identity = self.shortcut(x) if self.shortcut is not None else x
        out = self.drop_path(branch)
        # in place, as detectron2's blocks: no extra activation-sized tensor per block (the norms' backward needs
        # their input, not this output)
        out += identity
        return F.relu_(out)


class BasicBlock(_ResidualBlock):
    """[3x3, 3x3] block of ResNet-18/34 and of the CIFAR nets (paper Fig. 5 left)."""

    expansion = 1

    def __init__(self, in_channels, out_channels, *, stride=1, norm="BN", shortcut="B", drop_path=0.0,
                 zero_init_last=False, dilation=1):
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                            bias=False, norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False,
                            norm=get_norm(norm, out_channels))
        self._finish(shortcut, in_channels, out_channels, stride, norm, drop_path, zero_init_last)

    @property
    @torch.jit.unused  # construction-time helper; TorchScript cannot return a submodule
    def last_conv(self):
        return self.conv2

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        return self._combine(x, self.conv2(out))


class BottleneckBlock(_ResidualBlock):
    """[1x1, 3x3, 1x1] block of ResNet-50/101/152 (paper Fig. 5 right), with ResNeXt groups.

    stride_in_1x1=True puts the stride in the first 1x1 conv as in the paper's (MSRA Caffe) models and
    detectron2's STRIDE_IN_1X1; False puts it in the 3x3 conv as torchvision does ("ResNet v1.5").
    """

    expansion = 4

    def __init__(self, in_channels, out_channels, *, bottleneck_channels, stride=1, num_groups=1, norm="BN",
                 stride_in_1x1=True, dilation=1, shortcut="B", drop_path=0.0, zero_init_last=False):
        super().__init__(in_channels, out_channels, stride)
        if bottleneck_channels % num_groups:
            raise ValueError(f"groups={num_groups} must divide the bottleneck width {bottleneck_channels}")
        s1x1, s3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, stride=s1x1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=s3x3, padding=dilation,
                            dilation=dilation, groups=num_groups, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
        self._finish(shortcut, in_channels, out_channels, stride, norm, drop_path, zero_init_last)

    @property
    @torch.jit.unused
    def last_conv(self):
        return self.conv3

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        return self._combine(x, self.conv3(out))


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
