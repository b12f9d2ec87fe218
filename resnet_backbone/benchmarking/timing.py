"""Interleaved timing: contenders run in rotating order, round after round, so that load from other processes
and thermal / frequency drift hit all of them alike; the median of each contender's rounds is reported."""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["Timing", "synchronize", "interleaved_timings", "ratios"]


@dataclass
class Timing:
    """Seconds per call of one contender, one entry per round."""

    name: str
    seconds: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Interquartile range / median: how noisy the rounds were (0.05 = 5%)."""
        if len(self.seconds) < 4:
            return (max(self.seconds) - min(self.seconds)) / self.median
        q = statistics.quantiles(self.seconds, n=4)
        return (q[2] - q[0]) / self.median

    def to_dict(self) -> dict:
        return {"median_s": self.median, "spread_iqr_over_median": self.spread, "rounds_s": list(self.seconds)}


def synchronize(device: torch.device):
    """Wait for queued GPU work, so a timer around a call measures the call (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(contenders: Dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                        device: Optional[torch.device] = None) -> Dict[str, Timing]:
    """Call every contender `warmup` times (untimed, also in rotating order), then `repeats` rounds of one call
    each; round r starts with contender r mod n, so no contender always runs first or right after another."""
    if not contenders:
        raise ValueError("no contenders to time")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    device = device or torch.device("cpu")
    names = list(contenders)
    timings = {n: Timing(n) for n in names}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            synchronize(device)
            if r >= warmup:
                timings[name].seconds.append(time.perf_counter() - start)
    return timings


def ratios(timings: Dict[str, Timing], reference: str) -> Dict[str, float]:
    """median(contender) / median(reference) for every contender (< 1: faster than the reference)."""
    if reference not in timings:
        raise ValueError(f"reference {reference!r} is not one of the contenders {list(timings)}")
    ref = timings[reference].median
    return {n: t.median / ref for n, t in timings.items()}
