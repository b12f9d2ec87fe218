"""What the plugin's networks share: a detectron2 Backbone that is also a classifier when given num_classes."""
from typing import Dict

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone


class ClassifierBackbone(Backbone):
    """Subclasses fill `_out_features`, `_out_feature_channels`, `_out_feature_strides`, `num_classes` and define
    `forward_features(x) -> {name: tensor, "_last": last map}` and `classify(last_map) -> logits`.

    forward returns the requested feature maps (backbone use) or, with num_classes, the logits.
    """

    def __init__(self):
        super().__init__()
        self.arch_name = type(self).__name__  # for error messages (TorchScript cannot evaluate type(self))

    def forward(self, x: torch.Tensor):
        # TorchScript-compatible (torch.jit.script): no type(self) here, and `num_classes is None` is resolved when
        # compiling, so a scripted backbone returns the dict and a scripted classifier the logits
        if x.dim() != 4:
            raise ValueError(f"{self.arch_name} takes (N, C, H, W) input, got shape {x.shape}")
        feats = self.forward_features(x)
        last = feats.pop("_last")
        if self.num_classes is None:
            return feats
        return self.classify(last)

    def lr_scales(self, crop_size: int) -> Dict[str, float]:
        """{parameter name: factor on the lr} for training the classifier on ``crop_size`` crops; none by default."""
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}
