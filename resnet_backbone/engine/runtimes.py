"""The deployment runtimes the export tool and the benchmark run a model in: ONNX (written by torch.onnx's
TorchScript-based exporter), ONNX Runtime and OpenVINO. One place, so that the exported file a user gets and the
peer the benchmark times are the same thing.

OpenVINO reads the ONNX file (`openvino.convert_model`), as its detectron2 tutorial does with a TracingAdapter
model; its IR is saved with float32 weights (`compress_to_fp16=False`: the default would store float16 weights and
lose the 1e-4 agreement with the eager model). Precision "bf16" is OpenVINO's inference precision hint: on CPUs
with bfloat16 instructions it runs the convolutions and matrix products in bfloat16 (weights converted once, at
compile time).
"""
import importlib.util
import inspect
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["ONNX_OPSET", "missing", "export_onnx", "onnxruntime_session", "openvino_model", "openvino_compiled",
           "openvino_has_bf16", "run_session", "run_openvino_into"]

# detectron2's STABLE_ONNX_OPSET_VERSION (not in detectron2 v0.6, whose export tool also used 11)
ONNX_OPSET = 11
_PACKAGES = {"onnx": ("onnx", "onnxruntime"), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


def missing(runtime: str) -> Optional[str]:
    """Why `runtime` ("onnx", "onnxruntime", "openvino") cannot run here, or None when it can."""
    absent = [p for p in _PACKAGES[runtime] if importlib.util.find_spec(p) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e .[deploy])"
    return None


def export_onnx(module, args: tuple, path: str, *, input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Dict[str, Dict[int, str]]):
    """torch.onnx.export with the TorchScript-based exporter (it knows torchvision's RoI ops), detectron2's opset;
    `dynamic_axes` names the input / output dimensions left free (e.g. an image's height and width)."""
    kwargs = {"opset_version": ONNX_OPSET, "input_names": list(input_names), "output_names": list(output_names),
              "dynamic_axes": dynamic_axes}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    torch.onnx.export(module, args, path, **kwargs)


def onnxruntime_session(path: str, threads: Optional[int] = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def openvino_model(onnx_path: str, xml_path: Optional[str] = None):
    """The OpenVINO model read from an ONNX file; saved as IR (xml + bin, float32 weights) when xml_path is given."""
    import openvino

    model = openvino.convert_model(onnx_path)
    if xml_path:
        openvino.save_model(model, xml_path, compress_to_fp16=False)
    return model


def openvino_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_compiled(model, precision: str = "f32", threads: Optional[int] = None):
    """`model` (an OpenVINO model or an IR path) compiled for the CPU in "f32" or "bf16", latency mode."""
    import openvino

    if precision not in ("f32", "bf16"):
        raise ValueError(f"OpenVINO precision must be 'f32' or 'bf16', got {precision!r}")
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return openvino.Core().compile_model(model, "CPU", config)


def run_openvino_into(compiled, inputs) -> List[torch.Tensor]:
    """Run a compiled OpenVINO model with static shapes on float32 tensors (one, or a sequence in the model's input
    order), its outputs written straight into new torch tensors (no copy of OpenVINO's buffers: a C4 head's res5
    output on 1000 RoIs is 400 MB)."""
    import openvino

    request = compiled.create_infer_request()
    outputs = [torch.empty(tuple(o.get_shape()), dtype=torch.float32) for o in compiled.outputs]
    for i, t in enumerate(outputs):
        request.set_output_tensor(i, openvino.Tensor(t.numpy(), shared_memory=True))
    for i, x in enumerate([inputs] if isinstance(inputs, torch.Tensor) else inputs):
        request.set_input_tensor(i, openvino.Tensor(x.detach().float().contiguous().numpy(), shared_memory=True))
    request.infer()
    return outputs


def run_session(session, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Run an ONNX Runtime session or a compiled OpenVINO model on tensors; its outputs as tensors (copies: the
    runtime reuses its buffers on the next call)."""
    arrays = [t.detach().cpu().numpy() for t in inputs]
    if hasattr(session, "get_inputs"):  # ONNX Runtime
        names = [i.name for i in session.get_inputs()]
        outputs = session.run(None, dict(zip(names, arrays)))
    else:
        result = session(arrays)
        outputs = [result[o] for o in session.outputs]
    return [torch.from_numpy(np.array(o, copy=True)) for o in outputs]
