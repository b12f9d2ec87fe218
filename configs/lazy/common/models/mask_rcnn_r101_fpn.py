# Mask R-CNN (He et al. 2017) with FPN (Lin et al. 2017) on the plugin's ResNet-101, the LazyConfig form of
# configs/coco/mask_rcnn_r101_fpn.yaml: not in the ResNet paper; it shows the backbone in a modern detector. Settings
# are the Mask R-CNN / FPN papers' (detectron2's 3x recipe).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)

from .frcnn_paper import PIXEL_MEAN, PIXEL_STD, rpn_sampling
from .resnet import msra_resnet101

FPN_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=msra_resnet101(out_features=["res2", "res3", "res4", "res5"]),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        # P6 by max pooling P5 (FPN Sec 4.1)
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels="${...backbone.out_channels}", num_anchors=3),
        # one anchor size per level P2..P6 (FPN Sec 4.1), three ratios each
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        **rpn_sampling,
        # per level before NMS, in total after it (detectron2's FPN setup)
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        # 512 RoIs per image, 25% foreground (Mask R-CNN Sec 3.1)
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3", "p4", "p5"],
        # two 1024-d fc layers on 7x7 RoIAlign (FPN Sec 4.2, Mask R-CNN Sec 3.1)
        box_pooler=L(ROIPooler)(output_size=7, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels=256, height=7, width=7), conv_dims=[], fc_dims=[1024, 1024]
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),
            box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
            num_classes="${..num_classes}",
            test_score_thresh=0.05,
            test_nms_thresh=0.5,
            test_topk_per_image=100,
            loss_weight={"loss_box_reg": 1.0},
        ),
        mask_in_features=["p2", "p3", "p4", "p5"],
        # four 3x3 convs and a deconv on 14x14 RoIAlign -> 28x28 masks (Mask R-CNN Fig. 4)
        mask_pooler=L(ROIPooler)(output_size=14, scales=FPN_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=L(ShapeSpec)(channels=256, height=14, width=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],
        ),
    ),
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    input_format="BGR",
)
