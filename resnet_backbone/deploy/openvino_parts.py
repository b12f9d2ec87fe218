"""OpenVINO underneath the deploy path (`MODEL.RB_DEPLOY.RUNTIME openvino`): the backbone and the box head's
convolution-heavy parts run by OpenVINO's CPU plugin, the rest of the detector (anchors, proposal selection, RoI
pooling, box decoding, NMS) by detectron2 as always.

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

from ..engine import runtimes
from .precision import bf16_parts

__all__ = ["RUNTIMES", "openvino_parts"]

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "openvino")
STATIC_SHAPES = 8  # input shapes compiled with static shapes per part; later ones share one dynamic compilation
_COMPILED = "_rb_openvino"
# stay in torch: the RPN head takes a list of feature maps, the box predictor two small matrix products
_TORCH_PARTS = ("proposal_generator.rpn_head", "roi_heads.box_predictor")


class _Eager(nn.Module):
    """The part's own forward, for the ONNX export (the part's class forward is replaced)."""

    def __init__(self, part, forward):
        super().__init__()
        self.part, self.forward_of_class = part, forward

    def forward(self, x):
        return self.forward_of_class(self.part, x)


def _convert(part: nn.Module, eager_forward, x: torch.Tensor) -> dict:
    """The part as an OpenVINO model with batch, height and width free, and how to name its outputs."""
    with torch.no_grad():
        out = eager_forward(part, x)
    names = sorted(out) if isinstance(out, dict) else ["output"]
    dynamic = {"x": {0: "batch", 2: "height", 3: "width"}}
    with tempfile.TemporaryDirectory(prefix="rb_openvino_") as tmp:
        path = os.path.join(tmp, "part.onnx")
        with torch.no_grad():
            runtimes.export_onnx(_Eager(part, eager_forward).eval(), (x.float().contiguous(),), path,
                                 input_names=["x"], output_names=names, dynamic_axes=dynamic)
        model = runtimes.openvino_model(path)
    return {"model": model, "names": names, "dict": isinstance(out, dict), "shapes": {}}


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
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.numel() == 0 or (torch.is_grad_enabled()
                                                                                  and x.requires_grad):
            return eager_forward(self, x)
        cache: Dict = self.__dict__.get(_COMPILED)
        if cache is None:
            cache = self.__dict__[_COMPILED] = _convert(self, eager_forward, x)
        compiled = _compiled_for(cache, tuple(x.shape), precision)
        if compiled is cache.get("dynamic"):
            outputs = runtimes.run_session(compiled, [x.float().contiguous()])
        else:
            outputs = runtimes.run_openvino_into(compiled, x)
        return dict(zip(cache["names"], outputs)) if cache["dict"] else outputs[0]

    return forward


def _getstate(self):  # the compiled model is derived (and not copyable): rebuilt on the first call of a copy
    state = self.__dict__.copy()
    state.pop(_COMPILED, None)
    return state


def openvino_parts(model: nn.Module, precision: str = "float32") -> list:
    """Run `model`'s heavy parts (precision.bf16_parts but the RPN head and box predictor: backbone, res5 / box
    head; or the whole model) through OpenVINO in `precision` ("float32" or "bfloat16"), in place; returns the
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
