"""The pretraining loop: SGD on a create_model classifier with the paper's recipe, resumable to the bit.

`PretrainRun(cfg)` reads cfg.PRETRAIN (see resnet_backbone/config.py), MODEL.DEVICE, OUTPUT_DIR and SEED.
`start(resume)` builds model, optimizer and schedule (from the last checkpoint with ``resume``), `train()` runs
the iterations, `finish()` recomputes BN statistics (optional), evaluates 1-crop / 10-crop and exports the
detection weights. Distributed runs (detectron2's launch) wrap the model in DistributedDataParallel, shard the
data per rank, average the training loss / error over ranks and write logs, metrics and checkpoints on the main
process only. The pieces: data.py, schedule.py, checkpoint.py, metrics.py, eval.py, export.py.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch
import torch.nn.functional as F
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn

from ...modeling import create_model
from ...utils.atomic import atomic_write_text
from ...modeling.options import check_int
from ..amp import grad_scaler, pretrain_amp_dtype
from ..config_io import check_device
from ..preemption import PreemptionGuard, TrainingPreempted
from ..resume import gather_rng_states, restore_rank_rng_state
from .checkpoint import FINAL_NAME, PretrainCheckpointer, periodic_name
from .data import build_pretrain_dataset, build_train_loader, preprocessing_from_cfg
from .eval import ValidationSet, recompute_bn_stats
from .export import EXPORT_NAME, export_for_detection
from .metrics import evaluation_scalars, training_writers, write_scalars
from .schedule import LRSchedule

__all__ = ["NonFiniteLossError", "PretrainRun", "build_classifier", "RESULTS_FILE"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "pretrain_results.json"
# The precise-BN batches come from their own sample stream (seed + this), not the training one.
_PRECISE_BN_SEED_OFFSET = 1_000_003


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


def build_classifier(cfg, num_classes: int) -> nn.Module:
    """create_model(PRETRAIN.MODEL) with PRETRAIN.{SHORTCUT, NORM, ZERO_INIT_LAST} where set (ValueError for bad
    combinations)."""
    p = cfg.PRETRAIN
    options = {"num_classes": num_classes}
    if p.SHORTCUT:
        options["shortcut"] = p.SHORTCUT
    if p.NORM != "BN":
        options["norm"] = p.NORM
    if p.ZERO_INIT_LAST:
        options["zero_init_last"] = True
    return create_model(p.MODEL, **options)


def _check_cfg(cfg):
    p = cfg.PRETRAIN
    check_int("PRETRAIN.LOG_PERIOD", p.LOG_PERIOD, 1)
    check_int("PRETRAIN.CHECKPOINT_PERIOD", p.CHECKPOINT_PERIOD, 1)
    check_int("PRETRAIN.EVAL_PERIOD (0: only at the end)", p.EVAL_PERIOD, 0)
    check_int("PRETRAIN.SOLVER.MAX_ITER", p.SOLVER.MAX_ITER, 1)
    world = comm.get_world_size()
    if check_int("PRETRAIN.SOLVER.IMS_PER_BATCH", p.SOLVER.IMS_PER_BATCH, 1) % world:
        raise ValueError(f"PRETRAIN.SOLVER.IMS_PER_BATCH={p.SOLVER.IMS_PER_BATCH} must be a positive multiple of "
                         f"the {world} processes (it is the batch over all of them)")


class PretrainRun:
    """One training run of cfg.PRETRAIN in cfg.OUTPUT_DIR."""

    def __init__(self, cfg):
        _check_cfg(cfg)
        check_device(cfg.MODEL.DEVICE)
        self.cfg = cfg
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.max_iter = cfg.PRETRAIN.SOLVER.MAX_ITER
        self.checkpointer = None  # made with the model, in start()
        self.train_set = build_pretrain_dataset(cfg, "train")
        self.validation = ValidationSet(cfg, self.device)
        classes = len(self.train_set.classes)
        self.num_classes = cfg.PRETRAIN.NUM_CLASSES or classes
        if self.num_classes < classes:
            raise ValueError(f"PRETRAIN.NUM_CLASSES={self.num_classes} is smaller than the {classes} classes of "
                             f"the training set")
        self.preprocessing = preprocessing_from_cfg(cfg)
        self.last_checkpoint = None

    # ------------------------------------------------------------------------------------------------- set-up

    def start(self, resume: bool = False) -> int:
        """Build model, optimizer and schedule, from the last checkpoint if ``resume`` and one exists.

        Returns the iteration training continues from.
        """
        cfg, s = self.cfg, self.cfg.PRETRAIN.SOLVER
        # SEED < 0: one random seed shared by all ranks, stored in the checkpoints (a resumed run takes its own).
        seed = cfg.SEED if cfg.SEED >= 0 else int(comm.shared_random_seed())
        torch.manual_seed(seed)  # the same initial weights on every rank
        model = build_classifier(cfg, self.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(_param_groups(model, cfg.PRETRAIN.INPUT.CROP_SIZE), lr=s.BASE_LR,
                                         momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY, nesterov=s.NESTEROV)
        self.schedule = LRSchedule.from_cfg(cfg)
        self.amp_dtype = pretrain_amp_dtype(self.device) if cfg.PRETRAIN.AMP else None
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        # the loss scale is part of the state only when it scales (float16): a resumed run continues it
        extra = {"grad_scaler": self.scaler} if self.scaler.is_enabled() else {}
        self.checkpointer = PretrainCheckpointer(model, cfg.OUTPUT_DIR, keep=cfg.PRETRAIN.KEEP_CHECKPOINTS,
                                                 optimizer=self.optimizer, schedule=self.schedule, **extra)
        self.precise_bn_done = False
        path, extras = None, None
        if resume:
            if comm.is_main_process():
                self.checkpointer.remove_stale_temporaries()
            path, extras = self.checkpointer.resume(
                expect={"model_name": cfg.PRETRAIN.MODEL, "num_classes": self.num_classes})
        if extras is None:
            self.seed, self.start_iter = seed, 0
            seed_all_rng(self.seed + comm.get_rank())
        else:
            self._restore(path, extras)
        self.model = create_ddp_model(model, broadcast_buffers=False,
                                      device_ids=[comm.get_local_rank()] if self.device.type == "cuda" else None)
        self.module = model
        return self.start_iter

    def _restore(self, path, extras):
        self.seed = int(extras["seed"])
        self.start_iter = int(extras["iteration"])
        self.precise_bn_done = bool(extras["precise_bn_done"])
        restore_rank_rng_state(extras["rng"], fallback_seed=self.seed + self.start_iter, source=f"checkpoint {path}")
        self.last_checkpoint = path
        logger.info("resumed from %s at iteration %d of %d", path, self.start_iter, self.max_iter)

    def _save(self, name: str, iteration: int) -> None:
        rng = gather_rng_states()  # every rank's stream, so a resumed DDP run is exact too
        self.checkpointer.save(name, iteration=iteration, seed=self.seed, rng=rng, model_name=self.cfg.PRETRAIN.MODEL,
                               num_classes=self.num_classes, precise_bn_done=self.precise_bn_done)
        comm.synchronize()
        self.last_checkpoint = self.checkpointer.path(name)

    # --------------------------------------------------------------------------------------------- training

    def train(self) -> None:
        """Iterations start_iter + 1 .. MAX_ITER: SGD steps, metrics every PRETRAIN.LOG_PERIOD, validation every
        PRETRAIN.EVAL_PERIOD, checkpoints every PRETRAIN.CHECKPOINT_PERIOD and at the end. On SIGTERM / SIGUSR1
        (engine/preemption.py) the ranks stop after the same iteration with a checkpoint of it and raise
        TrainingPreempted."""
        cfg, p = self.cfg, self.cfg.PRETRAIN
        if self.start_iter >= self.max_iter:
            return
        writers = training_writers(cfg.OUTPUT_DIR, max_iter=self.max_iter, window=p.LOG_PERIOD,
                                   start_iter=self.start_iter) if comm.is_main_process() else []
        loader = build_train_loader(cfg, self.train_set, seed=self.seed, start_iter=self.start_iter,
                                    max_iter=self.max_iter)
        world = comm.get_world_size()
        logger.info("training %s (%d classes) for iterations %d..%d: %d images per iteration on %d process(es), "
                    "%d training / %d validation images", p.MODEL, self.num_classes, self.start_iter + 1,
                    self.max_iter, p.SOLVER.IMS_PER_BATCH, world, len(self.train_set), len(self.validation.dataset))
        self.model.train()
        data_iter = iter(loader)
        guard = PreemptionGuard().install()
        try:
            with EventStorage(self.start_iter) as storage:
                for it in range(self.start_iter, self.max_iter):
                    guard.test_pause(it)
                    start = time.perf_counter()
                    images, targets = next(data_iter)
                    images = images.to(self.device, non_blocking=True)
                    targets = targets.to(self.device, non_blocking=True)
                    data_time = time.perf_counter() - start
                    lr = self.schedule.lr(it)
                    loss_value, err_value = self._step(it, images, targets, lr)
                    done = storage.iter = it + 1  # metrics and checkpoints count completed iterations
                    step_time = time.perf_counter() - start
                    storage.put_scalars(loss=loss_value, train_top1_err=err_value, time=step_time,
                                        data_time=data_time, images_per_s=p.SOLVER.IMS_PER_BATCH / step_time)
                    storage.put_scalar("lr", lr, smoothing_hint=False)
                    if self.schedule.observe_train_error(it, err_value):
                        logger.info("warm-up ended after %d iterations (training error %.1f%%); lr %.4g from now on",
                                    done, 100 * err_value, self.schedule.lr(done))
                    evaluated = bool(p.EVAL_PERIOD) and done % p.EVAL_PERIOD == 0 and done < self.max_iter
                    if evaluated:
                        self._periodic_eval(storage, done)
                    if evaluated or done % p.LOG_PERIOD == 0 or done == self.max_iter:
                        for writer in writers:  # an evaluation is written at its iteration, in order
                            writer.write()
                    if done == self.max_iter:
                        self._save(FINAL_NAME, done)
                    elif done % p.CHECKPOINT_PERIOD == 0:
                        self._save(periodic_name(done), done)
                    signal_name = guard.agreed(self.device)  # every rank, every iteration
                    if signal_name and done < self.max_iter:
                        if done % p.CHECKPOINT_PERIOD:
                            self._save(periodic_name(done), done)
                        raise TrainingPreempted(done, self.last_checkpoint, signal_name)
        finally:
            guard.uninstall()
            del data_iter
            for writer in writers:
                writer.close()

    def _step(self, it: int, images, targets, lr: float) -> tuple:
        """One SGD step at ``lr``; returns (loss, training top-1 error) of the batch, averaged over all ranks."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), targets)
        with torch.no_grad():
            stats = torch.stack([loss.detach().float(), (logits.argmax(1) != targets).float().mean()])
            if comm.get_world_size() > 1:  # every rank takes the same decisions (stop, warm-up end) from them
                torch.distributed.all_reduce(stats)
                stats /= comm.get_world_size()
        loss_value, err_value = stats.tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self._non_finite_message(it, loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when float16 gradients overflowed
        self.scaler.update()
        return loss_value, err_value

    def _non_finite_message(self, it: int, value: float) -> str:
        last = self.last_checkpoint or self.checkpointer.get_checkpoint_file()
        where = f"last good checkpoint: {last}" if last else "no checkpoint was saved before it"
        return (f"non-finite training loss ({value}) at iteration {it + 1} of {self.max_iter} "
                f"(lr {self.schedule.lr(it):.4g}); {where}. Training stopped. Lower PRETRAIN.SOLVER.BASE_LR or add "
                f"a warm-up (PRETRAIN.SOLVER.WARMUP_ITERS), then restart"
                + (" or continue with --resume." if last else "."))

    def _periodic_eval(self, storage, done: int) -> None:
        result = self.validation.evaluate(self.module, "val", label=f"iter {done}")
        storage.put_scalars(smoothing_hint=False, **evaluation_scalars({"val": result}))
        if self.schedule.observe_val_error(result["top1_err"]):
            logger.info("validation error plateaued: lr divided by %g from iteration %d on",
                        1 / self.cfg.PRETRAIN.SOLVER.GAMMA, done + 1)

    # ------------------------------------------------------------------------------------------- the end

    def recompute_bn(self) -> None:
        n = self.cfg.PRETRAIN.PRECISE_BN.NUM_ITER
        loader = build_train_loader(self.cfg, self.train_set, seed=self.seed + _PRECISE_BN_SEED_OFFSET,
                                    start_iter=0, max_iter=n)
        layers = recompute_bn_stats(self.module, loader, self.device, n)
        logger.info("recomputed the statistics of %d BatchNorm layers over %d batches", layers, n)

    def finish(self) -> dict:
        """After training: precise BN (if enabled), final evaluation, export. Returns the results."""
        cfg = self.cfg
        if cfg.PRETRAIN.PRECISE_BN.ENABLED and not self.precise_bn_done:
            self.recompute_bn()
            self.precise_bn_done = True
            self._save(FINAL_NAME, self.max_iter)
        evaluated = self.validation.evaluate_all(self.module, label="final")
        results = {"model": cfg.PRETRAIN.MODEL, "iteration": self.max_iter, **evaluated,
                   "checkpoint": self.last_checkpoint}
        if comm.is_main_process():
            write_scalars(cfg.OUTPUT_DIR, self.max_iter, evaluation_scalars(evaluated))
            if cfg.PRETRAIN.EXPORT:
                weights, record = export_for_detection(
                    self.module, os.path.join(cfg.OUTPUT_DIR, EXPORT_NAME), self.preprocessing,
                    model_name=cfg.PRETRAIN.MODEL, iterations=self.max_iter, dataset=cfg.PRETRAIN.DATASET.NAME,
                    val_top1_err=results["val"]["top1_err"], val_top5_err=results["val"]["top5_err"])
                results["export"], results["export_provenance"] = weights, record
                logger.info("detection weights written to %s (preprocessing in %s)", weights, record)
            atomic_write_text(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE), json.dumps(results, indent=2))
        comm.synchronize()
        return results


def _param_groups(model, crop_size: int) -> list:
    """The optimizer's groups: the parameters the classifier scales the lr of (lr_scales) each in its own."""
    scales = model.lr_scales(crop_size)
    named = dict(model.named_parameters())
    unknown = sorted(set(scales) - set(named))
    if unknown:
        raise ValueError(f"{type(model).__name__}.lr_scales names {unknown}, which are not its parameters")
    for name, scale in scales.items():
        logger.info("%s: lr x %.4g at %d px crops (%s.lr_scales)", name, scale, crop_size, type(model).__name__)
    groups = [{"params": [p for n, p in named.items() if n not in scales], "lr_scale": 1.0}]
    return groups + [{"params": [named[n]], "lr_scale": float(s)} for n, s in scales.items()]
