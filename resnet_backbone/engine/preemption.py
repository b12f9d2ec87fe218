"""Preemption that saves: SIGTERM (what SLURM and Kubernetes send before killing a job) and SIGUSR1 (what
`sbatch --signal=USR1@T` sends T seconds before the time limit) stop training at the end of an iteration, with a
checkpoint, and the job exits with `EXIT_PREEMPTED` for a requeue script to test.

`PreemptionGuard` holds the signal handlers of one training run. The handler only records the signal: every rank
finishes the iteration it is in, and after each iteration `agreed()` takes the maximum of the ranks' flags (one
all_reduce of one number), so all ranks stop after the same iteration even when the signal reached them at different
times, or only one of them. The stage then saves (rank 0, atomically, `last_checkpoint` pointing at it) and raises
`TrainingPreempted`; the launcher turns that into exit code `EXIT_PREEMPTED` in every process. A second signal while
saving is recorded and changes nothing (the save is atomic anyway: a kill -9 leaves the previous checkpoint).

Test hook: with RB_TEST_STOP_AT=k and RB_TEST_MARKER=path, each rank writes path.rank{r} when iteration k (0-based)
starts (the first time) and waits there (at most 120 s) for a signal, so that a test stops a run at a chosen iteration
without sleeps.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["EXIT_PREEMPTED", "PREEMPTION_SIGNALS", "PreemptionGuard", "TrainingPreempted"]

logger = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the job stopped on a signal after
# saving a checkpoint, and continues with --resume.
EXIT_PREEMPTED = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingPreempted(BaseException):
    """Training stopped on a preemption signal after saving `checkpoint` at `iteration` (iterations completed).
    A BaseException, as KeyboardInterrupt: detectron2's loop does not log it as a failure, and no handler of
    ordinary errors swallows it."""

    def __init__(self, iteration: int, checkpoint: str, signal_name: str):
        super().__init__(f"preempted by {signal_name}: stopped after iteration {iteration}, checkpoint {checkpoint}")
        self.iteration, self.checkpoint, self.signal_name = iteration, checkpoint, signal_name


class PreemptionGuard:
    """Signal handlers for one training run: `install()` / `uninstall()`, `agreed(device)` after each iteration."""

    def __init__(self):
        self.signal_name = ""  # the first signal received ("" = none)
        self._previous = {}

    def install(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training runs outside the main thread: SIGTERM / SIGUSR1 will not save a checkpoint")
            return self
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name:
            logger.warning("%s received while already stopping (on %s): ignored, the checkpoint is being written",
                           name, self.signal_name)
            return
        self.signal_name = name
        logger.warning("%s received: finishing this iteration, then saving a checkpoint and exiting with code %d",
                       name, EXIT_PREEMPTED)

    def agreed(self, device="cpu") -> str:
        """Whether any rank received a signal (a collective on several processes: every rank calls it after every
        iteration). Returns the signal's name ("SIGTERM" when only another rank knows which), or ""."""
        if comm.get_world_size() == 1:
            return self.signal_name
        flag = torch.tensor([1 if self.signal_name else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return (self.signal_name or "SIGTERM (received by another rank)") if flag.item() else ""

    def test_pause(self, iteration: int) -> None:
        """The test hook (module docstring): at iteration RB_TEST_STOP_AT, announce it and wait for a signal."""
        stop_at, marker = os.environ.get("RB_TEST_STOP_AT"), os.environ.get("RB_TEST_MARKER")
        if stop_at is None or marker is None or int(stop_at) != iteration:
            return
        marker = f"{marker}.rank{comm.get_rank()}"
        if os.path.exists(marker):  # only the first time: a resumed or restarted run goes on
            return
        with open(marker, "w") as f:
            f.write(f"{iteration} {os.getpid()}")
        deadline = time.monotonic() + 120
        while not self.signal_name and time.monotonic() < deadline:
            time.sleep(0.02)
