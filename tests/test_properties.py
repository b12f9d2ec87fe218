"""Property-based tests (hypothesis) of the model factory and the backbone configs, in two halves that can each fail:
valid settings (drawn from what the paper / detectron2 allow, written out here) must build and run, giving finite
outputs of the promised shapes; the same settings with one bad value must raise a ValueError that names the option
or the value, never a crash deep inside PyTorch and never a model."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet_backbone
from resnet_backbone.config import check_resnet_backbone_config
from resnet_backbone.d2.backbones import build_rb_vgg16_backbone
from resnet_backbone.engine.config_io import load_config

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# examples that build and run a model (ResNet-50s, ResNeXt): fewer, each one covers several options at once
BUILD_SETTINGS = settings(SETTINGS, max_examples=12)
VGG_SETTINGS = settings(SETTINGS, max_examples=4)  # the classifier has 138M parameters to initialise

STAGES = ["stem", "res2", "res3", "res4", "res5"]
VGG_CONVS = [f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
# detectron2's get_norm names; GN is 32 groups, so it needs widths divisible by 32 (ImageNet ResNets, not CIFAR's 16)
NORMS = ["BN", "FrozenBN", "", "SyncBN", "naiveSyncBN", "nnSyncBN"]
RATES = st.floats(0.0, 0.99)
COMMON = dict(norm=st.sampled_from(NORMS), stride_in_1x1=st.booleans(), drop_path_rate=RATES,
              zero_init_last=st.booleans(), num_classes=st.integers(1, 5), in_channels=st.integers(1, 4))


@st.composite
def imagenet_resnets(draw):
    name = draw(st.sampled_from(["resnet18", "plain18", "resnet50", "resnext50_32x4d"]))
    options = draw(st.fixed_dictionaries({}, optional=dict(
        COMMON, norm=st.sampled_from(NORMS + ["GN"]), freeze_at=st.integers(0, 5), res5_dilation=st.sampled_from([1, 2]))))
    if name.startswith("resnet"):
        options.update(draw(st.fixed_dictionaries({}, optional={"shortcut": st.sampled_from(["A", "B", "C", "none"])})))
    if name != "resnet18" and name != "plain18":  # groups / width: bottleneck blocks only
        groups = draw(st.sampled_from([None, (1, 64), (32, 4), (8, 8)]))
        if groups:
            options.update(num_groups=groups[0], width_per_group=groups[1])
    return name, options, 64


@st.composite
def cifar_resnets(draw):
    kind, n = draw(st.sampled_from(["resnet", "plain"])), draw(st.integers(1, 3))
    options = draw(st.fixed_dictionaries({}, optional=dict(COMMON, freeze_at=st.integers(0, 4))))
    if kind == "resnet":
        options.update(draw(st.fixed_dictionaries({}, optional={"shortcut": st.sampled_from(["A", "B", "C"])})))
    return f"cifar_{kind}{6 * n + 2}", options, 32


def vgg16s():
    options = st.fixed_dictionaries({"num_classes": st.integers(1, 5)}, optional=dict(
        freeze_at=st.integers(0, 5), dropout=RATES, in_channels=st.integers(1, 4)))
    return st.tuples(st.just("vgg16"), options, st.just(32))


# option -> values no model allows (the option or the value must be named in the error)
BAD_OPTIONS = [("shortcut", "D"), ("norm", "LayerNorm"), ("drop_path_rate", 1.0), ("drop_path_rate", -0.1),
               ("drop_path_rate", float("nan")), ("freeze_at", -1), ("freeze_at", 6), ("freeze_at", "2"),
               ("freeze_at", True), ("num_classes", 0), ("in_channels", 0), ("stride_in_1x1", "yes"),
               ("res5_dilation", 3), ("num_groups", 0), ("width_per_group", 0), ("bogus", 1)]
BAD_VGG_OPTIONS = [("freeze_at", -1), ("freeze_at", 6), ("dropout", 1.0), ("dropout", -0.5), ("num_classes", 0),
                   ("in_channels", 0), ("bogus", 1)]


def _run_classifier(name, options, size):
    model = resnet_backbone.create_model(name, **options).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, options.get("in_channels", 3), size, size))
    assert logits.shape == (1, options["num_classes"])
    assert torch.isfinite(logits).all()
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    return model, frozen


@BUILD_SETTINGS
@given(st.one_of(imagenet_resnets(), cifar_resnets()))
def test_valid_resnet_options_build_and_run(example):
    name, options, size = example
    options.setdefault("num_classes", 3)  # a small classifier: the same code path as 1000 classes
    _, frozen = _run_classifier(name, options, size)
    stages = STAGES[:4] if name.startswith("cifar") else STAGES
    assert frozen == set(stages[:options.get("freeze_at", 0)])  # freeze_at k: the first k stages, nothing else


@VGG_SETTINGS
@given(vgg16s())
def test_valid_vgg16_options_build_and_run(example):
    name, options, size = example
    _, frozen = _run_classifier(name, options, size)
    blocks = options.get("freeze_at", 0)
    assert frozen == {c for c in VGG_CONVS if int(c[4]) <= blocks}


def _refused(build, key, bad):
    with pytest.raises(ValueError) as err:
        build()
    message = str(err.value)
    shown = [bad] + (list(bad) if isinstance(bad, list) else [])
    assert key.lower() in message.lower() or any(repr(v) in message for v in shown), message


@SETTINGS
@given(st.one_of(imagenet_resnets(), cifar_resnets()), st.sampled_from(BAD_OPTIONS))
def test_one_bad_resnet_option_is_a_value_error_naming_it(example, bad):
    name, options, _ = example
    key, value = bad
    _refused(lambda: resnet_backbone.create_model(name, **dict(options, **{key: value})), key, value)


@VGG_SETTINGS
@given(vgg16s(), st.sampled_from(BAD_VGG_OPTIONS))
def test_one_bad_vgg16_option_is_a_value_error_naming_it(example, bad):
    name, options, _ = example
    key, value = bad
    _refused(lambda: resnet_backbone.create_model(name, **dict(options, **{key: value})), key, value)


@pytest.mark.parametrize("name,bad", [("plain18", {"shortcut": "B"}), ("cifar_resnet9", {}), ("resnet19", {}),
                                      ("cifar_resnet20", {"norm": "GN"}), ("resnet18", {"num_groups": 32})])
def test_contradictions_are_value_errors(name, bad):
    """Settings that are each allowed somewhere but not here: a plain net with shortcuts, a CIFAR depth not 6n+2,
    an unknown depth, GN's 32 groups on 16 channels, ResNeXt groups on basic blocks."""
    with pytest.raises(ValueError) as err:
        resnet_backbone.create_model(name, **bad)
    assert str(err.value)


# ----------------------------------------------------------------------------------- detectron2 configs (MODEL.*)

@st.composite
def resnet_cfg_values(draw):
    depth = draw(st.sampled_from([18, 34, 50]))
    values = {"MODEL.RESNETS.DEPTH": depth, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64 if depth < 50 else 256}
    values.update(draw(st.fixed_dictionaries({}, optional={
        "MODEL.RESNETS.NORM": st.sampled_from(["FrozenBN", "BN", "GN", ""]),
        "MODEL.RESNETS.OUT_FEATURES": st.lists(st.sampled_from(STAGES), min_size=1, max_size=3, unique=True).map(
            lambda fs: sorted(fs, key=STAGES.index)),
        "MODEL.RESNETS.STRIDE_IN_1X1": st.booleans(),
        "MODEL.RESNETS.RES5_DILATION": st.sampled_from([1, 2]),
        "MODEL.BACKBONE.FREEZE_AT": st.integers(0, 5),
        "MODEL.RB_RESNET.SHORTCUT": st.sampled_from(["A", "B", "C", "none"]),
        "MODEL.RB_RESNET.DROP_PATH_RATE": RATES,
        "MODEL.RB_RESNET.ZERO_INIT_LAST": st.booleans(),
        "MODEL.RB_RESNET.CHANNELS_LAST": st.sampled_from([True, False, "auto"]),
    })))
    if depth >= 50 and draw(st.booleans()):
        values.update({"MODEL.RESNETS.NUM_GROUPS": 32, "MODEL.RESNETS.WIDTH_PER_GROUP": 4})
    return values


BAD_CFG = [("MODEL.RESNETS.DEPTH", 77), ("MODEL.RESNETS.NORM", "LayerNorm"), ("MODEL.RESNETS.OUT_FEATURES", ["res6"]),
           ("MODEL.RESNETS.RES2_OUT_CHANNELS", 100), ("MODEL.RESNETS.NUM_GROUPS", 0),
           ("MODEL.RESNETS.RES5_DILATION", 3), ("MODEL.BACKBONE.FREEZE_AT", -1), ("MODEL.BACKBONE.FREEZE_AT", 7),
           ("MODEL.RB_RESNET.SHORTCUT", "D"), ("MODEL.RB_RESNET.VARIANT", "mnist"),
           ("MODEL.RB_RESNET.DROP_PATH_RATE", 1.5), ("MODEL.RB_RESNET.DROP_PATH_RATE", -0.1),
           ("MODEL.RB_RESNET.CHANNELS_LAST", "yes")]


def _cfg(values):
    cfg = load_config("", ["MODEL.DEVICE", "cpu"])
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _check_features(backbone, size):
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(1, 3, size, size))
    shapes = backbone.output_shape()
    assert set(feats) == set(shapes)
    for name, f in feats.items():
        assert f.shape == (1, shapes[name].channels, math.ceil(size / shapes[name].stride),
                           math.ceil(size / shapes[name].stride)), name
        assert torch.isfinite(f).all(), name


@BUILD_SETTINGS
@given(resnet_cfg_values())
def test_valid_backbone_config_builds_and_runs(values):
    cfg = check_resnet_backbone_config(_cfg(values))
    backbone = resnet_backbone.build_resnet_backbone(cfg, ShapeSpec(channels=3))
    _check_features(backbone, 64)
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    built = {n.split(".")[0] for n, _ in backbone.named_parameters()}
    assert frozen == set(STAGES[:cfg.MODEL.BACKBONE.FREEZE_AT]) & built


@SETTINGS
@given(resnet_cfg_values(), st.sampled_from(BAD_CFG))
def test_one_bad_backbone_config_value_is_a_value_error_naming_it(values, bad):
    key, value = bad
    leaf = key.rsplit(".", 1)[1]
    _refused(lambda: resnet_backbone.build_resnet_backbone(check_resnet_backbone_config(_cfg(dict(values, **{key: value}))),
                                                           ShapeSpec(channels=3)), leaf, value)


@VGG_SETTINGS
@given(st.fixed_dictionaries({}, optional={
    "MODEL.BACKBONE.FREEZE_AT": st.integers(0, 5),
    "MODEL.VGG.OUT_FEATURES": st.lists(st.sampled_from(VGG_CONVS), min_size=1, max_size=3, unique=True)}))
def test_valid_vgg16_backbone_config_builds_and_runs(values):
    cfg = check_resnet_backbone_config(_cfg(dict(values, **{"MODEL.BACKBONE.NAME": "build_rb_vgg16_backbone"})))
    backbone = build_rb_vgg16_backbone(cfg, ShapeSpec(channels=3))
    _check_features(backbone, 48)
    blocks = cfg.MODEL.BACKBONE.FREEZE_AT
    assert {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad} == \
        {c for c in VGG_CONVS if int(c[4]) <= blocks}


@pytest.mark.parametrize("bad, allowed", [({"shortcut": "D"}, "'A', 'B', 'C', 'none'"),
                                          ({"norm": "LayerNorm"}, "'BN'")])
def test_value_error_names_value_and_allowed(bad, allowed):
    with pytest.raises(ValueError) as info:
        resnet_backbone.create_model("resnet18", **bad)
    assert repr(next(iter(bad.values()))) in str(info.value) and allowed in str(info.value)
