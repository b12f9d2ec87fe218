"""Winograd F(m x m, 3 x 3) convolutions for CPU inference (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016).

A 3x3 / stride-1 convolution computed tile by tile as y = A^T [(G g G^T) .* (B^T d B)] A needs (m + 2)^2 instead of
9 m^2 multiplications per m x m output tile and input / output channel pair: 2.25x fewer for F(2x2, 3x3), 4x fewer
for F(4x4, 3x3). On a CPU where oneDNN's direct convolution already runs at the machine's fp32 peak (see
tools/benchmark.py), this is the remaining way to make the 3x3 convolutions of a ResNet faster.

* The filter transform G g G^T is computed once per weight, in float64, and cached (`transform_weight`).
* The input transform (x -> V) and the output transform with the convolution's epilogue (bias, shortcut addition,
  ReLU) are C loops over NHWC tiles (csrc/winograd.c, built once with the system C compiler into a cache folder and
  loaded with ctypes). The (m + 2)^2 independent products V_p @ U_p run as one oneDNN grouped 1x1 convolution
  (groups = points, one "pixel" per tile, weights packed once): 1.1-2x the throughput of torch.bmm at the small
  tile counts of a ResNet's later stages; torch.bmm where oneDNN's ops are missing.
* Whether a call uses it depends on its shape (`choose_variant`): Winograd pays when the GEMM has enough rows
  (tiles); tiny feature maps (7x7 at batch 1) and thin layers stay on oneDNN's direct convolution.

Numerics: F(2x2) is as accurate as direct convolution; F(4x4) (points 0, +-1, +-2) has a relative error of about
1e-5 per layer in float32, well inside the deploy path's 1e-4 (tests/test_winograd.py checks both against float64).
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import _ops
from ..utils.atomic import atomic_write_bytes
from ..utils.completion import COMPLETE, mark_complete, state
from .cache import cache_dir, cpu_identity

__all__ = ["VARIANTS", "MIN_TILES", "MIN_CHANNELS", "kernels", "available", "unavailable_reason", "build",
           "transform_weight", "WinogradWeight", "choose_variant", "conv3x3", "workspace_bytes"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "winograd.c"
VARIANTS = (4, 2)  # output tile sides m
# the deploy path uses F(4x4, 3x3) on an [n, c, h, w] input when it has >= MIN_TILES 4x4 output tiles and c, k >=
# MIN_CHANNELS; below that oneDNN's direct convolution is as fast or faster. Measured per layer on a 2-core AVX-512
# CPU, one thread (oneDNN GEMM, packed per tile count): F(4x4) is 1.3-2.8x faster than direct from 8 tiles (e.g.
# 512 channels at 7x7, batch 2: 1.3x; batch 16: 2.2x; 256 channels at 50x50: 2.5x), slower at 4 tiles (7x7,
# batch 1: 0.6-0.9x), and slower for 16-channel layers (CIFAR's first stage: 0.6x). F(2x2) never beat F(4x4)
# there; it stays available (WinogradWeight(w, 2)) as the variant with float32-exact accuracy.
MIN_TILES = 8
MIN_CHANNELS = 32

# filter transforms G (a x 3), a = m + 2; the input / output transforms B^T, A^T are in csrc/winograd.c
_G = {
    2: [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    4: [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
}
_FLAGS = ("-O3", "-fPIC", "-shared")
# tried in order: the instructions of this CPU and OpenMP; OpenMP only; its simd pragmas only; neither
_OPTIONAL_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-fopenmp-simd",), ())


def _compiler() -> str:
    return os.environ.get("RB_CC") or os.environ.get("CC") or "cc"


def _library_path(compiler: str) -> Path:
    # built with -march=native: one library per kind of CPU in a shared cache folder
    what = repr((compiler, _FLAGS, _OPTIONAL_FLAGS, platform.machine(), cpu_identity()))
    key = hashlib.sha256(SOURCE.read_bytes() + what.encode()).hexdigest()
    suffix = ".dylib" if platform.system() == "Darwin" else ".so"
    return cache_dir() / f"winograd-{key[:16]}{suffix}"


def build() -> Path:
    """Compile csrc/winograd.c into the cache folder (RB_CACHE_DIR, default ~/.cache/resnet_backbone) unless the
    library for this source and compiler is there already; returns its path. Raises RuntimeError naming the
    compiler (RB_CC / CC / cc) and its message when it fails. The compiler writes into a temporary folder; the
    library is then written through utils/atomic and its completion record (utils/completion) last, so processes
    building at the same time never load a half-written file, and a library without its record is built again."""
    compiler = _compiler()
    target = _library_path(compiler)
    record = target.with_name(target.name + ".complete.json")
    if state(record, target.name, [target.name]) == COMPLETE:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="." + target.stem + ".") as tmp:
        out = os.path.join(tmp, target.name)
        # OpenMP: parallel over tiles, sharing the libgomp torch loaded (same soname)
        for extra in _OPTIONAL_FLAGS:
            cmd = [compiler, *_FLAGS, *extra, "-o", out, str(SOURCE)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                errors.append(f"{' '.join(cmd)}: {e}")
                break
            if res.returncode == 0:
                atomic_write_bytes(target, Path(out).read_bytes())
                mark_complete(record, target.name, command=cmd, files=[target.name])
                return target
            errors.append(f"{' '.join(cmd)}: {res.stderr.strip()[-400:]}")
    raise RuntimeError(f"could not build the Winograd kernels with the C compiler {compiler!r} (set RB_CC or CC to "
                       "another one): " + " | ".join(errors))


@functools.lru_cache(maxsize=None)
def _load():
    """(library, None) or (None, why not)."""
    if not SOURCE.is_file():
        return None, f"kernel source {SOURCE} is missing"
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        return None, str(e)
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.rb_winograd_input.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, i64, c_int, i64, i64, c_int]
    lib.rb_winograd_output.argtypes = [ptr, i64, i64, ptr, ptr, ptr, c_int, i64, i64, i64, i64, c_int, i64, i64,
                                       c_int]
    lib.rb_winograd_input.restype = lib.rb_winograd_output.restype = c_int
    return lib, None


def kernels():
    """The loaded kernel library, or None (the reason is logged once; `unavailable_reason` returns it)."""
    lib, why = _load()
    if lib is None and not getattr(_load, "_warned", False):
        _load._warned = True
        logger.warning("Winograd kernels unavailable (%s); 3x3 convolutions stay on oneDNN's direct algorithm", why)
    return lib


def available() -> bool:
    return kernels() is not None


def unavailable_reason() -> Optional[str]:
    return _load()[1]


def _check_variant(m):
    if m not in VARIANTS:
        raise ValueError(f"Winograd output tile m must be one of {VARIANTS}, got {m!r}")


def _check_weight(weight: torch.Tensor, m: int):
    _check_variant(m)
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"Winograd F(m, 3) needs a [K, C, 3, 3] weight, got shape {tuple(weight.shape)}")


def transform_weight(weight: torch.Tensor, m: int) -> torch.Tensor:
    """G g G^T of a [K, C, 3, 3] weight, as [(m + 2)^2, C, K] float32 (computed in float64, rounded once)."""
    _check_weight(weight, m)
    g = torch.tensor(_G[m], dtype=torch.float64, device=weight.device)
    u = torch.einsum("ij,kcjl,ml->imck", g, weight.detach().to(torch.float64), g)
    a = m + 2
    return u.reshape(a * a, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


class WinogradWeight:
    """The filter transform of one [K, C, 3, 3] weight for F(m x m, 3 x 3), in the form the GEMM takes (`conv3x3`'s
    weight; onednn None: oneDNN's GEMM where available).

    oneDNN's grouped 1x1 convolution wants the weight packed in a blocked layout that depends on the number of
    tiles: packed for one count and run with another, oneDNN re-orders the whole weight on every call (10-30x
    slower at 512 channels, measured). So the packed weight is made for the tile count of the call and re-made when
    the count changes; after MAX_REPACKS counts (detection with varying image sizes) it settles on torch.bmm, whose
    [(m + 2)^2, C, K] weight suits every count. It holds one of the two forms, never both ((m + 2)^2 / 9 times the
    3x3 weight: 4x for F(4x4), 1.8x for F(2x2)), and a reference to the weight it came from (no copy).
    """

    MAX_REPACKS = 4

    def __init__(self, weight: torch.Tensor, m: int, *, onednn: Optional[bool] = None):
        _check_weight(weight, m)
        ops = _ops.onednn_ops() if onednn is not False else None
        if onednn and ops is None:
            raise ValueError("WinogradWeight(onednn=True): this torch build has no oneDNN convolution ops")
        self.m = m
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.onednn = ops is not None
        self.repacks = 0
        self._source = weight.detach()
        self._packed, self._packed_tiles = None, None
        self._u = None if self.onednn else transform_weight(self._source, m)

    @property
    def points(self) -> int:
        return (self.m + 2) ** 2

    @property
    def nbytes(self) -> int:
        return 4 * self.points * self.in_channels * self.out_channels

    def for_tiles(self, tiles: int):
        """The GEMM's weight for `tiles` rows: the packed oneDNN weight (self.onednn) or the [P, C, K] tensor."""
        if self.onednn and self._packed_tiles != tiles:
            if self.repacks >= self.MAX_REPACKS:
                logger.debug("Winograd weight %dx%d: tile count changed %d times; torch.bmm from now on",
                             self.out_channels, self.in_channels, self.repacks)
                self.onednn, self._packed, self._packed_tiles = False, None, None
                self._u = transform_weight(self._source, self.m)
            else:
                u = transform_weight(self._source, self.m)
                # group p maps the C channels of point p to its K outputs: weight [points * K, C, 1, 1]
                grouped = u.permute(0, 2, 1).reshape(self.points * self.out_channels, self.in_channels, 1, 1)
                self._packed = None  # let the old one go first
                self._packed = _ops.onednn_ops()[2](grouped.contiguous(memory_format=torch.channels_last), [0, 0],
                                               [1, 1], [1, 1], self.points,
                                               [1, self.points * self.in_channels, tiles, 1])
                self._packed_tiles = tiles
                self.repacks += 1
        return self._packed if self.onednn else self._u


def _tiles(n, ho, wo, m):
    return n * -(-ho // m) * -(-wo // m)


def choose_variant(n: int, h: int, w: int, c: int, k: int, padding: Sequence[int] = (1, 1)) -> Optional[int]:
    """The Winograd tile m the deploy path uses for a 3x3 / stride-1 convolution of an [n, c, h, w] input into k
    channels: 4 when it has >= MIN_TILES 4x4 output tiles and c, k >= MIN_CHANNELS, else None (oneDNN's direct
    convolution)."""
    ho, wo = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    if ho < 1 or wo < 1 or min(c, k) < MIN_CHANNELS:
        return None
    return 4 if _tiles(n, ho, wo, 4) >= MIN_TILES else None


_workspace = threading.local()


def _buffer(slot: str, numel: int) -> torch.Tensor:
    """A flat float32 scratch buffer per thread, grown to the largest request: the transformed input and the GEMM
    output are rebuilt on every call, so they are not allocated (and page-faulted) every time."""
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.float32)
        setattr(_workspace, slot, buf)
    return buf[:numel]


def workspace_bytes() -> int:
    """Bytes held by this thread's Winograd scratch buffers."""
    buffers = (getattr(_workspace, slot, None) for slot in ("input", "gemm"))
    return sum(4 * b.numel() for b in buffers if b is not None)


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _not_traced(fn):
    """Run `fn` eagerly under torch.compile: its C kernels write through raw pointers into buffers the compiler
    does not see being written (measured: compiled without this, outputs were wrong by 1e-2 to 1)."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


@_not_traced
def conv3x3(x: torch.Tensor, weight: WinogradWeight, bias: Optional[torch.Tensor] = None,
            padding: Sequence[int] = (1, 1), *, relu: bool = False, add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """relu?(conv3x3(x) + bias [+ add]) with stride 1, computed with Winograd F(m x m, 3 x 3), m = weight.m.

    x: [N, C, H, W] float32 on the CPU (any strides; NHWC is used as it is, others are copied to it); weight:
    `WinogradWeight(w, m)`; bias: [K] or None; add: a tensor of the output's shape or None. Returns an
    [N, K, Ho, Wo] tensor in channels-last memory format (Ho = H + 2 * padding - 2).
    """
    lib = kernels()
    if lib is None:
        raise RuntimeError(f"Winograd kernels unavailable: {unavailable_reason()}")
    if not isinstance(weight, WinogradWeight):
        raise ValueError(f"conv3x3 takes the weight as a WinogradWeight, got {type(weight).__name__}")
    m, points = weight.m, weight.points
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"Winograd conv3x3 takes a 4-d float32 CPU tensor, got {x.dim()}-d {x.dtype} on {x.device}")
    n, c, h, w = x.shape
    if c != weight.in_channels:
        raise ValueError(f"the input has {c} channels, the Winograd weight was made for {weight.in_channels}")
    k = weight.out_channels
    ph, pw = int(padding[0]), int(padding[1])
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} with padding {ph},{pw} leaves no output for a 3x3 convolution")
    th, tw = -(-ho // m), -(-wo // m)
    tiles = n * th * tw
    x = x.contiguous(memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.detach().to(torch.float32).contiguous()
    y = torch.empty((n, k, ho, wo), dtype=torch.float32, memory_format=torch.channels_last)
    if add is not None:
        if tuple(add.shape) != tuple(y.shape):
            raise ValueError(f"the added tensor has shape {tuple(add.shape)}, the convolution's output "
                             f"{tuple(y.shape)}")
        add = add.to(torch.float32).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    v = _buffer("input", points * tiles * c).view(tiles, points, c)  # tile-major: written tile by tile
    if lib.rb_winograd_input(_ptr(x), _ptr(v), n, h, w, c, ph, pw, m, th, tw, threads) != 0:
        raise RuntimeError(f"Winograd input transform failed (m={m})")
    gemm_weight = weight.for_tiles(tiles)
    if weight.onednn:
        # one grouped 1x1 convolution: a "pixel" per tile, a group per point; NHWC output = (tile, point, channel)
        pixels = v.view(1, tiles, 1, points * c).permute(0, 3, 1, 2)
        prod = _ops.onednn_ops()[0](pixels, gemm_weight, None, [0, 0], [1, 1], [1, 1], points, "none", [], None)
        prod = prod.contiguous(memory_format=torch.channels_last)
        tile_stride, point_stride = points * k, k
    else:
        prod = _buffer("gemm", points * tiles * k).view(points, tiles, k)
        torch.bmm(v.transpose(0, 1), gemm_weight, out=prod)  # a strided batch: read in place (row stride points * c)
        tile_stride, point_stride = k, tiles * k
    if lib.rb_winograd_output(_ptr(prod), tile_stride, point_stride, _ptr(y), _ptr(bias), _ptr(add), int(relu), n,
                              ho, wo, k, m, th, tw, threads) != 0:
        raise RuntimeError(f"Winograd output transform failed (m={m})")
    return y
