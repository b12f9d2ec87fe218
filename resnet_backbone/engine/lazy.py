"""LazyConfig support (detectron2's Python configs: configs/lazy/, tools/lazy_train_net.py).

* `load_lazy_config(path, overrides)`: LazyConfig.load + "key=value" overrides, where a key that is not in the
  config (and is not an argument of the object it configures) is an error naming close keys, instead of
  detectron2's silent new key.
* `detection_evaluator(dataset_name, mask_on, output_dir)`: the plugin's evaluator choice (COCO or VOC metric, from
  the dataset's metadata) as a LazyConfig target.
* `yacs_view(cfg)`: the yacs keys that the plugin's checks read (weights preprocessing, the results file), filled
  from a LazyConfig; one translation (LAZY_KEYS, `lazy_key`), so that those checks exist once
  (engine/run_config.py runs them for both config kinds).
"""
import ast
import inspect
import os
import re
from typing import List, Sequence

from detectron2.config import CfgNode, LazyConfig, get_cfg
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import add_resnet_backbone_config, check_resnet_backbone_config
from ..d2.specs import lazy_backbone_spec
from .config_io import unknown_key_error
from .trainer import build_detection_evaluator

__all__ = ["LAZY_KEYS", "detection_evaluator", "dataset_names", "lazy_key", "lazy_keys_named", "load_lazy_config",
           "parse_override", "yacs_view"]

_MISSING = object()


def _all_keys(node, prefix="") -> List[str]:
    keys = []
    items = node.items() if isinstance(node, DictConfig) else enumerate(node) if isinstance(node, ListConfig) else ()
    for k, v in items:
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, (DictConfig, ListConfig)):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _accepts(target, name: str) -> bool:
    """Whether the callable `target` of a LazyCall node takes a keyword argument `name`."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True  # no signature to check against (a builtin): let detectron2 instantiate it and complain
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_override_key(cfg, key: str):
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None, throw_on_missing=False) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        return
    if isinstance(parent, ListConfig) and leaf.isdigit() and int(leaf) < len(parent):
        return
    if isinstance(parent, DictConfig) and "_target_" in parent and _accepts(parent["_target_"], leaf):
        return  # an argument the config leaves at its default, e.g. model.backbone.drop_path_rate
    raise unknown_key_error(key, _all_keys(cfg), "the command-line overrides",
                            "the config has no such key and nothing there takes it as an argument")


def parse_override(item: str):
    """"key=value" -> (key, value): the value as a Python literal (100, 0.5, True, None, [64], "a=b"), else the
    text itself (train.device=cpu). One grammar whether or not hydra is installed (detectron2 parses with hydra's
    when it is, and without it fails on a bare word)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"LazyConfig overrides are key=value (e.g. train.max_iter=100), got {item!r}")
    try:
        return key, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return key, text


def load_lazy_config(path: str, overrides: Sequence[str] = ()):
    """LazyConfig.load(path) with `overrides` ("key=value", see `parse_override`) applied, each key checked first."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path!r} (LazyConfigs live under configs/lazy)")
    if os.path.splitext(path)[1] not in (".py", ".yaml", ".yml"):
        raise ValueError(f"{path!r} is not a LazyConfig: a .py file, or the config.yaml a LazyConfig run saved")
    cfg = LazyConfig.load(path)
    if "model" not in cfg:
        raise ValueError(f"{path!r} is not a LazyConfig (it defines no `model`; top-level keys: {list(cfg)}); "
                         "yacs YAML configs (configs/coco, configs/voc) run with tools/train_net.py")
    for item in overrides or ():
        key, value = parse_override(item)
        _check_override_key(cfg, key)
        OmegaConf.update(cfg, key, value, merge=True)
    _check_plugin_keys(cfg, path)
    try:  # the plugin's key checks (config.py), on what the LazyConfig says about those keys
        check_resnet_backbone_config(yacs_view(cfg))
    except ValueError as e:
        raise ValueError(f"{e} (in this LazyConfig: {lazy_keys_named(cfg, str(e))})") from None
    return cfg


def dataset_names(names) -> List[str]:
    """A dataset `names` argument (one name or a list) as a list."""
    return [names] if isinstance(names, str) else list(names)


def detection_evaluator(dataset_name, *, mask_on: bool = False, output_dir: str = "./output"):
    """The evaluator of one dataset (COCO mAP@[.5:.95] / mAP@.5 or VOC mAP@.5, from its metadata); COCO results go
    to `output_dir`/inference/<dataset>. `mask_on`: also score the masks (segm)."""
    names = dataset_names(dataset_name)
    if len(names) != 1:
        raise ValueError(f"an evaluator scores one dataset, got {names}; tools/lazy_train_net.py evaluates each of "
                         "dataloader.test.dataset.names in turn")
    view = get_cfg()
    add_resnet_backbone_config(view)
    view.MODEL.MASK_ON, view.OUTPUT_DIR = bool(mask_on), output_dir
    return build_detection_evaluator(view, names[0], os.path.join(output_dir, "inference", names[0]))


def _target_name(node) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return getattr(target, "__name__", str(target).rpartition(".")[2]) if target is not None else ""


# Where the yacs keys that the plugin's checks read live in a LazyConfig; "{net}" is the node of the backbone's
# network (model.backbone, or model.backbone.bottom_up under an FPN).
LAZY_KEYS = {
    "MODEL.WEIGHTS": "train.init_checkpoint",
    "MODEL.DEVICE": "train.device",
    "OUTPUT_DIR": "train.output_dir",
    "MODEL.RB_WEIGHTS.ALLOW_PARTIAL": "train.allow_partial",
    "MODEL.RB_WEIGHTS.CHECK_PREPROCESSING": "train.check_preprocessing",
    "MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN": "train.allow_random_frozen",
    "MODEL.PIXEL_MEAN": "model.pixel_mean",
    "MODEL.PIXEL_STD": "model.pixel_std",
    "INPUT.FORMAT": "model.input_format",
    "DATASETS.TRAIN": "dataloader.train.dataset.names",
    "DATASETS.TEST": "dataloader.test.dataset.names",
    "MODEL.BACKBONE.NAME": "{net}._target_",
    "MODEL.BACKBONE.FREEZE_AT": "{net}.freeze_at",
    "RB_TRAIN.LOG_PERIOD": "train.log_period",
    "MODEL.RESNETS.DEPTH": "{net}.depth",
    "MODEL.RESNETS.NORM": "{net}.norm",
    "MODEL.RESNETS.STRIDE_IN_1X1": "{net}.stride_in_1x1",
    "MODEL.RB_RESNET.SHORTCUT": "{net}.shortcut",
    "MODEL.RB_RESNET.VARIANT": "{net}.variant",
}
_RESNET_KEYS = ("MODEL.RESNETS.", "MODEL.RB_RESNET.")


def _net_key(cfg) -> str:
    return "model.backbone.bottom_up" if "bottom_up" in cfg.model.backbone else "model.backbone"


def lazy_key(cfg, yacs_key: str) -> str:
    """Where `yacs_key` (one of LAZY_KEYS) lives in the LazyConfig `cfg`, e.g. MODEL.WEIGHTS -> train.init_checkpoint."""
    return LAZY_KEYS[yacs_key].format(net=_net_key(cfg))


def lazy_keys_named(cfg, text: str) -> str:
    """"YACS.KEY = lazy.key, ..." for the LAZY_KEYS that `text` (a check's message) names; "" when none."""
    return ", ".join(f"{k} = {lazy_key(cfg, k)}" for k in LAZY_KEYS if re.search(rf"\b{re.escape(k)}\b", text))


def _check_plugin_keys(cfg, path):
    """The keys yacs_view reads must be there (configs/lazy/common/train.py and models/resnet.py define them)."""
    is_resnet = _target_name(OmegaConf.select(cfg, _net_key(cfg))) == "ResNet"
    missing = [lazy_key(cfg, k) for k in LAZY_KEYS if is_resnet or not k.startswith(_RESNET_KEYS)]
    missing = [k for k in missing if OmegaConf.select(cfg, k, default=_MISSING, throw_on_missing=False) is _MISSING]
    if missing:
        raise ValueError(f"LazyConfig {path!r} lacks {', '.join(missing)}: the plugin's checks read them "
                         "(configs/lazy/common/train.py and configs/lazy/common/models/resnet.py set them all)")


def yacs_view(cfg) -> CfgNode:
    """A yacs config holding what a LazyConfig `cfg` says about the keys the plugin's checks read (LAZY_KEYS, plus
    META_ARCHITECTURE and MASK_ON); the rest keeps its defaults."""
    view = get_cfg()
    add_resnet_backbone_config(view)
    model, train = cfg.model, cfg.train
    view.MODEL.WEIGHTS = train.init_checkpoint
    view.MODEL.DEVICE = train.device
    view.OUTPUT_DIR = train.output_dir
    view.MODEL.RB_WEIGHTS.ALLOW_PARTIAL = bool(train.allow_partial)
    view.MODEL.RB_WEIGHTS.CHECK_PREPROCESSING = bool(train.check_preprocessing)
    view.MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN = bool(train.allow_random_frozen)
    view.MODEL.META_ARCHITECTURE = _target_name(model)
    view.MODEL.PIXEL_MEAN = [float(v) for v in model.pixel_mean]
    view.MODEL.PIXEL_STD = [float(v) for v in model.pixel_std]
    view.INPUT.FORMAT = model.input_format
    backbone = model.backbone
    net = OmegaConf.select(cfg, _net_key(cfg))
    top = _target_name(backbone.top_block) if "bottom_up" in backbone and "top_block" in backbone else None
    spec = lazy_backbone_spec(_target_name(net), top)  # d2/specs.py: which builder the YAML twin names
    view.MODEL.BACKBONE.NAME = spec.name if spec is not None else _target_name(net)
    view.MODEL.BACKBONE.FREEZE_AT = net.freeze_at
    view.RB_TRAIN.LOG_PERIOD = train.log_period
    if spec is not None and spec.family == "resnet":
        view.MODEL.RESNETS.DEPTH = int(net.depth)
        view.MODEL.RESNETS.NORM = net.norm
        view.MODEL.RESNETS.STRIDE_IN_1X1 = bool(net.stride_in_1x1)
        view.MODEL.RB_RESNET.SHORTCUT = net.shortcut or "B"
        view.MODEL.RB_RESNET.VARIANT = net.variant
    view.MODEL.MASK_ON = "roi_heads" in model and model.roi_heads.get("mask_head") is not None
    view.DATASETS.TRAIN = tuple(dataset_names(cfg.dataloader.train.dataset.names))
    view.DATASETS.TEST = tuple(dataset_names(cfg.dataloader.test.dataset.names))
    return view
