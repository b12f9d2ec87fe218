"""End to end on the embedded data through tools/train_net.py: training, COCO + VOC evaluation, --resume, --eval-only,
the comparison tool; and the clear errors for bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import compare as compare_tool  # noqa: E402  (tools/compare.py)
import train_net  # noqa: E402  (tools/train_net.py)

from resnet_backbone.data.synthetic_detection import generate_dataset  # noqa: E402
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts  # noqa: E402

# a tiny, fast variant of the demo: ResNet-18 C4 (same code path as R-101) on 64 px images
TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(100,)", "SOLVER.CHECKPOINT_PERIOD", "6", "RB_TRAIN.LOG_PERIOD", "1",
        "SOLVER.BASE_LR", "0.01", "SEED", "1"]


def _opts(family="resnet"):
    sections = load_override_sections(REPO / "configs" / "demo" / "shapes_small_scale.yaml")
    return overrides_to_opts(sections["common"], sections[family]) + TINY


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb_datasets")
    generate_dataset(root / "rb_shapes", num_train=6, num_val=3, image_size=(64, 96))
    return root


def _run(args, datasets_root, check=True):
    env = dict(os.environ, RB_DATASETS=str(datasets_root), OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py")] + args, capture_output=True,
                         text=True, env=env, cwd=REPO)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _metrics(out):
    with open(out / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
def test_train_resume_eval_only_and_compare(tmp_path, datasets_root):
    out = tmp_path / "r18"
    cfg = ["--config", "configs/coco/frcnn_r101.yaml"]
    _run(cfg + _opts() + ["OUTPUT_DIR", str(out)], datasets_root)
    losses = [m["total_loss"] for m in _metrics(out) if "total_loss" in m]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"losses did not fall: {losses}"
    first = json.loads((out / "eval_results.json").read_text())
    assert set(first["results"]) == {"rb_shapes_coco_val", "rb_shapes_voc_test"}
    assert first["results"]["rb_shapes_coco_val"]["format"] == "coco"
    assert first["results"]["rb_shapes_voc_test"]["format"] == "pascal_voc"
    for res in first["results"].values():
        assert math.isfinite(res["bbox"]["AP"]) and math.isfinite(res["bbox"]["AP50"])
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"

    # --resume continues from the last checkpoint (iteration 12) up to the new MAX_ITER
    _run(cfg + ["--resume"] + _opts() + ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "16"], datasets_root)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 12" in log
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert max(iters) == 15 and iters.count(13) == 1
    resumed = json.loads((out / "eval_results.json").read_text())

    # --eval-only on the saved checkpoint gives the same AP
    ev = tmp_path / "eval"
    _run(cfg + ["--eval-only"] + _opts() + ["OUTPUT_DIR", str(ev), "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                            "SOLVER.MAX_ITER", "16"], datasets_root)
    again = json.loads((ev / "eval_results.json").read_text())
    for ds in resumed["results"]:
        assert again["results"][ds]["bbox"]["AP"] == pytest.approx(resumed["results"][ds]["bbox"]["AP"], abs=1e-6)

    # the deploy path (BN folded, oneDNN, Winograd, channels-last) is usable from the config and keeps the AP
    fused = tmp_path / "fused"
    _run(cfg + ["--eval-only"] + _opts() + ["OUTPUT_DIR", str(fused), "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                            "MODEL.RB_DEPLOY.FUSE_BN", "True", "MODEL.RB_DEPLOY.ONEDNN", "True",
                                            "MODEL.RB_DEPLOY.WINOGRAD", "True", "MODEL.RB_DEPLOY.CHANNELS_LAST",
                                            "True"], datasets_root)
    fused_res = json.loads((fused / "eval_results.json").read_text())
    for ds in resumed["results"]:
        assert fused_res["results"][ds]["bbox"]["AP50"] == pytest.approx(
            resumed["results"][ds]["bbox"]["AP50"], abs=1.0)

    # the comparison tool builds the table and the PNG from two finished runs
    png = tmp_path / "cmp.png"
    rows = compare_tool.main([str(out), str(ev), "--png", str(png), "--markdown", str(tmp_path / "cmp.md")])
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["metric"] for r in rows} == {"mAP@.5", "mAP@[.5,.95]"}
    assert any(r["paper ResNet-101"] == 48.4 for r in rows)
    assert "ours ResNet-18" in rows[0]


@pytest.mark.slow
def test_vgg16_detector_trains_and_evaluates(tmp_path, datasets_root):
    out = tmp_path / "vgg"
    opts = _opts("vgg16") + ["SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)]
    _run(["--config", "configs/coco/frcnn_vgg16.yaml"] + opts, datasets_root)
    res = json.loads((out / "eval_results.json").read_text())
    assert res["label"] == "VGG-16"
    assert all(math.isfinite(r["bbox"]["AP50"]) for r in res["results"].values())


def _setup_error(args):
    with pytest.raises(Exception) as info:
        train_net.setup(train_net.build_parser().parse_args(args))
    return str(info.value)


def test_config_key_typo_is_named():
    msg = _setup_error(["--config", "configs/coco/frcnn_r101.yaml", "MODEL.RESNETS.DEPHT", "50"])
    assert "MODEL.RESNETS.DEPHT" in msg and "MODEL.RESNETS.DEPTH" in msg


def test_unknown_dataset_name_is_named():
    msg = _setup_error(["--config", "configs/coco/frcnn_r101.yaml", "MODEL.DEVICE", "cpu",
                        "DATASETS.TRAIN", "('coco_2077_train',)"])
    assert "coco_2077_train" in msg and "rb_shapes_coco_train" in msg


def test_missing_dataset_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    msg = _setup_error(["--config", "configs/voc/frcnn_vgg16.yaml", "MODEL.DEVICE", "cpu"])
    assert "DETECTRON2_DATASETS" in msg


def test_cuda_device_without_cuda_is_explained():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    msg = _setup_error(["--config", "configs/coco/frcnn_r101.yaml", "MODEL.DEVICE", "cuda"])
    assert "MODEL.DEVICE" in msg and "cpu" in msg


@pytest.mark.v06
def test_v06_refusal_names_the_reason(monkeypatch):
    import torch

    from resnet_backbone.engine.launch import check_launch_args

    monkeypatch.setattr("resnet_backbone.engine.launch.launch_supports_cpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available.*v0.6"):
        check_launch_args(2)
    check_launch_args(1)


@pytest.mark.v06
def test_multi_process_without_cuda_stops_at_once_on_v06():
    import torch

    from resnet_backbone.engine.launch import launch_supports_cpu

    if torch.cuda.is_available() or launch_supports_cpu():
        pytest.skip("this detectron2 runs several CPU processes (tests/test_distributed.py)")
    res = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config",
                          "configs/coco/frcnn_r101.yaml", "--num-gpus", "2"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode != 0
    assert "CUDA is not available" in res.stderr + res.stdout


def test_mismatched_weights_file_is_named(tmp_path, datasets_root):
    import torch

    bad = tmp_path / "not_a_detector.pth"
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, bad)
    res = _run(["--config", "configs/coco/frcnn_r101.yaml", "--eval-only"] + _opts() +
               ["OUTPUT_DIR", str(tmp_path / "o"), "MODEL.WEIGHTS", str(bad)], datasets_root, check=False)
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert str(bad) in err or "not_a_detector.pth" in err
    assert "allow_partial" in err or "ALLOW_PARTIAL" in err
