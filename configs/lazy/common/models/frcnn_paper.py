# Faster R-CNN as the ResNet paper trains it (Sec 4.3, Appendix A, on Ren et al. 2015): the parts shared by the
# ResNet-101 C4 and the VGG-16 detectors, the LazyConfig form of configs/coco/Base-FRCNN.yaml. Both detectors pool
# one stride-16 map (res4 / conv5_3); the model files set the feature name and width.
from detectron2.config import LazyCall as L
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

# must equal the preprocessing the weights were trained with: detectron2's defaults (BGR, mean subtraction only,
# as the MSRA Caffe models)
PIXEL_MEAN = [103.530, 116.280, 123.675]
PIXEL_STD = [1.0, 1.0, 1.0]

# positive IoU >= 0.7, negative < 0.3; 256 anchors per image, up to half positive (Faster R-CNN Sec 3.1.3; the FPN
# detectors keep it)
rpn_sampling = dict(
    anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
    box2box_transform=L(Box2BoxTransform)(weights=(1.0, 1.0, 1.0, 1.0)),
    batch_size_per_image=256,
    positive_fraction=0.5,
)

proposal_generator = L(RPN)(
    in_features=["res4"],
    head=L(StandardRPNHead)(in_channels=1024, num_anchors=9),
    # Faster R-CNN Sec 3.1.1 (used unchanged by the ResNet paper): 3 scales x 3 ratios on one feature map
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[128, 256, 512]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16], offset=0.0
    ),
    **rpn_sampling,
    # 12000 / 6000 boxes before NMS as in py-faster-rcnn's config; 2000 proposals to train, 300 to test (paper)
    pre_nms_topk=(12000, 6000),
    post_nms_topk=(2000, 300),
    nms_thresh=0.7,
)

# 128 RoIs per image, 25% foreground (IoU >= 0.5), as the ResNet paper's Fast R-CNN step
roi_sampling = dict(
    num_classes=80,
    batch_size_per_image=128,
    positive_fraction=0.25,
    proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
)

# Fast R-CNN's max RoI pooling (not RoIAlign, which came later) on the stride-16 map; the model sets output_size
pooler = L(ROIPooler)(output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIPool")

box_predictor = L(FastRCNNOutputLayers)(
    input_shape=None,  # the model file sets the box head's output shape
    box2box_transform=L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0)),
    num_classes=80,
    # py-faster-rcnn's test NMS (cfg.TEST.NMS = 0.3); detectron2's default is 0.5
    test_score_thresh=0.05,
    test_nms_thresh=0.3,
    test_topk_per_image=100,
    # as detectron2 builds it from MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT (the class loss keeps weight 1)
    loss_weight={"loss_box_reg": 1.0},
)
