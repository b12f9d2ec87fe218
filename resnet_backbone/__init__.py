"""resnet_backbone: the ResNet paper (He et al., CVPR 2016) as a Detectron2 plugin.

Importing this package registers the plugin's backbones and ROI heads into detectron2's registries
(under names of their own: detectron2's built-ins are left untouched). Importing twice is harmless.
"""
from .config import add_resnet_backbone_config
from .modeling import create_model, list_models
from .d2 import backbones as _backbones  # noqa: F401  registers the backbones into BACKBONE_REGISTRY
from .d2 import roi_heads as _roi_heads  # noqa: F401  registers the C4 / VGG heads into ROI_HEADS / ROI_BOX_HEAD
from .d2.backbones import build_rb_resnet_backbone as build_resnet_backbone
from .d2.backbones import build_rb_resnet_fpn_backbone as build_resnet_fpn_backbone
from .d2.backbones import build_rb_retinanet_resnet_fpn_backbone as build_retinanet_resnet_fpn_backbone
from .d2.backbones import build_rb_vgg16_backbone as build_vgg16_backbone
from .d2.weights import map_classifier_to_detector
from .torchvision_adapter import TorchvisionBackbone, torchvision_faster_rcnn

__version__ = "0.1.0"

__all__ = [
    "add_resnet_backbone_config",
    "create_model",
    "list_models",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_vgg16_backbone",
    "map_classifier_to_detector",
    "TorchvisionBackbone",
    "torchvision_faster_rcnn",
]
