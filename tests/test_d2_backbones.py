"""Registered detectron2 builders: registry hygiene, shapes vs output_shape(), freezing, norms, C4 res5, VGG-16."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from torch import nn

import resnet_backbone
from resnet_backbone.d2.backbones import (build_rb_resnet_backbone, build_rb_resnet_fpn_backbone,
                                          build_rb_retinanet_resnet_fpn_backbone, build_rb_vgg16_backbone)
from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.checkpoint.convert import plugin_to_detectron2
from resnet_backbone.checkpoint.pkl_writer import save_pkl
from resnet_backbone.d2.roi_heads import RBRes5ROIHeads, RBVGG16FCHead
from resnet_backbone.d2.weights import DETECTOR_LAYOUTS, map_classifier_to_detector
from resnet_backbone.modeling import ResNet
from resnet_backbone.modeling.blocks import BasicBlock, BottleneckBlock
from resnet_backbone.modeling.norms import FrozenBatchNorm2d as PluginFrozenBN

from conftest import REPO

RGB = ShapeSpec(channels=3)
ALL_STAGES = ["stem", "res2", "res3", "res4", "res5"]


def make_cfg(**resnets):
    """A detectron2 cfg with the plugin's keys; keyword args set MODEL.RESNETS.* (lower-case) or RB_RESNET via rb_*."""
    cfg = get_cfg()
    resnet_backbone.add_resnet_backbone_config(cfg)
    for key, value in resnets.items():
        if key.startswith("rb_"):
            cfg.MODEL.RB_RESNET[key[3:].upper()] = value
        elif key == "freeze_at":
            cfg.MODEL.BACKBONE.FREEZE_AT = value
        else:
            cfg.MODEL.RESNETS[key.upper()] = value
    return cfg


@pytest.mark.slow  # a fresh interpreter importing torch + detectron2 (~5 s)
def test_registry_after_import_and_reload():
    # a fresh interpreter: snapshot detectron2's registries before the plugin is imported
    code = textwrap.dedent("""
        import importlib
        from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, ROI_BOX_HEAD_REGISTRY
        regs = (BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, ROI_BOX_HEAD_REGISTRY)
        before = [dict(r._obj_map) for r in regs]
        import resnet_backbone
        from resnet_backbone.d2 import backbones, roi_heads
        mine = {"build_rb_resnet_backbone", "build_rb_resnet_fpn_backbone",
                "build_rb_retinanet_resnet_fpn_backbone", "build_rb_vgg16_backbone",
                "RBRes5ROIHeads", "RBVGG16FCHead"}
        def check():
            for reg, old in zip(regs, before):
                for name, obj in old.items():
                    assert reg.get(name) is obj, f"built-in {name} replaced"
                new = set(reg._obj_map) - set(old)
                assert new <= mine, new
            assert mine <= set().union(*(r._obj_map for r in regs))
        check()
        assert BACKBONE_REGISTRY.get("build_rb_resnet_backbone") is resnet_backbone.build_resnet_backbone
        importlib.reload(backbones)
        importlib.reload(roi_heads)
        importlib.reload(resnet_backbone)
        check()
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_public_aliases_are_the_registered_builders():
    assert resnet_backbone.build_resnet_backbone is BACKBONE_REGISTRY.get("build_rb_resnet_backbone")
    assert resnet_backbone.build_resnet_fpn_backbone is BACKBONE_REGISTRY.get("build_rb_resnet_fpn_backbone")
    assert (resnet_backbone.build_retinanet_resnet_fpn_backbone
            is BACKBONE_REGISTRY.get("build_rb_retinanet_resnet_fpn_backbone"))
    assert resnet_backbone.build_vgg16_backbone is BACKBONE_REGISTRY.get("build_rb_vgg16_backbone")


# (description, cfg options, expected res2 block type)
SHAPE_CASES = [
    ("R18 shortcut A", dict(depth=18, res2_out_channels=64, rb_shortcut="A"), BasicBlock),
    ("plain-18", dict(depth=18, res2_out_channels=64, rb_shortcut="none"), BasicBlock),
    ("R50 shortcut C", dict(depth=50, rb_shortcut="C"), BottleneckBlock),
    ("R50 torchvision stride, DC5", dict(depth=50, stride_in_1x1=False, res5_dilation=2), BottleneckBlock),
    ("ResNeXt-50 32x4d", dict(depth=50, num_groups=32, width_per_group=4), BottleneckBlock),
    ("CIFAR-20", dict(depth=20, rb_variant="cifar", stem_out_channels=16, res2_out_channels=16,
                      out_features=["stem", "res2", "res3", "res4"]), BasicBlock),
]


@pytest.mark.parametrize("desc,options,block", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
@torch.no_grad()
def test_resnet_feature_shapes_match_output_shape(desc, options, block):
    options = dict(options)
    options.setdefault("out_features", ALL_STAGES)
    cfg = make_cfg(**options)
    backbone = build_rb_resnet_backbone(cfg, ShapeSpec(channels=1)).eval()  # input channels come from input_shape
    assert isinstance(backbone.res2[0], block)
    shapes = backbone.output_shape()
    assert list(shapes) == options["out_features"]
    for h, w in [(67, 45), (64, 96)]:  # odd sizes: every stride-2 layer rounds up
        feats = backbone(torch.randn(1, 1, h, w))
        assert list(feats) == options["out_features"]
        for name, x in feats.items():
            s = shapes[name]
            assert x.shape == (1, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride)), (name, h, w)
    expected_strides = dict(zip(ALL_STAGES, (4, 4, 8, 16, 32)))
    if options.get("rb_variant") == "cifar":
        expected_strides = dict(zip(ALL_STAGES, (1, 1, 2, 4)))
    if options.get("res5_dilation") == 2:
        expected_strides["res5"] = 16
    assert {n: s.stride for n, s in shapes.items()} == {n: expected_strides[n] for n in shapes}


@pytest.mark.parametrize("builder,levels", [(build_rb_resnet_fpn_backbone, ["p2", "p3", "p4", "p5", "p6"]),
                                            (build_rb_retinanet_resnet_fpn_backbone, ["p3", "p4", "p5", "p6", "p7"])])
@torch.no_grad()
def test_fpn_variants(builder, levels):
    cfg = make_cfg(depth=18, res2_out_channels=64, out_features=["res2", "res3", "res4", "res5"])
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if builder is build_rb_retinanet_resnet_fpn_backbone:
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    backbone = builder(cfg, RGB).eval()
    assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, ResNet)
    shapes = backbone.output_shape()
    assert list(shapes) == levels
    assert [shapes[p].stride for p in levels] == [2 ** int(p[1]) for p in levels]
    # detectron2's FPN needs inputs padded to its size_divisibility (the detector's ImageList does it)
    d = backbone.size_divisibility
    h, w = 3 * d, 5 * d
    feats = backbone(torch.randn(1, 3, h, w))
    for p in levels:
        assert feats[p].shape == (1, cfg.MODEL.FPN.OUT_CHANNELS, math.ceil(h / shapes[p].stride),
                                  math.ceil(w / shapes[p].stride))


def test_fpn_in_features_must_be_backbone_outputs():
    cfg = make_cfg(depth=18, res2_out_channels=64, out_features=["res4", "res5"])
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    for builder in (build_rb_resnet_fpn_backbone, build_rb_retinanet_resnet_fpn_backbone):
        with pytest.raises(ValueError, match="IN_FEATURES"):
            builder(cfg, RGB)


def _stage_of(name):
    return name.split(".")[0]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freezing_exactly_the_frozen_stages(freeze_at):
    cfg = make_cfg(depth=18, res2_out_channels=64, norm="BN", out_features=ALL_STAGES, freeze_at=freeze_at,
                   rb_shortcut="C")  # option C: every block has a shortcut conv + norm to freeze as well
    backbone = build_rb_resnet_backbone(cfg, RGB)
    frozen = set(ALL_STAGES[:freeze_at])
    for name, p in backbone.named_parameters():
        assert p.requires_grad == (_stage_of(name) not in frozen), name
    norms = {n: m for n, m in backbone.named_modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))}
    assert len(norms) == 1 + 8 * 3  # stem + (2 convs + shortcut) per block
    for name, m in norms.items():
        assert isinstance(m, FrozenBatchNorm2d) == (_stage_of(name) in frozen), name
    # frozen stats are used in training mode too
    if freeze_at:
        backbone.train()
        before = backbone.stem.conv1.norm.running_mean.clone()
        backbone(torch.randn(2, 3, 64, 64))
        assert torch.equal(before, backbone.stem.conv1.norm.running_mean)


@pytest.mark.parametrize("norm,cls", [("FrozenBN", PluginFrozenBN), ("BN", nn.BatchNorm2d),
                                      ("SyncBN", nn.SyncBatchNorm), ("GN", nn.GroupNorm)])
def test_norm_choice(norm, cls):
    cfg = make_cfg(depth=18, res2_out_channels=64, norm=norm, freeze_at=0, out_features=ALL_STAGES)
    backbone = build_rb_resnet_backbone(cfg, RGB)
    norms = [m for n, m in backbone.named_modules() if n.endswith("norm")]
    assert len(norms) == 1 + 8 * 2 + 3 and all(type(m) is cls for m in norms)  # stem, 2 per block, 3 shortcuts
    if norm == "FrozenBN":  # the plugin's FrozenBN is detectron2's with a one-op training forward
        assert all(isinstance(m, FrozenBatchNorm2d) for m in norms)


def test_plugin_frozen_bn_computes_detectron2s_function_with_and_without_gradients():
    g = torch.Generator().manual_seed(0)
    ours, theirs = PluginFrozenBN(8), FrozenBatchNorm2d(8)
    for buf in ("weight", "bias", "running_mean", "running_var"):
        value = torch.rand(8, generator=g) + 0.5
        getattr(ours, buf).copy_(value)
        getattr(theirs, buf).copy_(value)
    x = torch.randn(2, 8, 5, 5, generator=g)
    assert torch.equal(ours(x), theirs(x))  # no gradients: both detectron2's F.batch_norm
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)  # one fused multiply-add vs two roundings
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_detection_default_is_frozen_bn_and_freeze_at_2():
    cfg = make_cfg()  # detectron2's defaults: R-50, FrozenBN, FREEZE_AT 2, OUT_FEATURES ["res4"]
    backbone = build_rb_resnet_backbone(cfg, RGB)
    assert backbone.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}
    assert not hasattr(backbone, "res5")  # the C4 head builds its own
    norms = [m for n, m in backbone.named_modules() if n.endswith("norm")]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    grads = {n.split(".")[0]: p.requires_grad for n, p in backbone.named_parameters()}
    assert grads == {"stem": False, "res2": False, "res3": True, "res4": True}


@pytest.mark.parametrize("options,message", [
    (dict(depth=18), "RES2_OUT_CHANNELS"),  # R-18 has 64-channel res2, detectron2's default says 256
    (dict(depth=50, res2_out_channels=64), "RES2_OUT_CHANNELS"),
    (dict(depth=42), "depth"),
    (dict(rb_shortcut="D"), "shortcut"),
    (dict(out_features=["res6"]), "res6"),
    (dict(freeze_at=7), "MODEL.BACKBONE.FREEZE_AT"),
    (dict(norm="LN"), "norm"),
    (dict(deform_on_per_stage=[False, False, True, False]), "DEFORM_ON_PER_STAGE"),
])
def test_bad_config_raises_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        build_rb_resnet_backbone(make_cfg(**options), RGB)


@pytest.mark.parametrize("options,block,n_shortcuts", [
    (dict(depth=18, res2_out_channels=64), BasicBlock, 1),
    (dict(depth=18, res2_out_channels=64, rb_shortcut="none"), BasicBlock, 0),
    (dict(depth=50, rb_shortcut="C", stride_in_1x1=False), BottleneckBlock, 3),
])
def test_c4_head_res5_matches_the_classifier_res5(options, block, n_shortcuts):
    cfg = make_cfg(**options)
    res5, out_channels = RBRes5ROIHeads._build_res5_block(cfg)
    # the classifier with the same options: its res5 has the same names and shapes, so one checkpoint fits both
    classifier = ResNet(options["depth"], num_classes=10, shortcut=cfg.MODEL.RB_RESNET.SHORTCUT,
                        stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1, norm="FrozenBN")
    head_sd = {f"res5.{k}": v.shape for k, v in res5.state_dict().items()}
    cls_sd = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith("res5.")}
    assert head_sd == cls_sd
    assert all(isinstance(b, block) for b in res5) and res5[0].stride == 2
    assert out_channels == classifier.linear.in_features
    assert sum(b.shortcut is not None for b in res5) == n_shortcuts
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in res5.named_modules() if n.endswith("norm"))
    x = torch.randn(2, res5[0].in_channels, 14, 14)
    assert res5(x).shape == (2, out_channels, 7, 7)


@pytest.mark.parametrize("options,message", [
    (dict(res5_dilation=2), "RES5_DILATION"),
    (dict(depth=20, rb_variant="cifar", stem_out_channels=16, res2_out_channels=16), "res5"),
])
def test_c4_head_rejects_configs_without_a_stride_2_res5(options, message):
    with pytest.raises(ValueError, match=message):
        RBRes5ROIHeads._build_res5_block(make_cfg(**options))


def test_c4_head_rejects_a_backbone_of_other_width():
    cfg = make_cfg(depth=18, res2_out_channels=64)
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["conv5_3"]
    with pytest.raises(ValueError, match="res5"):
        RBRes5ROIHeads(cfg, {"conv5_3": ShapeSpec(channels=512, stride=16)})


def _torchvision_vgg16_to_plugin(tv):
    """Independent reference mapping: walk torchvision's vgg16 and name its convs conv{block}_{i}."""
    names, block, i = {}, 1, 0
    for idx, layer in enumerate(tv.features):
        if isinstance(layer, nn.MaxPool2d):
            block, i = block + 1, 0
        elif isinstance(layer, nn.Conv2d):
            i += 1
            names[f"features.{idx}."] = f"conv{block}_{i}."
    names.update({"classifier.0.": "fc6.", "classifier.3.": "fc7.", "classifier.6.": "fc8."})
    out = {}
    for key, value in tv.state_dict().items():
        prefix = key.rsplit(".", 1)[0] + "."
        out[names[prefix] + key.rsplit(".", 1)[1]] = value
    return out


@pytest.mark.slow  # two VGG-16s with 4096-d fc layers (~7 s)
@torch.no_grad()
def test_vgg16_backbone_and_box_head_load_torchvision_vgg16():
    cfg = make_cfg()
    backbone = build_rb_vgg16_backbone(cfg, RGB)
    assert backbone.output_shape() == {"conv5_3": ShapeSpec(channels=512, stride=16)}
    for name, p in backbone.named_parameters():  # conv1_x and conv2_x frozen by default (FREEZE_AT 2, detectron2's)
        assert p.requires_grad == (name[4] not in "12"), name
    head = RBVGG16FCHead(cfg, ShapeSpec(channels=512, height=7, width=7))
    assert head.output_shape.channels == 4096

    # a detector-shaped container, so the mapping's keys (backbone.*, roi_heads.box_head.*) resolve
    det = nn.Module()
    det.backbone, det.roi_heads = backbone, nn.Module()
    det.roi_heads.box_head = head
    tv = torchvision.models.vgg16(weights=None).eval()
    mapped, unmapped = map_classifier_to_detector(_torchvision_vgg16_to_plugin(tv), "vgg16")
    result = det.load_state_dict(mapped, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert unmapped == ["fc8.weight", "fc8.bias"]

    det.eval()
    x = torch.randn(1, 3, 75, 53)  # odd size: VGG's 2x2 pools round down, as torchvision's
    ours = backbone(x)["conv5_3"]
    ref = tv.features[:30](x)  # conv1_1 .. conv5_3 + ReLU, no pool5
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    pooled = torch.randn(3, 512, 7, 7)
    torch.testing.assert_close(head(pooled), tv.classifier[:5](torch.flatten(pooled, 1)), rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("pooled", [1, 2, 3])
@pytest.mark.parametrize("source", ["detector checkpoint", "pretraining export"])
def test_vgg16_box_head_on_a_small_pooled_roi_computes_torchvision_vgg16s_classifier(tmp_path, pooled, source):
    """A 7x7 fc6 loaded into the head of a smaller pooled RoI computes what torchvision's vgg16 computes on a pool5
    of that size: its AdaptiveAvgPool2d to 7x7, then classifier[0] (fc6) and the rest. From a checkpoint with the
    detector's names and from the pretraining's export (classifier names, matched by detectron2's heuristics)."""
    tv = torchvision.models.vgg16(weights=None).eval()
    head = RBVGG16FCHead(make_cfg(), ShapeSpec(channels=512, height=pooled, width=pooled)).eval()
    det = nn.Module()
    det.roi_heads = nn.Module()
    det.roi_heads.box_head = head
    plugin = {k: v for k, v in _torchvision_vgg16_to_plugin(tv).items() if k.startswith(("fc6", "fc7"))}
    if source == "detector checkpoint":
        path = tmp_path / "vgg16_heads.pth"
        torch.save({"model": map_classifier_to_detector(plugin, "vgg16")[0]}, path)
    else:
        path = tmp_path / "vgg16_heads.pkl"
        save_pkl(plugin_to_detectron2(plugin, author="test")[0], path)
    SafeDetectionCheckpointer(det, allow_partial=True).load(str(path))
    assert head.fc6.weight.shape == (4096, 512 * pooled * pooled)
    x = torch.randn(4, 512, pooled, pooled)
    ref = tv.classifier[:5](torch.flatten(tv.avgpool(x), 1))
    torch.testing.assert_close(head(x), ref, rtol=1e-4, atol=1e-4)


def test_vgg16_box_head_refuses_to_fold_fc6_to_more_than_7_cells():
    head = RBVGG16FCHead(make_cfg(), ShapeSpec(channels=8, height=9, width=9))
    weights = {"fc6.weight": torch.zeros(4096, 8 * 49)}
    with pytest.raises(ValueError, match="9x9.*POOLER_RESOLUTION 1 to 7"):
        head.adapt_loaded_weights(weights, "")


def _vgg16_block_params(blocks):
    """Parameters of VGG-16's first `blocks` conv blocks, from configuration D of the VGG paper (Table 1): 3x3 convs
    with biases; the layer list written out here, not read from the model."""
    widths = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    total, in_c = 0, 3
    for block in widths[:blocks]:
        for out_c in block:
            total += in_c * out_c * 9 + out_c
            in_c = out_c
    return total


@pytest.mark.parametrize("freeze_at", range(6))
def test_backbone_freeze_at_counts_vgg16_conv_blocks(freeze_at):
    """MODEL.BACKBONE.FREEZE_AT means for VGG-16 what it means for ResNets, stages frozen: here conv blocks (it was
    ignored: FREEZE_AT 5 froze what 0 froze, conv1-2, through a VGG-only key)."""
    from resnet_backbone.engine.config_io import load_config

    cfg = load_config(str(REPO / "configs/coco/frcnn_vgg16.yaml"),
                      ["MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "MODEL.DEVICE", "cpu"])
    backbone = build_rb_vgg16_backbone(cfg, RGB)
    frozen = [name for name, p in backbone.named_parameters() if not p.requires_grad]
    assert sum(p.numel() for p in backbone.parameters() if not p.requires_grad) == _vgg16_block_params(freeze_at)
    assert sorted({name.split("_")[0] for name in frozen}) == [f"conv{b}" for b in range(1, freeze_at + 1)]


@pytest.mark.parametrize("config", ["coco/frcnn_vgg16.yaml", "voc/frcnn_vgg16.yaml"])
def test_shipped_vgg16_configs_freeze_conv1_and_conv2(config):
    """The paper's VGG-16 detector fixes conv1_x and conv2_x (Faster R-CNN, following Fast R-CNN Sec 4.5)."""
    from resnet_backbone.engine.config_io import load_config

    cfg = load_config(str(REPO / "configs" / config), ["MODEL.DEVICE", "cpu"])
    backbone = build_rb_vgg16_backbone(cfg, RGB)
    assert {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad} == \
        {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}


def test_vgg_freeze_at_alias_refuses_to_disagree():
    """MODEL.VGG.FREEZE_AT, the older VGG-16 spelling, is accepted only when it says what MODEL.BACKBONE.FREEZE_AT
    says, so no config can mean two things."""
    from resnet_backbone.engine.config_io import load_config

    config = str(REPO / "configs/coco/frcnn_vgg16.yaml")
    same = load_config(config, ["MODEL.BACKBONE.FREEZE_AT", "3", "MODEL.VGG.FREEZE_AT", "3", "MODEL.DEVICE", "cpu"])
    assert sum(not p.requires_grad for p in build_rb_vgg16_backbone(same, RGB).parameters()) == 2 * (2 + 2 + 3)  # weight + bias of conv1_1 .. conv3_3
    with pytest.raises(ValueError, match=r"MODEL.VGG.FREEZE_AT is 0 but MODEL.BACKBONE.FREEZE_AT is 2"):
        load_config(config, ["MODEL.VGG.FREEZE_AT", "0"])
    same.defrost()
    same.MODEL.VGG.FREEZE_AT = 4  # set after loading: the builder refuses too
    with pytest.raises(ValueError, match="MODEL.VGG.FREEZE_AT is 4"):
        build_rb_vgg16_backbone(same, RGB)


def test_unknown_detector_layout_is_refused():
    with pytest.raises(ValueError, match="layout"):
        map_classifier_to_detector({}, "c5")


def test_channels_last_backbone_computes_the_same_function():
    """MODEL.RB_RESNET.CHANNELS_LAST: NHWC inside (weights too), the same features and gradients, returned in the
    default contiguous format; "auto" means on for a CPU device, off elsewhere."""
    cfg = make_cfg(depth=50, out_features=["res2", "res4"], freeze_at=2)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.RB_RESNET.CHANNELS_LAST == "auto"
    fast = build_rb_resnet_backbone(cfg, RGB)
    assert fast.channels_last and fast.res3[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    cfg.MODEL.RB_RESNET.CHANNELS_LAST = False
    plain = build_rb_resnet_backbone(cfg, RGB)
    assert not plain.channels_last
    plain.load_state_dict(fast.state_dict())  # same names and values
    x = torch.randn(2, 3, 64, 96)
    outs = []
    for model in (fast, plain):
        model.train()
        model.zero_grad()
        feats = model(x)
        sum(f.square().sum() for f in feats.values()).backward()
        outs.append((feats, model.res4[0].conv1.weight.grad.clone()))
    def rel(a, b):  # largest difference relative to the largest value: float rounding in another summation order
        return float((a - b).abs().max() / b.abs().max())

    for name, f in outs[0][0].items():
        assert f.is_contiguous()
        assert rel(f, outs[1][0][name]) < 1e-5
    assert rel(outs[0][1], outs[1][1]) < 1e-4

    cfg.MODEL.RB_RESNET.CHANNELS_LAST = "auto"
    cfg.MODEL.DEVICE = "cuda"  # not built (no GPU needed): only the choice is resolved
    from resnet_backbone.d2.backbones import channels_last_from_cfg
    assert channels_last_from_cfg(cfg) is False
    cfg.MODEL.RB_RESNET.CHANNELS_LAST = "yes"
    with pytest.raises(ValueError, match="CHANNELS_LAST.*'yes'"):
        channels_last_from_cfg(cfg)
    with pytest.raises(ValueError, match="channels_last"):
        ResNet(18, channels_last="yes")


def test_every_plugin_backbone_has_one_spec_entry():
    """d2/specs.py describes each backbone the plugin registers, once (where a new backbone is added)."""
    from resnet_backbone.d2 import backbones
    from resnet_backbone.d2.specs import BACKBONE_SPECS

    registered = {name for name, obj in BACKBONE_REGISTRY._obj_map.items() if obj.__module__ == backbones.__name__}
    assert registered == {name for name, spec in BACKBONE_SPECS.items() if spec.layout is not None}
    assert all(spec.layout in DETECTOR_LAYOUTS for spec in BACKBONE_SPECS.values() if spec.layout is not None)
    for name in ("build_resnet_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"):
        assert name in BACKBONE_REGISTRY and BACKBONE_SPECS[name].family == "resnet"  # detectron2's own


@pytest.mark.parametrize("config", ["coco/frcnn_r101.yaml", "coco/frcnn_vgg16.yaml", "coco/mask_rcnn_r101_fpn.yaml",
                                    "coco/retinanet_r101_fpn.yaml", "voc/frcnn_r101.yaml", "voc/frcnn_vgg16.yaml"])
def test_shipped_configs_start_from_their_backbones_imagenet_weights(config):
    """The spec's ImageNet weights and their preprocessing are what the paper's configs use (one source of both)."""
    from resnet_backbone.checkpoint.provenance import PROVENANCE
    from resnet_backbone.d2.specs import backbone_spec
    from resnet_backbone.engine.config_io import load_config

    cfg = load_config(str(REPO / "configs" / config))
    spec = backbone_spec(cfg)
    assert cfg.MODEL.WEIGHTS == spec.imagenet_weights.format(**spec.fields(cfg))
    want = PROVENANCE[spec.weights_source].detectron2_settings()
    assert [round(v, 3) for v in cfg.MODEL.PIXEL_MEAN] == [round(v, 3) for v in want["MODEL.PIXEL_MEAN"]]
    assert [round(v, 3) for v in cfg.MODEL.PIXEL_STD] == [round(v, 3) for v in want["MODEL.PIXEL_STD"]]
    assert cfg.INPUT.FORMAT == want["INPUT.FORMAT"]
    label = {"r101": "ResNet-101", "vgg16": "VGG-16"}[config.split("_")[1].split(".")[0]] if "frcnn" in config \
        else "ResNet-101"
    assert spec.label_for(cfg) == label
