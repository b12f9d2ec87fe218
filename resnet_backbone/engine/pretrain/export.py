"""Export a pretrained classifier as detection weights: the file MODEL.WEIGHTS of the detection configs loads.

The file is a detectron2-format pickle (resnet_backbone.checkpoint.convert.plugin_to_detectron2): the plugin's
names (stem.*, res2.* ... res5.*; VGG-16 conv*_*, fc6, fc7) with ``matching_heuristics``, so detectron2's
checkpointer places them by suffix into any of the plugin's detector layouts: C4 (backbone.res2-4 +
roi_heads.res5), FPN (backbone.bottom_up.*), VGG-16 (backbone.conv*, roi_heads.box_head.fc6/fc7). The ImageNet
classifier layer (linear / fc8) and BatchNorm step counters are left out: a detector has no place for them.
Beside it, ``<file>.provenance.json`` records the input preprocessing (checked when a detector loads it).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

import torch

from ...checkpoint.convert import plugin_to_detectron2
from ...checkpoint.pkl_writer import save_pkl
from ...checkpoint.preprocessing import write_preprocessing
from ...data.transforms import Preprocessing

__all__ = ["EXPORT_NAME", "detection_weights", "export_for_detection"]

EXPORT_NAME = "model_final_d2.pkl"
_LEFT_OUT = re.compile(r"^(linear|fc8)\.|\.num_batches_tracked$")


def detection_weights(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The classifier's weights a detector can use: everything but the classifier layer and BN step counters."""
    return OrderedDict((k, v) for k, v in state_dict.items() if not _LEFT_OUT.search(k))


def _stride_in_1x1(model) -> bool | None:
    """Where a bottleneck ResNet's stride sits (recorded: it changes results silently); None otherwise."""
    from ...modeling.blocks import BottleneckBlock

    for m in model.modules():
        if isinstance(m, BottleneckBlock) and (m.conv1.stride != (1, 1) or m.conv2.stride != (1, 1)):
            return m.conv1.stride != (1, 1)
    return None


def export_for_detection(model: torch.nn.Module, path: str, preprocessing: Preprocessing, *, model_name: str,
                         **provenance) -> tuple:
    """Write ``path`` (detectron2 .pkl) and its provenance JSON; returns (weights path, JSON path).

    ``provenance``: extra JSON fields for the record (e.g. iterations, final errors).
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    weights = detection_weights(model.state_dict())
    checkpoint, report = plugin_to_detectron2(weights, author="resnet_backbone pretraining")
    if report.unmapped:
        raise ValueError(f"{model_name}: keys with no detector name: {sorted(report.unmapped)}")
    save_pkl(checkpoint, path)
    json_path = write_preprocessing(path, preprocessing, source="plugin",
                                    description=f"{model_name} trained by resnet_backbone's pretraining stage",
                                    stride_in_1x1=_stride_in_1x1(model), model=model_name, **provenance)
    return path, json_path
