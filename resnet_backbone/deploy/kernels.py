"""Which kernel runs each convolution of the CPU deploy path: measured per layer and input shape, cached on disk.

The fastest way to run a convolution depends on the CPU (instruction set, caches), the torch / oneDNN build, the
number of threads and the layer's shape, so no fixed rule is right everywhere. In "measure" mode, the first call of
a `OneDNNConv2d` with a new input shape times its candidates on that input, with its fused epilogue, and keeps the
fastest, as cuDNN's benchmark mode does:

* ``conv2d_nchw`` / ``conv2d_nhwc``: `F.conv2d` on the input in NCHW / NHWC order (what the model runs without the
  deploy path), then bias, shortcut addition and ReLU;
* ``onednn``: oneDNN on the weight packed once, epilogue fused into the convolution;
* ``winograd4`` / ``winograd2``: Winograd F(4x4, 3x3) / F(2x2, 3x3) (3x3 / stride-1 float32 layers, with the kernels
  built), epilogue fused into the output transform.

With one torch thread the candidates are timed by the thread's CPU time, so that a busy machine does not decide
the choice; with more, by wall time (the minimum of ROUNDS interleaved rounds).

The choice is written to RB_CACHE_DIR (default ~/.cache/resnet_backbone) in one JSON file per CPU (model and
instruction-set flags), torch version and kernel source, keyed by the layer's geometry, input shape, dtype,
memory format, epilogue, candidate set and thread count: a second process (or a second call) does not measure again. Feature maps
larger than `EXACT_UP_TO` share a key within steps of 2^(1/4) per side, so detection with images of many sizes
measures a few shapes per layer, not one per image.

"rules" mode keeps the fixed rule, no measuring: Winograd F(4x4) where `winograd.choose_variant` takes the shape,
otherwise the packed oneDNN convolution. Every candidate computes the same function (1e-4 relative, as the deploy
path's tests check), so the choice changes speed only.
"""
import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from ..utils.atomic import atomic_write_text
from . import winograd as _winograd
from .cache import cache_dir, cpu_identity, cpu_model

__all__ = ["MODES", "KERNELS", "ROUNDS", "EXACT_UP_TO", "store_path", "layer_key", "measure", "choose",
           "rules_choice", "candidates", "stats", "reset_stats", "summarize"]

logger = logging.getLogger(__name__)

MODES = ("measure", "rules")
KERNELS = ("conv2d_nchw", "conv2d_nhwc", "onednn", "winograd4", "winograd2")
ROUNDS = 5  # timed rounds after one untimed call per candidate (packing, transforms); the minimum is kept
EXACT_UP_TO = 32  # feature-map sides up to this are keyed exactly, larger ones by bucket
_FORMAT = 2  # bumped when the file's layout or the meaning of a key changes

_lock = threading.Lock()
_stores: Dict[Path, "_Store"] = {}
_stats = {"measured": 0, "cached": 0, "seconds": 0.0}


def stats() -> dict:
    """Counts of this process: choices measured, choices found in the cache (written by an earlier call, process or
    identical layer), seconds spent measuring."""
    return dict(_stats)


def reset_stats():
    _stats.update(measured=0, cached=0, seconds=0.0)


def store_path() -> Path:
    """The cache file for this CPU, torch build and kernel source (under RB_CACHE_DIR)."""
    source = _winograd.SOURCE.read_bytes() if _winograd.SOURCE.is_file() else b""
    what = repr((_FORMAT, cpu_identity(), torch.__version__, torch.backends.mkldnn.is_available()))
    digest = hashlib.sha256(what.encode() + source).hexdigest()[:16]
    return cache_dir() / f"kernels-{digest}.json"


class _Store:
    """One cache file, read once; `put` merges with what other processes wrote meanwhile and replaces the file
    atomically (a reader sees the old or the new file, never a partial one)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = self._read()

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["entries"]
            if data.get("format") != _FORMAT or not isinstance(entries, dict):
                raise ValueError(f"format {data.get('format')!r}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("kernel choice cache %s unreadable (%s); measuring again", self.path, e)
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("kernel") in KERNELS}

    def get(self, key: str) -> Optional[str]:
        entry = self.entries.get(key)
        return entry["kernel"] if entry else None

    def put(self, key: str, kernel: str, times_s: Dict[str, float]):
        self.entries[key] = {"kernel": kernel, "ms": {k: round(t * 1e3, 4) for k, t in times_s.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = dict(self._read())
            merged.update(self.entries)
            self.entries = merged
            payload = {"format": _FORMAT, "cpu": cpu_model(), "torch": torch.__version__, "entries": merged}
            atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))
        except OSError as e:  # a read-only home: the choice still holds for this process
            logger.warning("could not write the kernel choice cache %s (%s)", self.path, e)


def _store() -> _Store:
    path = store_path()
    with _lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = _Store(path)
        return store


def _bucket(side: int) -> str:
    if side <= EXACT_UP_TO:
        return str(side)
    return f"~{round(2 ** (round(4 * math.log2(side)) / 4))}"


def _layout(x: torch.Tensor) -> str:
    if x.is_contiguous():
        return "nchw"
    return "nhwc" if x.is_contiguous(memory_format=torch.channels_last) else "strided"


def layer_key(conv, x: torch.Tensor, relu: bool, has_add: bool) -> str:
    """The cache key of one call: layer geometry, input shape (sides bucketed above EXACT_UP_TO), dtype, memory
    format, epilogue, whether Winograd is a candidate, torch threads."""
    n, c, h, w = x.shape
    geometry = (f"{c}>{conv.out_channels} k{'x'.join(map(str, conv.kernel_size))} s{'x'.join(map(str, conv.stride))}"
                f" p{'x'.join(map(str, conv.padding))} d{'x'.join(map(str, conv.dilation))} g{conv.groups}"
                f" b{int(conv.bias is not None)}")
    return (f"{geometry} | n{n} h{_bucket(h)} w{_bucket(w)} {str(x.dtype).replace('torch.', '')} {_layout(x)} |"
            f" relu{int(relu)} add{int(has_add)} winograd{int('winograd4' in candidates(conv, x))} |"
            f" t{torch.get_num_threads()}")


def candidates(conv, x: torch.Tensor) -> Tuple[str, ...]:
    """The kernels that can run this call: the direct ones always, Winograd on its layers (`conv.winograd`, set by
    fuse_onednn where the layer is 3x3 / stride-1 and the kernels built) for float32 inputs."""
    names = ["conv2d_nchw", "conv2d_nhwc", "onednn"]
    if conv.winograd and x.dtype == torch.float32:
        names += ["winograd4", "winograd2"]
    return tuple(names)


def rules_choice(conv, x: torch.Tensor) -> str:
    """The fixed rule: Winograd F(4x4) where `winograd.choose_variant` takes the shape, else packed oneDNN."""
    if conv.winograd and x.dtype == torch.float32:
        n, c, h, w = x.shape
        m = _winograd.choose_variant(n, h, w, c, conv.out_channels, conv.padding)
        if m is not None:
            return f"winograd{m}"
    return "onednn"


def _clock() -> float:
    """With one torch thread, the calling thread's CPU time: the kernels run in that thread, and time the machine
    gave to other processes meanwhile does not count (a busy machine would otherwise decide the choice). With more
    threads, wall time (the work is spread over threads this clock does not see)."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def measure(calls: Dict[str, Callable[[], object]], rounds: int = ROUNDS) -> Tuple[str, Dict[str, float]]:
    """(fastest name, {name: best seconds}): one untimed call each, then `rounds` rounds with every candidate once,
    in rotating order (load from other processes hits all alike); the minimum of each is kept (noise only adds)."""
    names = list(calls)
    for name in names:
        calls[name]()
    best = {n: math.inf for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = _clock()
            calls[name]()
            best[name] = min(best[name], _clock() - start)
    return min(names, key=best.__getitem__), best


def choose(conv, x: torch.Tensor, relu: bool, add: Optional[torch.Tensor],
           run: Callable[[str], object]) -> str:
    """The kernel for this call in "measure" mode: from the disk cache, else measured with run(kernel) (which calls
    the layer on this input with that kernel) and written to the cache."""
    key = layer_key(conv, x, relu, add is not None)
    store = _store()
    allowed = candidates(conv, x)
    cached = store.get(key)
    if cached in allowed:
        _stats["cached"] += 1
        return cached
    start = time.perf_counter()
    best, times = measure({name: (lambda name=name: run(name)) for name in allowed})
    _stats["measured"] += 1
    _stats["seconds"] += time.perf_counter() - start
    logger.debug("kernel choice %s: %s (%s)", key, best, ", ".join(f"{k} {t * 1e3:.2f} ms" for k, t in times.items()))
    store.put(key, best, times)
    return best


def _square(pair: str) -> str:
    a, b = pair.split("x")
    return a if a == b else pair


def summarize(model: torch.nn.Module) -> Dict[str, Dict[str, int]]:
    """{layer type: {kernel: number of (layer, input shape) pairs}} over the model's OneDNNConv2d layers, from the
    kernels their calls have used so far; a layer type reads "3x3/s1 256->256 @14x14" (input sides as keyed)."""
    out: Dict[str, Dict[str, int]] = {}
    for module in model.modules():
        for key, kernel in getattr(module, "kernel_choices", {}).items():
            geometry, shape = key.split(" | ")[:2]
            cin_cout, ksize, stride = geometry.split()[:3]
            _, h, w = shape.split()[:3]
            kind = f"{ksize[1:]}/s{_square(stride[1:])} {cin_cout.replace('>', '->')} @{h[1:]}x{w[1:]}"
            out.setdefault(kind, {}).setdefault(kernel, 0)
            out[kind][kernel] += 1
    return out

