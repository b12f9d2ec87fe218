"""The input convention exported weights were trained with, written beside them and checked against a detection
config when they are loaded.

Convention (detectron2's): a detector feeds its backbone pixels in [0, 255], channels in INPUT.FORMAT order,
normalised as (x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD. A `Preprocessing` with ``input_range=1`` (torchvision
style: [0, 1] pixels, mean and std in [0, 1] units) is the same normalisation with mean and std multiplied by 255,
so no weight needs changing; only channel order and the numbers must agree. The record is the provenance file of
resnet_backbone.checkpoint.provenance (``<weights>.provenance.json``), whose "detectron2" entry holds the exact
values a config needs; public weights without one (MSRA, torchvision, detectron2's model zoo) are recognised by
their name (provenance.KNOWN_SOURCES).
"""
from __future__ import annotations

import math
import os
from typing import Optional

from ..d2.specs import backbone_spec
from ..data.transforms import Preprocessing
from .provenance import PROVENANCE, Provenance, provenance_for, write_provenance

__all__ = ["write_preprocessing", "check_preprocessing"]

# Relative tolerance of the comparison: a JSON round trip or a mean written with 3 decimals must pass, a mean in
# the wrong units (x255) or the wrong channel order must not.
_RTOL = 1e-3


def write_preprocessing(weights_path, preprocessing: Preprocessing, *, source: str = "plugin",
                        description: str = "", stride_in_1x1: Optional[bool] = None, reference: str = "",
                        **extra) -> str:
    """Write ``<weights_path>.provenance.json`` recording ``preprocessing`` (and ``extra`` JSON fields).

    ``source`` names the origin (default "plugin": this package's pretraining); ``stride_in_1x1`` is recorded
    for bottleneck ResNets (None where it does not apply). Returns the JSON path.
    """
    base = PROVENANCE.get(source)
    prov = Provenance(source=source, description=description or (base.description if base else ""),
                      preprocessing=preprocessing, stride_in_1x1=stride_in_1x1, reference=reference)
    return write_provenance(prov, weights_path, **extra)


def _close(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=_RTOL, abs_tol=_RTOL) for x, y in
                                    zip(a, b))


def _network_mismatch(cfg, network: dict) -> list:
    """What a recognised file name says about the network (KNOWN_SOURCES' groups) against what cfg builds (its
    backbone's entry in d2/specs.py)."""
    spec = backbone_spec(cfg)
    arch = network.get("arch") or (f"resnet{network['depth']}" if "depth" in network else None)
    if arch is None or spec is None or arch == spec.arch_for(cfg):
        return []
    family = "vgg" if arch.startswith("vgg") else "resnet"  # torchvision's resnet*, resnext*, wide_resnet*
    if family != spec.family:
        return [f"MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r} but the weights are {arch}"]
    if family == "resnet" and arch[len("resnet"):].isdigit():
        return [f"MODEL.RESNETS.DEPTH is {cfg.MODEL.RESNETS.DEPTH} but the weights are ResNet-{arch[len('resnet'):]}"]
    return []


def check_preprocessing(cfg, weights_path) -> Optional[Preprocessing]:
    """Compare cfg's MODEL.PIXEL_MEAN / MODEL.PIXEL_STD / INPUT.FORMAT (and MODEL.RESNETS.STRIDE_IN_1X1 when the
    weights have one and cfg builds a ResNet) with what ``weights_path`` needs: the record beside a local file, or
    for the public weights of provenance.KNOWN_SOURCES (MSRA ResNets, torchvision, detectron2's model zoo) what
    their name says, wherever they are (detectron2:// path, URL, downloaded copy). For those, a network other than
    the one cfg builds (another ResNet depth, VGG weights for a ResNet) is named too.

    Returns the expected Preprocessing, or None when there is nothing to check (no record, an unknown name).
    Raises ValueError naming every disagreeing key, both values and where the expectation comes from.
    Callers skip the check when MODEL.RB_WEIGHTS.CHECK_PREPROCESSING is False.
    """
    found = provenance_for(weights_path)
    if found is None:
        return None
    prov, where, network = found
    want = prov.detectron2_settings()
    have = {"MODEL.PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "MODEL.PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "INPUT.FORMAT": cfg.INPUT.FORMAT}
    spec = backbone_spec(cfg)
    if "MODEL.RESNETS.STRIDE_IN_1X1" in want and spec is not None and spec.family == "resnet":
        have["MODEL.RESNETS.STRIDE_IN_1X1"] = bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1)
    bad = []
    for key, value in have.items():
        expected = want[key]
        same = _close(value, expected) if isinstance(expected, list) else value == expected
        if not same:
            shown = [round(float(v), 3) for v in expected] if isinstance(expected, list) else expected
            bad.append(f"{key} is {value!r} but the weights need {shown!r}")
    other_network = _network_mismatch(cfg, network)
    if bad or other_network:
        fix = " ".join(f"{k} \"[{','.join(f'{x:g}' for x in v)}]\"" if isinstance(v, list) else f"{k} {v}"
                       for k, v in want.items() if k in have)
        advice = (f" Set these in the config (or on the command line: {fix}), or set "
                  "MODEL.RB_WEIGHTS.CHECK_PREPROCESSING False to skip this check.") if bad else \
            " Point MODEL.WEIGHTS at weights of the network the config builds."
        raise ValueError(
            f"MODEL.WEIGHTS {os.fspath(weights_path)!r} does not fit this config ({where}): "
            + "; ".join(bad + other_network) + "." + advice)
    return prov.preprocessing
