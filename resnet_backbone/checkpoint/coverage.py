"""What a checkpoint load filled: per state-dict entry (parameter or buffer), per module, per part of the model.

:class:`Coverage` is computed by :class:`~resnet_backbone.checkpoint.checkpointer.SafeDetectionCheckpointer`
before it copies anything (to refuse a load that would leave most of the backbone uninitialised) and after (what
the load really did); :class:`LoadReport` carries it with the key lists that the log shows.

    report = checkpointer.last_load_report
    report.coverage.missing_in(["backbone.stem", "backbone.res2"])   # keys there that got no weights
    report.coverage.missing_in(["backbone."], kind="buffer")         # e.g. FrozenBatchNorm2d affine / statistics
    report.coverage.by_module()["backbone.res2.0.conv1.norm"]        # loaded / missing keys of one module
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["BACKBONE_PREFIXES", "Coverage", "LoadReport", "ModuleCoverage", "shape_of"]

Shape = Optional[Tuple[int, ...]]

# Where the backbone's weights live in detectron2 models: the backbone itself, plus the res5 stage that
# C4 models run inside the ROI head (detectron2 modeling/roi_heads/roi_heads.py, Res5ROIHeads).
BACKBONE_PREFIXES = ("backbone.", "roi_heads.res5.")
# Only learned weights count in the guarded totals: batch-norm statistics are not parameters, Caffe2 files
# have none (FrozenBatchNorm2d fills in identity statistics itself when they are absent, detectron2
# layers/batch_norm.py), and step counters carry nothing. They are still listed when missing.
_NOT_WEIGHTS = ("running_mean", "running_var", "num_batches_tracked")
KINDS = ("parameter", "buffer")


def shape_of(value: Any) -> Shape:
    """The shape of a tensor / array; None for lazy modules' UninitializedParameter (no shape yet)."""
    uninitialized = getattr(torch.nn.parameter, "UninitializedParameter", ())
    if uninitialized and isinstance(value, uninitialized):
        return None
    return tuple(value.shape) if hasattr(value, "shape") else None


def _numel(shape: Shape) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def _under(key: str, prefixes: Sequence[str]) -> bool:
    """``key`` lies in one of ``prefixes`` (a sequence, or one string): "backbone.res2" and "backbone.res2." both
    mean that module's keys (not "backbone.res20..."); "" means every key."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return any(not p or key == p.rstrip(".") or key.startswith(p.rstrip(".") + ".") for p in prefixes)


@dataclass(frozen=True)
class ModuleCoverage:
    """One module's own state-dict entries (keys relative to the model), split by whether the load filled them."""

    loaded: Tuple[str, ...]
    missing: Tuple[str, ...]


@dataclass(frozen=True)
class Coverage:
    """Which of a model's state-dict entries a load filled.

    ``shapes``: every state-dict key of the model -> its shape. ``parameters``: the keys that are parameters (the
    others are buffers: BN statistics, and all of a FrozenBatchNorm2d's tensors). ``missing``: the keys the load
    left as they were (absent from the checkpoint, or of another shape there). ``guarded``: the prefixes whose
    learned weights the refusal guard counts (the backbone; () = the whole model, for models without one).
    """

    shapes: Mapping[str, Shape]
    parameters: FrozenSet[str]
    missing: FrozenSet[str]
    guarded: Tuple[str, ...] = ()

    @classmethod
    def of(cls, model: torch.nn.Module, shapes: Mapping[str, Shape], missing: Iterable[str],
           prefixes: Sequence[str] = BACKBONE_PREFIXES) -> "Coverage":
        """Coverage of ``model`` (whose state-dict shapes are ``shapes``) after a load that did not fill
        ``missing``; the guarded part is ``prefixes``, or the whole model when no key lies under them."""
        prefixes = tuple(prefixes)
        if not any(_under(k, prefixes) for k in shapes):
            prefixes = ()
        return cls(dict(shapes), frozenset(n for n, _ in model.named_parameters()), frozenset(missing), prefixes)

    def _select(self, prefixes: Sequence[str], kind: Optional[str], missing: bool) -> List[str]:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; allowed: None, {', '.join(map(repr, KINDS))}")
        return [k for k in self.shapes if (k in self.missing) == missing and _under(k, prefixes)
                and (kind is None or (k in self.parameters) == (kind == "parameter"))]

    def missing_in(self, prefixes: Sequence[str] = ("",), *, kind: Optional[str] = None) -> List[str]:
        """Model keys under ``prefixes`` (module paths, e.g. "backbone.stem") that received no weights, in model
        order; ``kind`` "parameter" or "buffer" keeps only those."""
        return self._select(prefixes, kind, missing=True)

    def loaded_in(self, prefixes: Sequence[str] = ("",), *, kind: Optional[str] = None) -> List[str]:
        """Model keys under ``prefixes`` that received weights from the checkpoint, in model order."""
        return self._select(prefixes, kind, missing=False)

    def by_module(self, prefixes: Sequence[str] = ("",)) -> "OrderedDict[str, ModuleCoverage]":
        """Per module that owns state-dict entries (under ``prefixes``): which of its own entries were filled."""
        modules: "OrderedDict[str, Tuple[List[str], List[str]]]" = OrderedDict()
        for key in self.shapes:
            if _under(key, prefixes):
                loaded, missing = modules.setdefault(key.rpartition(".")[0], ([], []))
                (missing if key in self.missing else loaded).append(key)
        return OrderedDict((m, ModuleCoverage(tuple(a), tuple(b))) for m, (a, b) in modules.items())

    # The refusal guard's counts: learned weights of the guarded part, in tensors and in values.

    def _guarded_weights(self) -> List[str]:
        return [k for k in self.shapes if not k.endswith(_NOT_WEIGHTS) and _under(k, self.guarded or ("",))]

    @property
    def tensors(self) -> int:
        return len(self._guarded_weights())

    @property
    def missing_tensors(self) -> int:
        return sum(k in self.missing for k in self._guarded_weights())

    @property
    def values(self) -> int:
        return sum(_numel(self.shapes[k]) for k in self._guarded_weights())

    @property
    def missing_values(self) -> int:
        return sum(_numel(self.shapes[k]) for k in self._guarded_weights() if k in self.missing)

    def line(self) -> str:
        where = " or ".join(f"'{p}*'" for p in self.guarded) or "the whole model"
        return (f"{self.missing_tensors} of {self.tensors} tensors ({self.missing_values:,} of {self.values:,} "
                f"values) of the weights under {where}")


@dataclass
class LoadReport:
    """What one load did to the model's weights.

    ``coverage``: which model entries were filled (:class:`Coverage`). ``missing``: (key, shape in model) left at
    its initial value; ``unexpected``: (key, shape in checkpoint) that the model has no place for; ``mismatched``:
    (key, shape in checkpoint, shape in model), skipped.
    """

    source: str
    coverage: Coverage
    missing: List[Tuple[str, Shape]] = field(default_factory=list)
    unexpected: List[Tuple[str, Shape]] = field(default_factory=list)
    mismatched: List[Tuple[str, Shape, Shape]] = field(default_factory=list)

    def lines(self, limit: Optional[int] = None) -> List[str]:
        """Human-readable lines, one per key, at most ``limit`` per kind."""

        def clip(items: Sequence[str]) -> List[str]:
            if limit is None or len(items) <= limit:
                return list(items)
            return list(items[:limit]) + [f"  ... and {len(items) - limit} more"]

        out: List[str] = []
        if self.mismatched:
            out.append(f"shape mismatches, skipped ({len(self.mismatched)}):")
            out += clip([f"  {k}: {c} in checkpoint, {m} in model" for k, c, m in self.mismatched])
        if self.missing:
            out.append(f"missing from the checkpoint, left as initialised ({len(self.missing)}):")
            out += clip([f"  {k}: {s}" for k, s in self.missing])
        if self.unexpected:
            out.append(f"in the checkpoint but not in the model, ignored ({len(self.unexpected)}):")
            out += clip([f"  {k}: {s}" for k, s in self.unexpected])
        return out
