"""The hooks that make detection training exact to resume and safe to preempt, for both training tools
(engine/trainer.py's Trainer for YAML configs, tools/lazy_train_net.py for LazyConfigs).

* `ResumeStateHook`: what the next iteration depends on besides the model and the trainer's own state (optimizer,
  scheduler through detectron2's LRScheduler hook, AMP scaler): every rank's RNG states and the train loader's
  position (data/resumable_loader.py). Gathered from all ranks (a collective) at the iterations that are
  checkpointed, saved in the checkpoint with the trainer's hooks, restored in `before_train` of a resumed run.
* `PreemptionHook`: SIGTERM / SIGUSR1 (engine/preemption.py) -> the ranks agree after an iteration, rank 0 saves a
  checkpoint of it, every rank raises TrainingPreempted (exit code EXIT_PREEMPTED from the launcher).

`resilience_hooks(...)` places them around a detectron2 hook list.
"""
from __future__ import annotations

import logging
import os

from detectron2.engine.hooks import HookBase, PeriodicWriter
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .preemption import PreemptionGuard, TrainingPreempted
from .resume import gather_rng_states, restore_rank_rng_state

__all__ = ["PreemptionHook", "ResumeStateHook", "resilience_hooks"]

logger = logging.getLogger(__name__)


def _checkpointed(iteration: int, period: int, max_iter: int) -> bool:
    """Whether detectron2's PeriodicCheckpointer saves after `iteration` (0-based): its rule."""
    return (iteration + 1) % period == 0 or iteration >= max_iter - 1


class ResumeStateHook(HookBase):
    """Every rank's RNG states and the loader position, in the checkpoints (see the module docstring)."""

    def __init__(self, data_loader, checkpoint_period: int, seed: int = 0):
        self.data_loader = data_loader
        self.period = checkpoint_period
        self.seed = seed
        self._captured: dict = {}
        self._loaded: dict = {}
        if not hasattr(data_loader, "state_dict"):
            logger.warning("the train loader (%s) has no state: a resumed run restarts its data order",
                           type(data_loader).__name__)

    def capture(self) -> None:
        """Record the state after this iteration (all ranks call it: it gathers)."""
        state = {"rng": gather_rng_states()}
        if hasattr(self.data_loader, "state_dict"):
            state["loader"] = self.data_loader.state_dict()
        self._captured = state

    def after_step(self):
        if _checkpointed(self.trainer.iter, self.period, self.trainer.max_iter):
            self.capture()

    def state_dict(self) -> dict:
        return self._captured

    def load_state_dict(self, state: dict) -> None:
        self._loaded = dict(state)

    def before_train(self):
        if not self._loaded:
            return
        # the last thing before the first iteration: building the loader's iterator draws from its own generator
        restore_rank_rng_state(self._loaded["rng"], fallback_seed=self.seed + self.trainer.start_iter)
        if "loader" in self._loaded and hasattr(self.data_loader, "load_state_dict"):
            self.data_loader.load_state_dict(self._loaded["loader"])
        logger.info("restored the RNG states and the train loader's position (%s)", self._loaded.get("loader"))
        self._loaded = {}


class PreemptionHook(HookBase):
    """Stops training on SIGTERM / SIGUSR1 with a checkpoint (see the module docstring). Every rank runs it."""

    def __init__(self, checkpointer, state_hook: ResumeStateHook, checkpoint_period: int, device="cpu"):
        self.checkpointer, self.state_hook = checkpointer, state_hook
        self.period, self.device = checkpoint_period, device
        self.guard = PreemptionGuard()

    def before_train(self):
        self.guard.install()

    def after_train(self):
        self.guard.uninstall()

    def before_step(self):
        self.guard.test_pause(self.trainer.iter)

    def after_step(self):
        it, max_iter = self.trainer.iter, self.trainer.max_iter
        signal_name = self.guard.agreed(self.device)
        if not signal_name or it >= max_iter - 1:  # the last iteration: training ends normally anyway
            return
        name = f"model_{it:07d}"  # PeriodicCheckpointer's name for the same iteration
        if not _checkpointed(it, self.period, max_iter):  # else the periodic checkpoint of `it` was just written
            self.state_hook.capture()
            if comm.is_main_process():
                self.checkpointer.save(name, iteration=it)
            comm.synchronize()
        raise TrainingPreempted(it + 1, os.path.join(self.checkpointer.save_dir, f"{name}.pth"), signal_name)


def resilience_hooks(hooks: list, *, checkpointer, data_loader, checkpoint_period: int, device, seed: int = 0) -> list:
    """`hooks` with a ResumeStateHook first and a PreemptionHook before the PeriodicWriter (else last). First: its
    after_step records the state right after the step, before any hook that may evaluate (evaluations run
    collectives, and only rank 0 has a PeriodicCheckpointer, so only a fixed place keeps the ranks' collectives in the
    same order). Before the writer: the stopped iteration's metrics are written once, by the writer's after_train."""
    if not logging.getLogger("resnet_backbone").handlers:  # their messages (signals, restored state) in log.txt too
        setup_logger(checkpointer.save_dir or None, distributed_rank=comm.get_rank(), name="resnet_backbone",
                     abbrev_name="rb")
    state = ResumeStateHook(data_loader, checkpoint_period, seed)
    out = [state, *hooks]
    writer = next((i for i, h in enumerate(out) if isinstance(h, PeriodicWriter)), len(out))
    out.insert(writer, PreemptionHook(checkpointer, state, checkpoint_period, device))
    return out
