"""OpenVINO underneath the deploy path (`MODEL.RB_DEPLOY.RUNTIME openvino`): the backbone, the RPN head (on one
feature map: C4, VGG-16) and the box head with the RoI pooling before it run by OpenVINO's CPU plugin, the rest of
the detector (anchors, proposal selection, box decoding, NMS, the box predictor's two small matrix products) by
detectron2 as always.

Measured by tools/benchmark.py ("plugin-deploy-openvino" / "plugin-deploy-bf16-openvino") because OpenVINO's
bfloat16 kernels (blocked layouts, AMX) ran the ResNet-101 backbone 1.6x faster than the packed oneDNN kernels
torch exposes (docs/speed.md). The RoI pooling goes into the box head's part (a C4 head: ROIAlign + res5 + the mean
over res5's 7x7 output, the only thing its box predictor reads; VGG-16: ROIPool + fc6 / fc7) because, run apart,
torchvision's RoIAlign on 300 RoIs of res4 took longer than the backbone, and res5's 300x1024x14x14 input crossing
from torch into OpenVINO cost more than OpenVINO's whole-detector graph spends there (profile in docs/speed.md).
Each part is exported through ONNX on its first call, with its batch, height and width (and the number of RoIs) left
free, and compiled for the CPU in the deploy precision ("f32" or "bf16") with as many threads as torch has at that
moment: for each of its first STATIC_SHAPES input shapes with that shape fixed (faster), for later ones once with
free dimensions. Parameters stay in the module (state_dict, attributes unchanged); the compiled model is derived and
rebuilt after a copy. Inference only: no autograd through the part.
"""
import logging
import os
import tempfile
from typing import Dict, List, Sequence

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
_POOLED = "_rb_openvino_pooled"  # the RoI heads' cache of their pooled-head part
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


class _PooledHead(nn.Module):
    """RoI pooling on one feature map and the box head after it, as one part for the export: (feature map, RoIs in
    the pooler's (N, 5) format) -> box features; `mean`: a C4 head's res5 output averaged over its 7x7 positions
    (kept 4-d, N x C x 1 x 1, so the caller's own mean over them is the identity)."""

    def __init__(self, pooler, head: nn.Module, head_forward, mean: bool):
        super().__init__()
        self.pooler, self.head, self.head_forward, self.mean = pooler, head, head_forward, mean

    def forward(self, feature, rois):
        x = self.head_forward(self.head, self.pooler.level_poolers[0](feature, rois))
        return x.mean(dim=(2, 3), keepdim=True) if self.mean else x


def _convert(eager: nn.Module, inputs: Sequence[torch.Tensor], dynamic: List[Dict[int, str]]) -> dict:
    """`eager` (called on `inputs`) as an OpenVINO model with the `dynamic` dimensions of each input free, and how
    to rebuild its outputs (tensors in dicts / lists / tuples, flattened in the order the ONNX exporter does)."""
    inputs = tuple(t.float().contiguous() for t in inputs)
    with torch.no_grad():
        flat, spec = tree_flatten(eager(*inputs))
    names = [f"output{i}" for i in range(len(flat))]
    input_names = [f"x{i}" for i in range(len(inputs))]
    with tempfile.TemporaryDirectory(prefix="rb_openvino_") as tmp:
        path = os.path.join(tmp, "part.onnx")
        with torch.no_grad():
            runtimes.export_onnx(eager, inputs, path, input_names=input_names, output_names=names,
                                 dynamic_axes=dict(zip(input_names, dynamic)))
        model = runtimes.openvino_model(path)
    return {"model": model, "spec": spec, "shapes": {}, "inputs": input_names}


def _compiled_for(cache: dict, shapes: tuple, precision: str):
    """OpenVINO compiled for these input shapes (static shapes run faster than dynamic ones) for the first
    STATIC_SHAPES of them; for any later ones, the dynamic model."""
    compiled = cache["shapes"]
    if shapes not in compiled:
        if len(compiled) < STATIC_SHAPES:
            model = cache["model"].clone()
            model.reshape({name: list(shape) for name, shape in zip(cache["inputs"], shapes)})
            compiled[shapes] = runtimes.openvino_compiled(model, precision, torch.get_num_threads())
        else:
            if "dynamic" not in cache:
                cache["dynamic"] = runtimes.openvino_compiled(cache["model"], precision, torch.get_num_threads())
            return cache["dynamic"]
    return compiled[shapes]


def _run(owner: nn.Module, key: str, make, inputs: Sequence[torch.Tensor], precision: str):
    """Run the part cached on `owner` under `key` (converted by make() -> (module, dynamic axes) on the first
    call) on `inputs`."""
    cache: Dict = owner.__dict__.get(key)
    if cache is None:
        eager, dynamic = make()
        cache = owner.__dict__[key] = _convert(eager.eval(), inputs, dynamic)
    compiled = _compiled_for(cache, tuple(tuple(t.shape) for t in inputs), precision)
    if compiled is cache.get("dynamic"):
        outputs = runtimes.run_session(compiled, [t.float().contiguous() for t in inputs])
    else:
        outputs = runtimes.run_openvino_into(compiled, inputs)
    return tree_unflatten(outputs, cache["spec"])


def _openvino_forward(eager_forward, precision: str):
    def forward(self, x):
        listed = isinstance(x, (list, tuple)) and len(x) == 1
        t = x[0] if listed else x
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.numel() == 0 or (torch.is_grad_enabled()
                                                                                  and t.requires_grad):
            return eager_forward(self, x)
        return _run(self, _COMPILED, lambda: (_Eager(self, eager_forward, listed), [{0: "batch", 2: "height",
                                                                                    3: "width"}]), [t], precision)

    return forward


def _pooled_inputs(heads, features: list, boxes: list):
    """(feature map, RoIs (N, 5)) for the pooled-head part, or None where it does not apply: training, gradients,
    no RoI."""
    from detectron2.modeling.poolers import convert_boxes_to_pooler_format

    if heads.training or torch.is_grad_enabled():
        return None
    rois = convert_boxes_to_pooler_format(boxes)
    return None if rois.numel() == 0 else [features[0], rois]


_POOLED_DYNAMIC = [{0: "batch", 2: "height", 3: "width"}, {0: "rois"}]


def _res5_roi_transform(cls, precision: str):
    """Res5ROIHeads._shared_roi_transform: ROIAlign + res5 + the mean the box predictor takes, in OpenVINO."""

    def _shared_roi_transform(self, features, boxes):
        inputs = _pooled_inputs(self, features, boxes)
        if inputs is None:
            return cls._shared_roi_transform(self, features, boxes)
        return _run(self, _POOLED, lambda: (_PooledHead(self.pooler, self.res5, type(self.res5).forward, True),
                                            _POOLED_DYNAMIC), inputs, precision)

    return {"_shared_roi_transform": _shared_roi_transform}


def _standard_forward_box(cls, precision: str):
    """StandardROIHeads._forward_box in inference: the box pooler + box head in OpenVINO, the predictor and its
    inference (detectron2's) after it, as detectron2's own inference branch does."""

    def _forward_box(self, features, proposals):
        inputs = _pooled_inputs(self, [features[f] for f in self.box_in_features], [p.proposal_boxes for p in
                                                                                   proposals])
        if inputs is None:
            return cls._forward_box(self, features, proposals)
        box_features = _run(self, _POOLED, lambda: (_PooledHead(self.box_pooler, self.box_head,
                                                                type(self.box_head).forward, False),
                                                    _POOLED_DYNAMIC), inputs, precision)
        pred_instances, _ = self.box_predictor.inference(self.box_predictor(box_features), proposals)
        return pred_instances

    return {"_forward_box": _forward_box}


def _pooled_head(model: nn.Module):
    """(RoI heads, the name of the head part they pool for, the method builder) where the RoI pooling and the box
    head can run as one part: one pooled feature map, and (C4) no mask head reading res5's full output."""
    from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads

    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, Res5ROIHeads) and len(heads.in_features) == 1 and not heads.mask_on:
        return heads, "roi_heads.res5", _res5_roi_transform
    if (isinstance(heads, StandardROIHeads) and len(heads.box_in_features) == 1 and heads.box_head is not None
            and not getattr(heads, "train_on_pred_boxes", False)):
        return heads, "roi_heads.box_head", _standard_forward_box
    return None, None, None


def _getstate(self):  # the compiled models are derived (and not copyable): rebuilt on the first call of a copy
    state = self.__dict__.copy()
    state.pop(_COMPILED, None)
    state.pop(_POOLED, None)
    return state


def _swap_class(module: nn.Module, methods: dict):
    cls = type(module)
    module.__class__ = type(f"OpenVINO{cls.__name__}", (cls,), {
        **methods, "__getstate__": _getstate, "__module__": cls.__module__, "openvino_part": True})


def openvino_parts(model: nn.Module, precision: str = "float32") -> list:
    """Run `model`'s heavy parts (precision.bf16_parts but the box predictor: backbone, RPN head on one feature map,
    res5 / box head, the latter with the RoI pooling before it where it pools one feature map; or the whole model)
    through OpenVINO in `precision` ("float32" or "bfloat16"), in place; returns the names of the parts. ValueError
    when openvino is not installed or the precision is not one of those two."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"MODEL.RB_DEPLOY.RUNTIME openvino runs float32 or bfloat16, got precision {precision!r}")
    reason = runtimes.missing("openvino")
    if reason:
        raise ValueError(f"MODEL.RB_DEPLOY.RUNTIME openvino: {reason}")
    hint = "bf16" if precision == "bfloat16" else "f32"
    heads, pooled_part, methods = _pooled_head(model)
    names = []
    if heads is not None:
        _swap_class(heads, methods(type(heads), hint))
        names.append(f"RoI pooling + {pooled_part.split('.')[-1]}")
    for name, part in bf16_parts(model):
        if name in _TORCH_PARTS or name == pooled_part:
            continue
        _swap_class(part, {"forward": _openvino_forward(type(part).forward, hint)})
        names.append(name or type(part).__name__)
    logger.info("deploy: %s run by OpenVINO (%s)", ", ".join(names), hint)
    return names
