"""Detector layout of the plugin's classifier weights: pure renamings, reporting what did not map.

A plugin classifier state dict (ResNet: `stem.*`, `res2.*` ... `res5.*`, `linear.*`; VGG-16: `conv1_1.*` ...
`conv5_3.*`, `fc6.*`, `fc7.*`, `fc8.*`) is renamed to the keys of a detectron2 detector built with this plugin:

  layout "c4"       stem/res2-res4 -> backbone.*, res5 -> roi_heads.res5.*  (RBRes5ROIHeads)
  layout "backbone" stem/res2-res5 -> backbone.*                           (build_rb_resnet_backbone, e.g. DC5)
  layout "fpn"      stem/res2-res5 -> backbone.bottom_up.*                 (both FPN builders)
  layout "vgg16"    conv* -> backbone.conv*, fc6/fc7 -> roi_heads.box_head.fc6/fc7 (RBVGG16FCHead)

The classifier layer (`linear.*`, `fc8.*`) has no place in a detector and is returned among the unmapped keys.
BatchNorm's `num_batches_tracked` counters are dropped: they are bookkeeping, not weights, and detection's
FrozenBatchNorm2d has no such buffer. Converting other namings (torchvision, MSRA pkl, detectron2) to the plugin's
is resnet_backbone.checkpoint.convert's job.
"""
import re
from collections import OrderedDict
from typing import List, Mapping, Tuple

from ..modeling.options import check_choice

__all__ = ["DETECTOR_LAYOUTS", "map_classifier_to_detector"]

# layout -> [(regex on the classifier key, replacement)]; the first match wins, no match = unmapped
DETECTOR_LAYOUTS = {
    "c4": [(r"^(stem|res[234])\.", r"backbone.\1."), (r"^res5\.", r"roi_heads.res5.")],
    "backbone": [(r"^(stem|res[2345])\.", r"backbone.\1.")],
    "fpn": [(r"^(stem|res[2345])\.", r"backbone.bottom_up.\1.")],
    "vgg16": [(r"^(conv\d_\d)\.", r"backbone.\1."), (r"^(fc6|fc7)\.", r"roi_heads.box_head.\1.")],
}
_BN_COUNTER = "num_batches_tracked"


def map_classifier_to_detector(state_dict: Mapping, layout: str) -> Tuple["OrderedDict", List[str]]:
    """Rename a plugin classifier state dict to a detector layout.

    Returns (mapped, unmapped): `mapped` is an OrderedDict with detector keys (same tensors), ready for
    `model.load_state_dict(mapped, strict=False)` or a checkpoint's "model"; `unmapped` lists the source keys that
    have no place in the detector (the classifier layer, anything unknown), in source order.
    """
    check_choice("detector layout", layout, tuple(DETECTOR_LAYOUTS))
    rules = [(re.compile(pattern), repl) for pattern, repl in DETECTOR_LAYOUTS[layout]]
    mapped, unmapped = OrderedDict(), []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] == _BN_COUNTER:
            continue
        for pattern, repl in rules:
            if pattern.match(key):
                mapped[pattern.sub(repl, key, count=1)] = value
                break
        else:
            unmapped.append(key)
    return mapped, unmapped
