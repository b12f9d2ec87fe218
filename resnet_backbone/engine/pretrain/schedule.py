"""Learning-rate schedule of the pretraining stage: step or on-plateau decay, and the error-driven warm-up.

The paper divides the lr by 10 "when the error plateaus" on ImageNet (Sec 3.4) and at 32k / 48k iterations on CIFAR
(Sec 4.2), and warms ResNet-110 up at 0.01 "until the training error is below 80% (about 400 iterations)".
detectron2's schedulers have neither plateaus nor an error-driven warm-up, so this small one computes the lr from
the iteration and what it has observed; its state goes into the checkpoint, so a resumed run takes the same lrs.
"""
from __future__ import annotations

import bisect
import math
from collections import deque

from ...modeling.options import check_choice

__all__ = ["SCHEDULERS", "LRSchedule", "scaled_base_lr"]

SCHEDULERS = ("step", "plateau")
# Training errors averaged for the warm-up's end test (a single batch is too noisy); at most WARMUP_ITERS of them.
WARMUP_ERROR_WINDOW = 20


def scaled_base_lr(base_lr: float, ims_per_batch: int, reference_batch: int) -> float:
    """Linear scaling (Goyal et al. 2017): base_lr is for reference_batch images, the run uses ims_per_batch."""
    if ims_per_batch < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got IMS_PER_BATCH={ims_per_batch}, "
                         f"REFERENCE_BATCH={reference_batch}")
    return base_lr * ims_per_batch / reference_batch


class LRSchedule:
    """lr(iteration) = base_lr x gamma^(steps passed or plateau drops) x (warmup_factor while warming up)."""

    def __init__(self, base_lr: float, *, kind: str = "step", steps=(), gamma: float = 0.1, warmup_iters: int = 0,
                 warmup_factor: float = 0.1, warmup_until_error: float = 0.0, plateau_patience: int = 3,
                 plateau_threshold: float = 0.001, plateau_max_drops: int = 3):
        check_choice("PRETRAIN.SOLVER.LR_SCHEDULER", kind, SCHEDULERS)
        if not (base_lr > 0 and math.isfinite(base_lr)):
            raise ValueError(f"the base learning rate must be > 0, got {base_lr}")
        steps = [int(s) for s in steps]
        if steps != sorted(steps) or any(s < 1 for s in steps):
            raise ValueError(f"PRETRAIN.SOLVER.STEPS must be increasing positive iterations, got {steps}")
        if not 0 < gamma <= 1:
            raise ValueError(f"PRETRAIN.SOLVER.GAMMA must be in (0, 1], got {gamma}")
        if warmup_iters < 0 or not 0 < warmup_factor <= 1 or not 0 <= warmup_until_error <= 1:
            raise ValueError(f"warm-up needs WARMUP_ITERS >= 0, 0 < WARMUP_FACTOR <= 1, 0 <= WARMUP_UNTIL_ERROR <= 1; "
                             f"got {warmup_iters}, {warmup_factor}, {warmup_until_error}")
        if plateau_patience < 1 or plateau_max_drops < 0 or plateau_threshold < 0:
            raise ValueError(f"plateau needs PATIENCE >= 1, MAX_DROPS >= 0, THRESHOLD >= 0; got {plateau_patience}, "
                             f"{plateau_max_drops}, {plateau_threshold}")
        self.base_lr, self.kind, self.steps, self.gamma = float(base_lr), kind, steps, float(gamma)
        self.warmup_iters, self.warmup_factor = int(warmup_iters), float(warmup_factor)
        self.warmup_until_error = float(warmup_until_error)
        self.plateau_patience, self.plateau_threshold = int(plateau_patience), float(plateau_threshold)
        self.plateau_max_drops = int(plateau_max_drops)
        # state
        self.warmup_ended_at = None if self.warmup_iters else 0  # iteration the warm-up ended at
        self._recent_errors = deque(maxlen=max(1, min(WARMUP_ERROR_WINDOW, self.warmup_iters)))
        self.drops = 0
        self.best_error = None
        self.bad_evals = 0

    @classmethod
    def from_cfg(cls, cfg) -> "LRSchedule":
        s = cfg.PRETRAIN.SOLVER
        return cls(scaled_base_lr(s.BASE_LR, s.IMS_PER_BATCH, s.REFERENCE_BATCH), kind=s.LR_SCHEDULER,
                   steps=s.STEPS, gamma=s.GAMMA, warmup_iters=s.WARMUP_ITERS, warmup_factor=s.WARMUP_FACTOR,
                   warmup_until_error=s.WARMUP_UNTIL_ERROR, plateau_patience=s.PLATEAU_PATIENCE,
                   plateau_threshold=s.PLATEAU_THRESHOLD, plateau_max_drops=s.PLATEAU_MAX_DROPS)

    def in_warmup(self, iteration: int) -> bool:
        return self.warmup_ended_at is None and iteration < self.warmup_iters

    def lr(self, iteration: int) -> float:
        """The learning rate of (0-based) ``iteration``."""
        decays = bisect.bisect_right(self.steps, iteration) if self.kind == "step" else self.drops
        lr = self.base_lr * self.gamma ** decays
        return lr * self.warmup_factor if self.in_warmup(iteration) else lr

    def observe_train_error(self, iteration: int, error: float) -> bool:
        """Record the training error of ``iteration``; True when this ends the warm-up."""
        if self.warmup_ended_at is not None:
            return False
        self._recent_errors.append(float(error))
        full = len(self._recent_errors) == self._recent_errors.maxlen
        mean = sum(self._recent_errors) / len(self._recent_errors)
        if iteration + 1 >= self.warmup_iters or (full and mean < self.warmup_until_error):
            self.warmup_ended_at = iteration + 1
            return True
        return False

    def observe_val_error(self, error: float) -> bool:
        """Record a validation top-1 error (a fraction); True when the plateau schedule drops the lr."""
        if self.kind != "plateau":
            return False
        if self.best_error is None or error < self.best_error - self.plateau_threshold:
            self.best_error, self.bad_evals = float(error), 0
            return False
        self.bad_evals += 1
        if self.bad_evals >= self.plateau_patience and self.drops < self.plateau_max_drops:
            self.drops, self.bad_evals = self.drops + 1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"warmup_ended_at": self.warmup_ended_at, "recent_errors": list(self._recent_errors),
                "drops": self.drops, "best_error": self.best_error, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_ended_at = state["warmup_ended_at"]
        self._recent_errors.clear()
        self._recent_errors.extend(state["recent_errors"])
        self.drops, self.best_error, self.bad_evals = state["drops"], state["best_error"], state["bad_evals"]
