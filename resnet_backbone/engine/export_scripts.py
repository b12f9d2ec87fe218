"""load_and_run.py, written beside every export: the few lines that load the exported file and run it on the
sample it was checked on (sample.npy), in a fresh process with only the runtime installed: no detectron2, no
resnet_backbone (tests/test_export.py runs exactly this file with both made unimportable).

Each script prints one line per output, "<name> <shape>".
"""
import os
from typing import Sequence

import numpy as np
import torch

from ..utils.atomic import atomic_write, atomic_write_text

__all__ = ["LOAD_SCRIPT", "SAMPLE", "write_load_script"]

LOAD_SCRIPT = "load_and_run.py"
SAMPLE = "sample.npy"

_HEAD = '''"""Load the {what} exported by tools/export_model.py and run it on {sample}.

Needs only {needs}:

    python {script}
"""
import os

import numpy as np
{imports}
HERE = os.path.dirname(os.path.abspath(__file__))
{input_doc}
{input_name} = np.load(os.path.join(HERE, "{sample}"))
'''

_BODIES = {
    "torchscript": dict(
        what="detector (TorchScript, model.ts)", needs="torch and torchvision",
        imports="import torch\nimport torchvision  # noqa: F401  first: it registers the NMS / RoI ops the traced "
                "detector calls\n",
        body='''model = torch.jit.load(os.path.join(HERE, "model.ts"))
outputs = model(torch.from_numpy(image))
for name, value in zip({names!r}, outputs):
    print(name, list(value.shape))
'''),
    "onnx": dict(
        what="detector (ONNX, model.onnx)", needs="onnxruntime (and numpy, which it installs)",
        imports="import onnxruntime\n",
        body='''session = onnxruntime.InferenceSession(os.path.join(HERE, "model.onnx"),
                                       providers=["CPUExecutionProvider"])
outputs = session.run(None, {{"image": image}})
for meta, value in zip(session.get_outputs(), outputs):
    print(meta.name, list(value.shape))
'''),
    "openvino": dict(
        what="detector (OpenVINO IR, model.xml + model.bin)", needs="openvino (and numpy, which it installs)",
        imports="import openvino\n",
        body='''# float32, as the export was checked: on CPUs with bfloat16 instructions OpenVINO's default is
# "bf16" (faster, about 1e-2 relative; detections near the score threshold may differ)
config = {{"INFERENCE_PRECISION_HINT": "f32"}}
compiled = openvino.Core().compile_model(os.path.join(HERE, "model.xml"), "CPU", config)
result = compiled(image)
for output in compiled.outputs:
    print(output.get_any_name(), list(result[output].shape))
'''),
    "torch.export": dict(
        what="backbone (torch.export, backbone.pt2)", needs="torch",
        imports="import torch\n",
        body='''program = torch.export.load(os.path.join(HERE, "backbone.pt2"))
features = program.module()(torch.from_numpy(x))
for name in {names!r}:
    print(name, list(features[name].shape))
'''),
}

_INPUTS = {
    "detector": ("image", "# one image, 3 x H x W float32 in the detector's input format (BGR or RGB, 0-255), resized "
                          "as its test loader resizes;\n# any H and W for ONNX / OpenVINO (export_report.json: "
                          "other_size)"),
    "backbone": ("x", "# N x 3 x H x W float32, normalised and padded as the detector feeds its backbone, of the "
                      "sample's shape"),
}


def write_load_script(fmt: str, output_dir: str, sample: torch.Tensor, names: Sequence[str]) -> str:
    """Write sample.npy (the checked input) and load_and_run.py for `fmt` to `output_dir`; returns the script's
    path. `names`: the outputs in the exported file's order (the backbone's feature names for torch.export)."""
    if fmt not in _BODIES:
        raise ValueError(f"no load script for format {fmt!r}; allowed: {', '.join(_BODIES)}")
    spec = _BODIES[fmt]
    input_name, input_doc = _INPUTS["backbone" if fmt == "torch.export" else "detector"]
    with atomic_write(os.path.join(output_dir, SAMPLE)) as f:
        np.save(f, sample.detach().cpu().float().numpy())
    text = _HEAD.format(what=spec["what"], sample=SAMPLE, needs=spec["needs"], script=LOAD_SCRIPT,
                        imports=spec["imports"], input_doc=input_doc, input_name=input_name)
    text += spec["body"].format(names=list(names))
    path = os.path.join(output_dir, LOAD_SCRIPT)
    atomic_write_text(path, text)
    return path
