"""Model table: parameters and multiply-adds of every registered model next to the paper's tables and torchvision.

Multiply-adds are counted with fvcore's FlopCountAnalysis, which counts one multiply-add as one flop - the paper's
convention ("FLOPs (multiply-adds)", Table 1). Only the weight layers are counted (convolutions and fully-connected
layers), as the paper's figures are: BatchNorm (foldable into the convs), ReLU, pooling and additions are left out.
Inputs: 224x224 for ImageNet models, 32x32 for CIFAR models (paper Table 1 and Sec 4.2).
The paper's numbers come from resnet_backbone.paper_tables; torchvision's parameter counts are computed here, from
torchvision.models builders with weights=None, never copied.
"""
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from .modeling import MODEL_SPECS, VGG, ResNet, create_model, list_models
from .paper_tables import Reference, reference_for

__all__ = ["ModelRow", "count_parameters", "count_multiply_adds", "paper_family", "torchvision_parameter_count",
           "model_row", "model_rows", "format_model_table", "weight_layer_multiply_adds", "IMAGENET_INPUT",
           "CIFAR_INPUT"]

IMAGENET_INPUT = 224  # paper Table 1
CIFAR_INPUT = 32  # paper Sec 4.2


@dataclass
class ModelRow:
    name: str
    input_size: int
    params: int
    multiply_adds: int
    torchvision_params: Optional[int] = None
    paper_params: Optional[Reference] = None
    paper_flops: Optional[Reference] = None
    seconds: float = 0.0


def count_parameters(model: nn.Module) -> int:
    """Number of learnable values (parameters, not buffers), as torchvision and the paper count them."""
    return sum(p.numel() for p in model.parameters())


def weight_layer_handles():
    """fvcore handles for the weight layers only (a handle returns multiply-adds for one traced op)."""
    from fvcore.nn import jit_handles as h

    return {
        "aten::_convolution": h.conv_flop_jit,
        "aten::addmm": h.addmm_flop_jit,
        "aten::linear": h.linear_flop_jit,
        "aten::matmul": h.matmul_flop_jit,
        "aten::mm": h.matmul_flop_jit,
        "aten::bmm": h.bmm_flop_jit,
    }


def weight_layer_multiply_adds(counter) -> int:
    """The total of an fvcore FlopCountAnalysis ``counter`` over weight layers only (convolutions, fully-connected
    layers: the paper's convention), without fvcore's warnings about the operators skipped on purpose."""
    counter.clear_op_handles().set_op_handle(**weight_layer_handles())
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        return int(counter.total())


def count_multiply_adds(model: nn.Module, input_size: int, *, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass on a 1 x in_channels x input_size x input_size input (eval mode).

    The model is traced by fvcore (torch.jit.trace); ops without a handle (norms, activations, pooling, additions)
    are skipped silently on purpose, so fvcore's unsupported-operator warnings are switched off.
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        return weight_layer_multiply_adds(FlopCountAnalysis(model, torch.zeros(1, in_channels, input_size,
                                                                             input_size)))
    finally:
        model.train(was_training)


def paper_family(name: str, model: nn.Module):
    """(family, depth) under which the paper's tables list this model, or None (e.g. ResNeXt is not in the paper)."""
    fixed = MODEL_SPECS.get(name, (None, {}))[1]
    if fixed.get("num_groups", 1) != 1 or fixed.get("width_per_group", 64) != 64:
        return None
    if isinstance(model, ResNet):
        return model.variant, model.depth
    if isinstance(model, VGG):
        # VGG-n counts its weight layers: the convs plus the three fully-connected layers
        return "vgg", sum(len(convs) for convs in model.block_names) + 3
    return None


def _meta_device():
    """Build on the meta device when torch supports it (torch >= 2.0): shapes only, no memory, no init time."""
    meta = torch.device("meta")
    return meta if hasattr(meta, "__enter__") else contextlib.nullcontext()


def torchvision_parameter_count(name: str) -> Optional[int]:
    """Parameters of torchvision.models.<name>(weights=None), or None if torchvision has no model of that name."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    with _meta_device():
        model = torchvision.models.get_model(name, weights=None)
    return count_parameters(model)


def model_row(name: str) -> ModelRow:
    """Count one model (built with create_model's defaults, i.e. the paper's stride placement)."""
    start = time.perf_counter()
    model = create_model(name)
    family = paper_family(name, model)
    size = CIFAR_INPUT if isinstance(model, ResNet) and model.variant == "cifar" else IMAGENET_INPUT
    row = ModelRow(name=name, input_size=size, params=count_parameters(model),
                   multiply_adds=count_multiply_adds(model, size), torchvision_params=torchvision_parameter_count(name))
    if family is not None:
        row.paper_params = reference_for(*family, "params")
        row.paper_flops = reference_for(*family, "flops")
    row.seconds = time.perf_counter() - start
    return row


def model_rows(names: Optional[Sequence[str]] = None,
               progress: Optional[Callable[[int, int, ModelRow], None]] = None) -> List[ModelRow]:
    """Rows for `names` (default: every model of list_models()); `progress(i, n, row)` is called after each."""
    names = list_models() if names is None else list(names)
    rows = []
    for i, name in enumerate(names, start=1):
        rows.append(model_row(name))
        if progress is not None:
            progress(i, len(names), rows[-1])
    return rows


def _ratio(measured: float, reference: Optional[float]) -> str:
    return f"{measured / reference:.3f}" if reference else ""


def _paper(ref: Optional[Reference], scale: float, unit: str) -> str:
    if ref is None:
        return ""
    digits = max(0, -math.floor(math.log10(ref.precision / scale) + 1e-9))  # as many decimals as the paper prints
    return f"{ref.value / scale:.{digits}f}{unit} ({ref.source})"


HEADERS = ("model", "input", "params", "paper params", "ratio", "torchvision params", "ratio",
           "GMACs", "paper GFLOPs", "ratio")


def format_model_table(rows: Sequence[ModelRow], *, markdown: bool = False) -> str:
    """The table as text (or GitHub markdown). GMACs = 10^9 multiply-adds, the paper's "FLOPs"."""
    from tabulate import tabulate

    body = []
    for r in rows:
        body.append([
            r.name, f"{r.input_size}x{r.input_size}", f"{r.params:,}",
            _paper(r.paper_params, 1e6, "M"), _ratio(r.params, r.paper_params and r.paper_params.value),
            "" if r.torchvision_params is None else f"{r.torchvision_params:,}", _ratio(r.params, r.torchvision_params),
            f"{r.multiply_adds / 1e9:.3f}", _paper(r.paper_flops, 1e9, ""),
            _ratio(r.multiply_adds, r.paper_flops and r.paper_flops.value),
        ])
    table = tabulate(body, headers=HEADERS, tablefmt="github" if markdown else "simple", disable_numparse=True)
    note = ("GMACs: 10^9 multiply-adds (fvcore, convolutions and fully-connected layers), the paper's FLOPs; "
            "ratio = this model / reference.")
    return f"{table}\n\n{note}"
