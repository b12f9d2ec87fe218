"""Inference path: fold BatchNorm into the convolutions, fused oneDNN convolutions, Winograd 3x3 convolutions,
channels-last, torch.compile.

All of it is for inference only and keeps the outputs of the model (within float rounding: 1e-4 relative is
what tests/test_deploy.py and tests/test_winograd.py check):

* `fold_batchnorm` (fold.py): every detectron2 `Conv2d` whose norm is a FrozenBatchNorm2d, or a BatchNorm in eval
  mode with running statistics, gets the norm's affine map folded into its weight and bias (one pass over memory
  less per convolution). The walk covers the plugin's ResNet / VGG and any detectron2 model around them
  (detectron2's own ResNet, the C4 head's res5, RPN heads ...).
* `fuse_onednn` (onednn.py, CPU): norm-free convolutions on weights packed once into oneDNN's layout, and in
  ResNet blocks (the plugin's and detectron2's) the ReLUs, shortcut addition and final ReLU inside the
  convolutions as oneDNN post-ops.
* Winograd (winograd.py, CPU, with fuse_onednn): 3x3 / stride-1 convolutions with F(4x4, 3x3) or F(2x2, 3x3):
  4x / 2.25x fewer multiplications than the direct algorithm.
* Kernel choice (kernels.py, CPU, with fuse_onednn): "measure" times each convolution's candidates (F.conv2d
  NCHW / NHWC, packed oneDNN, Winograd F(4x4) / F(2x2)) on its first input of each shape and keeps the fastest,
  cached on disk per CPU, torch version and thread count; "rules" keeps the fixed rule without measuring.
* `to_channels_last` (layout.py): 4-d weights in NHWC order and a pre-hook converting the inputs of the model and
  of every detectron2 Backbone in it, so oneDNN (CPU) / cuDNN run NHWC kernels without reorders.
* `openvino_parts` (openvino_parts.py, `runtime="openvino"`): the backbone and box head run by OpenVINO instead.
* `compile_model` (compile.py): `torch.compile`, falling back to eager with a log line when it fails.
* `prepare_bfloat16` (precision.py, CPU with the oneDNN path): the backbone and heads on bfloat16 weights converted
  once; `run_in_precision` elsewhere: the forward under autocast float16 / bfloat16. Outputs float32 (opt-in; the
  accuracy of that precision, about 1e-2 relative, not 1e-4).

`prepare_for_inference(model, ...)` applies them in that order; `apply_deploy_config(cfg, model)` does the same
from `cfg.MODEL.RB_DEPLOY.*` and is meant to be called after the weights are loaded (eval-only / inference).

The state dict of a folded model differs (`*.norm.*` gone, `bias` added): save or load weights before folding.
"""
import logging
from typing import Optional, Union

import torch
from torch import nn

from ..modeling.options import check_choice
from . import kernels as _kernels, winograd  # the submodule stays reachable as deploy.kernels
from .compile import compile_model
from .fold import fold_batchnorm
from .layout import channels_last_helps, to_channels_last
from .onednn import OneDNNConv2d, fuse_onednn, onednn_available
from .openvino_parts import RUNTIMES, openvino_parts
from .precision import PRECISIONS, native_bf16, precision_supported, prepare_bfloat16, run_in_precision

__all__ = ["fold_batchnorm", "fuse_onednn", "onednn_available", "OneDNNConv2d", "to_channels_last",
           "channels_last_helps", "compile_model", "prepare_for_inference", "apply_deploy_config", "winograd",
           "kernels", "PRECISIONS", "precision_supported", "run_in_precision"]

logger = logging.getLogger(__name__)

_AUTO_CHOICES = (True, False, "auto")


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def prepare_for_inference(model: nn.Module, *, fuse_bn: bool = True, channels_last: Union[bool, str] = "auto",
                          onednn: Union[bool, str] = "auto", winograd: Union[bool, str] = "auto",
                          kernels: str = "measure", compile: bool = False,
                          compile_kwargs: Optional[dict] = None, precision: str = "float32",
                          runtime: str = "torch") -> nn.Module:
    """Put `model` in eval mode, without gradients, and apply the deploy path: BN folding, oneDNN fusion (with
    Winograd 3x3 convolutions), channels-last, torch.compile.

    channels_last: True, False or "auto" (`channels_last_helps` for the model's device).
    onednn: True, False or "auto" (`onednn_available` for the model's device); True where it is unavailable logs
        a warning and leaves the convolutions as they are.
    winograd: True, False or "auto" (on where onednn is on and the kernels build); it applies to the oneDNN
        convolutions, so it does nothing with onednn off.
    kernels: "measure" (each oneDNN-path convolution times its candidate kernels on its first input of each shape
        and keeps the fastest; cached on disk under RB_CACHE_DIR) or "rules" (the fixed rule, no measuring); see
        deploy/kernels.py.
    precision: "float32", or "float16" / "bfloat16". On CPU with the oneDNN path, "bfloat16" converts the weights of
        the backbone and heads once (precision.prepare_bfloat16: packed bfloat16 oneDNN kernels, fused epilogues, no
        autocast; float32 where the CPU has no bfloat16 instructions, which would make it slower). Otherwise every
        call runs under torch.autocast on the model's device; outputs float32 either way (see precision.py).
    runtime: "torch", or "openvino": after BN folding, the backbone and the box head's heavy parts run by OpenVINO
        in `precision` (openvino_parts.py); onednn, winograd, channels_last and compile then do not apply.
    Modifies the model in place (except compile, which wraps it); use the returned module.
    """
    check_choice("channels_last", channels_last, _AUTO_CHOICES)
    check_choice("onednn", onednn, _AUTO_CHOICES)
    check_choice("winograd", winograd, _AUTO_CHOICES)
    check_choice("kernels", kernels, _kernels.MODES)
    check_choice("fuse_bn", fuse_bn, (True, False))
    check_choice("compile", compile, (True, False))
    check_choice("precision", str(precision).replace("torch.", ""), PRECISIONS)
    check_choice("runtime", runtime, RUNTIMES)
    model.eval()
    model.requires_grad_(False)  # inference: no autograd state, and the fused oneDNN kernels apply in any context
    device = _device_of(model)
    if fuse_bn:
        n = fold_batchnorm(model)
        logger.info("deploy: folded %d norm layers into their convolutions", n)
    if runtime == "openvino":
        openvino_parts(model, str(precision).replace("torch.", ""))
        return model
    if onednn == "auto":
        onednn = onednn_available(device)
    elif onednn and device.type != "cpu":
        logger.warning("deploy: onednn=True ignored for a model on %s (the fused oneDNN kernels are CPU kernels)",
                       device)
        onednn = False
    if onednn:
        counts = fuse_onednn(model, winograd=bool(winograd), kernels=kernels)
        logger.info("deploy: %d convolutions on packed oneDNN weights (%d may run Winograd), %d stems / blocks "
                    "fused", counts["convs"], counts["winograd"], counts["blocks"])
    elif winograd is True:
        logger.warning("deploy: winograd=True needs the oneDNN path (onednn), which is off here; ignored")
    if channels_last == "auto":
        channels_last = channels_last_helps(device)
    if channels_last:
        to_channels_last(model)
    precision = str(precision).replace("torch.", "")
    if precision == "bfloat16" and device.type == "cpu" and onednn:
        if native_bf16():
            prepare_bfloat16(model)  # weights converted once, packed bfloat16 oneDNN kernels, no autocast
        else:
            logger.warning("deploy: precision bfloat16 ignored: this CPU has no bfloat16 instructions (AVX512-BF16 / "
                           "AMX-BF16), where bfloat16 runs slower than float32; the model stays float32")
        precision = "float32"
    if compile:
        model = compile_model(model, **(compile_kwargs or {}))
    # outermost, so that a compiled model is traced (and guarded) under the autocast state of its calls
    return run_in_precision(model, precision, device)


def apply_deploy_config(cfg, model: nn.Module) -> nn.Module:
    """`prepare_for_inference` with cfg.MODEL.RB_DEPLOY.{FUSE_BN, ONEDNN, WINOGRAD, KERNELS, CHANNELS_LAST,
    COMPILE, PRECISION}; call it after the weights are loaded, for evaluation / inference only (e.g. in train_net's eval-only
    branch, after DetectionCheckpointer(...).resume_or_load). With the True / False keys all off and PRECISION float32
    the model is returned untouched (not even put in eval mode). Use the returned module: torch.compile wraps the model."""
    d = cfg.MODEL.RB_DEPLOY
    options = {"fuse_bn": d.FUSE_BN, "onednn": d.ONEDNN, "winograd": d.WINOGRAD, "channels_last": d.CHANNELS_LAST,
               "compile": d.COMPILE}
    for key, value in options.items():
        check_choice(f"MODEL.RB_DEPLOY.{key.upper()}", value, (True, False))
    kernels = check_choice("MODEL.RB_DEPLOY.KERNELS", d.KERNELS, _kernels.MODES)
    precision = check_choice("MODEL.RB_DEPLOY.PRECISION", d.PRECISION, PRECISIONS)
    runtime = check_choice("MODEL.RB_DEPLOY.RUNTIME", d.RUNTIME, RUNTIMES)
    if not any(options.values()) and precision == "float32" and runtime == "torch":
        return model
    return prepare_for_inference(model, kernels=kernels, precision=precision, runtime=runtime, **options)
