"""Detectors built from the repo's YAML configs: checkpoint mapping, freezing, a training step, inference.

Each detector is built once per module (R-101 on the CPU is slow) on tiny images. Weights come from a plugin
classifier whose BatchNorm statistics were measured on one batch of test-like images (as a trained model's are on
data): with the identity statistics of a fresh model, FrozenBN lets activations grow through 33 residual blocks.
"""
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

import resnet_backbone
from resnet_backbone.d2.roi_heads import RBRes5ROIHeads, RBVGG16FCHead
from resnet_backbone.d2.weights import map_classifier_to_detector
from resnet_backbone.modeling import VGG, ResNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 128, 160
# each config and where a plugin classifier's weights go in its detector (d2/weights.py's DETECTOR_LAYOUTS)
LAYOUTS = {"frcnn_r101": "c4", "frcnn_vgg16": "vgg16", "mask_rcnn_r101_fpn": "fpn", "retinanet_r101_fpn": "fpn"}
CONFIGS = list(LAYOUTS)


def load_cfg(name):
    cfg = get_cfg()
    resnet_backbone.add_resnet_backbone_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "coco", f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    # tiny inputs and few RoIs; score threshold 0 so a barely trained model still returns boxes
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, W
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32, 16
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


@torch.no_grad()
def calibrated_classifier_state(model: nn.Module, cfg):
    """state_dict after measuring BN statistics on one batch like the test images (momentum 1: that batch's)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    images = torch.randint(0, 256, (2, 3, H, W)).float()
    model.train()(images - torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1))
    return model.state_dict()


@pytest.fixture(scope="module")
def r101_classifier_state():
    return calibrated_classifier_state(resnet_backbone.create_model("resnet101"), load_cfg("frcnn_r101"))


@pytest.fixture(scope="module", params=CONFIGS)
def detector(request, r101_classifier_state):
    torch.manual_seed(0)
    cfg = load_cfg(request.param)
    model = build_model(cfg)
    classifier_state = (VGG(num_classes=1000).state_dict() if "vgg" in request.param else r101_classifier_state)
    mapped, unmapped = map_classifier_to_detector(classifier_state, LAYOUTS[request.param])
    load = model.load_state_dict(mapped, strict=False)
    return request.param, cfg, model, load, unmapped


def sample(with_masks):
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8)
    inst = Instances((H, W))
    boxes = torch.tensor([[10.0, 20.0, 80.0, 100.0], [50.0, 30.0, 150.0, 120.0]])
    inst.gt_boxes, inst.gt_classes = Boxes(boxes), torch.tensor([1, 5])
    if with_masks:
        masks = torch.zeros(2, H, W, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            m[y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    return {"image": image, "instances": inst}


def test_classifier_checkpoint_maps_into_the_detector(detector):
    name, cfg, model, load, unmapped = detector
    # every backbone (and C4 res5 / VGG fc6-fc7) weight came from the classifier; nothing was unexpected
    assert load.unexpected_keys == []
    prefixes = ("backbone.bottom_up.",) if "fpn" in name else ("backbone.", "roi_heads.res5.", "roi_heads.box_head.")
    assert [k for k in load.missing_keys if k.startswith(prefixes)] == []
    assert unmapped == (["fc8.weight", "fc8.bias"] if "vgg" in name else ["linear.weight", "linear.bias"])
    if name == "frcnn_r101":
        assert isinstance(model.roi_heads, RBRes5ROIHeads)
        assert any(k.startswith("roi_heads.res5.2.conv3.") for k in model.state_dict())
        assert not hasattr(model.backbone, "res5")
    if name == "frcnn_vgg16":
        assert isinstance(model.roi_heads.box_head, RBVGG16FCHead)


def test_frozen_stages_from_yaml(detector):
    name, cfg, model, _, _ = detector
    backbone = model.backbone.bottom_up if "fpn" in name else model.backbone
    frozen = {"stem", "res2"} if isinstance(backbone, ResNet) else {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    for key, p in backbone.named_parameters():
        assert p.requires_grad == (key.split(".")[0] not in frozen), key
    if isinstance(backbone, ResNet):  # FrozenBN everywhere (paper: BN statistics frozen while fine-tuning)
        norms = [m for n, m in model.named_modules() if n.endswith(".norm") and not n.startswith("backbone.fpn")]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)


@pytest.mark.slow
def test_one_training_step_gives_finite_losses(detector):
    name, cfg, model, _, _ = detector
    model.train()
    with EventStorage(0):
        losses = model([sample(cfg.MODEL.MASK_ON)])
    expected = {"loss_cls", "loss_box_reg"} | ({"loss_rpn_cls", "loss_rpn_loc"} if "retinanet" not in name else set())
    assert expected <= set(losses) and (("loss_mask" in losses) == cfg.MODEL.MASK_ON)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainable)
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable) > len(trainable) // 2


@pytest.mark.slow
@torch.no_grad()
def test_inference_returns_instances_inside_the_image(detector):
    name, cfg, model, _, _ = detector
    model.eval()
    image = sample(False)["image"]
    (out,) = model([{"image": image, "height": H, "width": W}])
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (H, W)
    assert 0 < len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    boxes = inst.pred_boxes.tensor
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < 80)).all()
    if cfg.MODEL.MASK_ON:
        assert inst.pred_masks.shape == (len(inst), H, W) and inst.pred_masks.dtype == torch.bool
