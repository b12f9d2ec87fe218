"""Loading detection configs with clear errors: a missing file, a key typo, a bad override."""
import difflib
import os

from detectron2.config import CfgNode, get_cfg

from ..config import add_resnet_backbone_config, check_resnet_backbone_config


def _all_keys(node, prefix=""):
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _explain_key_error(cfg, err, source):
    msg = str(err.args[0] if err.args else err)
    # yacs says "Non-existent config key: X" (files) or "Non-existent key: X" (overrides)
    bad = msg.split(":")[-1].strip().strip("'\"") if "Non-existent" in msg else None
    if bad is None:
        raise err
    return unknown_key_error(bad, _all_keys(cfg), source, "keys must exist in detectron2's defaults or in "
                             "resnet_backbone.add_resnet_backbone_config")


def unknown_key_error(key: str, known, where: str, why: str) -> ValueError:
    """The error for a config key that does not exist (YAML or LazyConfig), naming up to 3 close `known` keys."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}: {why}.{hint}")


def load_config(config_file: str, opts=None) -> CfgNode:
    """detectron2 defaults + the plugin's keys + the YAML file (with its _BASE_ chain) + KEY VALUE overrides."""
    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file!r} (configs live under configs/coco, "
                                    f"configs/voc, configs/imagenet, configs/cifar)")
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, AssertionError) as e:
            raise _explain_key_error(cfg, e, config_file) from None
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"config overrides come as KEY VALUE pairs; got an odd number: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        raise _explain_key_error(cfg, e, "the command-line overrides") from None
    return check_resnet_backbone_config(cfg)  # every plugin key's value, before anything is built


def check_device(device: str):
    """MODEL.DEVICE must name a device this machine has (detectron2's default is "cuda")."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"MODEL.DEVICE {device!r} is not a device name ({e}); use e.g. cuda, cuda:0 or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {device!r} but CUDA is not available on this machine; "
                         f"add `MODEL.DEVICE cpu` to the command line")
    return dev

