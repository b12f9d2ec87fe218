"""Use the plugin's backbones (ResNet family, VGG-16) inside torchvision's detection models.

torchvision's detectors (`torchvision.models.detection.FasterRCNN` and friends) take any module with an
`out_channels` attribute whose forward returns an OrderedDict of feature maps, one channel count for all of them.
`TorchvisionBackbone` is that wrapper; `torchvision_faster_rcnn` assembles a FasterRCNN around it with the
paper's RPN anchors (128/256/512 x {0.5, 1, 2}, Faster R-CNN Sec 3.1.1).
"""
from collections import OrderedDict
from typing import Optional, Sequence

import torch
from detectron2.modeling import Backbone
from torch import nn

__all__ = ["TorchvisionBackbone", "torchvision_faster_rcnn"]

PAPER_ANCHOR_SIZES = (128, 256, 512)
PAPER_ASPECT_RATIOS = (0.5, 1.0, 2.0)


class TorchvisionBackbone(nn.Module):
    """Wrap a plugin `Backbone` (ResNet or VGG, without classifier) for torchvision's detection models.

    Args:
        backbone: a detectron2-style Backbone, e.g. ``ResNet(101, out_features=["res4"], norm="FrozenBN")``.
        out_features: the features to return, in order (default: all of ``backbone.output_shape()``). They must
            share one channel count, as torchvision's RPN and RoI heads take a single ``out_channels``.

    Attributes:
        out_channels: channels of every returned feature map.
        out_features: names of the returned feature maps (use them as MultiScaleRoIAlign's ``featmap_names``).
        strides: stride of each returned feature map.
    """

    def __init__(self, backbone: Backbone, out_features: Optional[Sequence[str]] = None):
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise ValueError(f"expected a detectron2 Backbone (plugin ResNet / VGG), got {type(backbone).__name__}")
        if getattr(backbone, "num_classes", None) is not None:
            raise ValueError("the backbone was built with num_classes (a classifier): build it with "
                             "num_classes=None and out_features")
        shapes = backbone.output_shape()
        out_features = list(out_features) if out_features is not None else list(shapes)
        if not out_features:
            raise ValueError("no output features: pass out_features or build the backbone with some")
        for name in out_features:
            if name not in shapes:
                raise ValueError(f"unknown feature {name!r}; the backbone returns {', '.join(map(repr, shapes))}")
        channels = {shapes[name].channels for name in out_features}
        if len(channels) != 1:
            raise ValueError(f"features {out_features} have different channel counts "
                             f"{[shapes[n].channels for n in out_features]}; torchvision's heads take one "
                             "(choose features of one width, or put an FPN in between)")
        self.body = backbone
        self.out_features = out_features
        self.out_channels = channels.pop()
        self.strides = {name: shapes[name].stride for name in out_features}

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return OrderedDict((name, features[name]) for name in self.out_features)


def torchvision_faster_rcnn(backbone: Backbone, num_classes: int, *, out_features: Optional[Sequence[str]] = None,
                            anchor_sizes: Sequence[int] = PAPER_ANCHOR_SIZES,
                            aspect_ratios: Sequence[float] = PAPER_ASPECT_RATIOS, pooler_resolution: int = 7,
                            sampling_ratio: int = 2, **kwargs):
    """A torchvision FasterRCNN on a plugin backbone.

    Every returned feature map gets all `anchor_sizes` x `aspect_ratios` anchors (single-scale RPN as in the paper)
    and RoIAlign `pooler_resolution` x `pooler_resolution` (torchvision's box_roi_pool must be a
    MultiScaleRoIAlign). Other keyword arguments go to FasterRCNN (e.g. image_mean, image_std, min_size, max_size,
    box_batch_size_per_image, rpn_post_nms_top_n_test); torchvision's defaults apply otherwise, including its
    input normalisation (RGB in [0, 1], ImageNet mean / std), which must match the backbone's weights.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    body = TorchvisionBackbone(backbone, out_features)
    n = len(body.out_features)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),) * n, aspect_ratios=(tuple(aspect_ratios),) * n)
    pool = MultiScaleRoIAlign(featmap_names=body.out_features, output_size=pooler_resolution,
                              sampling_ratio=sampling_ratio)
    return FasterRCNN(body, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=pool, **kwargs)
