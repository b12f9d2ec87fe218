# Faster R-CNN VGG-16 on COCO, the paper's Table 8 baseline (41.5 mAP@.5 / 21.2 mAP@[.5,.95] on val): the
# LazyConfig twin of configs/coco/frcnn_vgg16.yaml (same data, solver and schedule as frcnn_r101.py).
#   python tools/lazy_train_net.py --config configs/lazy/frcnn_vgg16.py --num-gpus 8
from .common.models.frcnn_vgg16 import model  # noqa: F401  (the config's `model`)
from .frcnn_r101 import dataloader, lr_multiplier, optimizer, train  # noqa: F401  (its data, solver, schedule)

train.output_dir = "output/coco/frcnn_vgg16"
# ImageNet VGG-16: torchvision's weights (the paper's detector used the Caffe release, which has no public mirror),
# converted on load (features.* -> conv1_1..conv5_3, classifier.0 / .3 -> fc6 / fc7); RGB input, torchvision's
# mean / std (common/models/frcnn_vgg16.py). As configs/coco/frcnn_vgg16.yaml's MODEL.WEIGHTS.
train.init_checkpoint = "https://download.pytorch.org/models/vgg16-397923af.pth"
