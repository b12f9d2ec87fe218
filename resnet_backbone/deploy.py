"""Inference path: fold BatchNorm into the convolutions, fused oneDNN convolutions, channels-last, torch.compile.

All of it is for inference only and keeps the outputs of the model (within float rounding: 1e-4 relative is
what tests/test_deploy.py checks):

* `fold_batchnorm`: every detectron2 `Conv2d` whose `norm` is a `FrozenBatchNorm2d`, or a BatchNorm in eval mode
  with running statistics, gets `W' = W * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`, and
  its norm removed (one pass over memory less per convolution). The walk covers the plugin's ResNet / VGG and any
  detectron2 model around them (detectron2's own ResNet, the C4 head's res5, RPN heads ...). Norms that depend on
  the batch (GroupNorm, BN in training mode) are left in place.
* `fuse_onednn` (CPU): norm-free detectron2 `Conv2d`s run through oneDNN with their weights packed once into its
  blocked layout (instead of reordered on every call), and in ResNet blocks (the plugin's and detectron2's) the
  ReLUs, the shortcut addition and the final ReLU run inside the convolutions as oneDNN post-ops: the ops
  torch.compile's CPU backend emits (torch.ops.mkldnn._convolution_pointwise), used here without compiling.
* `to_channels_last`: the 4-d weights in channels-last (NHWC) order, and a forward pre-hook on the model and on
  every detectron2 `Backbone` in it that converts 4-d input tensors, so oneDNN (CPU) / cuDNN run NHWC kernels
  without reordering the data around every convolution (PyTorch's "channels last memory format" tutorial).
* `compile_model`: `torch.compile`, guarded: when it is unavailable or fails, the model is returned uncompiled and
  the reason is logged.

`prepare_for_inference(model, ...)` applies them in that order; `apply_deploy_config(cfg, model)` does the same
from `cfg.MODEL.RB_DEPLOY.*` and is meant to be called after the weights are loaded (eval-only / inference).

The state dict of a folded model differs (`*.norm.*` gone, `bias` added): save or load weights before folding.
"""
import functools
import logging
from typing import Optional, Union

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import Backbone
from detectron2.modeling.backbone import resnet as d2_resnet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .modeling.blocks import BasicBlock, BottleneckBlock
from .modeling.resnet import BasicStem, CifarStem

__all__ = ["fold_batchnorm", "fuse_onednn", "onednn_available", "OneDNNConv2d", "to_channels_last",
           "channels_last_helps", "compile_model", "prepare_for_inference", "apply_deploy_config"]

logger = logging.getLogger(__name__)

_AUTO_CHOICES = (True, False, "auto")


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


# ---------------------------------------------------------------------------------------------------------------
# oneDNN: packed weights, ReLU / residual addition fused into the convolutions (CPU)
# ---------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _onednn_ops():
    """(conv, conv + binary, weight packing) from torch.ops.mkldnn, or None where this torch build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        ops = torch.ops.mkldnn
        return ops._convolution_pointwise.default, ops._convolution_pointwise.binary, ops._reorder_convolution_weight
    except (AttributeError, RuntimeError):
        return None


def onednn_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether `fuse_onednn` can speed up a model on `device` (CPU, torch built with oneDNN and its fused ops)."""
    return torch.device(device).type == "cpu" and _onednn_ops() is not None


_PACKED = "_rb_packed_weight"
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


class OneDNNConv2d(Conv2d):
    """A norm-free detectron2 Conv2d whose forward runs oneDNN with the weight packed once (re-packed when the weight
    changes) and can fuse a ReLU and an addition: `forward(x, relu=False, add=None)` = relu?(conv(x) [+ add]),
    then `activation`. Parameters and their names are those of the Conv2d. Falls back to F.conv2d when gradients
    are needed, for empty inputs, and for devices / dtypes oneDNN does not take."""

    def _packed_weight(self, x):
        if (x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0 or x.dtype != self.weight.dtype
                or x.dtype not in _ONEDNN_DTYPES or (self.bias is not None and self.bias.dtype != x.dtype)):
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None  # the fused ops are for inference: autograd goes through F.conv2d
        key = (self.weight.data_ptr(), self.weight._version)
        cached = self.__dict__.get(_PACKED)
        if cached is None or cached[0] != key:
            weight = self.weight.detach().contiguous(memory_format=torch.channels_last)
            packed = _onednn_ops()[2](weight, list(self.padding), list(self.stride), list(self.dilation),
                                      self.groups, None)
            cached = self.__dict__[_PACKED] = (key, packed)
        return cached[1]

    def forward(self, x, relu: bool = False, add: Optional[torch.Tensor] = None):
        packed = self._packed_weight(x)
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if packed is None:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if add is not None:
                y += add
            if relu:
                y = F.relu_(y)
        elif add is not None:
            y = _onednn_ops()[1](x, add, packed, self.bias, *geometry, "add", None, "relu" if relu else None, [], None)
        else:
            y = _onednn_ops()[0](x, packed, self.bias, *geometry, "relu" if relu else "none", [], None)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def __getstate__(self):  # the packed weight is an opaque oneDNN tensor: rebuilt lazily after copy / pickle
        state = self.__dict__.copy()
        state.pop(_PACKED, None)
        return state


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


def fuse_onednn(model: nn.Module) -> dict:
    """In place: norm-free detectron2 Conv2d -> OneDNNConv2d (packed weights), then ResNet stems / blocks (the
    plugin's and detectron2's) whose convolutions all became OneDNNConv2d -> fused forms (ReLU and shortcut
    addition inside the convolutions). Fold the norms first (fold_batchnorm). Returns the counts
    {"convs": ..., "blocks": ...}; nothing changes where oneDNN's fused ops are missing."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse_onednn takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fuse_onednn is for inference: the model is in training mode; call model.eval() first")
    counts = {"convs": 0, "blocks": 0}
    if _onednn_ops() is None:
        logger.warning("oneDNN fused convolutions are not available in this torch build; model left as it is")
        return counts
    for module in list(model.modules()):
        if _packable(module):
            module.__class__ = OneDNNConv2d  # a subclass adding only forward: parameters stay where they are
            counts["convs"] += 1
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused = _fused_replacement(child)
            if fused is not None:
                setattr(parent, name, fused)
                counts["blocks"] += 1
    return counts


def channels_last_helps(device: Union[str, torch.device]) -> bool:
    """The "auto" choice: channels-last on CPUs with oneDNN, where NHWC convolutions avoid reorders (measured with
    tools/benchmark.py); elsewhere off, as it was not measured there (pass channels_last=True to force it)."""
    return torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()


def _to_channels_last_hook(_module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put the model's 4-d weights in channels-last order and convert 4-d tensor inputs of the model and of every
    detectron2 Backbone inside it (a detector's images reach its backbone as one tensor). In place; returns model.

    Outputs are the same values in NHWC strides; code that needs NCHW strides calls `.contiguous()`.
    """
    if getattr(model, "_rb_channels_last", False):
        return model
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if module is model or isinstance(module, Backbone):
            module.register_forward_pre_hook(_to_channels_last_hook)
    model._rb_channels_last = True
    return model


def compile_model(model: nn.Module, **compile_kwargs) -> nn.Module:
    """`torch.compile(model, **compile_kwargs)`, or the model itself (with a log line saying why) when torch has no
    compile or it fails. Compilation is lazy: errors of the first call are caught by a guard around it."""
    compile_fn = getattr(torch, "compile", None)
    if compile_fn is None:
        logger.warning("torch.compile is not available in torch %s; running the model uncompiled", torch.__version__)
        return model
    try:
        compiled = compile_fn(model, **compile_kwargs)
    except Exception as e:  # backend missing, unsupported platform ...
        logger.warning("torch.compile failed (%s: %s); running the model uncompiled", type(e).__name__, e)
        return model
    return _GuardedCompiled(model, compiled)


class _GuardedCompiled(nn.Module):
    """Runs the compiled module; if a call of it fails (compilation happens there), logs once and falls back to
    the eager module for that and every later call. Attributes other than forward are the eager module's."""

    def __init__(self, eager: nn.Module, compiled):
        super().__init__()
        self.eager = eager
        # kept out of the module tree, so parameters are listed (and saved) once, under "eager."
        object.__setattr__(self, "_compiled", compiled)
        self._failed = False

    def forward(self, *args, **kwargs):
        if not self._failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:
                self._failed = True
                logger.warning("torch.compile failed on the first call (%s: %s); running the model uncompiled",
                               type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return self.eager(*args, **kwargs)

    @property
    def compiled_ok(self) -> bool:
        return not self._failed

    def __getattr__(self, name):  # only called when normal lookup fails: e.g. a detector's .device
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["eager"], name)


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_choice(name, value, choices):
    if not isinstance(value, (bool, str)) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def prepare_for_inference(model: nn.Module, *, fuse_bn: bool = True, channels_last: Union[bool, str] = "auto",
                          onednn: Union[bool, str] = "auto", compile: bool = False,
                          compile_kwargs: Optional[dict] = None) -> nn.Module:
    """Put `model` in eval mode, without gradients, and apply the deploy path: BN folding, oneDNN fusion,
    channels-last, torch.compile.

    channels_last: True, False or "auto" (`channels_last_helps` for the model's device).
    onednn: True, False or "auto" (`onednn_available` for the model's device); True where it is unavailable logs
        a warning and leaves the convolutions as they are.
    Modifies the model in place (except compile, which wraps it); use the returned module.
    """
    _check_choice("channels_last", channels_last, _AUTO_CHOICES)
    _check_choice("onednn", onednn, _AUTO_CHOICES)
    for name, value in (("fuse_bn", fuse_bn), ("compile", compile)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    model.eval()
    model.requires_grad_(False)  # inference: no autograd state, and the fused oneDNN kernels apply in any context
    device = _device_of(model)
    if fuse_bn:
        n = fold_batchnorm(model)
        logger.info("deploy: folded %d norm layers into their convolutions", n)
    if onednn == "auto":
        onednn = onednn_available(device)
    elif onednn and device.type != "cpu":
        logger.warning("deploy: onednn=True ignored for a model on %s (the fused oneDNN kernels are CPU kernels)",
                       device)
        onednn = False
    if onednn:
        counts = fuse_onednn(model)
        logger.info("deploy: %d convolutions on packed oneDNN weights, %d stems / blocks fused", counts["convs"],
                    counts["blocks"])
    if channels_last == "auto":
        channels_last = channels_last_helps(device)
    if channels_last:
        to_channels_last(model)
    if compile:
        model = compile_model(model, **(compile_kwargs or {}))
    return model


def apply_deploy_config(cfg, model: nn.Module) -> nn.Module:
    """`prepare_for_inference` with cfg.MODEL.RB_DEPLOY.{FUSE_BN, ONEDNN, CHANNELS_LAST, COMPILE}; call it after the
    weights are loaded, for evaluation / inference only (e.g. in train_net's eval-only branch, after
    DetectionCheckpointer(...).resume_or_load). With all keys off the model is returned untouched (not even put in
    eval mode). Use the returned module: torch.compile wraps the model."""
    d = cfg.MODEL.RB_DEPLOY
    options = {"fuse_bn": d.FUSE_BN, "onednn": d.get("ONEDNN", False), "channels_last": d.CHANNELS_LAST,
               "compile": d.get("COMPILE", False)}
    for key, value in options.items():
        if not isinstance(value, bool):
            raise ValueError(f"MODEL.RB_DEPLOY.{key.upper()} must be True or False, got {value!r}")
    if not any(options.values()):
        return model
    return prepare_for_inference(model, **options)
