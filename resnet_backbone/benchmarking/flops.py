"""Work per image (multiply-adds counted by fvcore) and the machine's matmul peak, to turn times into GFLOP/s."""
import time
from typing import Sequence

import torch
from torch import nn

from ..report import weight_layer_multiply_adds  # one handle set for the project

__all__ = ["multiply_adds", "detector_multiply_adds", "matmul_peak_gflops", "achieved_gflops"]


def multiply_adds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of `model` on `example` (eval mode), divided by its batch size."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        return weight_layer_multiply_adds(FlopCountAnalysis(model, example)) // example.shape[0]
    finally:
        model.train(was_training)


class _DetectorOnTensors(nn.Module):
    """A detectron2 detector called with image tensors only (what fvcore's jit tracer can pass); the other fields
    of each input dict come from `template`. Returns the boxes and scores of every image."""

    def __init__(self, model: nn.Module, template: Sequence[dict]):
        super().__init__()
        self.model = model
        self.template = [{k: v for k, v in d.items() if k not in ("image", "instances")} for d in template]

    def forward(self, *images):
        outputs = self.model([dict(t, image=img) for t, img in zip(self.template, images)])
        return tuple(t for o in outputs for t in (o["instances"].pred_boxes.tensor, o["instances"].scores))


def detector_multiply_adds(model: nn.Module, inputs: Sequence[dict]) -> int:
    """Multiply-adds per image of a detectron2 detector's inference on `inputs` (its list-of-dicts format).

    Depends on the number of proposals reaching the box head (at most POST_NMS_TOPK_TEST per image)."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        wrapper = _DetectorOnTensors(model, inputs)
        return weight_layer_multiply_adds(FlopCountAnalysis(wrapper, tuple(d["image"] for d in inputs))) // len(inputs)
    finally:
        model.train(was_training)


def matmul_peak_gflops(device: torch.device, *, size: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of a float32 size x size x size torch.mm on `device` (2 * size^3 flops per product): the
    practical peak that convolution kernels can approach on this machine."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)  # warm-up: thread pool, library dispatch
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def achieved_gflops(macs_per_image: int, images: int, seconds: float, *, passes: float = 1.0) -> float:
    """GFLOP/s = 2 flops per multiply-add x MACs x images x passes / seconds. passes = 3 for a training step is the
    usual estimate (backward ~ 2 x forward: gradients of inputs and of weights); frozen layers make it smaller."""
    return 2.0 * macs_per_image * images * passes / seconds / 1e9
