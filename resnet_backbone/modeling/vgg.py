"""VGG-16 (Simonyan & Zisserman 2015, configuration D), the paper's detection baseline (Sec 4.3).

As a backbone it ends at conv5_3 (stride 16): pool5 is dropped, as in Faster R-CNN. With `num_classes` it is the
ImageNet classifier (pool5, fc6, fc7, fc8; dropout 0.5 after fc6 and fc7).
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import nn

from .base import ClassifierBackbone
from .init import init_conv
from .options import check_choice, check_int, check_rate

__all__ = ["VGG16_LAYERS", "VGG", "VGG_FC_DIM"]

# configuration D of the VGG paper (Table 1): per block, the output channels of its 3x3 convs
VGG16_LAYERS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_FC_DIM = 4096
VGG_POOL_SIZE = 7  # fc6 sees a 7x7x512 map (224 input; RoI pooling 7x7 in Faster R-CNN)


def vgg_conv_names(layers=VGG16_LAYERS):
    return [f"conv{b + 1}_{i + 1}" for b, block in enumerate(layers) for i in range(len(block))]


class VGG(ClassifierBackbone):
    """VGG-16 convolutional body (+ optional classifier).

    Args:
        num_classes: if set, pool5 + fc6/fc7/fc8 classifier; forward returns logits.
        out_features: conv names to return as a backbone (default ["conv5_3"], stride 16).
        freeze_at: number of conv blocks frozen (2 = conv1_x and conv2_x, as in Faster R-CNN's VGG-16 setup).
        dropout: dropout after fc6 and fc7 (0.5 in VGG).
    """

    # attribute types for TorchScript: an empty list has no element type to infer
    _out_features: List[str]
    _run_convs: List[str]
    _after_pool: List[str]

    def __init__(self, *, layers=VGG16_LAYERS, num_classes=None, out_features=None, freeze_at=0, dropout=0.5,
                 in_channels=3):
        super().__init__()
        names = vgg_conv_names(layers)
        out_features = list(out_features) if out_features is not None else ([] if num_classes else [names[-1]])
        for f in out_features:
            check_choice("VGG output feature", f, tuple(names))
        check_int("VGG freeze_at (conv blocks)", freeze_at, 0, len(layers))
        check_int("in_channels", in_channels, 1)
        dropout = check_rate("dropout", dropout)
        self._out_features = out_features
        self._out_feature_channels, self._out_feature_strides = {}, {}
        self.num_classes = num_classes
        self.block_names, in_c, stride = [], in_channels, 1
        for b, block in enumerate(layers):
            convs = []
            for i, out_c in enumerate(block):
                name = f"conv{b + 1}_{i + 1}"
                conv = Conv2d(in_c, out_c, 3, padding=1)
                init_conv(conv)
                self.add_module(name, conv)
                convs.append(name)
                self._out_feature_channels[name], self._out_feature_strides[name] = out_c, stride
                in_c = out_c
            self.block_names.append(convs)
            stride *= 2  # the 2x2 max pool after each block (pool5 only in the classifier)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
            self.fc6 = nn.Linear(in_c * VGG_POOL_SIZE**2, VGG_FC_DIM)
            self.fc7 = nn.Linear(VGG_FC_DIM, VGG_FC_DIM)
            self.fc8 = nn.Linear(VGG_FC_DIM, num_classes)
            self.dropout = nn.Dropout(dropout)
            self.pool_size = VGG_POOL_SIZE  # an attribute: TorchScript does not read module-level ints
            for fc in (self.fc6, self.fc7, self.fc8):
                nn.init.normal_(fc.weight, std=0.01)  # VGG paper Sec 3.1: N(0, 1e-2), zero bias
                nn.init.zeros_(fc.bias)
        # the convs forward runs (a backbone stops at the block of its last feature) and those after a 2x2 max pool
        blocks_run = len(layers) if num_classes is not None else 1 + max(
            b for b, convs in enumerate(self.block_names) for f in out_features if f in convs)
        self._run_convs = [name for convs in self.block_names[:blocks_run] for name in convs]
        self._after_pool = [convs[0] for convs in self.block_names[1:blocks_run]]
        self.freeze(freeze_at)

    def freeze(self, freeze_at=0):
        for convs in self.block_names[:freeze_at]:
            for name in convs:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)
        return self

    def forward_features(self, x) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        # named_children (registration order: conv1_1 ... conv5_3, then the classifier) instead of
        # getattr(self, name): TorchScript looks submodules up by literal names only
        for name, conv in self.named_children():
            if name in self._run_convs:
                if name in self._after_pool:
                    x = F.max_pool2d(x, kernel_size=2, stride=2)
                x = F.relu_(conv(x))
                if name in self._out_features:
                    outputs[name] = x
        outputs["_last"] = x
        return outputs

    def lr_scales(self, crop_size: int) -> Dict[str, float]:
        """fc6's weights at 1 / copies below 224 px crops. pool5 is then smaller than the 7x7 fc6 takes, and the
        adaptive pooling copies each of its cells ``copies`` times (49 at 32 px: pool5 is 1x1); the copies share one
        input, so unscaled fc6 would move as if its lr were ``copies`` times the paper's (docs/demo.md). Scaled, it
        moves as a 7x7 one does at 224 px; at 224 px nothing changes."""
        if self.num_classes is None:
            return {}
        cells = max(check_int("crop_size", crop_size, 1) // self._out_feature_strides["conv5_3"] // 2, 1)
        copies = (self.pool_size / min(cells, self.pool_size)) ** 2
        return {"fc6.weight": 1.0 / copies} if copies > 1 else {}

    def classify(self, last):
        x = F.adaptive_avg_pool2d(F.max_pool2d(last, 2, 2), self.pool_size)  # pool5
        x = self.dropout(F.relu_(self.fc6(torch.flatten(x, 1))))
        x = self.dropout(F.relu_(self.fc7(x)))
        return self.fc8(x)
