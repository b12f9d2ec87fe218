"""The ImageNet / CIFAR pretraining stage (paper Sec 3.4, 4.2): entry points used by tools/pretrain_net.py and
tools/cifar_study.py.

    cfg = load_config("configs/imagenet/resnet50.yaml", ["PRETRAIN.SOLVER.MAX_ITER", "1000"])
    results = run_pretraining(cfg, resume=True)   # train (or continue), evaluate, export
    results = evaluate_pretrained(cfg, "output/imagenet/resnet50/model_final.pth")

The pieces: loop (PretrainRun: the training loop), data (data set by name, paper transforms, resumable sampler),
schedule (lr: steps, plateaus, error-driven warm-up), checkpoint (the detection checkpointer's layout plus RNG
states and run position), metrics (detectron2's EventStorage and writers: metrics.json, TensorBoard, console),
eval (1- / 10-crop errors and their log line, precise BN), export (detection weights + preprocessing record).
"""
from __future__ import annotations

from ..config_io import check_device
from .checkpoint import PretrainCheckpointer
from .eval import ValidationSet
from .loop import NonFiniteLossError, PretrainRun, build_classifier

__all__ = ["NonFiniteLossError", "PretrainRun", "build_classifier", "evaluate_pretrained", "run_pretraining"]


def run_pretraining(cfg, *, resume: bool = False) -> dict:
    """Train PRETRAIN.MODEL in OUTPUT_DIR (continuing from its last checkpoint with ``resume``), then evaluate
    and export. Returns the final results (errors as fractions, checkpoint and export paths)."""
    run = PretrainRun(cfg)
    run.start(resume=resume)
    run.train()
    return run.finish()


def evaluate_pretrained(cfg, weights: str | None = None) -> dict:
    """1-crop (and, for ImageNet-style sets, 10-crop) errors of a classifier file on PRETRAIN's validation set.

    ``weights``: a pretraining checkpoint or a bare state dict, every key required; default MODEL.WEIGHTS, else
    OUTPUT_DIR's last checkpoint.
    """
    check_device(cfg.MODEL.DEVICE)
    validation = ValidationSet(cfg, cfg.MODEL.DEVICE)
    model = build_classifier(cfg, cfg.PRETRAIN.NUM_CLASSES or len(validation.dataset.classes))
    checkpointer = PretrainCheckpointer(model, cfg.OUTPUT_DIR)
    weights = weights or cfg.MODEL.WEIGHTS or checkpointer.get_checkpoint_file()
    if not weights:
        raise ValueError(f"nothing to evaluate: MODEL.WEIGHTS is empty and {cfg.OUTPUT_DIR} holds no checkpoint")
    checkpointer.load(weights, checkpointables=[])
    model.to(validation.device)
    return {"model": cfg.PRETRAIN.MODEL, "weights": weights, **validation.evaluate_all(model, label=weights)}
