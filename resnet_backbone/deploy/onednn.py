"""oneDNN (CPU): packed weights, ReLU / residual addition fused into the convolutions, and the Winograd path.

Norm-free detectron2 `Conv2d`s run through oneDNN with their weights packed once into its blocked layout (instead
of reordered on every call); in ResNet blocks (the plugin's and detectron2's) the ReLUs, the shortcut addition
and the final ReLU run inside the convolutions as oneDNN post-ops: the ops torch.compile's CPU backend emits
(torch.ops.mkldnn._convolution_pointwise), used here without compiling. With `winograd=True`, 3x3 / stride-1
convolutions whose shape makes it pay run the Winograd algorithm instead (`.winograd`), same epilogue fused.
"""
import logging
from typing import Optional, Union

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from detectron2.modeling.backbone import resnet as d2_resnet
from torch import nn

from ..modeling.blocks import BasicBlock, BottleneckBlock
from ..modeling.resnet import BasicStem, CifarStem
from . import winograd as _winograd
from . import _ops

__all__ = ["fuse_onednn", "onednn_available", "OneDNNConv2d"]

logger = logging.getLogger(__name__)


def onednn_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether `fuse_onednn` can speed up a model on `device` (CPU, torch built with oneDNN and its fused ops)."""
    return torch.device(device).type == "cpu" and _ops.onednn_ops() is not None


_CACHE = "_rb_weight_cache"
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


class OneDNNConv2d(Conv2d):
    """A norm-free detectron2 Conv2d whose forward runs oneDNN with the weight packed once (re-packed when the weight
    changes) and can fuse a ReLU and an addition: `forward(x, relu=False, add=None)` = relu?(conv(x) [+ add]),
    then `activation`. With `winograd` set (by `fuse_onednn(..., winograd=True)`, only on 3x3 / stride-1 float32
    convolutions), calls whose shape makes it pay (`winograd.choose_variant`) run Winograd F(m, 3) with the same
    fused epilogue. Parameters and their names are those of the Conv2d. Falls back to F.conv2d when gradients
    are needed, for empty inputs, and for devices / dtypes oneDNN does not take."""

    winograd = False

    def _fast_path_ok(self, x) -> bool:
        if (x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0 or x.dtype != self.weight.dtype
                or x.dtype not in _ONEDNN_DTYPES or (self.bias is not None and self.bias.dtype != x.dtype)):
            return False
        # the fused ops are for inference: autograd goes through F.conv2d
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))

    def _cached(self, slot, make):
        """make(weight), cached until the weight changes (packed oneDNN weight, Winograd-transformed weights)."""
        key = (self.weight.data_ptr(), self.weight._version)
        cache = self.__dict__.get(_CACHE)
        if cache is None or cache[0] != key:
            cache = self.__dict__[_CACHE] = (key, {})
        if slot not in cache[1]:
            cache[1][slot] = make(self.weight.detach())
        return cache[1][slot]

    def _pack(self, weight):
        return _ops.onednn_ops()[2](weight.contiguous(memory_format=torch.channels_last), list(self.padding),
                                list(self.stride), list(self.dilation), self.groups, None)

    def _winograd_variant(self, x) -> Optional[int]:
        if not self.winograd or x.dtype != torch.float32:
            return None
        n, c, h, w = x.shape
        return _winograd.choose_variant(n, h, w, c, self.out_channels, self.padding)

    def forward(self, x, relu: bool = False, add: Optional[torch.Tensor] = None):
        if not self._fast_path_ok(x):
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if add is not None:
                y += add
            if relu:
                y = F.relu_(y)
        elif (m := self._winograd_variant(x)) is not None:
            u = self._cached(("winograd", m), lambda w: _winograd.WinogradWeight(w, m))
            y = _winograd.conv3x3(x, u, self.bias, self.padding, relu=relu, add=add)
        else:
            packed = self._cached("onednn", self._pack)
            geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if add is not None:
                y = _ops.onednn_ops()[1](x, add, packed, self.bias, *geometry, "add", None,
                                         "relu" if relu else None, [], None)
            else:
                y = _ops.onednn_ops()[0](x, packed, self.bias, *geometry, "relu" if relu else "none", [], None)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def cached_weight_bytes(self) -> int:
        """Bytes of the Winograd-transformed weights cached (the packed oneDNN weight is opaque and not counted)."""
        cache = self.__dict__.get(_CACHE)
        return sum(v.nbytes for k, v in cache[1].items() if k != "onednn") if cache else 0

    def __getstate__(self):  # packed / transformed weights are derived (the packed one opaque): rebuilt lazily
        state = self.__dict__.copy()
        state.pop(_CACHE, None)
        return state


def _winograd_eligible(conv: OneDNNConv2d) -> bool:
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1 and conv.weight.dtype == torch.float32)


def _packable(conv: nn.Module) -> bool:
    return (type(conv) is Conv2d and conv.norm is None and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and conv.weight.dtype in _ONEDNN_DTYPES)


# block classes whose eval forward is relu(branch(x) + shortcut(x)) with ReLU after every branch conv but the last
_RESIDUAL_BRANCHES = {
    BottleneckBlock: ("conv1", "conv2", "conv3"),
    BasicBlock: ("conv1", "conv2"),
    d2_resnet.BottleneckBlock: ("conv1", "conv2", "conv3"),
    d2_resnet.BasicBlock: ("conv1", "conv2"),
}
# stem classes: conv1 + ReLU, then (True) a 3x3 / 2 max pool with padding 1
_STEMS = {BasicStem: True, CifarStem: False, d2_resnet.BasicStem: True}


class _FusedResidualBlock(nn.Module):
    """Inference form of a folded residual block: each branch conv with its ReLU, the last one with the shortcut
    addition and the final ReLU (one oneDNN call each). Same children and parameter names as the block."""

    def __init__(self, block: nn.Module, branch):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = block.in_channels, block.out_channels, block.stride
        self.branch = tuple(branch)
        for name in self.branch:
            self.add_module(name, getattr(block, name))
        self.shortcut = block.shortcut
        # plain nets (paper Sec 4.1) have no addition: the last conv only gets its ReLU
        self.residual = getattr(block, "shortcut_option", "B") != "none"

    def forward(self, x):
        out = x
        for name in self.branch[:-1]:
            out = getattr(self, name)(out, relu=True)
        last = getattr(self, self.branch[-1])
        if not self.residual:
            return last(out, relu=True)
        identity = self.shortcut(x) if self.shortcut is not None else x
        return last(out, relu=True, add=identity)


class _FusedStem(nn.Module):
    """Inference form of a folded stem: conv1 with its ReLU in one oneDNN call, then the max pool (if any)."""

    def __init__(self, stem: nn.Module, max_pool: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = stem.in_channels, stem.out_channels, stem.stride
        self.conv1 = stem.conv1
        self.max_pool = max_pool

    def forward(self, x):
        x = self.conv1(x, relu=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1) if self.max_pool else x


def _fused_replacement(module: nn.Module) -> Optional[nn.Module]:
    kind = type(module)
    if kind in _STEMS and type(module.conv1) is OneDNNConv2d and module.conv1.activation is None:
        return _FusedStem(module, _STEMS[kind])
    branch = _RESIDUAL_BRANCHES.get(kind)
    if branch and all(type(getattr(module, n)) is OneDNNConv2d and getattr(module, n).activation is None
                      for n in branch):
        return _FusedResidualBlock(module, branch)
    return None


def fuse_onednn(model: nn.Module, winograd: bool = False) -> dict:
    """In place: norm-free detectron2 Conv2d -> OneDNNConv2d (packed weights), then ResNet stems / blocks (the
    plugin's and detectron2's) whose convolutions all became OneDNNConv2d -> fused forms (ReLU and shortcut
    addition inside the convolutions). Fold the norms first (fold_batchnorm). With winograd=True, the 3x3 /
    stride-1 float32 convolutions may run Winograd F(m, 3) where their input shape makes it pay (needs the kernels:
    `winograd.available()`; without them a warning is logged and they stay direct). Returns the counts
    {"convs": ..., "blocks": ..., "winograd": ...}; nothing changes where oneDNN's fused ops are missing."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse_onednn takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fuse_onednn is for inference: the model is in training mode; call model.eval() first")
    if not isinstance(winograd, bool):
        raise ValueError(f"winograd must be True or False, got {winograd!r}")
    counts = {"convs": 0, "blocks": 0, "winograd": 0}
    if _ops.onednn_ops() is None:
        logger.warning("oneDNN fused convolutions are not available in this torch build; model left as it is")
        return counts
    for module in list(model.modules()):
        if _packable(module):
            module.__class__ = OneDNNConv2d  # a subclass adding only forward: parameters stay where they are
            counts["convs"] += 1
    if winograd and _winograd.available():
        for module in model.modules():
            if isinstance(module, OneDNNConv2d) and _winograd_eligible(module):
                module.winograd = True
                counts["winograd"] += 1
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused = _fused_replacement(child)
            if fused is not None:
                setattr(parent, name, fused)
                counts["blocks"] += 1
    return counts
