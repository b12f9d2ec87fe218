"""Peak memory of one call: GPU memory from torch's CUDA allocator, CPU memory as the rise of the process's
resident set (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs)."""
import ctypes
import ctypes.util
import gc
from typing import Callable, Optional

import torch

__all__ = ["peak_memory_bytes", "cpu_peak_supported"]

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_kib(key: str) -> Optional[int]:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    # writing "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0, proc(5))
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap():
    """Give freed heap memory back to the OS (glibc malloc_trim), so the next call's allocations show in the RSS
    instead of silently reusing pages a previous contender left resident."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def cpu_peak_supported() -> bool:
    return _status_kib("VmHWM") is not None and _reset_hwm()


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes by which one call of `fn` raised memory use above the level just before it (its transient peak:
    activations, gradients, workspaces); None when the platform gives no way to measure it.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: peak resident set size during the call
    minus the resident set before it, after returning freed heap pages to the OS; includes allocator slack, so
    compare contenders with each other, not with tensor sizes.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        return None
    _release_free_heap()
    if not cpu_peak_supported():
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024
