"""Property-based tests (hypothesis): every combination of factory / config options either builds or raises
ValueError with a message naming the problem, never a crash deep inside PyTorch."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet_backbone
from resnet_backbone.engine.config_io import load_config

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = st.one_of(
    st.sampled_from(["resnet18", "resnet50", "plain18", "cifar_resnet20", "cifar_plain8", "vgg16", "resnext50_32x4d"]),
    st.builds(lambda k, d: f"cifar_{k}{d}", st.sampled_from(["resnet", "plain"]), st.integers(-3, 40)),
    st.text(max_size=12),
)
ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-1, 2, allow_subnormal=False), st.just(float("nan")),
                st.text(max_size=6), st.sampled_from(["A", "B", "C", "none", "BN", "GN", "FrozenBN", "res4"]))
OPTIONS = st.dictionaries(
    st.sampled_from(["shortcut", "norm", "stride_in_1x1", "num_groups", "width_per_group", "drop_path_rate",
                     "zero_init_last", "num_classes", "freeze_at", "res5_dilation", "in_channels", "bogus"]),
    ANY, max_size=4)


def _build_or_value_error(fn):
    try:
        return fn()
    except ValueError as e:
        assert str(e), "ValueError without a message"
        return None


@SETTINGS
@given(name=NAMES, options=OPTIONS)
def test_factory_builds_or_raises_value_error(name, options):
    # shallow stand-ins keep each example fast: the same code paths as the deep nets
    if name in ("resnet50", "resnext50_32x4d", "vgg16") and "num_classes" not in options:
        options = dict(options, num_classes=3)
    model = _build_or_value_error(lambda: resnet_backbone.create_model(name, **options))
    if model is not None and not name.startswith("vgg"):
        size = 32 if name.startswith("cifar") else 64
        channels = options.get("in_channels", 3)
        out = model.eval()(torch.randn(1, channels, size, size))
        assert torch.isfinite(out if isinstance(out, torch.Tensor) else next(iter(out.values()))).all()


CFG_VALUES = {
    "MODEL.RESNETS.DEPTH": st.sampled_from([0, 18, 20, 34, 50, 77, 101]),
    "MODEL.RESNETS.NORM": st.sampled_from(["FrozenBN", "BN", "GN", "SyncBN", "LayerNorm", ""]),
    "MODEL.RESNETS.OUT_FEATURES": st.sampled_from([["res4"], ["res2", "res5"], ["stem"], ["res6"], []]),
    "MODEL.RESNETS.NUM_GROUPS": st.integers(0, 8),
    "MODEL.RESNETS.WIDTH_PER_GROUP": st.sampled_from([0, 4, 64]),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": st.sampled_from([16, 64, 256, 100]),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": st.sampled_from([16, 64]),
    "MODEL.RESNETS.RES5_DILATION": st.sampled_from([1, 2, 3]),
    "MODEL.BACKBONE.FREEZE_AT": st.integers(-1, 7),
    "MODEL.RB_RESNET.SHORTCUT": st.sampled_from(["A", "B", "C", "none", "D"]),
    "MODEL.RB_RESNET.VARIANT": st.sampled_from(["imagenet", "cifar", "mnist"]),
    "MODEL.RB_RESNET.DROP_PATH_RATE": st.sampled_from([0.0, 0.2, 1.5, -0.1]),
}


@SETTINGS
@given(st.fixed_dictionaries({}, optional=CFG_VALUES))
def test_backbone_config_builds_or_raises_value_error(values):
    cfg = load_config("")
    for key, value in values.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    cfg.MODEL.RESNETS.DEPTH = min(cfg.MODEL.RESNETS.DEPTH, 50) if cfg.MODEL.RESNETS.DEPTH != 101 else 50
    backbone = _build_or_value_error(lambda: resnet_backbone.build_resnet_backbone(cfg, ShapeSpec(channels=3)))
    if backbone is not None:
        feats = backbone(torch.randn(1, 3, 64, 64))
        assert set(feats) == set(backbone.output_shape())


@pytest.mark.parametrize("bad, allowed", [({"shortcut": "D"}, "'A', 'B', 'C', 'none'"),
                                          ({"norm": "LayerNorm"}, "'BN'")])
def test_value_error_names_value_and_allowed(bad, allowed):
    with pytest.raises(ValueError) as info:
        resnet_backbone.create_model("resnet18", **bad)
    assert repr(next(iter(bad.values()))) in str(info.value) and allowed in str(info.value)
