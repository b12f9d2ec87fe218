"""Every shipped config builds and trains one step on the embedded data; --eval-only; the package imports.

Part of the subset CI also runs on the detectron2 v0.6 fallback (marker `v06`): each config's real model (depth,
norm, heads) at tiny image sizes, one iteration, then its evaluation. One subprocess per kind runs all configs in
turn, so the imports are paid once.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.v06

DETECTION = sorted(p.relative_to(REPO).as_posix() for d in ("coco", "voc") for p in (REPO / "configs" / d).glob("*.yaml")
                   if not p.name.startswith("Base-"))
PRETRAIN = sorted(p.relative_to(REPO).as_posix() for d in ("imagenet", "cifar") for p in (REPO / "configs" / d).glob("*.yaml")
                  if not p.name.startswith("Base-"))
DET_TINY = ["DATASETS.TRAIN", "('rb_shapes_coco_train',)", "DATASETS.TEST", "('rb_shapes_coco_val',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.RETINANET.NUM_CLASSES", "4", "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", "", "MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN", "True",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1",
            "SOLVER.MAX_ITER", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "SEED", "0"]
PRE_TINY = ["PRETRAIN.DATASET.ROOT", "rb_classification_tiny", "PRETRAIN.DATASET.GENERATED_NUM_CLASSES", "4",
            "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "2", "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "1",
            "PRETRAIN.SOLVER.IMS_PER_BATCH", "4", "PRETRAIN.SOLVER.MAX_ITER", "1", "PRETRAIN.NUM_WORKERS", "0",
            "PRETRAIN.CHECKPOINT_PERIOD", "1", "PRETRAIN.EVAL_PERIOD", "1", "PRETRAIN.TEST.IMS_PER_BATCH", "4",
            "PRETRAIN.PRECISE_BN.NUM_ITER", "1", "MODEL.DEVICE", "cpu"]
# ImageNet configs read the generated ImageNet-style folders at 32 px crops; CIFAR ones the generated CIFAR files
PRE_IMAGENET = ["PRETRAIN.DATASET.NAME", "generated_imagenet", "PRETRAIN.INPUT.SCALE", "(37, 69)",
                "PRETRAIN.INPUT.CROP_SIZE", "32", "PRETRAIN.INPUT.TEST_RESIZE", "37"]
PRE_CIFAR = ["PRETRAIN.DATASET.NAME", "generated_cifar10"]

RUNNER = r"""
import json, sys, traceback
sys.path.insert(0, sys.argv[1])
tool = __import__(sys.argv[2])
failed = []
for name, argv in json.loads(sys.argv[3]):
    try:
        tool.main(argv)
    except BaseException as e:  # noqa: BLE001 - report every config, then fail
        traceback.print_exc()
        failed.append(name)
print("RB_FAILED=" + json.dumps(failed))
"""


def _run_all(tool, runs, tmp_path):
    env = dict(os.environ, RB_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", RUNNER, str(REPO / "tools"), tool, json.dumps(runs)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RB_FAILED=")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-5000:]
    failed = json.loads(lines[-1][len("RB_FAILED="):])
    assert failed == [], f"configs that did not train: {failed}\n{res.stderr[-6000:]}"


def test_package_imports_and_registers():
    code = ("import resnet_backbone; from detectron2.modeling import BACKBONE_REGISTRY as B, ROI_HEADS_REGISTRY as R;"
            "assert 'build_rb_resnet_backbone' in B._obj_map and 'RBRes5ROIHeads' in R._obj_map; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr


@pytest.mark.slow
def test_every_detection_config_trains_one_step_and_evaluates(tmp_path):
    runs = [(c, ["--config", c] + DET_TINY + ["OUTPUT_DIR", str(tmp_path / Path(c).with_suffix("").as_posix())])
            for c in DETECTION]
    _run_all("train_net", runs, tmp_path)
    for config, argv in runs:
        out = Path(argv[-1])
        assert (out / "model_final.pth").is_file(), config
        results = json.loads((out / "eval_results.json").read_text())["results"]
        assert "rb_shapes_coco_val" in results, config

    # --eval-only on a trained checkpoint gives the AP of the evaluation at the end of training
    config, argv = runs[DETECTION.index("configs/coco/frcnn_r101.yaml")]
    trained = Path(argv[-1])
    ev = tmp_path / "eval_only"
    _run_all("train_net", [("eval-only", ["--config", config, "--eval-only"] + DET_TINY +
                            ["MODEL.WEIGHTS", str(trained / "model_final.pth"), "OUTPUT_DIR", str(ev)])], tmp_path)
    before = json.loads((trained / "eval_results.json").read_text())["results"]["rb_shapes_coco_val"]["bbox"]
    after = json.loads((ev / "eval_results.json").read_text())["results"]["rb_shapes_coco_val"]["bbox"]
    assert after == before


@pytest.mark.slow
def test_every_pretraining_config_trains_one_step(tmp_path):
    runs = [(c, ["--config", c] + PRE_TINY + (PRE_CIFAR if "/cifar/" in c else PRE_IMAGENET) +
             ["OUTPUT_DIR", str(tmp_path / Path(c).with_suffix("").as_posix())]) for c in PRETRAIN]
    _run_all("pretrain_net", runs, tmp_path)
    for config, argv in runs:
        assert any(Path(argv[-1]).glob("*.pth")), f"{config}: no checkpoint in {argv[-1]}"
