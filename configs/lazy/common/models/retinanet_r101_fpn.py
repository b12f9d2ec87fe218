# RetinaNet (Lin et al. 2017b) on the plugin's ResNet-101 with FPN P3-P7, the LazyConfig form of
# configs/coco/retinanet_r101_fpn.yaml: not in the ResNet paper; it shows the backbone in a one-stage detector.
# Settings are the RetinaNet paper's (detectron2's 3x recipe).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from resnet_backbone.modeling.resnet import stage_out_channels

from .frcnn_paper import PIXEL_MEAN, PIXEL_STD
from .resnet import msra_resnet101

model = L(RetinaNet)(
    backbone=L(FPN)(
        bottom_up=msra_resnet101(out_features=["res3", "res4", "res5"]),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        # P3-P5 from C3-C5; P6 and P7 are strided convs on C5 (RetinaNet Sec 4)
        top_block=L(LastLevelP6P7)(
            in_channels=L(stage_out_channels)(depth="${...bottom_up.depth}", stage="res5"),
            out_channels="${..out_channels}",
            in_feature="res5",
        ),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,  # the FPN levels P3-P7, out_channels each
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        num_anchors=9,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    # per level: sizes x {2^0, 2^(1/3), 2^(2/3)}, three ratios -> 9 anchors (RetinaNet Sec 4); the values
    # configs/coco/retinanet_r101_fpn.yaml writes out
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[32, 40.32, 50.80], [64, 80.63, 101.59], [128, 161.27, 203.19], [256, 322.54, 406.37],
               [512, 645.08, 812.75]],
        aspect_ratios=[[0.5, 1.0, 2.0]],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=(1.0, 1.0, 1.0, 1.0)),
    # foreground IoU >= 0.5, background < 0.4, ignored in between (RetinaNet Sec 4)
    anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
    num_classes=80,
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    # L1 box loss (beta 0), as detectron2's RetinaNet recipe
    smooth_l1_beta=0.0,
    box_reg_loss_type="smooth_l1",
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.5,
    max_detections_per_image=100,
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    input_format="BGR",
)
