"""Pure-PyTorch model families (built from detectron2 layers). No cfg objects here: keyword arguments only."""
from .blocks import BasicBlock, BottleneckBlock, DropPath, PadShortcut
from .factory import MODEL_SPECS, create_model, list_models
from .resnet import IMAGENET_DEPTHS, ResNet, make_stage, resnet_stage_specs
from .vgg import VGG, VGG16_LAYERS

__all__ = ["BasicBlock", "BottleneckBlock", "DropPath", "PadShortcut", "MODEL_SPECS", "create_model", "list_models",
           "IMAGENET_DEPTHS", "ResNet", "make_stage", "resnet_stage_specs", "VGG", "VGG16_LAYERS"]
