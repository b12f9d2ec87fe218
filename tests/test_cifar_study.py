"""CIFAR depth study: per-network configs, schedule scaling, curves from metrics, the Fig. 6 figure and the table
beside Table 6, and one tiny end-to-end run of tools/cifar_study.py on the generated set."""
import logging
from pathlib import Path

import pytest
from conftest import load_tool
from PIL import Image

from resnet_backbone import paper_tables
from resnet_backbone.engine.cifar_study import (
    StudyRun,
    format_study_table,
    plot_study,
    read_curves,
    scale_schedule,
    study_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = str(REPO / "configs" / "cifar")


def _tool():
    return load_tool("cifar_study")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_study_configs_use_leaf_files_or_the_base():
    r110 = study_config(CONFIGS, "resnet", 110)
    assert r110.PRETRAIN.MODEL == "cifar_resnet110" and r110.PRETRAIN.SOLVER.WARMUP_ITERS > 0
    r20 = study_config(CONFIGS, "resnet", 20)
    assert r20.PRETRAIN.MODEL == "cifar_resnet20" and r20.PRETRAIN.SOLVER.WARMUP_ITERS == 0
    p32 = study_config(CONFIGS, "plain", 32)  # no leaf file: the base with the model set
    assert p32.PRETRAIN.MODEL == "cifar_plain32" and p32.PRETRAIN.SOLVER.MAX_ITER == 64000
    with pytest.raises(ValueError, match="kind"):
        study_config(CONFIGS, "resnext", 20)


def test_scale_schedule_keeps_the_proportions():
    cfg = study_config(CONFIGS, "resnet", 110)
    scale_schedule(cfg, 640, batch_size=16)
    s = cfg.PRETRAIN.SOLVER
    assert (tuple(s.STEPS), s.MAX_ITER, s.IMS_PER_BATCH, s.WARMUP_ITERS) == ((320, 480), 640, 16, 20)
    assert cfg.PRETRAIN.EVAL_PERIOD == 64 and cfg.PRETRAIN.CHECKPOINT_PERIOD == 640


def _runs():
    runs = []
    for kind, errs in (("plain", (40.0, 50.0)), ("resnet", (30.0, 20.0))):
        for depth, err in zip((20, 56), errs):
            runs.append(StudyRun(kind, depth, "", params=1000 * depth, train_curve=[(1, 90.0), (10, err - 5)],
                                 test_curve=[(5, 80.0), (10, err)]))
    return runs


def test_table_beside_table6():
    table = format_study_table(_runs())
    lines = table.splitlines()
    assert len(lines) == 4 and "paper params" in lines[0]
    row20 = lines[2].split("|")
    assert row20[1].strip() == "20" and row20[4].strip() == "40.00" and row20[5].strip() == "30.00"
    assert row20[3].strip() == f"{paper_tables.TABLE6_PARAMS[20].value / 1e6:.2f}M"


def test_figure_has_a_panel_per_kind(tmp_path):
    path = plot_study(_runs(), str(tmp_path / "fig.png"))
    with Image.open(path) as img:
        assert img.width > 1.5 * img.height  # two panels side by side


def test_curves_from_metrics(tmp_path):
    (tmp_path / "metrics.json").write_text(
        '{"iteration": 2, "loss": 2.0, "train_top1_err": 0.9}\n{"iteration": 2, "val/top1_err": 0.8}\n'
        '{"iteration": 4, "loss": 1.0, "train_top1_err": 0.5}\n{"iteration": 4, "val/top1_err": 0.6}\n{"iter')
    train, test = read_curves(str(tmp_path))
    assert train == [(2, 90.0), (4, 50.0)] and test == [(2, pytest.approx(80.0)), (4, pytest.approx(60.0))]


def test_study_tool_end_to_end_on_the_generated_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RB_DATASETS", str(tmp_path / "datasets"))
    # the tool sets up the "resnet_backbone" logger (its own handlers, no propagation): undo that afterwards
    package_logger = logging.getLogger("resnet_backbone")
    monkeypatch.setattr(package_logger, "handlers", list(package_logger.handlers))
    monkeypatch.setattr(package_logger, "propagate", package_logger.propagate)
    monkeypatch.setattr(package_logger, "level", package_logger.level)
    tool = _tool()
    args = tool.build_parser().parse_args(["--depths", "8", "14", "--iters", "4", "--batch-size", "8",
                                           "--output", str(tmp_path / "study"),
                                           "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "8",
                                           "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "3"])
    runs = tool.worker(args)
    assert sorted((r.kind, r.depth) for r in runs) == [("plain", 8), ("plain", 14), ("resnet", 8), ("resnet", 14)]
    for r in runs:
        assert r.train_curve and r.test_curve[-1][0] == 4 and 0 <= r.final_test_error <= 100
        assert (tmp_path / "study" / f"{r.kind}{r.depth}" / "model_final.pth").is_file()
    assert runs[0].params == runs[2].params  # option A: plain and residual nets have the same parameters
    assert (tmp_path / "study" / "cifar_study.png").is_file()
    out = capsys.readouterr().out
    assert "| 8 |" in out and "| 14 |" in out and (tmp_path / "study" / "cifar_study.md").is_file()
