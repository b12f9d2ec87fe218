"""Classification evaluation: top-1 / top-5 error, 1-crop or 10-crop (paper Sec 3.4), gathered over all ranks, and
its log line (`ValidationSet`, used by the training loop and by evaluation-only runs); and the recomputation of
BatchNorm statistics after training (fvcore's precise BN)."""
from __future__ import annotations

import itertools
import logging
from typing import Iterable

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn

from ...data.transforms import average_crop_logits
from .data import build_eval_loader, build_pretrain_dataset, uses_ten_crop

__all__ = ["CROPS", "ValidationSet", "evaluate_classifier", "recompute_bn_stats", "topk_correct"]

# result kind -> how the validation images are cropped (the keys of the results and of the metrics)
CROPS = {"val": "1-crop", "val10": "10-crop"}

logger = logging.getLogger(__name__)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict:
    """{k: number of rows whose target is among the k highest logits}; k is capped at the number of classes."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, K] and targets [N], got {tuple(logits.shape)}, {tuple(targets.shape)}")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == targets[:, None]
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable, device, *, ten_crop: bool = False) -> dict:
    """Top-1 / top-5 error (fractions) and mean cross-entropy of ``model`` over ``loader``, summed over all ranks.

    ``loader`` yields (images, targets): images [N, C, H, W], or [N, 10, C, H, W] with ``ten_crop`` (the crops'
    logits are averaged before the softmax, as fb.resnet.torch does). Each rank evaluates its own shard.
    """
    was_training = model.training
    model.eval()
    totals = {"images": 0, "top1": 0, "top5": 0, "loss": 0.0}
    try:
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if ten_crop:
                if images.dim() != 5:
                    raise ValueError(f"10-crop evaluation needs [N, crops, C, H, W] batches, got {tuple(images.shape)}")
                logits = average_crop_logits(model(images.flatten(0, 1)), images.shape[1])
            else:
                logits = model(images)
            logits = logits.float()
            hits = topk_correct(logits, targets)
            totals["images"] += len(targets)
            totals["top1"] += hits[1]
            totals["top5"] += hits[5]
            totals["loss"] += float(F.cross_entropy(logits, targets, reduction="sum"))
    finally:
        model.train(was_training)
    gathered = comm.all_gather(totals)
    n = sum(t["images"] for t in gathered)
    if n == 0:
        raise ValueError("the evaluation set is empty")
    return {
        "top1_err": 1.0 - sum(t["top1"] for t in gathered) / n,
        "top5_err": 1.0 - sum(t["top5"] for t in gathered) / n,
        "loss": sum(t["loss"] for t in gathered) / n,
        "images": n,
    }


class ValidationSet:
    """PRETRAIN's validation set with its loaders (built once), evaluated and logged.

    ``kinds``: "val" (1-crop), plus "val10" (10-crop) for ImageNet-style sets with PRETRAIN.TEST.TEN_CROP.
    """

    def __init__(self, cfg, device, dataset=None):
        self.cfg, self.device = cfg, torch.device(device)
        self.dataset = dataset if dataset is not None else build_pretrain_dataset(cfg, "val")
        self.kinds = ("val", "val10") if uses_ten_crop(cfg) else ("val",)
        self._loaders: dict = {}

    def _loader(self, kind: str):
        if kind not in self._loaders:
            dataset = self.dataset if kind == "val" else build_pretrain_dataset(self.cfg, "val", ten_crop=True)
            self._loaders[kind] = build_eval_loader(self.cfg, dataset)
        return self._loaders[kind]

    def evaluate(self, model: nn.Module, kind: str = "val", *, label: str) -> dict:
        """Errors of ``model`` (see evaluate_classifier), logged as ``label``: "<crops> top-1 error ..."."""
        result = evaluate_classifier(model, self._loader(kind), self.device, ten_crop=kind == "val10")
        logger.info("%s: %s top-1 error %.2f%%, top-5 error %.2f%% (%d images)", label, CROPS[kind],
                    100 * result["top1_err"], 100 * result["top5_err"], result["images"])
        return result

    def evaluate_all(self, model: nn.Module, *, label: str) -> dict:
        """{kind: result} for every kind of this set."""
        return {kind: self.evaluate(model, kind, label=label) for kind in self.kinds}


def _bn_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            and m.track_running_stats]


def recompute_bn_stats(model: nn.Module, loader: Iterable, device, num_iters: int) -> int:
    """Replace every BatchNorm's running statistics by their true average over ``num_iters`` training batches
    (fvcore.nn.precise_bn.update_bn_stats), then average them over ranks so every rank holds the same model.

    Returns the number of BatchNorm layers updated (0: the model has none, nothing is done).
    """
    from fvcore.nn.precise_bn import update_bn_stats

    if num_iters < 1:
        raise ValueError(f"PRETRAIN.PRECISE_BN.NUM_ITER must be >= 1, got {num_iters}")
    was_training = model.training
    model.train()
    layers = _bn_layers(model)
    if layers:
        images = (x.to(device, non_blocking=True) for x, _ in itertools.islice(loader, num_iters))
        with torch.no_grad():
            update_bn_stats(model, images, num_iters)
        if comm.get_world_size() > 1:
            for bn in layers:
                for buf in (bn.running_mean, bn.running_var):
                    torch.distributed.all_reduce(buf)
                    buf /= comm.get_world_size()
    model.train(was_training)
    return len(layers)
