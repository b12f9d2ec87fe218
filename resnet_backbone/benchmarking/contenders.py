"""The models compared by tools/benchmark.py, built so that each pair differs only in whose code it is.

* Backbones: the plugin's ResNet, detectron2's built-in `build_resnet_backbone` (same depth, norm, freeze_at,
  stride placement; the plugin loads its weights, so both compute the same function) and torchvision's ResNet
  trunk (conv1..layer4; torchvision puts the stride in the 3x3, "ResNet v1.5").
* Detectors: the plugin's Faster R-CNN configs (C4 ResNet-101, VGG-16) and detectron2's built-in R-101-C4: the
  plugin config with detectron2's own backbone (`build_resnet_backbone`) and head (`Res5ROIHeads`), so input
  sizes, anchors, proposals and sampling are the same; it loads the plugin's weights (same names).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone as d2_build_resnet_backbone
from detectron2.structures import Boxes, Instances
from torch import nn

from ..config import add_resnet_backbone_config
from ..deploy.layout import channels_last_helps
from ..d2 import backbones as _backbones  # noqa: F401  registers the plugin's backbones
from ..d2 import roi_heads as _roi_heads  # noqa: F401  registers the plugin's ROI heads
from ..data.synthetic_detection import generate_sample
from ..modeling.options import check_choice, check_int
from ..modeling.resnet import ResNet

__all__ = ["BACKBONE_NORMS", "plugin_backbone", "detectron2_backbone", "torchvision_trunk", "backbone_contenders",
           "plugin_detector_cfg", "builtin_c4_cfg", "build_detector", "calibrate_frozen_norms", "detector_inputs"]

BACKBONE_NORMS = ("FrozenBN", "BN")  # norms all three backbone contenders can use
_LAST = "res5"


def _check_backbone_args(depth, norm, freeze_at):
    if depth not in (50, 101, 152):
        raise ValueError(f"backbone depth must be 50, 101 or 152 (bottleneck ResNets in all three libraries), "
                         f"got {depth!r}")
    check_choice("backbone norm", norm, BACKBONE_NORMS)
    check_int("freeze_at", freeze_at, 0, 5)


def plugin_backbone(depth: int, norm: str, freeze_at: int, channels_last: bool = False) -> ResNet:
    """The plugin's ResNet; channels_last as its detectron2 builder sets it (MODEL.RB_RESNET.CHANNELS_LAST "auto":
    on for CPU)."""
    _check_backbone_args(depth, norm, freeze_at)
    return ResNet(depth, norm=norm, out_features=[_LAST], freeze_at=freeze_at, stride_in_1x1=True,
                  channels_last=channels_last)


def detectron2_backbone(depth: int, norm: str, freeze_at: int) -> nn.Module:
    """detectron2's own ResNet from its default config (STRIDE_IN_1X1 True, as the plugin's MSRA layout)."""
    _check_backbone_args(depth, norm, freeze_at)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = [_LAST]
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    return d2_build_resnet_backbone(cfg, ShapeSpec(channels=3))


class _TorchvisionTrunk(nn.Module):
    """torchvision ResNet without avgpool / fc, returning {"res5": layer4 output} like the other two."""

    def __init__(self, net):
        super().__init__()
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                  net.layer4)

    def forward(self, x):
        return {_LAST: self.body(x)}


def _frozen_bn_like(bn: nn.BatchNorm2d) -> nn.Module:
    from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozenBN

    frozen = TvFrozenBN(bn.num_features, eps=bn.eps)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(frozen, name).copy_(getattr(bn, name).detach())
    return frozen


def _freeze_bn_in(module: nn.Module):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_bn_like(child))
        else:
            _freeze_bn_in(child)


def torchvision_trunk(depth: int, norm: str, freeze_at: int) -> nn.Module:
    """torchvision's resnet{depth} trunk, with its own FrozenBatchNorm2d for "FrozenBN"; freeze_at as detectron2
    (1: conv1 + bn1, k: also layer1..layer{k-1}; BatchNorm in frozen parts becomes frozen, as detectron2 does)."""
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozenBN

    _check_backbone_args(depth, norm, freeze_at)
    norm_layer = TvFrozenBN if norm == "FrozenBN" else nn.BatchNorm2d
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm_layer)
    if freeze_at >= 1:
        if isinstance(net.bn1, nn.BatchNorm2d):
            net.bn1 = _frozen_bn_like(net.bn1)
        frozen = [net.conv1, net.bn1] + [getattr(net, f"layer{i}") for i in range(1, freeze_at)]
        for module in frozen:
            _freeze_bn_in(module)
            for p in module.parameters():
                p.requires_grad_(False)
    return _TorchvisionTrunk(net)


def backbone_contenders(depth: int, norm: str, freeze_at: int, device="cpu") -> Dict[str, nn.Module]:
    """{"plugin", "detectron2", "torchvision"}; plugin and detectron2 share weights (same parameter names). The
    plugin is configured as its detectron2 builder configures it for `device` (channels-last on CPU)."""
    d2 = detectron2_backbone(depth, norm, freeze_at)
    plugin = plugin_backbone(depth, norm, freeze_at, channels_last=channels_last_helps(device))
    plugin.load_state_dict(d2.state_dict())
    return {"plugin": plugin, "detectron2": d2, "torchvision": torchvision_trunk(depth, norm, freeze_at)}


def plugin_detector_cfg(config_file: str, device: str, opts: Sequence[str] = ()):
    """The plugin's detection config, random init (MODEL.WEIGHTS ""), on `device`."""
    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return cfg


def builtin_c4_cfg(plugin_cfg):
    """detectron2's built-in R-C4 Faster R-CNN with everything else as in the plugin's C4 config."""
    if plugin_cfg.MODEL.ROI_HEADS.NAME != "RBRes5ROIHeads":
        raise ValueError(f"builtin_c4_cfg needs a plugin C4 config (ROI_HEADS.NAME RBRes5ROIHeads), got "
                         f"{plugin_cfg.MODEL.ROI_HEADS.NAME!r}")
    cfg = plugin_cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    return cfg


def build_detector(cfg) -> nn.Module:
    return build_model(cfg)


@torch.no_grad()
def calibrate_frozen_norms(model: nn.Module, inputs) -> int:
    """Give every frozen BatchNorm of a randomly initialised detector the statistics of its input on `inputs` (one
    eval pass, each norm set just before it runs), as a trained model's norms have them. Without it activations grow
    through the residual stages (~1e6 at res4 for R-101), every RPN box degenerates and no RoI reaches the box head,
    so a timed inference would skip the heads. Returns the number of norms set."""
    def set_statistics(norm, args):
        x = args[0].float()
        norm.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(set_statistics) for m in norms]
    try:
        model.eval()(inputs)
    finally:
        for h in handles:
            h.remove()
    return len(norms)


def detector_inputs(num_images: int, height: int, width: int, *, num_classes: int, input_format: str = "BGR",
                    seed: int = 0) -> List[dict]:
    """detectron2 inputs (as its dataset mapper makes them) from the embedded shapes generator: uint8 CHW image in
    `input_format`, with its ground-truth boxes (classes taken modulo num_classes)."""
    if input_format not in ("BGR", "RGB"):
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
    inputs = []
    for i in range(num_images):
        sample = generate_sample("train", i, image_size=(height, width), seed=seed)
        image = sample.image[:, :, ::-1] if input_format == "BGR" else sample.image
        inst = Instances((height, width))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (s.bbox for s in sample.instances)]
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor([s.category_id % num_classes for s in sample.instances], dtype=torch.int64)
        inputs.append({"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                       "height": height, "width": width, "instances": inst})
    return inputs
