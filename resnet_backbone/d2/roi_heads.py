"""ROI heads of the paper's two detectors (Sec 4.3, Appendix A), registered in detectron2's registries.

* `RBRes5ROIHeads` (ROI_HEADS_REGISTRY): the C4 head of ResNet Faster R-CNN. RoI pooling on res4, then the plugin's
  own conv5_x stage (same block type, shortcut option, norm, stride placement and groups as the backbone; first
  block stride 2) and global average pooling. Its stage is `roi_heads.res5`, named like the backbone's stages, so
  one plugin ResNet checkpoint initialises backbone (stem, res2-res4) and head (res5) together.
* `RBVGG16FCHead` (ROI_BOX_HEAD_REGISTRY): VGG-16's fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout on the 7x7
  RoI-pooled conv5_3 map, as in Faster R-CNN; names fc6 / fc7 match the plugin VGG-16 classifier. On a smaller
  pooled RoI it loads a 7x7 fc6 folded (`fold_fc6`): the classifier's adaptive pooling to 7x7, then fc6.
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_BOX_HEAD_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from ..modeling.options import check_rate
from ..modeling.resnet import make_stage, resnet_stage_specs
from ..modeling.vgg import VGG_FC_DIM, VGG_POOL_SIZE
from .backbones import resnet_options_from_cfg
from .registry import register_once

__all__ = ["RBRes5ROIHeads", "RBVGG16FCHead", "build_res5_head_stage", "fold_fc6", "res5_head_stage"]


def res5_head_stage(depth=101, *, shortcut="B", norm="BN", stride_in_1x1=True, num_groups=1, zero_init_last=False,
                    **stages) -> nn.Sequential:
    """The C4 head's conv5_x from the backbone's ResNet options (keyword arguments of `ResNet`; ``stages``: variant,
    width_per_group, stem_out_channels, drop_path_rate, res5_dilation (1 only), as for `resnet_stage_specs`): the
    plugin's res5, first block stride 2. For LazyConfig (`res5=L(res5_head_stage)(depth=101, norm="FrozenBN")`)
    and `build_res5_head_stage`."""
    if stages.get("res5_dilation", 1) != 1:
        # the head runs on RoI-pooled maps; dilation is a backbone option (DC5), stride 2 is the paper's head
        raise ValueError(f"res5_dilation={stages['res5_dilation']} (MODEL.RESNETS.RES5_DILATION) cannot be used with "
                         "the C4 head (its res5 downsamples the pooled RoI by 2, paper Appendix A); allowed: 1")
    specs = resnet_stage_specs(depth, num_groups=num_groups, **stages)
    by_name = {s.name: s for s in specs}
    if "res5" not in by_name:
        raise ValueError(f"the C4 head needs a res5 stage; a {stages.get('variant')} ResNet has only "
                         f"{', '.join(by_name)} (use variant 'imagenet', MODEL.RB_RESNET.VARIANT 'imagenet')")
    return make_stage(by_name["res5"], norm=norm, shortcut=shortcut, stride_in_1x1=stride_in_1x1,
                      num_groups=num_groups, zero_init_last=zero_init_last)


def build_res5_head_stage(cfg) -> nn.Sequential:
    """The C4 head's conv5_x: the plugin's res5 for the ResNet described by cfg, first block stride 2."""
    return res5_head_stage(**resnet_options_from_cfg(cfg))


class RBRes5ROIHeads(Res5ROIHeads):
    """detectron2's C4 ROI heads with the plugin's res5 (any depth / shortcut option / plain net / norm).

    Built from a cfg (MODEL.ROI_HEADS.NAME "RBRes5ROIHeads") or from keyword arguments alone, those of detectron2's
    Res5ROIHeads: in_features, pooler, res5 (`res5_head_stage(...)`), box_predictor, mask_head, num_classes,
    batch_size_per_image, positive_fraction, proposal_matcher, proposal_append_gt.
    """

    @configurable
    def __init__(self, *, res5: nn.Module, box_predictor: nn.Module, **kwargs):
        out_channels = getattr(res5[-1], "out_channels", None) if isinstance(res5, nn.Sequential) else None
        cls_score = getattr(box_predictor, "cls_score", None)
        in_features = getattr(cls_score, "in_features", None)
        if out_channels is not None and in_features is not None and in_features != out_channels:
            raise ValueError(f"RBRes5ROIHeads: box_predictor takes {in_features} channels but res5 returns "
                             f"{out_channels}; build the predictor with ShapeSpec(channels={out_channels})")
        super().__init__(res5=res5, box_predictor=box_predictor, **kwargs)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        in_feature = cfg.MODEL.ROI_HEADS.IN_FEATURES[0]
        expected = ret["res5"][0].in_channels
        if input_shape[in_feature].channels != expected:
            raise ValueError(f"RBRes5ROIHeads pools {in_feature!r} with {input_shape[in_feature].channels} channels, "
                             f"but the res5 built from MODEL.RESNETS takes {expected}: use a plugin ResNet backbone "
                             "with the same MODEL.RESNETS / MODEL.RB_RESNET settings and IN_FEATURES ['res4']")
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        # detectron2 (v0.6 and later) calls this classmethod from Res5ROIHeads.from_config
        stage = build_res5_head_stage(cfg)
        return stage, stage[-1].out_channels


class RBVGG16FCHead(nn.Module):
    """fc6 (C*H*W -> 4096) -> ReLU -> dropout -> fc7 (4096 -> 4096) -> ReLU -> dropout (VGG-16's classifier body).

    With the 7x7x512 RoI pool of conv5_3 the shapes are those of VGG-16's fc6 / fc7, so a plugin VGG-16 classifier
    (fc6, fc7) or torchvision vgg16 (classifier.0, classifier.3) initialises them. A smaller pooled RoI (HxW, H and
    W at most 7) gets an fc6 of C*H*W inputs, and a 7x7 fc6 loaded into it is folded (`adapt_loaded_weights`): the
    head then computes what the classifier computes on a pool5 of that size (adaptive pooling to 7x7, then fc6),
    and fc6 trains as one layer on the pooled cells rather than as 49 copies fed the same values.
    MODEL.ROI_BOX_HEAD.{NUM_FC, FC_DIM, NUM_CONV} are not used: the layout is VGG's.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, dropout: float = 0.5):
        super().__init__()
        if not input_shape.channels or not input_shape.height or not input_shape.width:
            raise ValueError(f"RBVGG16FCHead needs channels, height and width of the pooled RoI, got {input_shape}")
        self.pooled = (input_shape.channels, input_shape.height, input_shape.width)
        self.fc6 = nn.Linear(input_shape.channels * input_shape.height * input_shape.width, VGG_FC_DIM)
        self.fc7 = nn.Linear(VGG_FC_DIM, VGG_FC_DIM)
        self.dropout = nn.Dropout(check_rate("MODEL.VGG.DROPOUT", dropout))
        for fc in (self.fc6, self.fc7):
            nn.init.normal_(fc.weight, std=0.01)  # VGG paper Sec 3.1, as the plugin VGG classifier
            nn.init.zeros_(fc.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"input_shape": input_shape, "dropout": cfg.MODEL.VGG.DROPOUT}

    def loadable_shapes(self, prefix: str) -> dict:
        """{key: shape} of the checkpoint tensors `adapt_loaded_weights` converts: a 7x7 fc6 on a smaller RoI."""
        channels, height, width = self.pooled
        if (height, width) == (VGG_POOL_SIZE, VGG_POOL_SIZE):
            return {}
        return {prefix + "fc6.weight": (VGG_FC_DIM, channels * VGG_POOL_SIZE**2)}

    def adapt_loaded_weights(self, weights: dict, prefix: str) -> None:
        """Fold a 7x7 fc6 in `weights` (keys under `prefix`) to this head's pooled size, in place; the
        checkpointer calls it before it compares shapes. Any other fc6 is left for that comparison."""
        for key, shape in self.loadable_shapes(prefix).items():
            if key in weights and tuple(weights[key].shape) == shape:
                weights[key] = fold_fc6(weights[key], self.pooled[0], self.pooled[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)  # (C, H, W) order, as VGG's and torchvision's flatten before fc6
        x = self.dropout(F.relu(self.fc6(x)))
        return self.dropout(F.relu(self.fc7(x)))

    @property
    @torch.jit.unused  # as detectron2's box heads: a construction-time property, not part of a scripted head
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=VGG_FC_DIM)


def fold_fc6(weight: torch.Tensor, channels: int, pooled) -> torch.Tensor:
    """fc6's weight (out, C*7*7) as one on a (C, H, W) map: fc6(flatten(adaptive_avg_pool2d(x, 7))) is linear in
    x, and the folded weight is that map. H and W at most 7 (adaptive pooling then spreads each cell over the 7x7
    grid, as the VGG classifier does with a small pool5)."""
    height, width = pooled
    if not (1 <= height <= VGG_POOL_SIZE and 1 <= width <= VGG_POOL_SIZE):
        raise ValueError(f"a 7x7 fc6 folds to a pooled RoI of 1..7 cells a side, got {height}x{width}; "
                         f"allowed: MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION 1 to 7 for RBVGG16FCHead")
    cells = height * width
    basis = torch.eye(cells, dtype=weight.dtype, device=weight.device).view(cells, 1, height, width)
    spread = F.adaptive_avg_pool2d(basis, VGG_POOL_SIZE).view(cells, VGG_POOL_SIZE**2)  # cell -> 7x7 grid
    folded = torch.einsum("ocp,qp->ocq", weight.reshape(weight.shape[0], channels, VGG_POOL_SIZE**2), spread)
    return folded.reshape(weight.shape[0], channels * cells).contiguous()


register_once(ROI_HEADS_REGISTRY, RBRes5ROIHeads)
register_once(ROI_BOX_HEAD_REGISTRY, RBVGG16FCHead)
