"""The plugin's backbones inside torchvision's FasterRCNN."""
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import FasterRCNN

from resnet_backbone import TorchvisionBackbone, torchvision_faster_rcnn
from resnet_backbone.modeling import VGG, ResNet

H, W = 96, 128


def small_faster_rcnn(backbone, **kwargs):
    # tiny images, few proposals / RoIs, and no resizing, so a step runs in about a second on the CPU
    return torchvision_faster_rcnn(backbone, num_classes=3, min_size=H, max_size=W, rpn_pre_nms_top_n_train=200,
                                   rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=100,
                                   rpn_post_nms_top_n_test=16, box_batch_size_per_image=16,
                                   box_score_thresh=0.0, box_detections_per_img=5, **kwargs)


def test_wrapper_returns_an_ordered_dict_with_one_channel_count():
    backbone = ResNet(18, out_features=["res3", "res4"], norm="FrozenBN", freeze_at=2)
    wrapped = TorchvisionBackbone(backbone, out_features=["res4"])
    assert wrapped.out_channels == 256 and wrapped.out_features == ["res4"] and wrapped.strides == {"res4": 16}
    out = wrapped(torch.randn(1, 3, 65, 47))
    assert isinstance(out, OrderedDict) and list(out) == ["res4"]
    assert out["res4"].shape == (1, 256, 5, 3)  # ceil(65 / 16), ceil(47 / 16)


def test_wrapper_rejects_bad_features():
    backbone = ResNet(18, out_features=["res3", "res4"])
    with pytest.raises(ValueError, match="channel"):
        TorchvisionBackbone(backbone)  # res3 has 128 channels, res4 256
    with pytest.raises(ValueError, match="res5"):
        TorchvisionBackbone(backbone, out_features=["res5"])
    with pytest.raises(ValueError, match="classifier"):
        TorchvisionBackbone(ResNet(18, num_classes=10))
    with pytest.raises(ValueError, match="Backbone"):
        TorchvisionBackbone(torch.nn.Conv2d(3, 8, 3))


def targets():
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 120.0, 90.0]])
    return [{"boxes": boxes, "labels": torch.tensor([1, 2])}]


@pytest.mark.parametrize("make_backbone,channels", [
    (lambda: ResNet(18, out_features=["res4"], norm="FrozenBN", freeze_at=2), 256),
    (lambda: VGG(out_features=["conv5_3"], freeze_at=2), 512),
], ids=["resnet18-res4", "vgg16-conv5_3"])
def test_torchvision_faster_rcnn_trains_a_step_and_predicts(make_backbone, channels):
    model = small_faster_rcnn(make_backbone())
    assert isinstance(model, FasterRCNN) and model.backbone.out_channels == channels
    image = torch.rand(3, H, W)

    model.train()
    losses = model([image], targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    body = model.backbone.body
    for name, p in body.named_parameters():  # gradients reach the trainable backbone, not the frozen stages
        assert (p.grad is not None) == p.requires_grad, name
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())

    model.eval()
    with torch.no_grad():
        (pred,) = model([image])
    assert set(pred) == {"boxes", "labels", "scores"}
    boxes = pred["boxes"]
    assert 0 < len(boxes) <= 5 and torch.isfinite(boxes).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
