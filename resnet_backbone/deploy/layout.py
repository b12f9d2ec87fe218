"""Channels-last (NHWC) memory format for a model and the inputs of its backbones."""
from typing import Union

import torch
from detectron2.modeling import Backbone
from torch import nn

__all__ = ["channels_last_helps", "to_channels_last"]


def channels_last_helps(device: Union[str, torch.device]) -> bool:
    """The "auto" choice: channels-last on CPUs with oneDNN, where NHWC convolutions avoid reorders (measured with
    tools/benchmark.py). Off elsewhere: on CUDA whether NHWC pays depends on the GPU, the cuDNN version and the
    precision (tensor cores favour it in float16 / bfloat16), and no GPU measurement backs a rule yet;
    `tools/benchmark.py --device cuda` measures it (its "-channels-last" contenders), and channels_last=True forces
    it."""
    return torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()


def _to_channels_last_hook(_module, args):
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Put the model's 4-d weights in channels-last order and convert 4-d tensor inputs of the model and of every
    detectron2 Backbone inside it (a detector's images reach its backbone as one tensor). In place; returns model.

    Outputs are the same values in NHWC strides; code that needs NCHW strides calls `.contiguous()`.
    """
    if getattr(model, "_rb_channels_last", False):
        return model
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if module is model or isinstance(module, Backbone):
            module.register_forward_pre_hook(_to_channels_last_hook)
    model._rb_channels_last = True
    return model
