"""add_resnet_backbone_config: the plugin's config keys, one comment each. Call it before merge_from_file.

Existing detectron2 keys keep their meaning where they apply: MODEL.RESNETS.{DEPTH, OUT_FEATURES, NORM,
NUM_GROUPS, WIDTH_PER_GROUP, STRIDE_IN_1X1, RES5_DILATION, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS} and
MODEL.BACKBONE.FREEZE_AT.
"""
from detectron2.config import CfgNode as CN


def add_resnet_backbone_config(cfg):
    """Add the plugin's keys to a detectron2 config (idempotent: existing values are kept)."""
    _c = cfg.MODEL
    if "RB_RESNET" not in _c:
        _c.RB_RESNET = CN()
        # paper Sec 3.3 shortcut option: "A" (zero-pad identity), "B" (projection where dims change),
        # "C" (projection everywhere) or "none" (plain net)
        _c.RB_RESNET.SHORTCUT = "B"
        # "imagenet" (Table 1 stem and four stages) or "cifar" (3x3 stem, three stages of 16/32/64, depth 6n+2)
        _c.RB_RESNET.VARIANT = "imagenet"
        # stochastic depth: drop-path rate of the last block, decaying linearly to 0 at the first
        _c.RB_RESNET.DROP_PATH_RATE = 0.0
        # zero-init the last norm of each residual branch (Goyal et al. 2017); only for trainable norms
        _c.RB_RESNET.ZERO_INIT_LAST = False
    if "VGG" not in _c:
        _c.VGG = CN()
        # VGG-16 features returned by the backbone (conv5_3 = stride 16, pool5 dropped as in Faster R-CNN)
        _c.VGG.OUT_FEATURES = ["conv5_3"]
        # number of VGG conv blocks frozen: 2 = conv1_x and conv2_x, as in the Faster R-CNN VGG-16 setup
        _c.VGG.FREEZE_AT = 2
        # dropout after fc6 and fc7 of the VGG box head (0.5 as in VGG)
        _c.VGG.DROPOUT = 0.5
    if "RB_DEPLOY" not in _c:
        _c.RB_DEPLOY = CN()
        # fold frozen BatchNorm into the preceding convolutions after loading weights (inference only)
        _c.RB_DEPLOY.FUSE_BN = False
        # run the backbone in channels-last memory format
        _c.RB_DEPLOY.CHANNELS_LAST = False
    if "RB_WEIGHTS" not in _c:
        _c.RB_WEIGHTS = CN()
        # allow MODEL.WEIGHTS to leave more than half of the backbone uninitialised (otherwise the load is refused)
        _c.RB_WEIGHTS.ALLOW_PARTIAL = False
        # check MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT against the preprocessing saved beside MODEL.WEIGHTS
        _c.RB_WEIGHTS.CHECK_PREPROCESSING = True
    return cfg
