# VGG-16 Faster R-CNN, the paper's detection baseline (Sec 4.3; Ren et al. 2015), the LazyConfig form of
# configs/coco/Base-FRCNN-VGG16.yaml: conv5_3 (stride 16, no pool5) shared by RPN and detector, 7x7 RoI pooling,
# fc6 / fc7 (4096, dropout 0.5) per RoI.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.roi_heads import StandardROIHeads

from resnet_backbone.d2.roi_heads import RBVGG16FCHead
from resnet_backbone.modeling.vgg import VGG, VGG_FC_DIM, VGG16_LAYERS

from .frcnn_paper import box_predictor, pooler, proposal_generator, roi_sampling

CONV5_CHANNELS = VGG16_LAYERS[-1][-1]
# torchvision's VGG-16 ImageNet weights (frcnn_vgg16.py's train.init_checkpoint) were trained on RGB pixels
# normalised by torchvision's mean / std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) in [0, 1] units: the same
# here, x255
PIXEL_MEAN = [123.675, 116.280, 103.530]
PIXEL_STD = [58.395, 57.120, 57.375]

model = L(GeneralizedRCNN)(
    # conv1_x and conv2_x fixed (Faster R-CNN's VGG-16 setup, following Fast R-CNN Sec 4.5)
    backbone=L(VGG)(out_features=["conv5_3"], freeze_at=2),
    proposal_generator=proposal_generator,
    roi_heads=L(StandardROIHeads)(
        **roi_sampling,
        box_in_features=["conv5_3"],
        box_pooler=pooler,
        # 7x7 x 512 = the input of VGG-16's fc6
        box_head=L(RBVGG16FCHead)(
            input_shape=L(ShapeSpec)(channels=CONV5_CHANNELS, height="${...box_pooler.output_size}",
                                     width="${...box_pooler.output_size}"),
            dropout=0.5,
        ),
        box_predictor=box_predictor,
    ),
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    input_format="RGB",
)
model.proposal_generator.in_features = ["conv5_3"]
model.proposal_generator.head.in_channels = CONV5_CHANNELS
model.roi_heads.box_pooler.output_size = 7
model.roi_heads.box_predictor.num_classes = "${..num_classes}"
model.roi_heads.box_predictor.input_shape = L(ShapeSpec)(channels=VGG_FC_DIM)
