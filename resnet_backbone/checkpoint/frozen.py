"""Frozen layers need weights: the check that runs when weights have been loaded for training.

A frozen parameter (requires_grad False: MODEL.BACKBONE.FREEZE_AT) never changes while
training, and neither does a FrozenBatchNorm2d, whose affine is a buffer. When MODEL.WEIGHTS did not fill them,
the detector trains on a random, fixed stem and identity norms and nothing fails: it is just a much worse
detector. So training refuses to start then, unless random frozen layers are asked for explicitly.
"""
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Set

from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from ..d2.specs import backbone_spec

__all__ = ["check_frozen_layers_loaded", "check_training_weights", "frozen_keys", "loaded_keys"]

# The stage a key belongs to: the module path up to the plugin's stage / layer name (stem, res2..res5, conv1_1..)
_STAGE = re.compile(r"^(.*?(?:^|\.)(?:stem|res\d+|conv\d+_\d+|fc\d+))(?:\.|$)")
FROZEN = "frozen (requires_grad False)"
FROZEN_BN = "FrozenBN"
# the FrozenBatchNorm2d tensors a checkpoint must provide: MSRA / Caffe2 files hold only the folded affine, and
# FrozenBatchNorm2d fills in identity statistics when they are absent (detectron2 layers/batch_norm.py)
_FROZEN_BN_WEIGHTS = ("weight", "bias")


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel: the checkpointer loads into .module, whose names have no "module."
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def frozen_keys(model: nn.Module) -> "OrderedDict[str, str]":
    """State-dict keys that training cannot change -> why (FROZEN or FROZEN_BN)."""
    model = _unwrap(model)
    keys: "OrderedDict[str, str]" = OrderedDict()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            keys[name] = FROZEN
    for name, module in model.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            for tensor in _FROZEN_BN_WEIGHTS:
                keys.setdefault(f"{name}.{tensor}", FROZEN_BN)
    return keys


def loaded_keys(model: nn.Module, report) -> Set[str]:
    """The keys of ``model`` that a SafeDetectionCheckpointer load filled, from its report's coverage (none when
    nothing was loaded: ``report`` None, e.g. MODEL.WEIGHTS "")."""
    if report is None:
        return set()
    return set(report.coverage.loaded_in()) & set(_unwrap(model).state_dict())


def _stage(key: str) -> str:
    found = _STAGE.match(key)
    return found.group(1) if found else key.rpartition(".")[0]


def check_frozen_layers_loaded(model: nn.Module, loaded: Iterable[str], *, weights: str = "",
                               allow_random: bool = False, fix: Optional[str] = None) -> "OrderedDict[str, List[str]]":
    """Raise ValueError when a frozen parameter or a FrozenBN layer of ``model`` is not among ``loaded``.

    The message names the stages (e.g. backbone.stem, roi_heads.res5), why they cannot train, and ``fix``.
    With ``allow_random`` nothing is raised. Returns {stage: reasons} of what was left random (empty when all
    frozen layers got weights).
    """
    loaded = set(loaded)
    random: "OrderedDict[str, List[str]]" = OrderedDict()
    for key, why in frozen_keys(model).items():
        if key not in loaded:
            reasons = random.setdefault(_stage(key), [])
            if why not in reasons:
                reasons.append(why)
    if not random or allow_random:
        return random
    by_reason: Dict[str, List[str]] = OrderedDict()
    for stage, reasons in random.items():
        by_reason.setdefault(" and ".join(reasons), []).append(stage)
    stages = "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())
    source = f"MODEL.WEIGHTS {weights!r}" if weights else 'MODEL.WEIGHTS "" (no weights)'
    raise ValueError(
        f"refusing to train: {source} left frozen layers without weights, which would stay random (frozen convs) "
        f"or identity (FrozenBN) for all of training - {stages}. "
        + (fix or "Load weights that cover them, make them trainable, or allow random frozen layers explicitly."))


def _fix_for(cfg) -> str:
    """The config changes that resolve a refusal, in this config's keys (its backbone's entry in d2/specs.py)."""
    spec = backbone_spec(cfg)
    weights = f"ImageNet weights, e.g. {spec.imagenet_weights_for(cfg)}" if spec else "weights that cover them"
    scratch = spec.scratch if spec else "MODEL.BACKBONE.FREEZE_AT 0 and trainable norms"
    return (f"Fix: set MODEL.WEIGHTS to {weights} (offline: tools/convert_weights.py on a machine with internet "
            f"access, then the written file); or train from scratch with {scratch}; or, to train with random frozen "
            "layers on purpose, set MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN True.")


def check_training_weights(cfg, model: nn.Module, report) -> "OrderedDict[str, List[str]]":
    """The trainer's check after loading MODEL.WEIGHTS (or resuming): ``report`` is the checkpointer's
    ``last_load_report``. MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN lets random frozen layers through."""
    return check_frozen_layers_loaded(model, loaded_keys(model, report), weights=cfg.MODEL.WEIGHTS,
                                      allow_random=cfg.MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN, fix=_fix_for(cfg))
