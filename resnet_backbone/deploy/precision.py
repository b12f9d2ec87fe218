"""Reduced precision for inference and training.

* `prepare_bfloat16` (the CPU deploy path's bfloat16): the convolution-heavy parts of a model on bfloat16 weights
  converted once, run by the deploy path's packed oneDNN kernels (AMX where the CPU has it) with their fused
  epilogues; float32 in and out of each part, no autocast.
* `run_in_precision` / `autocast_forward`: a model's forward under `torch.autocast` (float16 / bfloat16; CUDA, and
  CPU models without the oneDNN path), for inference with float32 outputs, for a training step's forward only.

Autocast is what detectron2 documents for mixed-precision inference ("run inference under autocast()"): convolutions
and matrix products run in the low precision, while the ops autocast keeps in float32 (losses, softmax, RoIAlign,
NMS, box decoding) stay there, so a detector's boxes keep float32 coordinates. Weights stay float32 (autocast casts
them per call). Outputs are returned as float32, so code after the model sees the types it expects. Accuracy is
that of the low precision (about 1e-2 relative on a ResNet's features), not the 1e-4 of the float32 deploy path.
"""
import contextlib
import threading
from typing import Optional, Union

import torch
from torch import nn

__all__ = ["PRECISIONS", "BF16_PARTS", "precision_dtype", "precision_supported", "run_in_precision", "autocast_forward",
           "bf16_parts", "prepare_bfloat16", "native_bf16"]

PRECISIONS = ("float32", "float16", "bfloat16")
_state = threading.local()


def precision_dtype(precision: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """torch dtype of a precision name ("float32" / None -> None: no autocast); ValueError naming the allowed ones."""
    if isinstance(precision, torch.dtype):
        precision = str(precision).replace("torch.", "")
    if precision is None or precision == "float32":
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return getattr(torch, precision)


def precision_supported(device: Union[str, torch.device], precision: Union[str, torch.dtype, None]) -> bool:
    """Whether autocast runs `precision` on `device`: float16 on CUDA; bfloat16 on CUDA where the GPU has it and on
    CPU (fast where the CPU has bfloat16 instructions: AVX512-BF16 / AMX)."""
    dtype = precision_dtype(precision)
    device = torch.device(device)
    if dtype is None:
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (dtype == torch.float16 or torch.cuda.is_bf16_supported())
    return device.type == "cpu" and dtype == torch.bfloat16


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16): without them bfloat16 kernels convert
    in software and run slower than float32."""
    from .cache import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def _to_float32(obj):
    """Floating tensors (also inside dicts, lists, tuples, detectron2 Instances / Boxes) as float32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, dict):
        return type(obj)((k, _to_float32(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_to_float32(v) for v in obj)
    if hasattr(obj, "get_fields") and hasattr(obj, "set"):  # detectron2 Instances
        for name, value in list(obj.get_fields().items()):
            obj.set(name, _to_float32(value))
        return obj
    if hasattr(obj, "tensor") and isinstance(getattr(obj, "tensor"), torch.Tensor):  # detectron2 Boxes and kin
        obj.tensor = _to_float32(obj.tensor)
        return obj
    return obj


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _autocast_hooks(device_type: str, dtype: torch.dtype, cast_outputs: bool):
    """(pre-hook, hook) entering autocast before the module's forward and leaving it after (also when the forward
    raises); they close over the device type and dtype only, so deep copies of the module share them safely."""

    def enter(_module, _args):
        ctx = torch.autocast(device_type=device_type, dtype=dtype)
        ctx.__enter__()
        _stack().append(ctx)

    def leave(_module, _args, output):
        _stack().pop().__exit__(None, None, None)
        return _to_float32(output) if cast_outputs else None

    return enter, leave


_roi_pool_lib = []


def _roi_pool_under_cpu_autocast():
    """torchvision registers a CUDA autocast rule for roi_pool (run it in float32, return the input's dtype) but no
    CPU one, so under CPU autocast the paper's RoI pooling (ROIPool, the C4 configs' pooler) fails on bfloat16
    features with float32 boxes. Register the same rule for CPU, once, unless torchvision has one."""
    import torchvision  # noqa: F401  defines torchvision::roi_pool

    if _roi_pool_lib or torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::roi_pool", "AutocastCPU"):
        return
    lib = torch.library.Library("torchvision", "IMPL")

    def roi_pool_float32(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        with torch.autocast("cpu", enabled=False):
            out, argmax = torch.ops.torchvision.roi_pool(input.float(), rois.float(), spatial_scale, pooled_height,
                                                         pooled_width)
        return out.to(input.dtype), argmax

    lib.impl("roi_pool", roi_pool_float32, "AutocastCPU")
    _roi_pool_lib.append(lib)  # the registration lives as long as the Library object


def _checked(device, precision):
    dtype = precision_dtype(precision)
    device = torch.device(device)
    if dtype is not None and not precision_supported(device, dtype):
        raise ValueError(f"precision {str(dtype).replace('torch.', '')} is not supported on {device} (supported: "
                         f"{[p for p in PRECISIONS[1:] if precision_supported(device, p)] or 'none'})")
    if dtype is not None and device.type == "cpu":
        _roi_pool_under_cpu_autocast()
    return device, dtype


@contextlib.contextmanager
def autocast_forward(model: nn.Module, device: Union[str, torch.device], precision: Union[str, torch.dtype, None]):
    """Within the block, each call of `model` runs its forward under autocast(device, precision) and nothing else
    does: a training step's backward and optimizer step stay outside it, as torch.autocast's documentation asks.
    Outputs keep their types (losses come out of autocast in float32)."""
    device, dtype = _checked(device, precision)
    if dtype is None:
        yield model
        return
    enter, leave = _autocast_hooks(device.type, dtype, cast_outputs=False)
    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def run_in_precision(model: nn.Module, precision: Union[str, torch.dtype, None],
                     device: Union[str, torch.device]) -> nn.Module:
    """Make every call of `model` run under autocast(device, precision) with float32 outputs (forward hooks, so
    parameter names and the module stay as they are; deep copies keep it). "float32" / None: unchanged. Raises
    ValueError where autocast does not run that precision on that device."""
    device, dtype = _checked(device, precision)
    if dtype is None:
        return model
    if getattr(model, "_rb_precision", None) is not None:
        raise ValueError(f"the model already runs in {model._rb_precision} (run_in_precision was applied before)")
    enter, leave = _autocast_hooks(device.type, dtype, cast_outputs=True)
    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)
    model._rb_precision = str(dtype).replace("torch.", "")
    return model


# ---------------------------------------------------------------------------------------------------------------
# bfloat16 on weights converted once (CPU deploy path)
# ---------------------------------------------------------------------------------------------------------------

# the parts of a detectron2 detector that run in bfloat16: the convolution / matrix-product-heavy modules with
# tensor inputs; what lies between them (anchors, proposal selection, RoI pooling, box decoding, NMS) stays float32
BF16_PARTS = ("backbone", "proposal_generator.rpn_head", "roi_heads.res5", "roi_heads.box_head",
              "roi_heads.box_predictor")
# a part whose output stays bfloat16 when the part after it is bfloat16 too: the C4 head's res5 output on 1000 RoIs
# is 100M values, whose float32 copy (and the mean over it) cost as much memory traffic as res5's last layers
_KEEP_BF16 = {"roi_heads.res5": "roi_heads.box_predictor"}
_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)  # detectron2's Conv2d and the deploy path's OneDNNConv2d included


def _to_dtype(obj, dtype, only=torch.float32):
    """Tensors of dtype `only` (also inside dicts / lists / tuples) as `dtype`; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.dtype == only else obj
    if isinstance(obj, dict):
        return type(obj)((k, _to_dtype(v, dtype, only)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_to_dtype(v, dtype, only) for v in obj)
    return obj


def _enter_bf16(_module, args):
    return _to_dtype(args, torch.bfloat16)


def _leave_bf16(_module, _args, output):
    return _to_float32(output)


def _cast_input(module, args, kwargs):
    """Inputs of a bfloat16 layer in its dtype (a float32 op between two layers, e.g. a norm that was not folded,
    promotes its output to float32)."""
    dtype = module.weight.dtype
    return _to_dtype(args, dtype), _to_dtype(kwargs, dtype)


def bf16_parts(model: nn.Module) -> list:
    """(name, module) of the parts `prepare_bfloat16` runs in bfloat16: BF16_PARTS where the model has them,
    else the whole model (a backbone or classifier)."""
    parts = []
    for path in BF16_PARTS:
        try:
            parts.append((path, model.get_submodule(path)))
        except AttributeError:
            continue
    return parts or [("", model)]


def prepare_bfloat16(model: nn.Module) -> nn.Module:
    """Run the heavy parts of an inference model (`bf16_parts`) in bfloat16 on weights converted once: every
    Conv2d / Linear weight and bias in them becomes bfloat16 (the deploy path's OneDNNConv2d then packs it once into
    oneDNN's layout and runs bfloat16 kernels, AMX where the CPU has it, with its fused epilogue), each part casts
    its float32 inputs to bfloat16 on entry and its outputs to float32 on exit (except res5's, which goes to the
    bfloat16 box predictor as it is, when no mask head reads it). No autocast, no per-call weight
    casts. Call it after fold_batchnorm / fuse_onednn (the folding is done in float64, rounded once to bfloat16).
    Modifies the model in place; ValueError if it already runs in a reduced precision."""
    if getattr(model, "_rb_precision", None) is not None:
        raise ValueError(f"the model already runs in {model._rb_precision}")
    parts = dict(bf16_parts(model))
    mask_on = getattr(getattr(model, "roi_heads", None), "mask_on", False)  # the mask head reads res5's output too
    for path, part in parts.items():
        for layer in part.modules():
            if not isinstance(layer, _WEIGHT_LAYERS) or layer.weight.dtype != torch.float32:
                continue
            for name in ("weight", "bias"):
                p = getattr(layer, name)
                if p is not None:
                    setattr(layer, name, nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
            if type(layer).__name__ != "OneDNNConv2d":  # it casts its own input (onednn.py)
                layer.register_forward_pre_hook(_cast_input, with_kwargs=True)
        part.register_forward_pre_hook(_enter_bf16)
        if not (_KEEP_BF16.get(path) in parts and not mask_on):
            part.register_forward_hook(_leave_bf16, always_call=True)
    model._rb_precision = "bfloat16"
    return model
