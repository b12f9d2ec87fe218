# configs/lazy/frcnn_r101.py at a small scale: configs/demo/shapes_small_scale.yaml's `common` and `resnet` sections
# (from scratch) in LazyConfig keys, on the embedded generated shapes data on 2 CPU cores (tests/test_lazy_config.py
# checks that it builds what the YAML config with those overrides builds).
#   python tools/lazy_train_net.py --config configs/lazy/demo/frcnn_r101_shapes.py
from ..frcnn_r101 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from ..common.optim import step_schedule

# from scratch: no ImageNet weights, so nothing to keep frozen: trainable BN (batch statistics) instead of FrozenBN,
# and each residual block starting as identity (Goyal et al. 2017) so that ResNet-101 trains stably; the C4 head's
# res5 follows the backbone's options
train.init_checkpoint = ""
model.backbone.norm = "BN"
model.backbone.freeze_at = 0
model.backbone.zero_init_last = True

# the same validation images evaluated in both formats: COCO (pycocotools) and VOC (mAP@.5)
dataloader.train.dataset.names = ["rb_shapes_coco_train"]
dataloader.test.dataset.names = ["rb_shapes_coco_val", "rb_shapes_voc_test"]
model.roi_heads.num_classes = 4
# the generated images are 160x224; shorter side 128 (paper: 600, at most 1000)
dataloader.train.mapper.augmentations[0].short_edge_length = [128]
dataloader.train.mapper.augmentations[0].max_size = 180
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 180
# the paper's 128/256/512 anchors scaled with the image (600 -> 128, about 1/5)
model.proposal_generator.anchor_generator.sizes = [[24, 48, 96]]
# fewer proposals for small images with 1-4 objects; 16 RoIs per image for the per-RoI res5
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (200, 50)
model.roi_heads.batch_size_per_image = 16
# 6x6 RoI pooling -> 3x3 after res5's stride 2 (paper scale: 14 -> 7)
model.roi_heads.pooler.output_size = 6
dataloader.train.num_workers = dataloader.test.num_workers = 1
dataloader.train.total_batch_size = 2

optimizer.lr = 0.02
optimizer.weight_decay = 0.0001
# the lr divided by 10 at 3/4 of training, as the paper's schedule; a short warm-up from scratch
lr_multiplier = step_schedule([90], 120, gamma=0.1, warmup_iters=20)  # noqa: F811
train.max_iter = 120
train.checkpointer.period = 80
# a loss point every 5 iterations
train.log_period = 5
# data order and augmentation seeded (detectron2's default: a new seed per run)
train.seed = 0
train.output_dir = "output/demo/lazy_frcnn_r101"
