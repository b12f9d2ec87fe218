"""create_model / list_models: model names -> constructor arguments, as data."""
import re
from typing import Dict, List

from torch import nn

from .resnet import IMAGENET_DEPTHS, ResNet, cifar_depth_to_n
from .vgg import VGG

__all__ = ["MODEL_SPECS", "create_model", "list_models"]

CIFAR_PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202)  # paper Table 6

# name -> (constructor, fixed keyword arguments); user options are passed on top.
MODEL_SPECS: Dict[str, tuple] = {}
for _d in IMAGENET_DEPTHS:
    MODEL_SPECS[f"resnet{_d}"] = (ResNet, dict(depth=_d, variant="imagenet", shortcut="B", num_classes=1000))
    MODEL_SPECS[f"plain{_d}"] = (ResNet, dict(depth=_d, variant="imagenet", shortcut="none", num_classes=1000))
for _d in CIFAR_PAPER_DEPTHS:
    MODEL_SPECS[f"cifar_resnet{_d}"] = (ResNet, dict(depth=_d, variant="cifar", shortcut="A", num_classes=10))
    MODEL_SPECS[f"cifar_plain{_d}"] = (ResNet, dict(depth=_d, variant="cifar", shortcut="none", num_classes=10))
# ResNeXt (Xie et al. 2017): 32 groups, 4 / 8 channels per group in res2
MODEL_SPECS["resnext50_32x4d"] = (ResNet, dict(depth=50, num_groups=32, width_per_group=4, num_classes=1000))
MODEL_SPECS["resnext101_32x8d"] = (ResNet, dict(depth=101, num_groups=32, width_per_group=8, num_classes=1000))
MODEL_SPECS["vgg16"] = (VGG, dict(num_classes=1000))

_CIFAR_ANY = re.compile(r"^cifar_(resnet|plain)(\d+)$")


def list_models() -> List[str]:
    """Names create_model accepts (CIFAR nets also take any depth 6n+2: cifar_resnet8, cifar_plain14, ...)."""
    return sorted(MODEL_SPECS)


def _spec(name):
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    m = _CIFAR_ANY.match(name)
    if m:
        depth = int(m.group(2))
        cifar_depth_to_n(depth)  # raises for depths that are not 6n+2
        return ResNet, dict(depth=depth, variant="cifar", shortcut="A" if m.group(1) == "resnet" else "none",
                            num_classes=10)
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(list_models())} "
                     f"(and cifar_resnetN / cifar_plainN for any N = 6n+2)")


def create_model(name: str, **options) -> nn.Module:
    """Build a classifier by name; options override the defaults (e.g. num_classes=100, shortcut="A", norm="GN").

    Plain nets keep shortcut="none": asking for another shortcut raises ValueError.
    """
    cls, fixed = _spec(name)
    kwargs = dict(fixed)
    if name.startswith(("plain", "cifar_plain")) and options.get("shortcut", "none") != "none":
        raise ValueError(f"{name} is a plain net (no shortcuts); shortcut={options['shortcut']!r} is not allowed. "
                         f"Use the resnet{name.split('plain')[1]} name for a residual net.")
    kwargs.update(options)
    try:
        return cls(**kwargs)
    except TypeError as e:  # unknown keyword: name it and list what is allowed
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "depth")]
        raise ValueError(f"bad option for {name}: {e}; allowed options: {', '.join(allowed)}") from None
