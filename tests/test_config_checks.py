"""Every key of add_resnet_backbone_config is checked when a config loads: a bad value is a ValueError naming the key,
the value and what is allowed, before anything is built or trained (YAML configs and LazyConfigs alike)."""
import pytest
from detectron2.config import CfgNode, get_cfg

from conftest import REPO, load_tool
from resnet_backbone.config import KEY_CHECKS, add_resnet_backbone_config, check_resnet_backbone_config
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.lazy import load_lazy_config


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _plugin_keys():
    """The keys add_resnet_backbone_config adds to detectron2's defaults, with their defaults."""
    detectron2_keys = dict(_leaves(get_cfg()))
    return {k: v for k, v in _leaves(add_resnet_backbone_config(get_cfg())) if k not in detectron2_keys}


def _bad_value(key, default):
    """A value no key of this type allows: the wrong type for flags, an out-of-range number, an unknown name, a list of
    the wrong items (a key whose default does not say what is bad is named in BAD, and fails here until it is)."""
    if key in BAD:
        return BAD[key]
    if isinstance(default, bool):
        return "yes"
    if isinstance(default, (int, float)):
        return -1
    if isinstance(default, str):
        return "no-such-choice"
    if isinstance(default, (list, tuple)):
        return ["no-such-item"]
    raise AssertionError(f"{key} (default {default!r}) needs a bad value in BAD")


BAD = {
    "MODEL.VGG.FREEZE_AT": 6,  # default None (not set); VGG-16 has 5 conv blocks
    "PRETRAIN.DATASET.ROOT": "",  # a path: any non-empty string is one
}
# values at the edge of what is allowed, where off-by-one mistakes live
BOUNDARY = [("RB_TRAIN.LOG_PERIOD", 0), ("PRETRAIN.LOG_PERIOD", 0), ("PRETRAIN.CHECKPOINT_PERIOD", 0),
            ("PRETRAIN.SOLVER.MAX_ITER", 0), ("PRETRAIN.SOLVER.BASE_LR", 0.0), ("MODEL.RB_RESNET.DROP_PATH_RATE", 1.0),
            ("PRETRAIN.SOLVER.STEPS", [100, 50]), ("PRETRAIN.INPUT.PIXEL_STD", [1.0, 0.0, 1.0]),
            ("PRETRAIN.INPUT.SCALE", [256]), ("PRETRAIN.DATASET.GENERATED_NUM_CLASSES", 145),
            ("MODEL.RB_DEPLOY.FUSE_BN", 1), ("MODEL.VGG.OUT_FEATURES", [])]


def _set(cfg, key, value):
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _assert_refused(key, value):
    cfg = load_config("")
    _set(cfg, key, value)
    with pytest.raises(ValueError) as err:
        check_resnet_backbone_config(cfg)
    message = str(err.value)
    shown = [value] + (list(value) if isinstance(value, (list, tuple)) else [])
    assert key in message and any(repr(v) in message for v in shown), message
    assert "allowed" in message or "must be" in message, message  # what would be accepted


def test_every_plugin_key_refuses_a_bad_value():
    keys = _plugin_keys()
    assert len(keys) > 50 and "RB_TRAIN.LOG_PERIOD" in keys and "PRETRAIN.SOLVER.STEPS" in keys
    assert sorted(KEY_CHECKS) == sorted(keys)  # a new key comes with its check
    for key, default in keys.items():
        _assert_refused(key, _bad_value(key, default))


@pytest.mark.parametrize("key,value", BOUNDARY)
def test_values_at_the_boundary_are_refused(key, value):
    _assert_refused(key, value)


def test_defaults_and_shipped_configs_pass():
    check_resnet_backbone_config(load_config(""))
    for path in sorted((REPO / "configs").glob("[!d]*/*.yaml")):  # configs/demo holds overrides, not a config
        if path.parent.name != "lazy":
            load_config(str(path))


def test_log_period_zero_stops_train_net_before_training(tmp_path):
    """RB_TRAIN.LOG_PERIOD 0 crashed the first iteration with ZeroDivisionError; now the tool stops at the config."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"RB_TRAIN.LOG_PERIOD must be an integer >= 1, got 0"):
        load_tool("train_net").main(["--config", str(REPO / "configs/coco/frcnn_r101.yaml"), "RB_TRAIN.LOG_PERIOD",
                                     "0", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    assert not out.exists()  # nothing was built, trained or written


def test_lazy_config_values_are_checked_in_its_keys():
    with pytest.raises(ValueError, match=r"RB_TRAIN.LOG_PERIOD must be an integer >= 1, got 0.*train.log_period"):
        load_lazy_config(str(REPO / "configs/lazy/frcnn_r101.py"), ["train.log_period=0"])
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.FREEZE_AT .*got 6.*model.backbone.freeze_at"):
        load_lazy_config(str(REPO / "configs/lazy/frcnn_vgg16.py"), ["model.backbone.freeze_at=6"])
