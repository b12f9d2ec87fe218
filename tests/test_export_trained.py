"""tools/export_model.py --format openvino on a detector trained on the demo's digits, whose detections are real
(score > 0.5 on validation images), not a random model's: the detector is the demo's ResNet C4 recipe
(configs/coco/frcnn_r101.yaml + the overrides of configs/demo/digits_small_scale.yaml, the from-scratch arm) at
ResNet-18, trained by tools/train_net.py for 300 iterations on 60 digit images (~90 s on one core). The exported
IR gives the eager detector's detections within 1e-4 (float32) on the image it was exported with and on every
other validation image."""
import json
import sys

import pytest
import torch
from conftest import REPO

pytest.importorskip("detectron2.export", reason="this detectron2's export module does not import (v0.6: caffe2)",
                    exc_type=ImportError)

from resnet_backbone.data.digits import detection_paths, generate_digit_detection
from resnet_backbone.data.register import register_synthetic_datasets
from resnet_backbone.engine import runtimes
from resnet_backbone.engine.detector_export import compare_outputs
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts
from resnet_backbone.engine.run_config import RunConfig

sys.path.insert(0, str(REPO / "tools"))
import export_model as export_tool  # noqa: E402  (tools/export_model.py)
import train_net  # noqa: E402  (tools/train_net.py)

pytestmark = pytest.mark.slow  # trains a detector: ~2 minutes with the exports
# a short run that gives detections above 0.5 on the validation images (60 training images, 300 iterations;
# 200 were enough on the generator-version-2 images, whose digits were often light on dark)
TRAIN = {"num_train": 60, "num_val": 4}
SCALE = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "SOLVER.MAX_ITER", "300",
         "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.02", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
         "DATASETS.TEST", '("rb_digits_coco_val",)', "DATALOADER.NUM_WORKERS", "0", "SEED", "0", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(OUTPUT_DIR of the training run: config.yaml + model_final.pth, the validation images)."""
    if runtimes.missing("openvino"):
        pytest.skip(f"--format openvino: {runtimes.missing('openvino')}")
    root = tmp_path_factory.mktemp("rb_datasets")
    generate_digit_detection(str(root / "rb_digits"), **TRAIN)
    val_json, val_images = detection_paths(root / "rb_digits")["coco_val"]
    sections = load_override_sections(REPO / "configs" / "demo" / "digits_small_scale.yaml")
    out = root / "detector"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RB_DATASETS", str(root))
        register_synthetic_datasets()
        try:
            train_net.main(["--config", str(REPO / "configs" / "coco" / "frcnn_r101.yaml"),
                            *overrides_to_opts(sections["common"], sections["resnet_scratch"]), *SCALE,
                            "OUTPUT_DIR", str(out)])
            images = [str(val_images / im["file_name"]) for im in json.loads(val_json.read_text())["images"]]
            yield out, images
        finally:
            torch.set_num_threads(threads)
    register_synthetic_datasets()


def _eager(run: RunConfig, model, image_path: str):
    image = run.test_mapper()({"file_name": image_path})["image"].float()
    with torch.no_grad():
        return image, model.inference([{"image": image}], do_postprocess=False)[0]


def test_openvino_export_of_a_digits_trained_detector(trained, tmp_path):
    out, images = trained
    config, weights = str(out / "config.yaml"), str(out / "model_final.pth")
    run = RunConfig.load(config, ["MODEL.WEIGHTS", weights], lazy=False).check(datasets=("TEST",))
    model = run.inference_model(complete=True)
    eager = {path: _eager(run, model, path) for path in images}
    best = max(images, key=lambda p: eager[p][1].scores.max().item() if len(eager[p][1]) else 0.0)
    assert eager[best][1].scores.max() > 0.5  # real detections (a random detector's stay near 0.1)

    result = export_tool.main(["--config", config, "--format", "openvino", "--output", str(tmp_path),
                               "--sample-image", best, "MODEL.WEIGHTS", weights])
    assert result.exported == "detector" and result.detections == len(eager[best][1])
    assert result.max_abs_diff <= 1e-4, result.outputs
    compiled = runtimes.openvino_compiled(result.path, "f32")
    for path in images:  # other images, other sizes of the input: the same detections
        image, reference = eager[path]
        boxes, classes, scores, _ = runtimes.run_session(compiled, [image])
        assert len(scores) == len(reference)
        if len(reference):
            exported = type(reference)(reference.image_size, pred_boxes=type(reference.pred_boxes)(boxes),
                                       scores=scores, pred_classes=classes)
            worst, rows, _ = compare_outputs(reference, exported)
            assert worst <= 1e-4, rows


def test_precision_ap_compares_bfloat16_with_float32_on_the_trained_detector(trained):
    """tools/benchmark.py --sections precision-ap on the same detector: every contender evaluated by detectron2's
    COCO evaluator on the validation images; the float32 deploy path gives the AP train_net's own evaluation of the
    eager model gave, OpenVINO underneath in float32 the same detections, bfloat16 an AP of its own."""
    import logging

    from resnet_backbone.benchmarking.precision_ap import precision_ap_rows, run_precision_ap

    out, images = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_precision_ap(str(out / "config.yaml"), str(out / "model_final.pth"), [], logging.getLogger())
    finally:
        torch.set_num_threads(threads)
    contenders = result["contenders"]
    assert list(contenders) == ["deploy-fp32", "deploy-bf16", "deploy-openvino-fp32", "deploy-openvino-bf16"]
    ap = {name: c["results"]["rb_digits_coco_val"]["bbox"]["AP"] for name, c in contenders.items()}
    eager = json.loads((out / "eval_results.json").read_text())["results"]["rb_digits_coco_val"]["bbox"]["AP"]
    assert ap["deploy-fp32"] == pytest.approx(eager, abs=0.05) and eager > 0
    same = contenders["deploy-openvino-fp32"]["vs_deploy-fp32"]
    assert same["images"] == len(images) and same["images_with_other_detection_counts"] == 0
    assert same["max_score_diff"] < 1e-4
    assert all(0 <= ap[name] <= 100 for name in ap)
    assert len(precision_ap_rows("precision_ap", result)) == 1 + len(contenders)
