"""TorchScript / ONNX / torch.export: the plugin's backbones script and trace (as detectron2's own do), and the
paper's two detectors (ResNet C4, VGG-16) exported by tools/export_model.py give the eager model's detections on
the same image. The eager model is the reference throughout; ONNX files are run by onnxruntime, OpenVINO IR by
OpenVINO; both take other input sizes, and every export folder's load_and_run.py runs in a fresh process."""
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import registered_shapes
from detectron2.data import DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

# detectron2's scripting patches for its own FPN, as its export tool; v0.6's export module needs caffe2, which
# PyTorch no longer ships
pytest.importorskip("detectron2.export", reason="this detectron2's export module does not import (v0.6: caffe2)",
                    exc_type=ImportError)
import resnet_backbone
from resnet_backbone.d2.backbones import build_rb_resnet_fpn_backbone, build_rb_retinanet_resnet_fpn_backbone
from resnet_backbone.d2.roi_heads import RBVGG16FCHead, res5_head_stage
from resnet_backbone.d2.weights import map_classifier_to_detector
from resnet_backbone.deploy import prepare_for_inference
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine import runtimes
from resnet_backbone.engine.detector_export import check_exportable_model, compare_outputs
from resnet_backbone.modeling import VGG, ResNet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import export_model as export_tool  # noqa: E402  (tools/export_model.py)

# ------------------------------------------------------------------------------------------------- backbones

BACKBONES = {
    "resnet18-frozenbn-c4": lambda: ResNet(18, norm="FrozenBN", out_features=["res4"], freeze_at=2),
    "resnet50-optionA-multi": lambda: ResNet(50, shortcut="A", out_features=["stem", "res2", "res5"]),
    "resnet50-optionC-droppath-channels_last": lambda: ResNet(50, shortcut="C", drop_path_rate=0.2,
                                                              channels_last=True, out_features=["res3", "res4"]),
    "plain34": lambda: ResNet(34, shortcut="none", out_features=["res5"]),
    "resnext50-gn-torchvision_stride": lambda: ResNet(50, num_groups=32, width_per_group=4, norm="GN",
                                                      stride_in_1x1=False, out_features=["res4"]),
    "resnet18-classifier": lambda: ResNet(18, num_classes=7),
    "cifar_resnet20-classifier": lambda: ResNet(20, variant="cifar", num_classes=10),
    "vgg16-c5": lambda: VGG(out_features=["conv5_3"], freeze_at=2),
    "vgg16-multi": lambda: VGG(out_features=["conv1_2", "conv4_3"]),
    "vgg16-classifier": lambda: VGG(num_classes=5),
}


def close(a, b):
    """Outputs (tensor or dict of tensors) equal within float rounding."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b)
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# VGG-16's classifier (138M parameters) takes ~20 s through torch.export here
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vgg16-classifier" else n
                                  for n in BACKBONES])
@torch.no_grad()
def test_backbone_scripts_traces_and_exports(name, one_thread):
    torch.manual_seed(0)
    model = BACKBONES[name]().eval()
    x, y = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    eager = model(x)

    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    close(scripted(x), eager)
    close(loaded(y), model(y))
    # names kept: the scripted module loads the eager model's checkpoints as they are
    assert list(scripted.state_dict()) == list(model.state_dict())

    traced = torch.jit.trace(model, (x,), strict=False)
    close(traced(y), model(y))

    program = torch.export.export(model, (x,))
    close(program.module()(y), model(y))


@torch.no_grad()
def test_fpn_backbones_and_heads_script(one_thread):
    cfg = load_config(str(REPO / "configs" / "coco" / "retinanet_r101_fpn.yaml"),
                      ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    x = torch.randn(1, 3, 64, 96)
    for build in (build_rb_retinanet_resnet_fpn_backbone, build_rb_resnet_fpn_backbone):
        if build is build_rb_resnet_fpn_backbone:
            cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        model = build(cfg, ShapeSpec(channels=3)).eval()
        close(torch.jit.script(model)(x), model(x))
    res5 = res5_head_stage(18, norm="FrozenBN").eval()
    pooled = torch.randn(4, 256, 14, 14)
    close(torch.jit.script(res5)(pooled), res5(pooled))
    head = RBVGG16FCHead(ShapeSpec(channels=512, height=7, width=7)).eval()
    rois = torch.randn(4, 512, 7, 7)
    close(torch.jit.script(head)(rois), head(rois))


# ------------------------------------------------------------------------------------------------- detectors

# small versions of the paper's detectors (ResNet-18 C4: the same code path as R-101) on the 64x96 embedded images;
# every detection after NMS is kept (no cut-off at a fixed count, where equal scores could pick different boxes)
DETECTORS = {
    "frcnn_r101": ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"],
    "frcnn_vgg16": [],
}
COMMON = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "4", "DATASETS.TEST", '("rb_shapes_coco_val",)',
          "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]",
          "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05",
          "TEST.DETECTIONS_PER_IMAGE", "1000"]


def detector_opts(name):
    return COMMON + DETECTORS[name]


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb_datasets")
    with registered_shapes(root, num_train=2, num_val=2, image_size=(64, 96)):
        yield root


class DetectorWeights(dict):
    """name -> detector checkpoint, written on first use: the backbone (and C4 res5 / VGG fc6-fc7) from a plugin
    classifier, the ResNet's BN statistics measured on one batch of image-like input, so that activations stay at
    a trained model's scale."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, name):
        torch.manual_seed(0)
        cfg = load_config(str(REPO / "configs" / "coco" / f"{name}.yaml"), detector_opts(name) + ["MODEL.WEIGHTS", ""])
        model = build_model(cfg)
        if "vgg" in name:
            classifier = VGG(num_classes=1000)
        else:
            classifier = resnet_backbone.create_model("resnet18")
            for m in classifier.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 1.0
            with torch.no_grad():
                classifier.train()(torch.randint(0, 256, (2, 3, 64, 96)).float()
                                   - torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1))
        layout = {"frcnn_r101": "c4", "frcnn_vgg16": "vgg16"}[name]  # d2/weights.py's DETECTOR_LAYOUTS
        mapped, _ = map_classifier_to_detector(classifier.state_dict(), layout)
        assert not model.load_state_dict(mapped, strict=False).unexpected_keys
        self[name] = self.folder / f"{name}.pth"
        torch.save({"model": model.state_dict()}, self[name])
        return self[name]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return DetectorWeights(tmp_path_factory.mktemp("weights"))


def run_export(name, fmt, out, weights, *extra):
    return export_tool.main(["--config", str(REPO / "configs" / "coco" / f"{name}.yaml"), "--format", fmt,
                             "--output", str(out)] + detector_opts(name) + ["MODEL.WEIGHTS", str(weights[name]),
                                                                            *extra])


def eager_detections(name, weights, image):
    """The detector built and loaded independently of the tool, run eagerly on `image` (no resize back)."""
    cfg = load_config(str(REPO / "configs" / "coco" / f"{name}.yaml"), detector_opts(name))
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(weights[name], weights_only=True)["model"])
    with torch.no_grad():
        return model.inference([{"image": image}], do_postprocess=False)[0]


def needs_runtime(fmt):
    """Skip, naming what is missing, when the runtime of `fmt` is not installed (CI installs them: .[deploy])."""
    runtime = {"onnx": "onnxruntime", "openvino": "openvino"}.get(fmt)
    if runtime and runtimes.missing(runtime):
        pytest.skip(f"--format {fmt}: {runtimes.missing(runtime)}")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "openvino"])
@pytest.mark.parametrize("name", ["frcnn_r101", pytest.param("frcnn_vgg16", marks=pytest.mark.slow)])  # VGG: ~15 s
def test_detector_exports_and_matches_eager(name, fmt, tmp_path, datasets_root, weights, one_thread):
    needs_runtime(fmt)
    result = run_export(name, fmt, tmp_path, weights)
    assert result.exported == "detector" and Path(result.path).is_file()
    assert result.detections > 0
    assert result.max_abs_diff <= 1e-4, result.outputs
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["format"] == fmt and report["max_abs_diff"] == pytest.approx(result.max_abs_diff)
    # independent of the tool's pairing: the same number of detections and the same sorted scores, on the sample
    # (the first validation image) read again by detectron2's own test-time mapper
    cfg = load_config(str(REPO / "configs" / "coco" / f"{name}.yaml"), detector_opts(name))
    image = DatasetMapper(cfg, is_train=False)({"file_name": report["sample"]})["image"].float()
    assert report["sample"].endswith("val_000000.jpg") and report["image_size"] == list(image.shape[1:])
    reference = eager_detections(name, weights, image)
    exported = result.instances[0]["instances"]
    assert len(exported) == len(reference) == result.detections
    torch.testing.assert_close(exported.scores.sort().values, reference.scores.sort().values, rtol=0, atol=1e-4)
    if fmt == "torchscript":
        ts = torch.jit.load(result.path)
        flat = ts(image)
        assert len(flat) == len(result.outputs) + 1  # boxes, classes, scores + the image size
    if fmt == "openvino":
        assert Path(result.path).with_suffix(".bin").is_file()
    # ONNX and OpenVINO take any input size: checked by the tool on the sample cropped to 3/4, and here on a
    # size of our own against the eager model
    if fmt in ("onnx", "openvino"):
        assert report["other_size"]["dynamic"] is True and report["other_size"]["max_abs_diff"] <= 1e-3
        other = torch.nn.functional.pad(image, (0, 17, 0, 9), value=114.0)
        reference = eager_detections(name, weights, other)
        session = (runtimes.onnxruntime_session(result.path) if fmt == "onnx"
                   else runtimes.openvino_compiled(result.path, "f32"))
        boxes, classes, scores, size = runtimes.run_session(session, [other])
        assert size.tolist() == list(other.shape[1:]) and len(scores) == len(reference) > 0
        torch.testing.assert_close(scores.sort().values, reference.scores.sort().values, rtol=0, atol=1e-4)
    else:
        assert "dynamic" in report["other_size"] and report["other_size"]["note"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "openvino", "torch.export"])
def test_export_folder_says_how_to_load_and_run_it(fmt, tmp_path, datasets_root, weights, one_thread):
    """load_and_run.py beside the export runs in a fresh process where detectron2 and resnet_backbone cannot be
    imported, and prints the outputs the tool checked."""
    needs_runtime(fmt)
    result = run_export("frcnn_r101", fmt, tmp_path, weights)
    script = Path(result.load_script)
    assert script.parent == tmp_path and (tmp_path / "sample.npy").is_file()
    blocked = ("import runpy, sys\nfor name in ('detectron2', 'resnet_backbone'):\n    sys.modules[name] = None\n"
               f"runpy.run_path({str(script)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", blocked], cwd=str(REPO.parent), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    if fmt == "torch.export":
        assert printed == {name: str(shape) for name, shape, _ in result.outputs}
    else:
        assert printed["instances.scores"] == f"[{result.detections}]" and result.detections > 0
        assert printed["instances.pred_boxes"] == f"[{result.detections}, 4]"


def test_lazy_config_exports_the_same_detector(tmp_path, datasets_root, weights, one_thread):
    """configs/lazy/frcnn_r101.py with the same small settings and weights: the same detections as the YAML export."""
    lazy = ["train.device=cpu", "model.backbone.depth=18", "model.roi_heads.num_classes=4",
            'dataloader.test.dataset.names=["rb_shapes_coco_val"]',
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=96",
            "model.proposal_generator.anchor_generator.sizes=[[16,32,64]]",
            "model.proposal_generator.post_nms_topk=[2000,50]",
            "model.roi_heads.box_predictor.test_topk_per_image=1000", f"train.init_checkpoint={weights['frcnn_r101']}"]
    from_lazy = export_tool.main(["--config", str(REPO / "configs" / "lazy" / "frcnn_r101.py"), "--output",
                                  str(tmp_path / "lazy")] + lazy)
    from_yaml = run_export("frcnn_r101", "torchscript", tmp_path / "yaml", weights)
    assert from_lazy.max_abs_diff <= 1e-4 and from_lazy.detections == from_yaml.detections > 0
    a, b = from_lazy.instances[0]["instances"], from_yaml.instances[0]["instances"]
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)


def test_torch_export_exports_the_backbone(tmp_path, datasets_root, weights, one_thread):
    result = run_export("frcnn_r101", "torch.export", tmp_path, weights)
    assert result.exported == "backbone" and result.path.endswith("backbone.pt2")
    assert result.max_abs_diff <= 1e-4 and [r[0] for r in result.outputs] == ["res4"]
    program = torch.export.load(result.path)
    x = torch.randn(1, 3, 64, 96)
    model = build_model(load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"), detector_opts("frcnn_r101")))
    model.load_state_dict(torch.load(weights["frcnn_r101"], weights_only=True)["model"])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x)["res4"], model.eval().backbone(x)["res4"], rtol=1e-5,
                                   atol=1e-5)


def test_bn_folded_model_exports(tmp_path, datasets_root, weights, one_thread):
    result = run_export("frcnn_r101", "torchscript", tmp_path, weights, "MODEL.RB_DEPLOY.FUSE_BN", "True")
    assert result.max_abs_diff <= 1e-4 and result.detections > 0


def test_eager_only_deploy_path_is_refused(tmp_path, datasets_root, weights):
    for key in ("ONEDNN", "WINOGRAD", "COMPILE"):
        with pytest.raises(ValueError, match=f"MODEL.RB_DEPLOY.{key} True cannot be exported.*FUSE_BN True"):
            run_export("frcnn_r101", "torchscript", tmp_path, weights, f"MODEL.RB_DEPLOY.{key}", "True")
    fused = prepare_for_inference(ResNet(18, norm="FrozenBN", out_features=["res4"]), onednn=True,
                                  channels_last=False)
    with pytest.raises(ValueError, match="fused oneDNN / Winograd convolutions"):
        check_exportable_model(fused)


def test_random_weights_need_asking(tmp_path, datasets_root):
    with pytest.raises(ValueError, match="--allow-random-weights"):
        export_tool.main(["--config", str(REPO / "configs" / "coco" / "frcnn_r101.yaml"), "--output", str(tmp_path)]
                         + detector_opts("frcnn_r101") + ["MODEL.WEIGHTS", ""])


def test_detections_are_compared_regardless_of_the_order_of_equal_scores():
    def instances(boxes, scores, classes):
        return Instances((64, 96), pred_boxes=Boxes(torch.tensor(boxes)), scores=torch.tensor(scores),
                         pred_classes=torch.tensor(classes))

    eager = instances([[0.0, 0, 10, 10], [50, 5, 60, 20]], [0.9, 0.9], [1, 1])
    swapped = instances([[50.0, 5, 60, 20.00001], [0, 0, 10, 10]], [0.9, 0.9], [1, 1])
    worst, rows, n = compare_outputs([{"instances": eager}], [{"instances": swapped}])
    assert n == 2 and worst == pytest.approx(1e-5, abs=2e-6)
    fewer = instances([[0.0, 0, 10, 10]], [0.9], [1])
    assert math.isinf(compare_outputs([{"instances": eager}], [{"instances": fewer}])[0])
    other_class = instances([[0.0, 0, 10, 10], [50, 5, 60, 20]], [0.9, 0.9], [1, 2])
    assert compare_outputs([{"instances": eager}], [{"instances": other_class}])[0] >= 1
