"""detectron2's DetectionCheckpointer, made safe to point at files from the internet and at crashed jobs.

Differences from ``detectron2.checkpoint.DetectionCheckpointer`` (v0.6 and later):

* files are read only through :func:`resnet_backbone.checkpoint.safe_load.load_file` (no code runs);
  the detectron2 model-zoo / MSRA / Caffe2 ``.pkl`` and pycls ``.pyth`` layouts are understood as
  detectron2 understands them;
* checkpoints and the ``last_checkpoint`` tag are written atomically (temporary file + rename), so a kill
  during ``save`` never leaves a truncated file behind the tag;
* after loading, missing, unexpected and shape-mismatched keys are logged with their shapes, and a load
  that would leave more than half of the backbone uninitialised is refused before any weight is copied
  (``allow_partial=True`` lets it through); ``strict=True`` refuses any key that does not fit. The load's
  :class:`~resnet_backbone.checkpoint.coverage.LoadReport` says what was filled, per key and per module;
* a ``last_checkpoint`` tag naming a file that is not there is an error naming both, and the temporaries a
  killed save left behind can be removed (:meth:`SafeDetectionCheckpointer.remove_stale_temporaries`).

The directory layout, ``{save_dir}/{name}.pth`` + ``last_checkpoint``, is fvcore's; the pretraining stage's
checkpointer (engine/pretrain/checkpoint.py) is this class with the pretraining extras on top.
"""
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

from ..utils.atomic import atomic_save, atomic_write_text, temporary_target
from .convert import torchvision_for_detectron2
from .download import fetch, is_remote
from .coverage import BACKBONE_PREFIXES, Coverage, LoadReport, Shape, shape_of
from .safe_load import load_file

__all__ = ["LoadReport", "SafeDetectionCheckpointer"]

TAG_FILE = "last_checkpoint"  # fvcore's name for the file that names the newest checkpoint
# A load is refused when it would leave more than this fraction of the backbone uninitialised, counted
# in tensors or in values (either): missing convs hide behind loaded BN tensors when counting tensors,
# missing BN tensors hide behind the convs' values when counting values.
MAX_UNINITIALIZED_FRACTION = 0.5
# How many keys of each kind a refusal message quotes.
_EXAMPLES = 5


def _strip_common_prefix(keys: Iterable[str], prefix: str = "module.") -> Dict[str, str]:
    # fvcore's Checkpointer._load_model strips "module." when every key has it (a DDP-wrapped save).
    keys = list(keys)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: k for k in keys}
    return {k: k for k in keys}


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that reads only through ``safe_load``, writes atomically, reports
    key mismatches with shapes and refuses loads that would leave most of the backbone uninitialised.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        allow_partial: load even when more than half of the backbone would stay uninitialised (a warning
            is logged instead). Callers map their config or environment switch onto this argument.
        strict: refuse (before copying) any load that leaves a model key unfilled, has a key of another shape,
            or brings keys the model has no place for; for resuming a run, where all of it must fit.
        backbone_prefixes: state-dict prefixes that make up the backbone (default ``BACKBONE_PREFIXES``).

    After each ``load``, ``last_load_report`` holds a :class:`LoadReport` (None when nothing was loaded).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        allow_partial: bool = False,
        strict: bool = False,
        backbone_prefixes: Sequence[str] = BACKBONE_PREFIXES,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        if isinstance(backbone_prefixes, str):
            raise ValueError(f"backbone_prefixes must be a sequence of prefixes, got the string {backbone_prefixes!r}")
        self.allow_partial = bool(allow_partial)
        self.strict = bool(strict)
        self.backbone_prefixes = tuple(backbone_prefixes)
        self.last_load_report: Optional[LoadReport] = None
        self._source = ""

    # ----------------------------------------------------------------------------------------- loading

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        self.last_load_report = None
        local = path
        if path:
            # URLs and detectron2:// paths: downloaded once into $RB_CACHE_DIR (progress bar, published checksum)
            local = fetch(path, path_manager=self.path_manager)
            if not os.path.isfile(local):
                where = f" (looked at {local!r})" if local != path else ""
                raise FileNotFoundError(f"checkpoint {path!r} not found{where}")
            query = urlparse(path).query if is_remote(path) else ""
            local = f"{local}?{query}" if query else local  # detectron2 reads options such as matching_heuristics
        self._source = str(path)
        try:
            return super().load(local, *args, **kwargs)
        finally:
            self._source = ""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        data = load_file(filename)
        ext = os.path.splitext(filename)[1].lower()
        if ext == ".pkl":
            if "model" in data and "__author__" in data:
                # detectron2 model-zoo format: {"model": {name: array}, "__author__": ..., maybe
                # "matching_heuristics": True}, used as is.
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            # MSRA / Caffe2 Detectron pickles: ImageNet models are a bare {blob name: array}; detection
            # models keep them under "blobs". Solver momenta are not weights.
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if ext == ".pyth":
            # pycls checkpoints keep weights under "model_state" (detectron2 reads them the same way).
            if "model_state" not in data:
                raise ValueError(f"cannot load {filename}: a pycls .pyth checkpoint must contain 'model_state'")
            weights = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        # torch.save files: a detectron2 / fvcore checkpoint {"model": ..., ...}, a torchvision.models state dict
        # (renamed to the plugin's names), or another bare state dict.
        return torchvision_for_detectron2(data, self.model.state_dict()) or (data if "model" in data else {"model": data})

    def _load_model(self, checkpoint: Dict[str, Any]):
        weights = checkpoint.pop("model")
        self._convert_ndarray_to_tensor(weights)
        model_state = self.model.state_dict()
        # modules whose parameters take another form of a checkpoint's tensors convert them (RBVGG16FCHead)
        adapters = [(f"{name}." if name else "", module) for name, module in self.model.named_modules()
                    if hasattr(module, "adapt_loaded_weights")]
        if checkpoint.get("matching_heuristics", False):
            # Rename by detectron2's suffix-matching heuristics here, once, so that the coverage check
            # below sees the names that will actually be loaded. They drop a tensor of another shape than the
            # model's, so they are shown the shapes the adapters take instead (only .shape is read).
            shapes = dict(model_state)
            for prefix, module in adapters:
                shapes.update({k: torch.empty(s, device="meta") for k, s in module.loadable_shapes(prefix).items()})
            weights = align_and_update_state_dicts(
                shapes, weights, c2_conversion=checkpoint.get("__author__", None) == "Caffe2"
            )
        for prefix, module in adapters:
            module.adapt_loaded_weights(weights, prefix)
        model_shapes = {k: shape_of(v) for k, v in model_state.items()}
        del model_state
        self._check_before_copy(model_shapes, weights)

        # DetectionCheckpointer._load_model pops "model" from what it is given; the heuristics are done.
        incompatible = super()._load_model({"model": weights, "matching_heuristics": False})
        if incompatible is not None:
            self.last_load_report = self._report(model_shapes, weights, incompatible)
        return incompatible

    def _check_before_copy(self, model_shapes: Mapping[str, Shape], weights: Mapping[str, Any]):
        """Predict what ``load_state_dict(strict=False)`` will leave untouched and refuse before copying."""
        names = _strip_common_prefix(weights.keys())
        not_loaded = [
            k for k, s in model_shapes.items()
            if k not in names or (s is not None and shape_of(weights[names[k]]) != s)
        ]
        preview = LoadReport(
            source=self._source,
            coverage=Coverage.of(self.model, model_shapes, not_loaded, self.backbone_prefixes),
            missing=[(k, model_shapes[k]) for k in not_loaded if k not in names],
            unexpected=[(orig, shape_of(weights[orig])) for k, orig in names.items() if k not in model_shapes],
            mismatched=[(k, shape_of(weights[names[k]]), model_shapes[k]) for k in not_loaded if k in names],
        )
        source = self._source or "the checkpoint"
        if self.strict and (preview.missing or preview.mismatched or preview.unexpected):
            raise ValueError(
                f"refusing to load {source}: it does not fit the model ({len(preview.missing)} model keys missing "
                f"from it, {len(preview.mismatched)} of another shape, {len(preview.unexpected)} keys the model has "
                "no place for); a checkpoint of another model, depth or option? Examples:\n"
                + "\n".join(preview.lines(limit=_EXAMPLES))
            )
        c = preview.coverage
        fraction = max(c.missing_tensors / max(c.tensors, 1), c.missing_values / max(c.values, 1))
        if fraction <= MAX_UNINITIALIZED_FRACTION:
            return
        summary = f"{source} would leave {c.line()} uninitialised, more than {MAX_UNINITIALIZED_FRACTION:.0%}"
        if self.allow_partial:
            self.logger.warning(f"Loading {summary}; loading anyway because allow_partial=True")
            return
        raise ValueError(
            f"refusing to load {summary} (batch-norm statistics not counted). "
            f"{len(preview.missing)} model keys are missing from the checkpoint, "
            f"{len(preview.mismatched)} have a different shape there, and {len(preview.unexpected)} checkpoint "
            "keys have no place in the model. The checkpoint probably belongs to another architecture "
            "(depth, width, stem) or another naming (convert it first). Examples:\n"
            + "\n".join(preview.lines(limit=_EXAMPLES))
            + "\nTo load it anyway, construct the checkpointer with allow_partial=True "
            "(detection configs: MODEL.RB_WEIGHTS.ALLOW_PARTIAL True)."
        )

    def _report(self, model_shapes: Mapping[str, Shape], weights: Mapping[str, Any], incompatible) -> LoadReport:
        # fvcore strips "module." from `weights` in place, so the unexpected keys are found there as named.
        mismatched = [(k, tuple(c), tuple(m)) for k, c, m in getattr(incompatible, "incorrect_shapes", [])]
        # fvcore drops mismatched keys before load_state_dict, which then calls them missing too.
        skipped = {k for k, _, _ in mismatched}
        missing = [k for k in incompatible.missing_keys if k not in skipped]
        try:  # fvcore drops "missing" keys whose tied twin was loaded; private, so optional
            from fvcore.common.checkpoint import _filter_reused_missing_keys

            missing = sorted(_filter_reused_missing_keys(self.model, missing))
        except ImportError:
            pass
        not_loaded: Set[str] = set(missing) | skipped
        return LoadReport(
            source=self._source,
            coverage=Coverage.of(self.model, model_shapes, not_loaded, self.backbone_prefixes),
            missing=[(k, model_shapes.get(k)) for k in missing],
            unexpected=[(k, shape_of(weights[k]) if k in weights else None) for k in incompatible.unexpected_keys],
            mismatched=mismatched,
        )

    def _log_incompatible_keys(self, incompatible) -> None:
        report = self.last_load_report
        if report is None:
            super()._log_incompatible_keys(incompatible)
            return
        details = report.lines()
        if details:
            self.logger.warning(
                f"Loaded {report.source}; not loaded: {report.coverage.line()}.\n" + "\n".join(details)
            )
        else:
            self.logger.info(f"Loaded {report.source}: every model weight matched by name and shape.")

    # ----------------------------------------------------------------------------- the directory layout

    def _is_local(self) -> bool:
        # Atomic rename needs a real directory; other PathManager backends (URLs) keep fvcore's writer.
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        """Same contract as fvcore's ``Checkpointer.save`` (``{save_dir}/{name}.pth`` holding ``model``,
        every checkpointable's state and ``kwargs``), written atomically and then tagged atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            super().save(name, **kwargs)
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must be a file name, not a path")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``{save_dir}/last_checkpoint`` at ``last_filename_basename``, atomically."""
        if not self._is_local():
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write_text(os.path.join(self.save_dir, TAG_FILE), last_filename_basename)

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names ("" without a tag), as fvcore's; a tag naming a file that is
        not in ``save_dir`` raises FileNotFoundError naming both (resuming from it could only fail later)."""
        path = super().get_checkpoint_file()
        if not path or not self._is_local():
            return path
        name = os.path.relpath(path, self.save_dir)
        if name != os.path.basename(name) or not os.path.isfile(path):
            tag = os.path.join(self.save_dir, TAG_FILE)
            raise FileNotFoundError(f"{tag} names {name!r}, but {path} does not exist; delete the tag to start "
                                    f"afresh, or point it at one of the checkpoints in {self.save_dir}")
        return path

    def remove_stale_temporaries(self) -> List[str]:
        """Delete the temporary files that saves killed mid-write left in ``save_dir`` (call only while no other
        process saves there); returns their names."""
        if not self._is_local() or not os.path.isdir(self.save_dir):
            return []
        stale = []
        for name in sorted(os.listdir(self.save_dir)):
            target = temporary_target(name)
            if target is not None and (target.endswith(".pth") or target == TAG_FILE):
                os.remove(os.path.join(self.save_dir, name))
                self.logger.info(f"Removed {name}, left by a save that did not complete")
                stale.append(name)
        return stale
