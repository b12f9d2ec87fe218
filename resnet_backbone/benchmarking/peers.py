"""The engines a user deploying on a CPU would compare the deploy path with, built from the group's reference model
(same weights) and called on the same inputs as every other contender:

* ``openvino-fp32`` / ``openvino-bf16``: OpenVINO on the CPU, inference precision f32 / bf16 (bf16 only where the CPU
  has bfloat16 instructions, OpenVINO's "BF16" capability), reading the ONNX file below, reshaped to the input's
  shape (what OpenVINO's tutorials do for a fixed-size deployment);
* ``onnxruntime-fp32``: ONNX Runtime's CPU provider on the model exported by torch.onnx (for a detector: the same
  TracingAdapter export as tools/export_model.py --format onnx);
* ``inductor-freezing``: torch.compile (inductor) with freezing (weights folded into the compiled graph as
  constants, inductor's inference mode); for a detector the backbone and the heads (RPN head, res5 / box head) are
  compiled, the data-dependent proposal and box post-processing stay eager (they break graphs).

ONNX Runtime and OpenVINO run with as many threads as torch. A peer whose package is missing (or whose build fails)
is skipped with the reason, which the benchmark prints.
"""
import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn

from ..engine import runtimes

__all__ = ["PEERS", "Peers", "backbone_peers", "detector_peers"]

logger = logging.getLogger(__name__)

PEERS = ("openvino", "onnxruntime", "inductor")
# detector parts torch.compile gets (owner path, attribute): the convolution-heavy modules with tensor inputs
_COMPILED_PARTS = (("", "backbone"), ("proposal_generator", "rpn_head"), ("roi_heads", "res5"),
                   ("roi_heads", "box_head"))


@dataclass
class Peers:
    calls: Dict[str, Callable] = field(default_factory=dict)  # contender name -> callable like the eager model
    skipped: Dict[str, str] = field(default_factory=dict)  # peer -> why it is not measured


class _BackboneSession:
    """An ONNX Runtime session / compiled OpenVINO model called like the backbone: x -> {feature name: tensor}."""

    def __init__(self, session, names: List[str]):
        self.session, self.names = session, names

    def __call__(self, x):
        return dict(zip(self.names, runtimes.run_session(self.session, [x])))


class _DetectorSession:
    """A session over the TracingAdapter export called like the detector: [{"image": ...}] -> [{"instances": ...}]
    (raw detections in the input's coordinates, as the eager model gives them for an input fed at its size)."""

    def __init__(self, session, adapter):
        self.session, self.adapter = session, adapter

    def __call__(self, inputs):
        out = []
        for item in inputs:
            flat = runtimes.run_session(self.session, [item["image"].float()])
            out.extend(self.adapter.outputs_schema(flat))
        return out


def _openvino_sessions(onnx_path: str, shapes: Dict[str, list], threads: int, wrap, peers: Peers):
    model = runtimes.openvino_model(onnx_path)
    model.reshape(shapes)
    precisions = ["f32"]
    if runtimes.openvino_has_bf16():
        precisions.append("bf16")
    else:
        peers.skipped["openvino-bf16"] = "the CPU has no bfloat16 instructions (OpenVINO capability BF16)"
    for precision in precisions:
        peers.calls[f"openvino-{'fp32' if precision == 'f32' else precision}"] = wrap(
            runtimes.openvino_compiled(model, precision, threads))


def _runtime_peers(wanted, export, shapes, wrap, workdir: str) -> Peers:
    """ONNX Runtime / OpenVINO peers over one ONNX export (export(path) writes it)."""
    peers = Peers()
    usable = {p: runtimes.missing(p) for p in ("onnxruntime", "openvino") if p in wanted}
    for p, reason in usable.items():
        if reason:
            peers.skipped[p] = reason
    if not any(reason is None for reason in usable.values()):
        return peers
    path = os.path.join(workdir, "model.onnx")
    try:
        export(path)
    except Exception as e:  # an export failure skips both, with the reason
        for p in usable:
            peers.skipped.setdefault(p, f"ONNX export failed: {type(e).__name__}: {e}")
        return peers
    threads = torch.get_num_threads()
    for p, reason in usable.items():
        if reason:
            continue
        try:
            if p == "onnxruntime":
                peers.calls["onnxruntime-fp32"] = wrap(runtimes.onnxruntime_session(path, threads))
            else:
                _openvino_sessions(path, shapes, threads, wrap, peers)
        except Exception as e:
            peers.skipped[p] = f"{type(e).__name__}: {e}"
    return peers


def _compiled(module: nn.Module) -> nn.Module:
    return torch.compile(module, options={"freezing": True})


def _inductor_missing() -> str:
    if getattr(torch, "compile", None) is None:
        return f"torch {torch.__version__} has no torch.compile"
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as e:  # ImportError in torch builds without it, RuntimeError without a compiler
        return f"inductor needs a C++ compiler ({type(e).__name__}: {e})"
    return ""


def backbone_peers(model: nn.Module, x: torch.Tensor, wanted: Sequence[str], workdir: str) -> Peers:
    """The peers of an eval-mode backbone (x -> {name: feature}) on input x."""
    with torch.no_grad():
        names = list(model(x))

    def export(path):
        runtimes.export_onnx(model, (x,), path, input_names=["x"], output_names=names, dynamic_axes={})

    peers = _runtime_peers(wanted, export, {"x": list(x.shape)}, lambda s: _BackboneSession(s, names), workdir)
    if "inductor" in wanted:
        reason = _inductor_missing()
        if reason:
            peers.skipped["inductor"] = reason
        else:
            peers.calls["inductor-freezing"] = _compiled(copy.deepcopy(model))
    return peers


def detector_peers(model: nn.Module, inputs: List[dict], wanted: Sequence[str], workdir: str) -> Peers:
    """The peers of an eval-mode detectron2 detector on `inputs` (images of one size)."""
    from ..engine.detector_export import detector_adapter, flat_output_names

    image = inputs[0]["image"].float()
    adapter = detector_adapter(model, image)
    with torch.no_grad():
        flat = adapter(image)  # sets adapter.outputs_schema
        names = flat_output_names(adapter.outputs_schema(flat))

    def export(path):
        with torch.no_grad():
            runtimes.export_onnx(adapter, (image,), path, input_names=["image"], output_names=names,
                                 dynamic_axes={"image": {1: "height", 2: "width"}})

    peers = _runtime_peers(wanted, export, {"image": list(image.shape)}, lambda s: _DetectorSession(s, adapter),
                           workdir)
    if "inductor" in wanted:
        reason = _inductor_missing()
        if reason:
            peers.skipped["inductor"] = reason
        else:
            compiled = copy.deepcopy(model)
            for owner_path, attr in _COMPILED_PARTS:
                owner = compiled.get_submodule(owner_path) if owner_path else compiled
                part = getattr(owner, attr, None)
                if isinstance(part, nn.Module):
                    setattr(owner, attr, _compiled(part))
            peers.calls["inductor-freezing"] = compiled
    return peers
