# Mask R-CNN R-101-FPN on COCO with the plugin's backbone (not in the ResNet paper), detectron2's 3x recipe: the
# LazyConfig twin of configs/coco/mask_rcnn_r101_fpn.yaml.
#   python tools/lazy_train_net.py --config configs/lazy/mask_rcnn_r101_fpn.py --num-gpus 8
from .common.data.coco import multi_scale
from .common.models.mask_rcnn_r101_fpn import model  # noqa: F401  (the config's `model`)
from .common.optim import sgd, step_schedule
from .common.train import train

# multi-scale training, shorter side 640..800, test at 800, longer side <= 1333; 16 images per batch
dataloader = multi_scale((640, 672, 704, 736, 768, 800), 800, 1333, images_per_batch=16, masks=True)

# lr 0.02 (= 0.00125 per image, linear scaling), 3x schedule: 270k iterations, lr / 10 at 210k and 250k;
# 1k-iteration linear warm-up (Goyal et al. 2017)
optimizer = sgd(0.02, momentum=0.9, weight_decay=0.0001)
lr_multiplier = step_schedule([210000, 250000], 270000, gamma=0.1, warmup_iters=1000)

train.max_iter = 270000
train.checkpointer.period = 20000
train.output_dir = "output/coco/mask_rcnn_r101_fpn"
# ImageNet ResNet-101: the MSRA Caffe model as detectron2 mirrors it (BGR, mean subtraction, stride in the 1x1),
# read by the safe loader; as the YAML twin's MODEL.WEIGHTS
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
