"""Export a detector the way detectron2's tools/deploy/export_model.py does, run the exported file, and measure it
against the eager model.

* "torchscript": `torch.jit.trace` of detectron2's `TracingAdapter` (GeneralizedRCNN through `inference(...,
  do_postprocess=False)`, as detectron2's tool), saved as model.ts and loaded back to run.
* "onnx": the same adapter through `torch.onnx.export` (TorchScript-based exporter, detectron2's stable opset), run
  by onnxruntime.
* "torch.export": the detector's backbone (normalised, padded input as the detector feeds it). The whole detector
  does not go through torch.export: detectron2's proposal and ROI post-processing branch on data
  (proposal_utils.find_top_rpn_proposals, `if not valid_mask.all()`), which it cannot capture
  (GuardOnDataDependentSymNode; draft_export fails a runtime assertion there).

The deploy path's fused oneDNN / Winograd convolutions and torch.compile are eager-only (packed weights, C kernels and
compiled graphs that tracing cannot record): they are refused; the BN-folded model (MODEL.RB_DEPLOY.FUSE_BN) and
channels-last export.

Detections are compared after pairing each exported detection with the eager one of the same class closest in box
and score: detections with equal scores (RoI pooling maps nearby proposals to the same bins) may come out in
another order, which is the same result.
"""
import inspect
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
try:
    from detectron2.export import TracingAdapter, dump_torchscript_IR
except ImportError as e:  # v0.6's export package imports caffe2, which PyTorch no longer ships
    raise ImportError(f"detectron2.export does not import with this detectron2 ({e}); export needs a current "
                      f"detectron2 (main), e.g. `python tools/setup_env.py --detectron2-source ...`") from e
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = ["EAGER_ONLY_DEPLOY_KEYS", "FORMATS", "ExportResult", "check_exportable_config", "check_exportable_model",
           "compare_outputs", "export_model"]

FORMATS = ("torchscript", "onnx", "torch.export")
# MODEL.RB_DEPLOY keys whose modules only run eagerly
EAGER_ONLY_DEPLOY_KEYS = ("ONEDNN", "WINOGRAD", "COMPILE")
# detectron2's STABLE_ONNX_OPSET_VERSION (not in detectron2 v0.6, whose export tool also used 11)
ONNX_OPSET = 11
_EAGER_ONLY = ("the deploy path's fused oneDNN / Winograd convolutions and torch.compile are eager-only (packed "
               "weights, C kernels and compiled graphs that tracing cannot record)")
_EXPORTABLE = ("export the BN-folded model instead: MODEL.RB_DEPLOY.FUSE_BN True (and CHANNELS_LAST if wanted) with "
               "ONEDNN, WINOGRAD and COMPILE False")


@dataclass
class ExportResult:
    """What `export_model` wrote and measured: `max_abs_diff` is the largest absolute difference between an output
    of the exported file and the eager model's (inf when they do not have the same detections)."""

    format: str
    exported: str  # "detector" or "backbone"
    path: str
    max_abs_diff: float
    detections: Optional[int] = None  # detections the eager model returned (None for the backbone)
    outputs: List[Tuple[str, List[int], float]] = field(default_factory=list)  # (name, shape, max abs diff)
    instances: Optional[List[dict]] = None  # the exported model's raw outputs, rebuilt (not in to_dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("instances")
        d["max_abs_diff"] = self.max_abs_diff if math.isfinite(self.max_abs_diff) else str(self.max_abs_diff)
        return d


def check_exportable_config(cfg):
    """Refuse the eager-only MODEL.RB_DEPLOY settings with a message naming them and what exports instead."""
    on = [f"MODEL.RB_DEPLOY.{k}" for k in EAGER_ONLY_DEPLOY_KEYS if cfg.MODEL.RB_DEPLOY.get(k, False)]
    if on:
        raise ValueError(f"{', '.join(on)} True cannot be exported: {_EAGER_ONLY}; {_EXPORTABLE}.")


def check_exportable_model(model: nn.Module):
    """Refuse a model holding the deploy path's eager-only modules (prepare_for_inference(onednn=True / compile))."""
    from ..deploy import OneDNNConv2d

    if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
        raise ValueError(f"a torch.compile'd model cannot be exported: {_EAGER_ONLY}; {_EXPORTABLE}.")
    fused = [name for name, m in model.named_modules() if isinstance(m, OneDNNConv2d)]
    if fused:
        raise ValueError(f"the model holds {len(fused)} fused oneDNN / Winograd convolutions (e.g. {fused[0]}), "
                         f"which cannot be exported: {_EAGER_ONLY}; {_EXPORTABLE}.")


def _inference_func(model) -> Optional[Callable]:
    if isinstance(model, GeneralizedRCNN):
        # as detectron2's export tool: raw boxes / masks (no resize to the original image), which deployment does
        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

        return inference
    return None  # RetinaNet and others: the model's own forward


def _pairing(eager: Instances, exported: Instances) -> Optional[torch.Tensor]:
    """Index into `exported` for each eager detection: same class, closest box and score; None if counts differ."""
    if len(eager) != len(exported):
        return None
    if not eager.has("pred_boxes") or len(eager) == 0:
        return torch.arange(len(eager))
    cost = (eager.pred_boxes.tensor[:, None] - exported.pred_boxes.tensor[None]).abs().amax(-1)
    if eager.has("scores"):
        cost = torch.maximum(cost, (eager.scores[:, None] - exported.scores[None]).abs())
    if eager.has("pred_classes"):
        cost = cost.masked_fill(eager.pred_classes[:, None] != exported.pred_classes[None], math.inf)
    taken = torch.zeros(len(exported), dtype=torch.bool)
    index = []
    for row in cost:
        j = int(row.masked_fill(taken, math.inf).argmin())
        taken[j] = True
        index.append(j)
    return torch.tensor(index, dtype=torch.long)


def _tensor(value) -> Optional[torch.Tensor]:
    if isinstance(value, Boxes):
        return value.tensor
    return value if isinstance(value, torch.Tensor) else None


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def compare_outputs(eager, exported, prefix="") -> Tuple[float, List[Tuple[str, List[int], float]], int]:
    """(max abs diff, [(output, shape, diff)], detections) between two outputs of the same structure (lists,
    dicts, Instances, Boxes, tensors); Instances fields are compared after pairing the detections."""
    rows: List[Tuple[str, List[int], float]] = []
    detections = 0
    if isinstance(eager, (list, tuple)):
        if not isinstance(exported, (list, tuple)) or len(eager) != len(exported):
            return math.inf, [(prefix or "outputs", [], math.inf)], 0
        for i, (a, b) in enumerate(zip(eager, exported)):
            _, r, n = compare_outputs(a, b, f"{prefix}[{i}]")
            rows += r
            detections += n
    elif isinstance(eager, dict):
        for k in eager:
            _, r, n = compare_outputs(eager[k], exported.get(k) if isinstance(exported, dict) else None,
                                      f"{prefix}.{k}" if prefix else str(k))
            rows += r
            detections += n
    elif isinstance(eager, Instances):
        detections = len(eager)
        index = _pairing(eager, exported) if isinstance(exported, Instances) else None
        for name, value in eager.get_fields().items():
            a = _tensor(value)
            if a is None:
                continue
            b = _tensor(exported.get(name)) if index is not None and exported.has(name) else None
            rows.append((f"{prefix}.{name}", list(a.shape), _diff(a, b[index]) if b is not None else math.inf))
        if index is None:
            rows.append((f"{prefix} (detections)", [len(eager)], math.inf))
    else:
        a, b = _tensor(eager), _tensor(exported)
        if a is not None:
            rows.append((prefix or "output", list(a.shape), _diff(a, b) if b is not None else math.inf))
    worst = max((r[2] for r in rows), default=0.0)
    return worst, rows, detections


def _onnx_export(module, args, path):
    kwargs = {"opset_version": ONNX_OPSET}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter, which knows torchvision's RoI ops
    torch.onnx.export(module, args, path, **kwargs)


def _run_onnx(path, image: torch.Tensor) -> List[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})
    return [torch.from_numpy(o) for o in outputs]


def _export_backbone(model, inputs, output_dir) -> ExportResult:
    images = model.preprocess_image(inputs)  # normalised and padded, as the detector feeds its backbone
    x = images.tensor
    eager = model.backbone(x)
    path = os.path.join(output_dir, "backbone.pt2")
    program = torch.export.export(model.backbone, (x,))
    torch.export.save(program, path)
    out = torch.export.load(path).module()(x)
    worst, rows, _ = compare_outputs(eager, out)
    return ExportResult("torch.export", "backbone", path, worst, None, rows)


def export_model(model: nn.Module, inputs: List[dict], fmt: str, output_dir: str) -> ExportResult:
    """Export `model` (eval mode, weights loaded) in `fmt` to `output_dir`, run the written file on `inputs`
    (one image: [{"image": CHW tensor in the model's input format, ...}]) and compare with the eager model."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if len(inputs) != 1 or "image" not in inputs[0]:
        raise ValueError("export_model takes one sample: [{'image': CHW tensor}]")
    check_exportable_model(model)
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    image = inputs[0]["image"]
    with torch.no_grad():
        if fmt == "torch.export":
            return _export_backbone(model, [{"image": image}], output_dir)
        adapter = TracingAdapter(model, [{"image": image}], _inference_func(model))
        eager = adapter(image)
        if fmt == "torchscript":
            path = os.path.join(output_dir, "model.ts")
            traced = torch.jit.trace(adapter, (image,))
            torch.jit.save(traced, path)
            dump_torchscript_IR(traced, output_dir)
            flat = torch.jit.load(path)(image)
        else:
            path = os.path.join(output_dir, "model.onnx")
            _onnx_export(adapter, (image,), path)
            flat = _run_onnx(path, image)
        reference, rebuilt = adapter.outputs_schema(eager), adapter.outputs_schema(list(flat))
    worst, rows, detections = compare_outputs(reference, rebuilt)
    return ExportResult(fmt, "detector", path, worst, detections, rows, rebuilt)
