"""Registered detectron2 backbone builders: the plugin's ResNet family, its FPN / RetinaNet variants, and VGG-16.

Registered names (prefixed "rb" so detectron2's own `build_resnet_backbone` etc. stay untouched):
`build_rb_resnet_backbone`, `build_rb_resnet_fpn_backbone`, `build_rb_retinanet_resnet_fpn_backbone`,
`build_rb_vgg16_backbone`. Put one in MODEL.BACKBONE.NAME.

Config keys read (detectron2's keys keep their meaning):
  MODEL.RESNETS.{DEPTH, OUT_FEATURES, NORM, STRIDE_IN_1X1, NUM_GROUPS, WIDTH_PER_GROUP, RES5_DILATION,
  STEM_OUT_CHANNELS, RES2_OUT_CHANNELS}, MODEL.BACKBONE.FREEZE_AT, MODEL.FPN.*, and the plugin's
  MODEL.RB_RESNET.{SHORTCUT, VARIANT, DROP_PATH_RATE, ZERO_INIT_LAST, CHANNELS_LAST}, MODEL.VGG.OUT_FEATURES.
MODEL.BACKBONE.FREEZE_AT counts stages for every backbone (d2/specs.py: stem, res2..res5; VGG-16's conv blocks).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

from ..config import backbone_freeze_at
from ..deploy.layout import channels_last_helps
from ..modeling.options import check_choice
from ..modeling.resnet import ResNet, resnet_stage_specs, stage_options
from ..modeling.vgg import VGG
from .registry import register_once

__all__ = [
    "build_rb_resnet_backbone",
    "build_rb_resnet_fpn_backbone",
    "build_rb_retinanet_resnet_fpn_backbone",
    "build_rb_vgg16_backbone",
    "resnet_options_from_cfg",
    "channels_last_from_cfg",
]


def resnet_options_from_cfg(cfg) -> dict:
    """The block / stage options of the plugin ResNet in `cfg` (shared by the backbone and the C4 head's res5).

    Raises ValueError for settings the plugin does not support or that contradict each other.
    """
    r, rb = cfg.MODEL.RESNETS, cfg.MODEL.RB_RESNET
    deform = r.DEFORM_ON_PER_STAGE
    if any(deform):
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(deform)}: the plugin ResNet has no deformable "
                         "convolutions; allowed: all False")
    options = dict(
        depth=r.DEPTH,
        variant=rb.VARIANT,
        shortcut=rb.SHORTCUT,
        norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res5_dilation=r.RES5_DILATION,
        drop_path_rate=rb.DROP_PATH_RATE,
        zero_init_last=rb.ZERO_INIT_LAST,
    )
    specs = resnet_stage_specs(**stage_options(options))
    # detectron2's meaning of RES2_OUT_CHANNELS: the width of res2's output (64 basic, 256 bottleneck, 16 CIFAR);
    # the depth fixes it here, so a different value is a contradiction, not an option
    if r.RES2_OUT_CHANNELS != specs[0].out_channels:
        raise ValueError(f"MODEL.RESNETS.RES2_OUT_CHANNELS={r.RES2_OUT_CHANNELS} does not match "
                         f"{options['variant']} ResNet-{options['depth']} ({specs[0].block} blocks): "
                         f"allowed: {specs[0].out_channels}")
    return options


def build_rb_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """The plugin ResNet (any depth, shortcut option, plain net, CIFAR variant) as a detectron2 backbone.

    Returns MODEL.RESNETS.OUT_FEATURES; stages after the last of them are not built (the C4 head has its own res5).
    MODEL.BACKBONE.FREEZE_AT: 0 trains everything, 1 freezes the stem, k freezes the stem and res2..res{k}
    (no gradients, BatchNorm turned into FrozenBatchNorm2d), as in detectron2.
    """
    return ResNet(**resnet_options_from_cfg(cfg), out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
                  freeze_at=backbone_freeze_at(cfg), in_channels=input_shape.channels,
                  channels_last=channels_last_from_cfg(cfg))


def channels_last_from_cfg(cfg) -> bool:
    """MODEL.RB_RESNET.CHANNELS_LAST: True, False, or "auto" = the deploy path's rule for MODEL.DEVICE
    (`channels_last_helps`: on for CPUs with oneDNN, where it was measured faster; not measured on GPUs, so off)."""
    value = check_choice("MODEL.RB_RESNET.CHANNELS_LAST", cfg.MODEL.RB_RESNET.CHANNELS_LAST,
                         (True, False, "auto"))
    return channels_last_helps(cfg.MODEL.DEVICE) if value == "auto" else value


def _fpn_bottom_up(cfg, input_shape):
    """The plugin ResNet under an FPN, after checking MODEL.FPN.IN_FEATURES against what it returns."""
    bottom_up = build_rb_resnet_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    shapes = bottom_up.output_shape()
    if not in_features or any(f not in shapes for f in in_features):
        raise ValueError(f"MODEL.FPN.IN_FEATURES {in_features} must be a non-empty subset of "
                         f"MODEL.RESNETS.OUT_FEATURES {list(shapes)}")
    return bottom_up, in_features


def build_rb_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN (P2-P6: LastLevelMaxPool adds P6) on the plugin ResNet (Lin et al. 2017)."""
    bottom_up, in_features = _fpn_bottom_up(cfg, input_shape)
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def build_rb_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's FPN for RetinaNet (P3-P7: P6 / P7 are strided convs on the last bottom-up feature, C5 in
    Lin et al. 2017b)."""
    bottom_up, in_features = _fpn_bottom_up(cfg, input_shape)
    last = in_features[-1]
    top_block = LastLevelP6P7(bottom_up.output_shape()[last].channels, cfg.MODEL.FPN.OUT_CHANNELS, in_feature=last)
    return FPN(bottom_up=bottom_up, in_features=in_features, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


def build_rb_vgg16_backbone(cfg, input_shape: ShapeSpec) -> VGG:
    """VGG-16 up to conv5_3 (stride 16, pool5 dropped as in Faster R-CNN); MODEL.BACKBONE.FREEZE_AT conv blocks
    frozen (2 = conv1_x and conv2_x, as in the Faster R-CNN VGG-16 setup)."""
    return VGG(out_features=list(cfg.MODEL.VGG.OUT_FEATURES), freeze_at=backbone_freeze_at(cfg),
               in_channels=input_shape.channels)


for _builder in (build_rb_resnet_backbone, build_rb_resnet_fpn_backbone, build_rb_retinanet_resnet_fpn_backbone,
                 build_rb_vgg16_backbone):
    register_once(BACKBONE_REGISTRY, _builder)
