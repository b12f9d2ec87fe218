"""The detection Trainer: detectron2's DefaultTrainer with the plugin's evaluator choice and safe checkpointing."""
import json
import logging
import os
import weakref

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils.logger import setup_logger
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator
from detectron2.utils import comm

from ..utils.atomic import atomic_write_text
from ..checkpoint.checkpointer import SafeDetectionCheckpointer
from ..data.checked_mapper import CheckedDatasetMapper
from ..d2.specs import backbone_spec
from ..data.resumable_loader import resumable_train_loader_from_cfg
from .amp import build_step_trainer
from .resume import preserved_rng
from .training_hooks import resilience_hooks

logger = logging.getLogger(__name__)

EVALUATOR_TYPES = ("coco", "pascal_voc")


def has_fast_coco_eval() -> bool:
    """Whether detectron2 was built with its C++ COCO evaluator (a source build; not the v0.6 fallback, whose
    `_C` is empty): then COCOEvaluator uses it, else pycocotools' COCOeval. Both give the same AP (tested)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalAccumulate") and hasattr(_C, "COCOevalEvaluateImages")


def build_detection_evaluator(cfg, dataset_name, output_folder=None):
    """COCO mAP@[.5:.95] / mAP@.5 or VOC mAP@.5, chosen from the dataset's metadata."""
    meta = MetadataCatalog.get(dataset_name)
    kind = getattr(meta, "evaluator_type", None)
    if kind == "coco":
        out = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=out,
                             use_fast_impl=has_fast_coco_eval())
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    raise ValueError(f"no evaluator for dataset {dataset_name!r} (evaluator_type={kind!r}); "
                     f"supported evaluator types: {', '.join(EVALUATOR_TYPES)}")


def ddp_device_kwargs(model):
    """DistributedDataParallel's device arguments for where `model` lives: the local rank's GPU, or none for a CPU
    model (DDP refuses `device_ids` there, which detectron2's create_ddp_model passes by default)."""
    device = next(model.parameters()).device
    return {"device_ids": [device.index if device.index is not None else comm.get_local_rank()]} \
        if device.type == "cuda" else {"device_ids": None}


class Trainer(DefaultTrainer):
    """Overrides only what differs from DefaultTrainer: evaluators, the checkpointer, NaN reporting, the DDP
    wrapper (device ids from where the model lives, so that several CPU processes train too), a train loader whose
    position is checkpointed, and the exact-resume / preemption hooks (engine/training_hooks.py)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ with one change, in the DDP wrapper; it has no hook for it, so the steps are
        # repeated here in its order (model, optimizer, loader, DDP, step trainer, scheduler, checkpointer, hooks).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_device_kwargs(model))
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = None  # made by build_hooks (the safe checkpointer)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """The loop that runs one iteration: detectron2's SimpleTrainer, or with SOLVER.AMP.ENABLED its AMPTrainer
        (CUDA, float16) / CPUAMPTrainer (CPU, bfloat16 autocast; engine/amp.py)."""
        return build_step_trainer(model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED, device=cfg.MODEL.DEVICE)

    @classmethod
    def build_train_loader(cls, cfg):
        """build_detection_train_loader's batches (sampler, aspect-ratio grouping, batch size), resumable."""
        mapper = CheckedDatasetMapper(cfg, is_train=True, skip_unreadable=cfg.RB_TRAIN.SKIP_UNREADABLE_IMAGES)
        return resumable_train_loader_from_cfg(cfg, mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # evaluation never skips: a missing image would change the metric silently
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return DatasetEvaluators([build_detection_evaluator(cfg, dataset_name, output_folder)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # an evaluation during training leaves the training RNG streams alone (a resumed run does not replay it)
        with preserved_rng():
            return super().test(cfg, model, evaluators)

    def build_hooks(self):
        # the PeriodicCheckpointer of DefaultTrainer.build_hooks captures self.checkpointer: the safe one (safe
        # loading, atomic saves, written by rank 0 only)
        self.checkpointer = SafeDetectionCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            allow_partial=self.cfg.MODEL.RB_WEIGHTS.ALLOW_PARTIAL,
        )
        hooks = super().build_hooks()
        for h in hooks:
            if isinstance(h, PeriodicWriter):
                h._period = self.cfg.RB_TRAIN.LOG_PERIOD  # DefaultTrainer fixes 20; no public setter
        return resilience_hooks(hooks, checkpointer=self.checkpointer, data_loader=self.data_loader,
                                checkpoint_period=self.cfg.SOLVER.CHECKPOINT_PERIOD, device=self.cfg.MODEL.DEVICE,
                                seed=self.cfg.SEED)

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iter}; last good checkpoint: {last or 'none saved yet'} "
                f"(resume from it with --resume, e.g. with a lower SOLVER.BASE_LR). Detail: {e}") from None


def backbone_label(cfg) -> str:
    """A readable name of the detector's backbone, e.g. "ResNet-101", "plain-34" or "VGG-16" (d2/specs.py); the
    builder's name for a backbone registered elsewhere."""
    spec = backbone_spec(cfg)
    return spec.label_for(cfg) if spec is not None else str(cfg.MODEL.BACKBONE.NAME)


def write_eval_results(cfg, results, config_file="", path=None):
    """Save evaluation results as JSON beside the run (read by tools/compare.py) and log where; returns the path
    (rank 0; None elsewhere or without results)."""
    if not comm.is_main_process() or not results:
        return None
    datasets = list(cfg.DATASETS.TEST)
    if len(datasets) == 1 and datasets[0] not in results:
        results = {datasets[0]: results}  # DefaultTrainer.test unwraps a single dataset's results
    per_dataset = {}
    for ds, res in results.items():
        entry = _to_builtin(res)
        entry["format"] = getattr(MetadataCatalog.get(ds), "evaluator_type", None)
        per_dataset[ds] = entry
    payload = {"config": config_file, "label": backbone_label(cfg), "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
               "backbone": cfg.MODEL.BACKBONE.NAME, "results": per_dataset}
    path = path or os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2))
    logger.info("evaluation results written to %s", path)
    return path


def _to_builtin(obj):
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)
