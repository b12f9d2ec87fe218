"""The deploy path's on-disk cache folder and the identity of the CPU whose builds / measurements it holds."""
import platform

from ..utils.cache import cache_dir  # noqa: F401  (kernels.py and winograd.py take it from here)

__all__ = ["cache_dir", "cpu_identity", "cpu_model", "cpu_flags"]

_CPUINFO = "/proc/cpuinfo"


def _cpuinfo_lines(prefixes) -> list:
    try:
        with open(_CPUINFO) as f:
            return sorted({ln.rstrip("\n") for ln in f if ln.startswith(prefixes)})
    except OSError:
        return []


def cpu_identity() -> str:
    """Model and instruction-set flags of this CPU (what a build with -march=native and a kernel's speed depend on),
    so that a cache folder shared by different machines (a network home) keeps one entry per kind of CPU."""
    lines = _cpuinfo_lines(("model name", "flags", "Features", "CPU part"))
    return "".join(ln + "\n" for ln in lines) if lines else (platform.processor() or platform.machine())


def _field(line: str) -> str:
    return line.split(":", 1)[1].strip() if ":" in line else ""


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) ..."), or what the platform module knows."""
    names = [_field(ln) for ln in _cpuinfo_lines(("model name",))]
    return "; ".join(n for n in names if n) or platform.processor() or platform.machine()


def cpu_flags() -> list:
    """The CPU's instruction-set flags (x86 "flags" / ARM "Features"), sorted; [] where /proc/cpuinfo is missing."""
    flags = set()
    for ln in _cpuinfo_lines(("flags", "Features")):
        flags.update(_field(ln).split())
    return sorted(flags)
