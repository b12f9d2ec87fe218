"""He (MSRA) initialisation (He et al., ICCV 2015), as the paper uses (Sec 3.4)."""
from torch import nn


def init_conv(conv: nn.Conv2d):
    # kaiming normal, fan_out, for ReLU nets (as detectron2's c2_msra_fill and torchvision's ResNet)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_linear(linear: nn.Linear, std: float = 0.01):
    # classifier: small gaussian, zero bias (MSRA / detectron2 ResNet classifier)
    nn.init.normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)
