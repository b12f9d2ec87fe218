# ResNet Faster R-CNN of the paper (Sec 4.3, Appendix A), the LazyConfig form of configs/coco/Base-FRCNN-ResNet.yaml:
# conv1..conv4_x shared by RPN and detector (stride 16), RoI pooling before conv5_1, the plugin's own conv5_x and
# global average pooling per RoI ("C4"). The head's res5 follows the backbone's options (depth, shortcut, norm, ...),
# so `model.backbone.depth=50` changes both; the head widths follow the depth through stage_out_channels.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch import GeneralizedRCNN

from resnet_backbone.d2.roi_heads import RBRes5ROIHeads, res5_head_stage
from resnet_backbone.modeling.resnet import stage_out_channels

from .frcnn_paper import PIXEL_MEAN, PIXEL_STD, box_predictor, pooler, proposal_generator, roi_sampling
from .resnet import msra_resnet101

model = L(GeneralizedRCNN)(
    backbone=msra_resnet101(out_features=["res4"]),
    proposal_generator=proposal_generator,
    roi_heads=L(RBRes5ROIHeads)(
        **roi_sampling,
        in_features=["res4"],
        # 14x14 pooling, res5's stride-2 first block -> 7x7 (the paper does not give the size; detectron2's C4 setup)
        pooler=pooler,
        res5=L(res5_head_stage)(
            depth="${model.backbone.depth}",
            variant="${model.backbone.variant}",
            shortcut="${model.backbone.shortcut}",
            norm="${model.backbone.norm}",
            stride_in_1x1="${model.backbone.stride_in_1x1}",
            num_groups="${model.backbone.num_groups}",
            width_per_group="${model.backbone.width_per_group}",
            drop_path_rate="${model.backbone.drop_path_rate}",
            zero_init_last="${model.backbone.zero_init_last}",
        ),
        box_predictor=box_predictor,
    ),
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    input_format="BGR",
)
model.proposal_generator.head.in_channels = L(stage_out_channels)(depth="${model.backbone.depth}", stage="res4")
model.roi_heads.box_predictor.num_classes = "${..num_classes}"
model.roi_heads.box_predictor.input_shape = L(ShapeSpec)(
    channels=L(stage_out_channels)(depth="${model.backbone.depth}", stage="res5"), height=1, width=1
)
