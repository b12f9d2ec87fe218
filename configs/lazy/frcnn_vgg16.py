# Faster R-CNN VGG-16 on COCO, the paper's Table 8 baseline (41.5 mAP@.5 / 21.2 mAP@[.5,.95] on val): the
# LazyConfig twin of configs/coco/frcnn_vgg16.yaml (same data, solver and schedule as frcnn_r101.py).
#   python tools/lazy_train_net.py --config configs/lazy/frcnn_vgg16.py --num-gpus 8
from .common.data.coco import single_scale
from .common.models.frcnn_vgg16 import model  # noqa: F401  (the config's `model`)
from .common.optim import sgd, step_schedule
from .common.train import train

dataloader = single_scale(600, 1000, images_per_batch=8)
optimizer = sgd(0.001, momentum=0.9, weight_decay=0.0005)
lr_multiplier = step_schedule([240000], 320000, gamma=0.1, warmup_iters=0)

train.max_iter = 320000
train.checkpointer.period = 20000
train.output_dir = "output/coco/frcnn_vgg16"
# ImageNet VGG-16: torchvision's weights (the paper's detector used the Caffe release, which has no public mirror),
# converted on load (features.* -> conv1_1..conv5_3, classifier.0 / .3 -> fc6 / fc7); RGB input, torchvision's
# mean / std (common/models/frcnn_vgg16.py). As configs/coco/frcnn_vgg16.yaml's MODEL.WEIGHTS.
train.init_checkpoint = "https://download.pytorch.org/models/vgg16-397923af.pth"
