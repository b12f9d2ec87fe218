"""Mixed-precision training (SOLVER.AMP.ENABLED): detectron2's AMPTrainer on CUDA, bfloat16 autocast on CPU.

detectron2's AMPTrainer requires CUDA (float16 autocast with a GradScaler). On CPU autocast runs bfloat16, which
has float32's exponent range, so gradients need no scaling: `CPUAMPTrainer` is detectron2's SimpleTrainer with the
model's forward under CPU autocast (the backward and the optimizer step outside it).
"""
from typing import Union

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

from ..deploy.precision import autocast_forward

__all__ = ["amp_dtype", "CPUAMPTrainer", "build_amp_step_trainer", "build_step_trainer", "grad_scaler",
           "pretrain_amp_dtype"]


def amp_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """The autocast dtype of mixed-precision training on `device`: float16 on CUDA (detectron2's AMPTrainer default,
    with its GradScaler), bfloat16 on CPU (the only low precision CPU autocast runs fast)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu":
        return torch.bfloat16
    raise ValueError(f"mixed-precision training runs on 'cuda' or 'cpu', got device {str(device)!r}")


def pretrain_amp_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """The pretraining stage's autocast dtype (PRETRAIN.AMP): bfloat16 where the device runs it (CPU; CUDA GPUs
    with bfloat16 support), which needs no loss scaling; float16 on older GPUs."""
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if kind in ("cuda", "cpu"):
        return torch.bfloat16
    raise ValueError(f"mixed-precision training runs on 'cuda' or 'cpu', got device {str(device)!r}")


def grad_scaler(device: Union[str, torch.device], dtype) -> "torch.amp.GradScaler":
    """A GradScaler that scales only for float16 (a disabled one passes loss and step through unchanged)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


class CPUAMPTrainer(SimpleTrainer):
    """SimpleTrainer whose iterations run the model's forward under torch.autocast("cpu", bfloat16)."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self):
        with autocast_forward(self.model, "cpu", self.precision):
            super().run_step()


def build_amp_step_trainer(model, data_loader, optimizer, device: Union[str, torch.device]):
    """The step trainer for SOLVER.AMP.ENABLED on `device`: AMPTrainer (CUDA) or CPUAMPTrainer (CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return AMPTrainer(model, data_loader, optimizer)
    dtype = amp_dtype(device)  # raises for other devices
    return CPUAMPTrainer(model, data_loader, optimizer, precision=dtype)


def build_step_trainer(model, data_loader, optimizer, *, amp: bool, device: Union[str, torch.device]):
    """The loop that runs one detection iteration, for both training tools: detectron2's SimpleTrainer, or with
    mixed precision (SOLVER.AMP.ENABLED / train.amp.enabled) `build_amp_step_trainer`'s."""
    if amp:
        return build_amp_step_trainer(model, data_loader, optimizer, device)
    return SimpleTrainer(model, data_loader, optimizer)
