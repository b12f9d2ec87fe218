# RetinaNet R-101-FPN (P3-P7) on COCO with the plugin's backbone (not in the ResNet paper), detectron2's 3x recipe:
# the LazyConfig twin of configs/coco/retinanet_r101_fpn.yaml.
#   python tools/lazy_train_net.py --config configs/lazy/retinanet_r101_fpn.py --num-gpus 8
from .common.data.coco import multi_scale
from .common.models.retinanet_r101_fpn import model  # noqa: F401  (the config's `model`)
from .mask_rcnn_r101_fpn import lr_multiplier, optimizer, train  # noqa: F401  (its 3x schedule)

# as mask_rcnn_r101_fpn.py's, boxes only
dataloader = multi_scale((640, 672, 704, 736, 768, 800), 800, 1333, images_per_batch=16)

# lr 0.01 (RetinaNet Sec 4.1), the rest of the solver as Mask R-CNN's
optimizer.lr = 0.01

train.output_dir = "output/coco/retinanet_r101_fpn"
# train.init_checkpoint: the MSRA ImageNet ResNet-101, as mask_rcnn_r101_fpn.py
