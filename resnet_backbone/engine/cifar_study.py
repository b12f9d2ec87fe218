"""The CIFAR-10 depth study of the paper (Sec 4.2): plain and residual nets at several depths, their training and
test error curves in one figure (Fig. 6) and their final test errors beside Table 6.

Each network trains from its own config (configs/cifar/{plain,resnet}{depth}.yaml where it exists, else
Base-CIFAR10.yaml with PRETRAIN.MODEL set) in ``<output>/<kind><depth>``, through the same loop as
tools/pretrain_net.py, so runs can be resumed one by one. ``embedded_settings`` swaps in the generated CIFAR-format
set and the small batch of configs/cifar/tiny.yaml; ``scale_schedule`` shrinks the 64k-iteration schedule
(steps, warm-up, evaluation points) to a given length.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .. import paper_tables
from ..modeling.options import check_choice
from ..report import count_parameters
from ..utils.figures import new_figure, save_figure
from .config_io import load_config
from .pretrain import build_classifier, run_pretraining
from .pretrain.metrics import read_metrics

__all__ = ["KINDS", "DEFAULT_DEPTHS", "StudyRun", "study_config", "embedded_settings", "scale_schedule",
           "run_study", "read_curves", "plot_study", "format_study_table"]

KINDS = ("plain", "resnet")
# depths of Table 6: 20 and 56 (in Fig. 6 for both kinds) and 110 (Fig. 6's deepest ResNet; its plain nets stop at 56)
DEFAULT_DEPTHS = (20, 56, 110)
BASE_CONFIG = "Base-CIFAR10.yaml"


@dataclass
class StudyRun:
    kind: str
    depth: int
    output_dir: str
    params: int = 0
    train_curve: list = field(default_factory=list)  # [(iteration, training error %)]
    test_curve: list = field(default_factory=list)  # [(iteration, test error %)]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.depth}"

    @property
    def final_test_error(self) -> float | None:
        return self.test_curve[-1][1] if self.test_curve else None


def study_config(config_dir: str, kind: str, depth: int, opts=()):
    """The config of one network: its leaf YAML if there is one, else the CIFAR base with PRETRAIN.MODEL set."""
    check_choice("kind", kind, KINDS)
    leaf = os.path.join(config_dir, f"{kind}{depth}.yaml")
    if os.path.isfile(leaf):
        return load_config(leaf, list(opts))
    return load_config(os.path.join(config_dir, BASE_CONFIG), ["PRETRAIN.MODEL", f"cifar_{kind}{depth}", *opts])


def embedded_settings(cfg, tiny) -> None:
    """Train on the generated set of ``tiny`` (configs/cifar/tiny.yaml): its data, pixel mean, device, workers."""
    cfg.PRETRAIN.DATASET = tiny.PRETRAIN.DATASET.clone()
    cfg.PRETRAIN.INPUT = tiny.PRETRAIN.INPUT.clone()
    cfg.PRETRAIN.NUM_WORKERS = tiny.PRETRAIN.NUM_WORKERS
    cfg.PRETRAIN.TEST.IMS_PER_BATCH = tiny.PRETRAIN.TEST.IMS_PER_BATCH
    cfg.MODEL.DEVICE = tiny.MODEL.DEVICE


def scale_schedule(cfg, iters: int, batch_size: int | None = None) -> None:
    """Shrink the schedule to ``iters`` iterations: lr steps and warm-up in proportion, about 10 evaluations
    and 25 logged points, one checkpoint at the end; ``batch_size`` (lr scaled linearly with it) if given."""
    s = cfg.PRETRAIN.SOLVER
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    factor = iters / s.MAX_ITER
    s.STEPS = tuple(max(1, round(step * factor)) for step in s.STEPS)
    s.WARMUP_ITERS = math.ceil(s.WARMUP_ITERS * factor) if s.WARMUP_ITERS else 0
    s.MAX_ITER = iters
    if batch_size:
        s.IMS_PER_BATCH = batch_size
    cfg.PRETRAIN.EVAL_PERIOD = max(1, iters // 10)
    cfg.PRETRAIN.LOG_PERIOD = max(1, iters // 25)
    cfg.PRETRAIN.CHECKPOINT_PERIOD = iters


def read_curves(output_dir: str) -> tuple:
    """(training-error curve, test-error curve) in percent from a run's metrics.json."""
    train, test = {}, {}
    for r in read_metrics(output_dir):
        if "train_top1_err" in r:
            train[r["iteration"]] = 100 * r["train_top1_err"]
        if "val/top1_err" in r:
            test[r["iteration"]] = 100 * r["val/top1_err"]
    return sorted(train.items()), sorted(test.items())


def run_study(configs: list, output_dir: str, *, resume: bool = False) -> list:
    """Train every (kind, depth, cfg) of ``configs`` in ``output_dir/<kind><depth>``; returns the StudyRuns."""
    runs = []
    for kind, depth, cfg in configs:
        run_dir = os.path.join(output_dir, f"{kind}{depth}")
        cfg.OUTPUT_DIR = run_dir
        cfg.freeze()
        run_pretraining(cfg, resume=resume)
        study = StudyRun(kind, depth, run_dir, params=count_parameters(build_classifier(cfg, 10)))
        study.train_curve, study.test_curve = read_curves(run_dir)
        runs.append(study)
    return runs


def plot_study(runs: list, path: str) -> str:
    """Fig. 6 style: one panel per kind (plain, ResNet), dashed training error, solid test error, per depth."""
    kinds = [k for k in KINDS if any(r.kind == k for r in runs)]
    fig = new_figure((5.5 * len(kinds), 4.2))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    top = max([e for r in runs for _, e in r.train_curve + r.test_curve] + [20.0])
    for ax, kind in zip(axes, kinds):
        for i, r in enumerate(sorted((r for r in runs if r.kind == kind), key=lambda r: r.depth)):
            colour = f"C{i}"
            if r.train_curve:
                ax.plot(*zip(*r.train_curve), "--", color=colour, linewidth=1)
            if r.test_curve:
                ax.plot(*zip(*r.test_curve), "-", color=colour, linewidth=2,
                        label=f"{'plain' if kind == 'plain' else 'ResNet'}-{r.depth}")
        ax.set_title(f"{'plain' if kind == 'plain' else 'residual'} networks (dashed: training, bold: test)")
        ax.set_xlabel("iteration")
        ax.set_ylabel("error (%)")
        ax.set_ylim(0, min(100, top * 1.05))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("CIFAR-10 training and test error (cf. He et al. 2016, Fig. 6)")
    return save_figure(fig, path, dpi=100)


def _paper_params(depth):
    ref = paper_tables.reference_for("cifar", depth, "params")
    return f"{ref.value / 1e6:.2f}M" if ref else "-"


def _paper_error(depth):
    # Table 6's test errors, once paper_tables holds them (TABLE6_TEST_ERROR: depth -> Reference, in percent)
    table = getattr(paper_tables, "TABLE6_TEST_ERROR", {})
    ref = table.get(depth)
    return f"{ref.value:.2f}" if ref else "-"


def format_study_table(runs: list) -> str:
    """Markdown table: per depth, parameters and final test error of each kind, beside the paper's Table 6."""
    depths = sorted({r.depth for r in runs})
    by = {(r.kind, r.depth): r for r in runs}
    lines = ["| depth | params | paper params | plain test err % | ResNet test err % | paper ResNet test err % |",
             "|---|---|---|---|---|---|"]
    for d in depths:
        params = next(r.params for r in runs if r.depth == d)
        errs = [by[(k, d)].final_test_error if (k, d) in by else None for k in KINDS]
        cells = [f"{e:.2f}" if e is not None else "-" for e in errs]
        lines.append(f"| {d} | {params / 1e6:.2f}M | {_paper_params(d)} | {cells[0]} | {cells[1]} | "
                     f"{_paper_error(d)} |")
    return "\n".join(lines)
