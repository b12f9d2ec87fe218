"""OpenVINO underneath the deploy path (`MODEL.RB_DEPLOY.RUNTIME openvino`): the backbone, the RPN head (on one
feature map: C4, VGG-16) and the box head's convolution-heavy parts run by OpenVINO's CPU plugin, the rest of the
detector (anchors, proposal selection, RoI pooling, box decoding, NMS) by detectron2 as always.

Measured by tools/benchmark.py ("plugin-deploy-openvino" / "plugin-deploy-bf16-openvino") because OpenVINO's
bfloat16 kernels (blocked layouts, AMX) ran the ResNet-101 backbone 1.6x faster than the packed oneDNN kernels
torch exposes (docs/speed.md). Each part is exported through ONNX on its first call, with its batch, height and
width left free, and compiled for the CPU in the deploy precision ("f32" or "bf16") with as many threads as torch
has at that moment: for each of its first STATIC_SHAPES input shapes with that shape fixed (faster), for later ones
once with free dimensions. Parameters stay in the module (state_dict, attributes unchanged); the compiled
model is derived and rebuilt after a copy. Inference only: no autograd through the part.
"""
import logging
import os
import tempfile
from typing import Dict

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..engine import runtimes
from .precision import bf16_parts

__all__ = ["RUNTIMES", "openvino_parts"]

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino")
STATIC_SHAPES = 8  # input shapes compiled with static shapes per part; later ones share one dynamic compilation
_COMPILED = "_rb_openvino"
# stays in torch: two small matrix products on the pooled features
_TORCH_PARTS = ("roi_heads.box_predictor",)


class _Eager(nn.Module):
    """The part's own forward on one tensor, for the ONNX export (the part's class forward is replaced); `listed`:
    the part takes a list of feature maps (the RPN head), here one."""

    def __init__(self, part, forward, listed: bool):
        super().__init__()
        self.part, self.forward_of_class, self.listed = part, forward, listed

    def forward(self, x):
        return self.forward_of_class(self.part, [x] if self.listed else x)


def _convert(part: nn.Module, eager_forward, x: torch.Tensor, listed: bool) -> dict:
    """The part as an OpenVINO model with batch, height and width free, and how to rebuild its outputs (tensors in
    dicts / lists / tuples, flattened in the order the ONNX exporter flattens them)."""
    eager = _Eager(part, eager_forward, listed).eval()
    with torch.no_grad():
        flat, spec = tree_flatten(eager(x))
    names = [f"output{i}" for i in range(len(flat))]
    dynamic = {"x": {0: "batch", 2: "height", 3: "width"}}
    with tempfile.TemporaryDirectory(prefix="rb_openvino_") as tmp:
        path = os.path.join(tmp, "part.onnx")
        with torch.no_grad():
            runtimes.export_onnx(eager, (x.float().contiguous(),), path, input_names=["x"], output_names=names,
                                 dynamic_axes=dynamic)
        model = runtimes.openvino_model(path)
    return {"model": model, "spec": spec, "shapes": {}}


def _compiled_for(cache: dict, shape: tuple, precision: str):
    """OpenVINO compiled for this input shape (static shapes run faster than dynamic ones) for the first
    STATIC_SHAPES shapes; for any later one, the dynamic model."""
    shapes = cache["shapes"]
    if shape not in shapes:
        if len(shapes) < STATIC_SHAPES:
            model = cache["model"].clone()
            model.reshape({"x": list(shape)})
            shapes[shape] = runtimes.openvino_compiled(model, precision, torch.get_num_threads())
        else:
            if "dynamic" not in cache:
                cache["dynamic"] = runtimes.openvino_compiled(cache["model"], precision, torch.get_num_threads())
            return cache["dynamic"]
    return shapes[shape]


def _openvino_forward(eager_forward, precision: str):
    def forward(self, x):
        listed = isinstance(x, (list, tuple)) and len(x) == 1
        t = x[0] if listed else x
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.numel() == 0 or (torch.is_grad_enabled()
                                                                                  and t.requires_grad):
            return eager_forward(self, x)
        cache: Dict = self.__dict__.get(_COMPILED)
        if cache is None:
            cache = self.__dict__[_COMPILED] = _convert(self, eager_forward, t, listed)
        compiled = _compiled_for(cache, tuple(t.shape), precision)
        if compiled is cache.get("dynamic"):
            outputs = runtimes.run_session(compiled, [t.float().contiguous()])
        else:
            outputs = runtimes.run_openvino_into(compiled, t)
        return tree_unflatten(outputs, cache["spec"])

    return forward


def _getstate(self):  # the compiled model is derived (and not copyable): rebuilt on the first call of a copy
    state = self.__dict__.copy()
    state.pop(_COMPILED, None)
    return state


def openvino_parts(model: nn.Module, precision: str = "float32") -> list:
    """Run `model`'s heavy parts (precision.bf16_parts but the box predictor: backbone, RPN head on one feature map,
    res5 / box head; or the whole model) through OpenVINO in `precision` ("float32" or "bfloat16"), in place; returns the
    names of the parts. ValueError when openvino is not installed or the precision is not one of those two."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"MODEL.RB_DEPLOY.RUNTIME openvino runs float32 or bfloat16, got precision {precision!r}")
    reason = runtimes.missing("openvino")
    if reason:
        raise ValueError(f"MODEL.RB_DEPLOY.RUNTIME openvino: {reason}")
    hint = "bf16" if precision == "bfloat16" else "f32"
    names = []
    for name, part in bf16_parts(model):
        if name in _TORCH_PARTS:
            continue
        cls = type(part)
        part.__class__ = type(f"OpenVINO{cls.__name__}", (cls,), {
            "forward": _openvino_forward(cls.forward, hint), "__getstate__": _getstate,
            "__module__": cls.__module__, "openvino_part": True})
        names.append(name or cls.__name__)
    logger.info("deploy: %s run by OpenVINO (%s)", ", ".join(names), hint)
    return names
