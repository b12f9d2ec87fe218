"""oneDNN (CPU): packed weights, ReLU / residual addition fused into the convolutions, and the Winograd path.

Norm-free detectron2 `Conv2d`s become `OneDNNConv2d`s, and in ResNet blocks (the plugin's and detectron2's) the
ReLUs, the shortcut addition and the final ReLU are passed into the convolutions as their epilogue. Each
convolution then runs the kernel `kernels.py` picks for its input shape (measured, or by the fixed rule): oneDNN on
the weight packed once into its blocked layout, with the epilogue as oneDNN post-ops (the ops torch.compile's CPU
backend emits, torch.ops.mkldnn._convolution_pointwise, used here without compiling); F.conv2d in NCHW or NHWC
order; or, with `winograd=True` on 3x3 / stride-1 layers, the Winograd algorithm (`.winograd`), epilogue fused.
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
from . import kernels as _kernels
from . import winograd as _winograd
from . import _ops

__all__ = ["fuse_onednn", "onednn_available", "OneDNNConv2d"]

logger = logging.getLogger(__name__)


def onednn_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether `fuse_onednn` can speed up a model on `device` (CPU, torch built with oneDNN and its fused ops)."""
    return torch.device(device).type == "cpu" and _ops.onednn_ops() is not None


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


_CACHE = "_rb_weight_cache"
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


class OneDNNConv2d(Conv2d):
    """A norm-free detectron2 Conv2d for inference that can fuse a ReLU and an addition:
    `forward(x, relu=False, add=None)` = relu?(conv(x) [+ add]), then `activation`.

    Each call runs one of the kernels of `kernels.KERNELS` (F.conv2d in NCHW / NHWC, oneDNN on the weight packed
    once, Winograd F(4x4) / F(2x2) where `winograd` is set: by `fuse_onednn(..., winograd=True)`, on 3x3 / stride-1
    float32 layers). `kernel_mode` "measure" times them on the first input of each shape and keeps the fastest
    (cached on disk, see kernels.py); "rules" runs Winograd F(4x4) where `winograd.choose_variant` takes the shape and
    packed oneDNN elsewhere. `kernel_choices` records the kernel per keyed input shape. Derived weights (packed,
    transformed, re-laid-out) are made once and rebuilt when the weight changes. Parameters and their names are
    those of the Conv2d. Falls back to F.conv2d when gradients are needed, for empty inputs, and for devices /
    dtypes oneDNN does not take."""

    winograd = False
    kernel_mode = "rules"

    def _fast_path_ok(self, x) -> bool:
        if (x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0 or x.dtype != self.weight.dtype
                or x.dtype not in _ONEDNN_DTYPES or (self.bias is not None and self.bias.dtype != x.dtype)):
            return False
        if _autocast_on_cpu():  # autocast does not cast the fused ops: F.conv2d, which it does
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

    @property
    def kernel_choices(self) -> dict:
        """{cache key of an input shape (kernels.layer_key): kernel name} for the calls so far."""
        return self.__dict__.setdefault("_rb_kernel_choices", {})

    @_winograd._not_traced  # measuring times real calls and writes a file: never traced by torch.compile
    def _kernel_for(self, x, relu: bool, add) -> str:
        fast = self.__dict__.setdefault("_rb_kernel_fast", {})
        local = (tuple(x.shape), x.dtype, x.is_contiguous(), relu, add is not None, torch.get_num_threads(),
                 self.kernel_mode)
        kernel = fast.get(local)
        if kernel is None:
            if self.kernel_mode == "measure":
                kernel = _kernels.choose(self, x, relu, add, lambda name: self._run(name, x, relu, add))
            else:
                kernel = _kernels.rules_choice(self, x)
            fast[local] = kernel
            self.kernel_choices[_kernels.layer_key(self, x, relu, add is not None)] = kernel
            self._drop_unused_weights()
        return kernel

    @staticmethod
    def _slot(kernel: str):
        if kernel.startswith("winograd"):
            return ("winograd", int(kernel[len("winograd"):]))
        return {"onednn": "onednn", "conv2d_nchw": "nchw", "conv2d_nhwc": "nhwc"}[kernel]

    def _drop_unused_weights(self):
        """Forget derived weights of kernels no recorded choice uses (what measuring the others left behind)."""
        cache = self.__dict__.get(_CACHE)
        if cache is not None:
            used = {self._slot(k) for k in self.__dict__.get("_rb_kernel_fast", {}).values()}
            for slot in [s for s in cache[1] if s not in used]:
                del cache[1][slot]

    def _direct(self, x, weight, relu: bool, add):
        y = F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if add is not None:
            y += add
        return F.relu_(y) if relu else y

    def _run(self, kernel: str, x, relu: bool, add, add_owned: bool = False):
        if kernel.startswith("winograd"):
            m = int(kernel[len("winograd"):])
            u = self._cached(("winograd", m), lambda w: _winograd.WinogradWeight(w, m))
            return _winograd.conv3x3(x, u, self.bias, self.padding, relu=relu, add=add)
        if kernel == "onednn":
            packed = self._cached("onednn", self._pack)
            geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if add is not None:
                inplace = _ops.onednn_add_inplace() if add_owned else None
                nhwc = torch.channels_last
                if inplace is not None and add.dtype == x.dtype and add.is_contiguous(memory_format=nhwc) \
                        and x.is_contiguous(memory_format=nhwc):
                    # the addend is dead after this call: oneDNN adds into it (sum post-op), no extra output pass
                    return inplace(add, x, packed, self.bias, *geometry, "add", None, "relu" if relu else None, [],
                                   None)
                return _ops.onednn_ops()[1](x, add, packed, self.bias, *geometry, "add", None,
                                            "relu" if relu else None, [], None)
            return _ops.onednn_ops()[0](x, packed, self.bias, *geometry, "relu" if relu else "none", [], None)
        fmt = torch.channels_last if kernel == "conv2d_nhwc" else torch.contiguous_format
        weight = self._cached(self._slot(kernel), lambda w: w.contiguous(memory_format=fmt))
        return self._direct(x.contiguous(memory_format=fmt), weight, relu, add)

    def forward(self, x, relu: bool = False, add: Optional[torch.Tensor] = None, add_owned: bool = False):
        """add_owned: the caller does not use `add` after this call, so the packed oneDNN kernel may write the result
        into it (the fused residual blocks pass it for a shortcut's output or a block input nobody else holds)."""
        if self.weight.dtype == torch.bfloat16 and x.dtype == torch.float32:  # precision.prepare_bfloat16's layers
            x = x.to(torch.bfloat16)
            add = add.to(torch.bfloat16) if add is not None else None
        if not self._fast_path_ok(x):
            y = self._direct(x, self.weight, relu, add)
        else:
            y = self._run(self._kernel_for(x, relu, add), x, relu, add, add_owned)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def cached_weight_bytes(self) -> int:
        """Bytes of the derived weights held: Winograd-transformed weights and copies of the weight in another memory
        format (the packed oneDNN weight is opaque and not counted)."""
        cache = self.__dict__.get(_CACHE)
        if not cache:
            return 0
        return sum(v.nbytes for k, v in cache[1].items()
                   if k != "onednn" and not (isinstance(v, torch.Tensor) and v.data_ptr() == self.weight.data_ptr()))

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
        # set by fuse_onednn for a block whose input is the previous fused block's output within the same
        # nn.Sequential (a stage): no one else holds it, so the last convolution may add into it in place
        self.owns_input = False

    def forward(self, x):
        out = x
        for name in self.branch[:-1]:
            out = getattr(self, name)(out, relu=True)
        last = getattr(self, self.branch[-1])
        if not self.residual:
            return last(out, relu=True)
        if self.shortcut is not None:  # a fresh tensor: the last convolution may add into it
            return last(out, relu=True, add=self.shortcut(x), add_owned=True)
        return last(out, relu=True, add=x, add_owned=self.owns_input)


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


def fuse_onednn(model: nn.Module, winograd: bool = False, kernels: str = "measure") -> dict:
    """In place: norm-free detectron2 Conv2d -> OneDNNConv2d, then ResNet stems / blocks (the plugin's and
    detectron2's) whose convolutions all became OneDNNConv2d -> fused forms (ReLU and shortcut addition inside the
    convolutions). Fold the norms first (fold_batchnorm). With winograd=True, the 3x3 / stride-1 float32
    convolutions may run Winograd F(m, 3) (needs the kernels: `winograd.available()`; without them a warning is
    logged and they stay direct). kernels: "measure" (time the candidates per layer and input shape, cached on
    disk) or "rules" (the fixed rule), see kernels.py. Returns the counts {"convs": ..., "blocks": ...,
    "winograd": ...}; nothing changes where oneDNN's fused ops are missing."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse_onednn takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fuse_onednn is for inference: the model is in training mode; call model.eval() first")
    if not isinstance(winograd, bool):
        raise ValueError(f"winograd must be True or False, got {winograd!r}")
    if kernels not in _kernels.MODES:
        raise ValueError(f"kernels must be one of {_kernels.MODES}, got {kernels!r}")
    counts = {"convs": 0, "blocks": 0, "winograd": 0}
    if _ops.onednn_ops() is None:
        logger.warning("oneDNN fused convolutions are not available in this torch build; model left as it is")
        return counts
    for module in list(model.modules()):
        if _packable(module):
            module.__class__ = OneDNNConv2d  # a subclass adding only forward: parameters stay where they are
            module.kernel_mode = kernels
            counts["convs"] += 1
    if winograd and _winograd.available():
        for module in model.modules():
            if isinstance(module, OneDNNConv2d) and _winograd_eligible(module):
                module.winograd = True
                counts["winograd"] += 1
    for parent in list(model.modules()):
        previous = None
        for name, child in list(parent.named_children()):
            fused = _fused_replacement(child)
            if fused is not None:
                setattr(parent, name, fused)
                counts["blocks"] += 1
                # in a stage (nn.Sequential) a block's input is the previous block's output, held by no one else
                if isinstance(fused, _FusedResidualBlock) and isinstance(parent, nn.Sequential) \
                        and isinstance(previous, _FusedResidualBlock):
                    fused.owns_input = True
            previous = fused
    return counts
