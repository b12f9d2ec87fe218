# The paper's ResNet-101 as its MSRA ImageNet models have it, which every lazy ResNet detector starts from; each model
# file picks the stages it reads.
from detectron2.config import LazyCall as L

from resnet_backbone.deploy.layout import channels_last_helps
from resnet_backbone.modeling.resnet import ResNet


def msra_resnet101(out_features):
    return L(ResNet)(
        depth=101,
        variant="imagenet",
        shortcut="B",
        # "BN statistics frozen during fine-tuning" (paper Appendix A): affine BN with fixed statistics
        norm="FrozenBN",
        # stride in the first 1x1 of a bottleneck, as the paper's MSRA models
        stride_in_1x1=True,
        num_groups=1,
        width_per_group=64,
        drop_path_rate=0.0,
        zero_init_last=False,
        out_features=list(out_features),
        # stem and res2 fixed, as Detectron's ResNet baselines (the paper says only that BN is frozen)
        freeze_at=2,
        # channels-last on CPUs (oneDNN trains it faster), as MODEL.RB_RESNET.CHANNELS_LAST "auto"
        channels_last=L(channels_last_helps)(device="${train.device}"),
    )
