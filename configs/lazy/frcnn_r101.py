# Faster R-CNN ResNet-101 C4 on COCO, the paper's Table 8/9 baseline (48.4 mAP@.5 / 27.2 mAP@[.5,.95] on val): the
# LazyConfig twin of configs/coco/frcnn_r101.yaml (tests/test_lazy_config.py checks that they build the same model,
# data pipeline and solver).
#   python tools/lazy_train_net.py --config configs/lazy/frcnn_r101.py --num-gpus 8
from .common.data.coco import single_scale
from .common.models.frcnn_r101_c4 import model  # noqa: F401  (the config's `model`)
from .common.optim import sgd, step_schedule
from .common.train import train

# single scale: shorter side 600, longer side at most 1000 (paper Sec 4.3; py-faster-rcnn's cap); 8 images per batch
dataloader = single_scale(600, 1000, images_per_batch=8)

# Paper (Sec 4.3, COCO): 8 GPUs, 8 images per batch, lr 0.001 for 240k iterations then 0.0001 for 80k; momentum 0.9;
# weight decay 0.0005 (Faster R-CNN's); no warm-up. With another batch size B, scale linearly (Goyal et al. 2017).
optimizer = sgd(0.001, momentum=0.9, weight_decay=0.0005)
lr_multiplier = step_schedule([240000], 320000, gamma=0.1, warmup_iters=0)

train.max_iter = 320000
train.checkpointer.period = 20000
train.output_dir = "output/coco/frcnn_r101"
# ImageNet ResNet-101: the MSRA Caffe model as detectron2 mirrors it (BGR, mean subtraction, stride in the 1x1),
# read by the safe loader; as the YAML twin's MODEL.WEIGHTS
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
