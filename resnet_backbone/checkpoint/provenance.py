"""Where pretrained weights come from and what input they expect, as data.

Weights carry no record of how their training images were normalised, nor (for bottleneck ResNets) where the
stride-2 sits: the tensors have the same shapes either way. Getting either wrong costs accuracy silently, so every
converted file gets a JSON file beside it (`provenance_path`) that says: source, pixel mean / std, channel order,
input range and stride placement.
"""
import dataclasses
import json
import os
import re
from typing import Any, Dict, Optional, Tuple

from ..utils.atomic import atomic_write_text
from ..data.transforms import CIFAR10_PAPER, IMAGENET_PAPER, IMAGENET_TORCHVISION, Preprocessing
from ..modeling.options import check_choice

__all__ = ["Provenance", "PROVENANCE", "KNOWN_SOURCES", "get_provenance", "known_source", "provenance_for",
           "provenance_path", "read_provenance", "write_provenance"]

PROVENANCE_SUFFIX = ".provenance.json"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a set of weights expects.

    source: a key of PROVENANCE (or a free name for weights of another origin).
    preprocessing: pixel mean / std, channel order and input range (data.transforms.Preprocessing).
    stride_in_1x1: bottleneck ResNets only: True = stride 2 in the first 1x1 conv (paper, MSRA, detectron2's
        STRIDE_IN_1X1=True), False = in the 3x3 conv (torchvision); None where it does not apply (VGG, basic
        blocks) or is unknown.
    """

    source: str
    description: str
    preprocessing: Preprocessing
    stride_in_1x1: Optional[bool]
    reference: str = ""

    def replace(self, **changes) -> "Provenance":
        return dataclasses.replace(self, **changes)

    def detectron2_settings(self) -> Dict[str, Any]:
        """The detectron2 config values these weights need (pixels in [0, 255], INPUT.FORMAT channel order)."""
        settings = dict(self.preprocessing.as_detectron2())
        if self.stride_in_1x1 is not None:
            settings["MODEL.RESNETS.STRIDE_IN_1X1"] = self.stride_in_1x1
        return settings

    def to_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "description": self.description,
            **self.preprocessing.to_dict(),
            "stride_in_1x1": self.stride_in_1x1,
            "reference": self.reference,
            "detectron2": self.detectron2_settings(),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Provenance":
        fields = {f.name for f in dataclasses.fields(Preprocessing)}
        missing = [k for k in ("source", *sorted(fields), "stride_in_1x1") if k not in d]
        if missing:
            raise ValueError(f"provenance record lacks {missing}; it has {sorted(d)}")
        return cls(source=d["source"], description=d.get("description", ""),
                   preprocessing=Preprocessing.from_dict({k: d[k] for k in fields}),
                   stride_in_1x1=d["stride_in_1x1"], reference=d.get("reference", ""))


# The BGR per-channel mean detectron2 uses for the MSRA models (detectron2/config/defaults.py, PIXEL_MEAN), std 1:
# "When using pre-trained models in Detectron1 or any MSRA models, std has been absorbed into its conv1 weights".
# The MSRA Caffe release subtracts a per-pixel mean image (ResNet_mean.binaryproto); the per-channel mean is the
# usual approximation.
_MSRA_BGR = Preprocessing((103.530, 116.280, 123.675), (1.0, 1.0, 1.0), "BGR", 255)

PROVENANCE: Dict[str, Provenance] = {
    "torchvision": Provenance(
        "torchvision", "torchvision.models ImageNet weights (ResNet 'v1.5', VGG)", IMAGENET_TORCHVISION, False,
        "torchvision.models docs: inputs RGB in [0, 1], normalised by mean (0.485, 0.456, 0.406), "
        "std (0.229, 0.224, 0.225); bottleneck stride in the 3x3 conv"),
    "msra": Provenance(
        "msra", "MSRA Caffe ResNets as converted for Caffe2 / detectron2 (ImageNetPretrained/MSRA/R-*.pkl)",
        _MSRA_BGR, True,
        "He et al. 2016 release (github.com/KaimingHe/deep-residual-networks); detectron2 defaults.py "
        "PIXEL_MEAN/PIXEL_STD; stride in the first 1x1 (detectron2 STRIDE_IN_1X1=True)"),
    "detectron2": Provenance(
        "detectron2", "detectron2 model-zoo checkpoints initialised from the MSRA ResNets", _MSRA_BGR, True,
        "detectron2 MODEL_ZOO.md and defaults.py (INPUT.FORMAT BGR, PIXEL_STD 1, RESNETS.STRIDE_IN_1X1 True)"),
    "plugin": Provenance(
        "plugin", "resnet_backbone's own ImageNet pretraining (paper recipe, Sec 3.4)", IMAGENET_PAPER, True,
        "resnet_backbone.data.transforms.IMAGENET_PAPER; paper stride placement (create_model default)"),
    "plugin_cifar": Provenance(
        "plugin_cifar", "resnet_backbone's own CIFAR-10 training (paper recipe, Sec 4.2)", CIFAR10_PAPER, None,
        "resnet_backbone.data.transforms.CIFAR10_PAPER; basic blocks only"),
}


def get_provenance(source: str) -> Provenance:
    return PROVENANCE[check_choice("weight source", source, tuple(sorted(PROVENANCE)))]


def provenance_path(weights_path) -> str:
    """The JSON file that describes `weights_path`: the same name with PROVENANCE_SUFFIX appended."""
    return os.fspath(weights_path) + PROVENANCE_SUFFIX


def write_provenance(provenance: Provenance, weights_path, **extra) -> str:
    """Write `provenance` (plus `extra` JSON-able fields, e.g. converted_from=...) beside `weights_path`.

    Written atomically (temporary file + rename), so a reader never sees half a file.
    """
    path = provenance_path(weights_path)
    record = {**provenance.to_dict(), **extra}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_provenance(weights_path) -> Optional[Provenance]:
    """The provenance recorded beside `weights_path`, or None if there is no such file."""
    path = provenance_path(weights_path)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"provenance file {path} is not valid JSON: {e}") from e
    if not isinstance(record, dict):
        raise ValueError(f"provenance file {path} holds a {type(record).__name__}, expected a JSON object")
    return Provenance.from_dict(record)


# Public weights recognised by name, for files with no record beside them: MODEL.WEIGHTS as written in a config
# (detectron2:// path, URL), or the file it was downloaded / copied to, which keeps the name. Each entry:
# (regex searched in the path, PROVENANCE key). Named groups say what the file holds ("depth": a ResNet depth,
# "arch": a create_model name), so a config that builds another network can be told so.
KNOWN_SOURCES: Tuple[Tuple[str, str], ...] = (
    # detectron2's mirror of the MSRA Caffe ResNets (He et al. 2016) that the paper's detectors started from
    (r"ImageNetPretrained/MSRA/R-(?P<depth>\d+)\.pkl$", "msra"),
    # torchvision.models releases, named <arch>-<first hex digits of the file's SHA-256>.pth
    (r"(?:^|/)(?P<arch>resnet\d+|resnext\d+_\d+x\d+d|wide_resnet\d+_2|vgg\d+)-[0-9a-f]{8,64}\.pth$", "torchvision"),
    # detectron2 model-zoo detectors: <section>/<config>/<id>/model_final_<hash>.pkl, trained from the MSRA ResNets
    (r"(?:^detectron2:/|/detectron2)/[\w.]+(?:-\w+)?/[^/]+/\d+/model_final_[0-9a-f]+\.pkl$", "detectron2"),
)


def known_source(weights) -> Optional[Tuple[Provenance, Dict[str, str]]]:
    """The provenance of public weights recognised by their name (KNOWN_SOURCES), and what the name says about the
    network (e.g. {"depth": "101"}); None when the name is not one of them."""
    name = os.fspath(weights).replace(os.sep, "/")
    for pattern, source in KNOWN_SOURCES:
        found = re.search(pattern, name)
        if found:
            return PROVENANCE[source], {k: v for k, v in found.groupdict().items() if v is not None}
    return None


def provenance_for(weights) -> Optional[Tuple[Provenance, str, Dict[str, str]]]:
    """What `weights` (a local file, a URL or a detectron2:// path) expect: (provenance, where that was read, what
    the name says about the network). The record beside a local file comes first, then the known public sources;
    None when neither says anything."""
    if not weights:
        return None
    path = os.fspath(weights)
    if os.path.isfile(path):
        recorded = read_provenance(path)
        if recorded is not None:
            return recorded, provenance_path(path), {}
    known = known_source(path)
    if known is None:
        return None
    provenance, network = known
    return provenance, f"{provenance.description}, recognised by its name", network
