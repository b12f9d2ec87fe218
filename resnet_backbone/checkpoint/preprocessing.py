"""The input convention exported weights were trained with, written beside them and checked against a detection
config when they are loaded.

Convention (detectron2's): a detector feeds its backbone pixels in [0, 255], channels in INPUT.FORMAT order,
normalised as (x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD. A `Preprocessing` with ``input_range=1`` (torchvision
style: [0, 1] pixels, mean and std in [0, 1] units) is the same normalisation with mean and std multiplied by 255,
so no weight needs changing; only channel order and the numbers must agree. The record is the provenance file of
resnet_backbone.checkpoint.provenance (``<weights>.provenance.json``), whose "detectron2" entry holds the exact
values a config needs.
"""
from __future__ import annotations

import math
import os
from typing import Optional

from ..data.transforms import Preprocessing
from .provenance import PROVENANCE, Provenance, provenance_path, read_provenance, write_provenance

__all__ = ["write_preprocessing", "read_preprocessing", "check_preprocessing", "preprocessing_settings"]

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


def read_preprocessing(weights_path) -> Optional[Preprocessing]:
    """The preprocessing recorded beside ``weights_path``, or None when nothing is recorded."""
    prov = read_provenance(weights_path)
    return None if prov is None else prov.preprocessing


def preprocessing_settings(preprocessing: Preprocessing) -> dict:
    """The detectron2 config values for ``preprocessing``: MODEL.PIXEL_MEAN, MODEL.PIXEL_STD, INPUT.FORMAT."""
    return preprocessing.as_detectron2()


def _close(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=_RTOL, abs_tol=_RTOL) for x, y in
                                    zip(a, b))


def check_preprocessing(cfg, weights_path) -> Optional[Preprocessing]:
    """Compare cfg's MODEL.PIXEL_MEAN / MODEL.PIXEL_STD / INPUT.FORMAT (and MODEL.RESNETS.STRIDE_IN_1X1 when the
    record has one and cfg builds a ResNet) with the record beside ``weights_path``.

    Returns the recorded Preprocessing, or None when there is nothing to check (no local file, no record: e.g.
    downloaded MSRA weights). Raises ValueError naming every disagreeing key, both values and the record file.
    Callers skip the check when MODEL.RB_WEIGHTS.CHECK_PREPROCESSING is False.
    """
    if not weights_path or not os.path.isfile(os.fspath(weights_path)):
        return None
    prov = read_provenance(weights_path)
    if prov is None:
        return None
    want = prov.detectron2_settings()
    have = {"MODEL.PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "MODEL.PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "INPUT.FORMAT": cfg.INPUT.FORMAT}
    if "MODEL.RESNETS.STRIDE_IN_1X1" in want and "resnet" in str(cfg.MODEL.BACKBONE.NAME).lower():
        have["MODEL.RESNETS.STRIDE_IN_1X1"] = bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1)
    bad = []
    for key, value in have.items():
        expected = want[key]
        same = _close(value, expected) if isinstance(expected, list) else value == expected
        if not same:
            shown = [round(float(v), 3) for v in expected] if isinstance(expected, list) else expected
            bad.append(f"{key} is {value!r} but the weights need {shown!r}")
    if bad:
        fix = " ".join(f"{k} \"[{','.join(f'{x:g}' for x in v)}]\"" if isinstance(v, list) else f"{k} {v}"
                       for k, v in want.items() if k in have)
        raise ValueError(
            f"MODEL.WEIGHTS {os.fspath(weights_path)!r} was trained with other input preprocessing than this config "
            f"uses ({provenance_path(weights_path)}): " + "; ".join(bad) + ". Set these in the config (or on the "
            f"command line: {fix}), or set MODEL.RB_WEIGHTS.CHECK_PREPROCESSING False to skip this check.")
    return prov.preprocessing
