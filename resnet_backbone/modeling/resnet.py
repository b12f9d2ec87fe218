"""ResNet of the paper: stem + stages, ImageNet (Table 1) and CIFAR (Sec 4.2) layouts, depth tables as data.

`ResNet` is a detectron2 `Backbone`: with `num_classes` it is a classifier whose forward returns logits; without,
forward returns the requested feature maps ("stem", "res2", ...). Parameter names follow detectron2's ResNet
(`stem.conv1`, `res2.0.conv1.norm`, `res4.22.shortcut`, `linear`), so detectron2 checkpoints map one to one.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d
from torch import nn

from .base import ClassifierBackbone
from .blocks import BLOCK_TYPES
from .init import init_conv, init_linear
from .norms import get_norm
from .options import NORM_OPTIONS, SHORTCUT_OPTIONS, check_choice, check_int, check_rate

__all__ = ["IMAGENET_DEPTHS", "ResNet", "STAGE_OPTIONS", "cifar_depth_to_n", "make_stage", "resnet_stage_specs",
           "stage_options", "stage_out_channels"]

# paper Table 1: depth -> (block, blocks per stage conv2_x..conv5_x)
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# paper Sec 4.2: 6n+2 layers, three stages of n basic blocks with 16/32/64 filters on 32/16/8 maps
CIFAR_WIDTHS = (16, 32, 64)
VARIANTS = ("imagenet", "cifar")


def cifar_depth_to_n(depth: int) -> int:
    allowed = "6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"
    if (check_int(f"CIFAR ResNet depth ({allowed})", depth, 8) - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be {allowed}, got {depth!r}")
    return (depth - 2) // 6


@dataclass(frozen=True)
class StageSpec:
    """Everything needed to build one stage; the single source for the backbone and the C4 head."""

    name: str
    block: str
    num_blocks: int
    in_channels: int
    out_channels: int
    bottleneck_channels: Optional[int]
    first_stride: int
    dilation: int
    drop_path_rates: tuple


class BasicStem(CNNBlockBase):
    """Table 1 conv1: 7x7/2 conv, norm, ReLU, 3x3/2 max pool (stride 4)."""

    def __init__(self, in_channels=3, out_channels=64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False,
                            norm=get_norm(norm, out_channels))
        init_conv(self.conv1)

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class CifarStem(CNNBlockBase):
    """Sec 4.2: the first layer is a 3x3 conv with 16 filters (stride 1)."""

    def __init__(self, in_channels=3, out_channels=16, norm="BN"):
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, bias=False, norm=get_norm(norm, out_channels))
        init_conv(self.conv1)

    def forward(self, x):
        return F.relu_(self.conv1(x))


# The ResNet keyword arguments that decide its stages (those of resnet_stage_specs); the others (shortcut, norm,
# stride_in_1x1, zero_init_last, ...) configure the blocks inside them.
STAGE_OPTIONS = ("depth", "variant", "num_groups", "width_per_group", "stem_out_channels", "res5_dilation",
                 "drop_path_rate")


def stage_options(options) -> dict:
    """The stage-deciding part of a dict of ResNet keyword arguments: ``resnet_stage_specs(**stage_options(o))``."""
    return {k: options[k] for k in STAGE_OPTIONS if k in options}


def resnet_stage_specs(depth, *, variant="imagenet", num_groups=1, width_per_group=64, stem_out_channels=None,
                       res5_dilation=1, drop_path_rate=0.0) -> List[StageSpec]:
    """The stages of a ResNet as data (names, widths, strides, per-block drop-path rates)."""
    check_choice("variant", variant, VARIANTS)
    check_int("num_groups", num_groups, 1)
    check_int("width_per_group", width_per_group, 1)
    check_choice("res5_dilation", res5_dilation, (1, 2))
    drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
    if variant == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(f"unknown ImageNet ResNet depth {depth!r}; allowed: {sorted(IMAGENET_DEPTHS)}")
        block, counts = IMAGENET_DEPTHS[depth]
        stem_c = stem_out_channels or 64
        if block == "basic":
            if num_groups != 1 or width_per_group != 64:
                raise ValueError(f"ResNeXt groups/width need bottleneck blocks; ResNet-{depth} uses basic blocks "
                                 f"(got num_groups={num_groups}, width_per_group={width_per_group})")
            outs, bots = [64 * 2**i for i in range(4)], [None] * 4
        else:
            outs = [256 * 2**i for i in range(4)]
            bots = [num_groups * width_per_group * 2**i for i in range(4)]
        strides = (1, 2, 2, 1 if res5_dilation == 2 else 2)
        dilations = (1, 1, 1, res5_dilation)
    else:
        n = cifar_depth_to_n(depth)
        if num_groups != 1 or width_per_group != 64 or res5_dilation != 1:
            raise ValueError("CIFAR ResNets use basic blocks: num_groups, width_per_group and res5_dilation "
                             "cannot be changed")
        block, counts = "basic", (n, n, n)
        stem_c = stem_out_channels or CIFAR_WIDTHS[0]
        outs, bots, strides, dilations = list(CIFAR_WIDTHS), [None] * 3, (1, 2, 2), (1, 1, 1)
    total = sum(counts)
    # stochastic depth: rate grows linearly from 0 (first block) to drop_path_rate (last block)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    specs, in_c, k = [], stem_c, 0
    for i, count in enumerate(counts):
        specs.append(StageSpec(f"res{i + 2}", block, count, in_c, outs[i], bots[i], strides[i], dilations[i],
                               tuple(rates[k:k + count])))
        in_c, k = outs[i], k + count
    return specs


def stage_out_channels(depth, stage, *, variant="imagenet") -> int:
    """Output channels of one stage ("res2" ... "res5") of a ResNet; LazyConfigs size their heads with it."""
    by_name = {s.name: s.out_channels for s in resnet_stage_specs(depth, variant=variant)}
    check_choice("stage", stage, tuple(by_name))
    return by_name[stage]


def make_stage(spec: StageSpec, *, norm="BN", shortcut="B", stride_in_1x1=True, num_groups=1,
               zero_init_last=False) -> nn.Sequential:
    """Build one stage (an nn.Sequential of blocks named 0, 1, ...) from its spec and the block options."""
    blocks, in_c = [], spec.in_channels
    for i in range(spec.num_blocks):
        kwargs = dict(stride=spec.first_stride if i == 0 else 1, norm=norm, shortcut=shortcut,
                      drop_path=spec.drop_path_rates[i], zero_init_last=zero_init_last, dilation=spec.dilation)
        if spec.block == "bottleneck":
            kwargs.update(bottleneck_channels=spec.bottleneck_channels, num_groups=num_groups,
                          stride_in_1x1=stride_in_1x1)
        blocks.append(BLOCK_TYPES[spec.block](in_c, spec.out_channels, **kwargs))
        in_c = spec.out_channels
    return nn.Sequential(*blocks)


class ResNet(ClassifierBackbone):
    """ResNet-{18,34,50,101,152} (variant="imagenet") or CIFAR ResNet-(6n+2) (variant="cifar").

    Args:
        depth: a key of IMAGENET_DEPTHS, or 6n+2 for CIFAR.
        shortcut: "A", "B", "C" or "none" (plain net). Default "B" (ImageNet) / "A" (CIFAR), as in the paper.
        norm: any norm detectron2's get_norm accepts ("BN", "SyncBN", "FrozenBN", "GN", ...).
        stride_in_1x1: stride in the first 1x1 of a bottleneck (MSRA/paper) or in the 3x3 (torchvision).
        num_groups, width_per_group: ResNeXt (Xie et al. 2017); 1 and 64 give ResNet.
        drop_path_rate: stochastic depth, linear decay over blocks; identity in eval mode.
        zero_init_last: zero-init the last norm of each residual branch.
        num_classes: if set, a global-pool + fc classifier; forward then returns logits.
        out_features: feature names returned when used as a backbone (default: the last stage).
            Stages after the last requested one are not built (the C4 head builds res5 itself).
        freeze_at: 0 trains all; 1 freezes the stem; k freezes the stem and res2..res{k} (detectron2's FREEZE_AT).
        channels_last: compute in channels-last (NHWC) memory format (weights and the input converted), returning
            the requested features in the default contiguous format, so the layers after the backbone see what they
            expect. Same function; oneDNN runs NHWC convolutions without reordering around them, so the detectron2
            builders turn it on for CPU (MODEL.RB_RESNET.CHANNELS_LAST "auto"; measurements: README, Speed).
    """

    # attribute types for TorchScript: a classifier's empty feature list has no element type to infer
    _out_features: List[str]
    stage_names: List[str]

    def __init__(self, depth, *, variant="imagenet", shortcut=None, norm="BN", stride_in_1x1=True, num_groups=1,
                 width_per_group=64, stem_out_channels=None, res5_dilation=1, drop_path_rate=0.0,
                 zero_init_last=False, num_classes=None, out_features=None, freeze_at=0, in_channels=3,
                 channels_last=False):
        super().__init__()
        shortcut = shortcut if shortcut is not None else ("A" if variant == "cifar" else "B")
        check_choice("shortcut", shortcut, SHORTCUT_OPTIONS)
        if not callable(norm):
            check_choice("norm", norm, NORM_OPTIONS)
        check_choice("stride_in_1x1", stride_in_1x1, (True, False))
        check_choice("channels_last", channels_last, (True, False))
        check_int("in_channels", in_channels, 1)
        if num_classes is not None:
            check_int("num_classes", num_classes, 1)
        specs = resnet_stage_specs(depth, variant=variant, num_groups=num_groups, width_per_group=width_per_group,
                                   stem_out_channels=stem_out_channels, res5_dilation=res5_dilation,
                                   drop_path_rate=drop_path_rate)
        names = ["stem"] + [s.name for s in specs]
        if out_features is None:
            out_features = [] if num_classes is not None else [names[-1]]
        out_features = list(out_features)
        for f in out_features:
            check_choice("output feature", f, tuple(names))
        max_freeze = len(names)
        check_int("freeze_at", freeze_at, 0, max_freeze)

        self.depth, self.variant, self.shortcut = depth, variant, shortcut
        self.num_classes = num_classes
        stem_cls = BasicStem if variant == "imagenet" else CifarStem
        self.stem = stem_cls(in_channels, specs[0].in_channels, norm)
        self._out_feature_strides = {"stem": self.stem.stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        last = len(specs) if num_classes is not None else max(names.index(f) for f in out_features + ["stem"])
        self.stage_names, stride = [], self.stem.stride
        for spec in specs[:last]:
            stage = make_stage(spec, norm=norm, shortcut=shortcut, stride_in_1x1=stride_in_1x1,
                               num_groups=num_groups, zero_init_last=zero_init_last)
            self.add_module(spec.name, stage)
            self.stage_names.append(spec.name)
            stride *= spec.first_stride
            self._out_feature_strides[spec.name] = stride
            self._out_feature_channels[spec.name] = spec.out_channels
        if num_classes is not None:
            self.linear = nn.Linear(specs[-1].out_channels, num_classes)
            init_linear(self.linear)
        self._out_features = out_features
        self.freeze(freeze_at)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def freeze(self, freeze_at=0):
        """Freeze the stem (freeze_at >= 1) and res2..res{freeze_at}: no grads, norms become FrozenBatchNorm."""
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                for block in getattr(self, name):
                    block.freeze()
        return self

    def forward_features(self, x) -> Dict[str, torch.Tensor]:
        outputs: Dict[str, torch.Tensor] = {}
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x.contiguous() if self.channels_last else x
        # named_children (registration order: stem, res2, ...) instead of getattr(self, name): TorchScript looks
        # submodules up by literal names only; the stages keep their names (and the checkpoint keys)
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
                if name in self._out_features:
                    outputs[name] = x.contiguous() if self.channels_last else x
        outputs["_last"] = x
        return outputs

    def classify(self, last):
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(last, 1), 1))  # global average pool + fc
