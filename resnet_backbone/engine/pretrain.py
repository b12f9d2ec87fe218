"""The ImageNet / CIFAR pretraining stage (paper Sec 3.4, 4.2): entry points used by tools/pretrain_net.py and
tools/cifar_study.py.

    cfg = load_config("configs/imagenet/resnet50.yaml", ["PRETRAIN.SOLVER.MAX_ITER", "1000"])
    results = run_pretraining(cfg, resume=True)   # train (or continue), evaluate, export
    results = evaluate_pretrained(cfg, "output/imagenet/resnet50/model_final.pth")

The pieces: pretrain_data (data sets, transforms, resumable sampler), pretrain_schedule (lr), pretrain_checkpoint
(atomic, safe checkpoints), pretrain_metrics (JSON lines / TensorBoard), classification_eval (1-/10-crop
errors, precise BN), export (detection weights + preprocessing), pretrain_loop (the loop itself).
"""
from __future__ import annotations

import logging

import torch

from .classification_eval import evaluate_classifier
from .config_io import check_device
from .pretrain_checkpoint import PretrainCheckpointer
from .pretrain_data import build_eval_loader, build_pretrain_dataset, uses_ten_crop
from .pretrain_loop import NonFiniteLossError, PretrainRun, build_classifier

__all__ = ["NonFiniteLossError", "PretrainRun", "run_pretraining", "evaluate_pretrained"]

logger = logging.getLogger(__name__)


def run_pretraining(cfg, *, resume: bool = False) -> dict:
    """Train PRETRAIN.MODEL in OUTPUT_DIR (continuing from its last checkpoint with ``resume``), then evaluate
    and export. Returns the final results (errors as fractions, checkpoint and export paths)."""
    run = PretrainRun(cfg)
    run.start(resume=resume)
    run.train()
    return run.finish()


def evaluate_pretrained(cfg, weights: str | None = None) -> dict:
    """1-crop (and, for ImageNet-style sets, 10-crop) errors of a classifier file on PRETRAIN's validation set.

    ``weights``: a pretraining checkpoint or a bare state dict; default MODEL.WEIGHTS, else OUTPUT_DIR's last
    checkpoint.
    """
    check_device(cfg.MODEL.DEVICE)
    val_set = build_pretrain_dataset(cfg, "val")
    model = build_classifier(cfg, cfg.PRETRAIN.NUM_CLASSES or len(val_set.classes))
    checkpointer = PretrainCheckpointer(model, cfg.OUTPUT_DIR)
    weights = weights or cfg.MODEL.WEIGHTS or checkpointer.get_checkpoint_file()
    if not weights:
        raise ValueError(f"nothing to evaluate: MODEL.WEIGHTS is empty and {cfg.OUTPUT_DIR} holds no checkpoint")
    checkpointer.load(weights, checkpointables=[])  # every key must fit (strict)
    device = torch.device(cfg.MODEL.DEVICE)
    model.to(device)
    results = {"model": cfg.PRETRAIN.MODEL, "weights": weights,
               "val": evaluate_classifier(model, build_eval_loader(cfg, val_set), device)}
    if uses_ten_crop(cfg):
        ten = build_pretrain_dataset(cfg, "val", ten_crop=True)
        results["val10"] = evaluate_classifier(model, build_eval_loader(cfg, ten), device, ten_crop=True)
    for kind in ("val", "val10"):
        if kind in results:
            r = results[kind]
            logger.info("%s %s: top-1 error %.2f%%, top-5 error %.2f%% (%d images)", weights,
                        "10-crop" if kind == "val10" else "1-crop", 100 * r["top1_err"], 100 * r["top5_err"],
                        r["images"])
    return results
