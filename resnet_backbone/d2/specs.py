"""Each backbone a detection config can name, described once, as data (as timm's `default_cfgs` describe weights).

One `BackboneSpec` per MODEL.BACKBONE.NAME: the plugin's four registered builders, and detectron2's own ResNet
builders (the benchmark and the model-zoo tests build those; the checks read the same MODEL.RESNETS keys there).
Everything that depends on which backbone a config builds reads its entry through `backbone_spec(cfg)`: the
trainer's label, the frozen-layer check's advice (checkpoint/frozen.py), the preprocessing check
(checkpoint/preprocessing.py), the LazyConfig's yacs view (engine/lazy.py) and what MODEL.BACKBONE.FREEZE_AT counts
(config.backbone_freeze_at); `layout` names where its classifier weights go (d2/weights.py's DETECTOR_LAYOUTS). A new backbone is its builder in d2/backbones.py plus one
entry here.
"""
import dataclasses
from typing import Dict, Optional, Tuple

from ..checkpoint.provenance import PROVENANCE

__all__ = ["BackboneSpec", "BACKBONE_SPECS", "backbone_spec", "lazy_backbone_spec"]

RESNET_STAGES = ("stem", "res2", "res3", "res4", "res5")
VGG16_STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")  # VGG's conv blocks, each ending in a 2x2 max pool


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the package needs to know about one backbone builder.

    name: the registered builder, the value of MODEL.BACKBONE.NAME.
    family: "resnet" (configured by MODEL.RESNETS / MODEL.RB_RESNET, stride placement and FrozenBN apply) or "vgg".
    label: its readable name, formatted with the config's `kind` ("ResNet" / "plain") and `depth`.
    arch: the classifier it is the body of (what a weight file's name is compared with), formatted as `label`.
    layout: where a plugin classifier's weights go in a detector built with it (d2/weights.py's DETECTOR_LAYOUTS;
        "backbone" becomes "c4" under RBRes5ROIHeads); None for detectron2's builders (not plugin namings).
    freeze_stages: what MODEL.BACKBONE.FREEZE_AT counts: FREEZE_AT k freezes the first k of them.
    weights_source: the PROVENANCE entry of its ImageNet weights: the preprocessing they expect.
    imagenet_weights: where those weights come from (formatted with `depth`).
    scratch: the config changes that train it from scratch (nothing frozen, nothing fixed).
    lazy_form: how a LazyConfig builds it: (class of the network, class of the FPN's top block or None without FPN).
    """

    name: str
    family: str
    label: str
    arch: str
    layout: Optional[str]
    freeze_stages: Tuple[str, ...]
    weights_source: str
    imagenet_weights: str
    scratch: str
    lazy_form: Optional[Tuple[str, Optional[str]]] = None

    def fields(self, cfg) -> Dict[str, object]:
        if self.family != "resnet":
            return {}
        return {"kind": "plain" if cfg.MODEL.RB_RESNET.SHORTCUT == "none" else "ResNet",
                "depth": int(cfg.MODEL.RESNETS.DEPTH)}

    def label_for(self, cfg) -> str:
        """e.g. "ResNet-101", "plain-34", "VGG-16"."""
        return self.label.format(**self.fields(cfg))

    def arch_for(self, cfg) -> str:
        """e.g. "resnet101", "vgg16": the network a weight file must hold."""
        return self.arch.format(**self.fields(cfg))

    def imagenet_weights_for(self, cfg) -> str:
        """Its ImageNet weights and what they are, e.g. "detectron2://ImageNetPretrained/MSRA/R-101.pkl (MSRA ...)"."""
        return f"{self.imagenet_weights.format(**self.fields(cfg))} ({PROVENANCE[self.weights_source].description})"


_RESNET = dict(family="resnet", label="{kind}-{depth}", arch="resnet{depth}", freeze_stages=RESNET_STAGES,
               weights_source="msra", imagenet_weights="detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl",
               scratch="MODEL.BACKBONE.FREEZE_AT 0 MODEL.RESNETS.NORM BN (trainable BN, as "
                       "configs/demo/shapes_small_scale.yaml)")

BACKBONE_SPECS: Dict[str, BackboneSpec] = {spec.name: spec for spec in (
    BackboneSpec("build_rb_resnet_backbone", layout="backbone", lazy_form=("ResNet", None), **_RESNET),
    BackboneSpec("build_rb_resnet_fpn_backbone", layout="fpn", lazy_form=("ResNet", "LastLevelMaxPool"), **_RESNET),
    BackboneSpec("build_rb_retinanet_resnet_fpn_backbone", layout="fpn", lazy_form=("ResNet", "LastLevelP6P7"),
                 **_RESNET),
    BackboneSpec("build_rb_vgg16_backbone", family="vgg", label="VGG-16", arch="vgg16", layout="vgg16",
                 freeze_stages=VGG16_STAGES, weights_source="torchvision",
                 imagenet_weights="https://download.pytorch.org/models/vgg16-397923af.pth",
                 scratch="MODEL.BACKBONE.FREEZE_AT 0", lazy_form=("VGG", None)),
    # detectron2's own builders (same MODEL.RESNETS keys, detectron2's parameter names)
    BackboneSpec("build_resnet_backbone", layout=None, **_RESNET),
    BackboneSpec("build_resnet_fpn_backbone", layout=None, **_RESNET),
    BackboneSpec("build_retinanet_resnet_fpn_backbone", layout=None, **_RESNET),
)}


def backbone_spec(cfg) -> Optional[BackboneSpec]:
    """The entry of cfg's MODEL.BACKBONE.NAME; None for a backbone registered elsewhere (nothing is known of it)."""
    return BACKBONE_SPECS.get(str(cfg.MODEL.BACKBONE.NAME))


def lazy_backbone_spec(network: str, top_block: Optional[str]) -> Optional[BackboneSpec]:
    """The entry a LazyConfig's backbone corresponds to: its network's class name, and its FPN top block's (None
    without an FPN). None for a network of no entry."""
    for spec in BACKBONE_SPECS.values():
        if spec.lazy_form == (network, top_block):
            return spec
    return None
