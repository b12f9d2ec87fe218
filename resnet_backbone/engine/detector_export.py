"""Export a detector the way detectron2's tools/deploy/export_model.py does, run the exported file, and measure it
against the eager model.

* "torchscript": `torch.jit.trace` of detectron2's `TracingAdapter` (GeneralizedRCNN through `inference(...,
  do_postprocess=False)`, as detectron2's tool), saved as model.ts and loaded back to run.
* "onnx": the same adapter through `torch.onnx.export` (TorchScript-based exporter, detectron2's stable opset), run
  by onnxruntime; the image's height and width are left free (dynamic axes).
* "openvino": that ONNX file read by OpenVINO and saved as its IR (model.xml + model.bin, float32 weights), run by
  OpenVINO on the CPU (engine/runtimes.py).
* "torch.export": the detector's backbone (normalised, padded input as the detector feeds it). The whole detector
  does not go through torch.export: detectron2's proposal and ROI post-processing branch on data
  (proposal_utils.find_top_rpn_proposals, `if not valid_mask.all()`), which it cannot capture
  (GuardOnDataDependentSymNode; draft_export fails a runtime assertion there). The program is exported for the
  sample's shape: torch.export specialises every dimension it is not told is dynamic.

Every detector export is also run on a second input size (the sample cropped to 3/4 of its height and width) and
compared with the eager model there: `ExportResult.other_size` says whether the file accepts other sizes. Beside
the exported file the tool writes sample.npy (the input it was checked on) and load_and_run.py: the few lines that
load and run the file in a fresh process with only its runtime installed (TorchScript: torch + torchvision, whose
NMS / RoI ops the traced detector calls; ONNX: onnxruntime; OpenVINO: openvino).

The deploy path's fused oneDNN / Winograd convolutions and torch.compile are eager-only (packed weights, C kernels and
compiled graphs that tracing cannot record): they are refused; the BN-folded model (MODEL.RB_DEPLOY.FUSE_BN) and
channels-last export.

Detections are compared after pairing each exported detection with the eager one of the same class closest in box
and score: detections with equal scores (RoI pooling maps nearby proposals to the same bins) may come out in
another order, which is the same result.
"""
import math
import os
import tempfile
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

from . import runtimes
from .export_scripts import LOAD_SCRIPT, write_load_script

__all__ = ["EAGER_ONLY_DEPLOY_KEYS", "FORMATS", "ExportResult", "check_exportable_config", "check_exportable_model",
           "compare_outputs", "export_model", "detector_adapter", "flat_output_names", "LOAD_SCRIPT"]

FORMATS = ("torchscript", "onnx", "openvino", "torch.export")
# MODEL.RB_DEPLOY keys whose modules only run eagerly
EAGER_ONLY_DEPLOY_KEYS = ("ONEDNN", "WINOGRAD", "COMPILE")
# the second input size every detector export is checked on, as a fraction of the sample's height and width
OTHER_SIZE = 0.75
_STATIC_BACKBONE = ("fixed to the sample's shape: torch.export specialises every dimension it is not told is "
                    "dynamic; export again for another input size")
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
    # the check on a second input size: {"size": [h, w], "max_abs_diff", "dynamic": bool, "note"}
    other_size: dict = field(default_factory=dict)
    load_script: Optional[str] = None  # load_and_run.py beside the export

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("instances")
        d["max_abs_diff"] = self.max_abs_diff if math.isfinite(self.max_abs_diff) else str(self.max_abs_diff)
        return d


def check_exportable_config(cfg):
    """Refuse the eager-only MODEL.RB_DEPLOY settings with a message naming them and what exports instead."""
    on = [f"MODEL.RB_DEPLOY.{k}" for k in EAGER_ONLY_DEPLOY_KEYS if cfg.MODEL.RB_DEPLOY[k]]
    if cfg.MODEL.RB_DEPLOY.RUNTIME != "torch":
        raise ValueError(f"MODEL.RB_DEPLOY.RUNTIME {cfg.MODEL.RB_DEPLOY.RUNTIME} cannot be exported (its parts run "
                         f"in OpenVINO already); export with RUNTIME torch, e.g. --format openvino.")
    if on:
        raise ValueError(f"{', '.join(on)} True cannot be exported: {_EAGER_ONLY}; {_EXPORTABLE}.")


def check_exportable_model(model: nn.Module):
    """Refuse a model holding the deploy path's eager-only modules (prepare_for_inference(onednn=True / compile))."""
    from ..deploy import OneDNNConv2d

    if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
        raise ValueError(f"a torch.compile'd model cannot be exported: {_EAGER_ONLY}; {_EXPORTABLE}.")
    fused = [name for name, m in model.named_modules() if isinstance(m, OneDNNConv2d)]
    underneath = [name for name, m in model.named_modules() if getattr(m, "openvino_part", False)]
    if underneath:
        raise ValueError(f"{underneath[0] or 'the model'} runs in OpenVINO (MODEL.RB_DEPLOY.RUNTIME openvino) and "
                         f"cannot be exported again; export the model with RUNTIME torch, e.g. --format openvino.")
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


def flat_output_names(outputs, prefix: str = "") -> List[str]:
    """Names of a TracingAdapter's flat outputs, in its order (lists / tuples by index where longer than one,
    dicts and Instances fields by sorted name, then an Instances' image size)."""
    if isinstance(outputs, (list, tuple)):
        return [n for i, v in enumerate(outputs)
                for n in flat_output_names(v, f"{prefix}{i}." if len(outputs) > 1 else prefix)]
    if isinstance(outputs, dict):
        return [n for k in sorted(outputs) for n in flat_output_names(outputs[k], f"{prefix}{k}.")]
    if isinstance(outputs, Instances):
        return flat_output_names(outputs.get_fields(), prefix) + [f"{prefix}image_size"]
    return [prefix.rstrip(".") or "output"]


def detector_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """detectron2's TracingAdapter of a detector on one image tensor (CHW float), as its export tool builds it."""
    # eval: exporters put a module back in the mode it had, and a new module is in training mode (which would
    # switch the detector to training for every call after the export)
    return TracingAdapter(model, [{"image": image}], _inference_func(model)).eval()


def _export_file(adapter, image, fmt, output_dir, names) -> Tuple[str, Callable]:
    """Write the adapter in `fmt`; (path, run(image) -> flat outputs of the written file)."""
    if fmt == "torchscript":
        path = os.path.join(output_dir, "model.ts")
        traced = torch.jit.trace(adapter, (image,))
        torch.jit.save(traced, path)
        dump_torchscript_IR(traced, output_dir)
        loaded = torch.jit.load(path)
        return path, lambda x: list(loaded(x))
    dynamic = {"image": {1: "height", 2: "width"}}
    if fmt == "onnx":
        path = os.path.join(output_dir, "model.onnx")
        runtimes.export_onnx(adapter, (image,), path, input_names=["image"], output_names=names, dynamic_axes=dynamic)
        session = runtimes.onnxruntime_session(path)
    else:
        path = os.path.join(output_dir, "model.xml")
        with tempfile.TemporaryDirectory(prefix="rb_export_") as tmp:  # the ONNX file OpenVINO reads
            onnx_path = os.path.join(tmp, "model.onnx")
            runtimes.export_onnx(adapter, (image,), onnx_path, input_names=["image"], output_names=names,
                                 dynamic_axes=dynamic)
            runtimes.openvino_model(onnx_path, path)
        session = runtimes.openvino_compiled(path, "f32")
    return path, lambda x: runtimes.run_session(session, [x])


def _other_size(adapter, run, image) -> dict:
    """Run the written file on the sample cropped to OTHER_SIZE of its sides and compare with the eager model."""
    h, w = (max(1, int(side * OTHER_SIZE)) for side in image.shape[1:])
    crop = image[:, :h, :w].contiguous()
    entry = {"size": [h, w]}
    try:
        worst, _, _ = compare_outputs(adapter.outputs_schema(adapter(crop)), adapter.outputs_schema(list(run(crop))))
    except Exception as e:  # a file fixed to the sample's size refuses other inputs
        reason = (str(e).strip().splitlines() or [""])[0]
        return dict(entry, max_abs_diff=None, dynamic=False, note=f"fails on {h}x{w}: {type(e).__name__} {reason}")
    dynamic = math.isfinite(worst) and worst <= 1e-3
    note = ("any input size (height and width are free)" if dynamic else
            f"not usable at other sizes: on {h}x{w} its outputs differ from the eager model's by {worst:.3g}")
    return dict(entry, max_abs_diff=worst if math.isfinite(worst) else str(worst), dynamic=dynamic, note=note)


def _export_backbone(model, inputs, output_dir) -> ExportResult:
    images = model.preprocess_image(inputs)  # normalised and padded, as the detector feeds its backbone
    x = images.tensor
    eager = model.backbone(x)
    path = os.path.join(output_dir, "backbone.pt2")
    program = torch.export.export(model.backbone, (x,))
    torch.export.save(program, path)
    out = torch.export.load(path).module()(x)
    worst, rows, _ = compare_outputs(eager, out)
    script = write_load_script("torch.export", output_dir, x, sorted(eager))
    return ExportResult("torch.export", "backbone", path, worst, None, rows,
                        other_size={"dynamic": False, "note": _STATIC_BACKBONE}, load_script=script)


def export_model(model: nn.Module, inputs: List[dict], fmt: str, output_dir: str) -> ExportResult:
    """Export `model` (eval mode, weights loaded) in `fmt` to `output_dir`, run the written file on `inputs`
    (one image: [{"image": CHW tensor in the model's input format, ...}]) and on a second size, compare with the
    eager model, and write load_and_run.py + sample.npy beside it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if len(inputs) != 1 or "image" not in inputs[0]:
        raise ValueError("export_model takes one sample: [{'image': CHW tensor}]")
    runtime = {"onnx": "onnx", "openvino": "openvino"}.get(fmt)
    if runtime and runtimes.missing(runtime):
        raise ValueError(f"--format {fmt} needs {runtimes.missing(runtime)}")
    check_exportable_model(model)
    os.makedirs(output_dir, exist_ok=True)
    model.eval()
    image = inputs[0]["image"]
    with torch.no_grad():
        if fmt == "torch.export":
            return _export_backbone(model, [{"image": image}], output_dir)
        adapter = detector_adapter(model, image)
        eager = adapter(image)
        names = flat_output_names(adapter.outputs_schema(eager))
        if len(names) != len(eager):
            names = [f"output{i}" for i in range(len(eager))]
        path, run = _export_file(adapter, image, fmt, output_dir, names)
        flat = run(image)
        reference, rebuilt = adapter.outputs_schema(eager), adapter.outputs_schema(list(flat))
        other = _other_size(adapter, run, image)
    worst, rows, detections = compare_outputs(reference, rebuilt)
    script = write_load_script(fmt, output_dir, image, names)
    return ExportResult(fmt, "detector", path, worst, detections, rows, rebuilt, other, script)
