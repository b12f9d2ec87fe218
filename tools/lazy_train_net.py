#!/usr/bin/env python
"""Train / evaluate a detector from a LazyConfig (configs/lazy/*.py), as detectron2's tools/lazyconfig_train_net.py
does, with the plugin's safe checkpointer, weight checks, evaluator choice and embedded datasets.

    python tools/lazy_train_net.py --config configs/lazy/frcnn_r101.py --num-gpus 8
    python tools/lazy_train_net.py --config configs/lazy/frcnn_vgg16.py --eval-only \
           train.init_checkpoint=output/coco/frcnn_vgg16/model_final.pth

Overrides are detectron2's LazyConfig ones, key=value (train.device=cpu, model.backbone.depth=50, ...); a key the
config does not have is an error. Every name in dataloader.test.dataset.names is evaluated, each with its own metric
(COCO or VOC, from the dataset), and the results are written to train.output_dir/eval_results.json.
"""
import logging
from collections import OrderedDict
from contextlib import contextmanager

from detectron2.config import instantiate
from detectron2.engine import default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import resnet_backbone  # noqa: F401  (registers the plugin's backbones and heads)
from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.checkpoint.frozen import check_frozen_layers_loaded, loaded_keys
from resnet_backbone.data.resumable_loader import instantiate_train_loader
from resnet_backbone.engine.amp import build_step_trainer
from resnet_backbone.engine.launch import build_argument_parser, parse_and_launch
from resnet_backbone.engine.lazy import dataset_names, yacs_view
from resnet_backbone.engine.run_config import RunConfig
from resnet_backbone.engine.resume import preserved_rng
from resnet_backbone.engine.trainer import ddp_device_kwargs, write_eval_results
from resnet_backbone.engine.training_hooks import resilience_hooks

logger = logging.getLogger("resnet_backbone.lazy_train_net")

_FROZEN_FIX = ("Fix: set train.init_checkpoint to ImageNet weights (the config's default), train from scratch "
               "with trainable layers (ResNet: model.backbone.freeze_at=0 model.backbone.norm=BN, and the C4 head's "
               "res5 follows; VGG-16: model.backbone.freeze_at=0), or set train.allow_random_frozen=True to train "
               "with random frozen layers on purpose.")


build_parser = build_argument_parser  # every tool's parser goes by this name (tests build it too)


def setup(args):
    cfg = RunConfig.load(args.config_file, args.opts, lazy=True).check(datasets=("TRAIN", "TEST")).cfg
    default_setup(cfg, args)
    return cfg


@contextmanager
def _one_test_dataset(cfg, name):
    """dataloader.test and dataloader.evaluator for one of the test datasets (restored afterwards)."""
    test, evaluator = cfg.dataloader.test.dataset, cfg.dataloader.get("evaluator")
    saved = test.names, evaluator.get("dataset_name") if evaluator is not None else None
    test.names = name
    if evaluator is not None and "dataset_name" in evaluator:
        evaluator.dataset_name = name
    try:
        yield
    finally:
        test.names = saved[0]
        if saved[1] is not None:
            evaluator.dataset_name = saved[1]


def do_test(cfg, model):
    """Evaluate `model` on each of dataloader.test.dataset.names; returns {dataset: results}. The training RNG
    streams are left alone (a resumed run does not replay the evaluations before it)."""
    with preserved_rng():
        return _evaluate_each(cfg, model)


def _evaluate_each(cfg, model):
    results = OrderedDict()
    if "evaluator" not in cfg.dataloader:
        return results
    for name in dataset_names(cfg.dataloader.test.dataset.names):
        with _one_test_dataset(cfg, name):
            loader = instantiate(cfg.dataloader.test)  # first: the embedded data is generated on first load
            evaluator = instantiate(cfg.dataloader.evaluator)
        results[name] = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process():
            logger.info("evaluation results on %s:", name)
            print_csv_format(results[name])
    return results


def check_frozen_weights(cfg, model, checkpointer):
    """Training refuses frozen layers (freeze_at, FrozenBN) that init_checkpoint left random, as train_net does."""
    check_frozen_layers_loaded(model, loaded_keys(model, checkpointer.last_load_report),
                               weights=cfg.train.init_checkpoint, allow_random=cfg.train.allow_random_frozen,
                               fix=_FROZEN_FIX)


def do_train(args, cfg):
    """detectron2's lazy training loop with the YAML trainer's pieces: its step trainer (SimpleTrainer, or with
    train.amp.enabled AMPTrainer on CUDA / bfloat16 autocast on CPU), the safe checkpointer, a resumable train
    loader, the exact-resume and preemption hooks; returns the evaluation results at the end of training."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate_train_loader(cfg.dataloader.train)  # resumable, where it is detectron2's loader
    model = create_ddp_model(model, **cfg.train.ddp, **ddp_device_kwargs(model))  # CPU processes: no device ids
    trainer = build_step_trainer(model, train_loader, optimizer, amp=cfg.train.amp.enabled, device=cfg.train.device)
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer,
                                             allow_partial=cfg.train.allow_partial)
    results = OrderedDict()

    def test_and_keep():
        results.clear()
        results.update(do_test(cfg, model))
        return results

    trainer.register_hooks(resilience_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        # also after the last iteration, whatever the period
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ], checkpointer=checkpointer, data_loader=train_loader, checkpoint_period=cfg.train.checkpointer.period,
        device=cfg.train.device, seed=cfg.train.seed))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    check_frozen_weights(cfg, model, checkpointer)
    # the checkpoint stores the iteration that just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results


def worker(args):
    """One process of the job (detectron2's launch starts one per GPU)."""
    cfg = setup(args)
    if args.eval_only:
        results = do_test(cfg, RunConfig(cfg).inference_model(resume=args.resume))  # weights loaded safely
    else:
        results = do_train(args, cfg)
    write_eval_results(yacs_view(cfg), results, config_file=args.config_file)  # rank 0 only
    return results


def main(argv=None):
    """Returns the evaluation results ({dataset: metrics}) when the job is one process."""
    return parse_and_launch(worker, argv)


if __name__ == "__main__":
    main()
