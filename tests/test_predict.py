"""tools/predict.py on a folder of images with a bad one among them: the drawn images, the COCO-style JSON against
the detector's own outputs on the same images, and the refusals (no weights, weights that do not cover the heads)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_tool
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image
from pycocotools import mask as mask_util

from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.engine.config_io import load_config

pytestmark = pytest.mark.v06  # also on the detectron2 v0.6 fallback (.ci/run)

REPO = Path(__file__).resolve().parents[1]
SHAPES = ["DATASETS.TEST", "('rb_shapes_coco_val',)", "MODEL.ROI_HEADS.NUM_CLASSES", "4"]
TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]"] + SHAPES
TINY_FPN = [o for o in TINY if o not in ("MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]")]
CONFIDENCE = 0.2


@pytest.fixture(scope="module")
def predict():
    return load_tool("predict")


def _images(folder):
    """Three small pictures of shapes (PNG, JPEG, and a PNG in a subfolder with the same name) and a broken JPEG."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(["a.png", "b.jpg"]):
        img = np.full((72, 100, 3), 40 + 60 * i, np.uint8)
        img[10:50, 20:70] = rng.integers(0, 255, 3)
        img[30:65, 60:95] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / name)
        paths.append(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    other = folder.parent / "other"
    other.mkdir()
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(other / "a.png")
    return paths, other / "a.png"


def _trained_detector(tmp_path, config, opts):
    """A detector with every weight set (random here, as trained ones would be), saved as tools/train_net.py does."""
    cfg = load_config(str(REPO / "configs" / "coco" / config), opts + ["MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    SafeDetectionCheckpointer(model, str(tmp_path / "run")).save("model_final")
    return str(tmp_path / "run" / "model_final.pth")


def _expected(config, opts, weights, path):
    """The detector's own outputs on one image: BGR pixels, shorter side resized as the config says."""
    cfg = load_config(str(REPO / "configs" / "coco" / config),
                      opts + ["MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(CONFIDENCE)])
    model = build_model(cfg).eval()
    SafeDetectionCheckpointer(model).load(weights)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    image = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    with torch.no_grad():
        out = model([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                      "height": image.shape[0], "width": image.shape[1]}])[0]["instances"]
    return out[out.scores >= CONFIDENCE]


def _by_image(payload):
    per_image = {img["id"]: [] for img in payload["images"]}
    for ann in payload["annotations"]:
        per_image[ann["image_id"]].append(ann)
    return {img["file_name"]: (img, per_image[img["id"]]) for img in payload["images"]}


def test_folder_glob_and_bad_images(predict, tmp_path, capsys):
    images, same_name = _images(tmp_path / "photos")
    weights = _trained_detector(tmp_path, "frcnn_r101.yaml", TINY)
    out = tmp_path / "pred"
    missing = str(tmp_path / "nowhere.png")
    code = predict.main(["--config", str(REPO / "configs" / "coco" / "frcnn_r101.yaml"),
                         "--input", str(tmp_path / "photos"), missing, str(tmp_path / "other" / "*.png"),
                         str(tmp_path / "none" / "*.jpg"), "--output", str(out), "--confidence", str(CONFIDENCE),
                         *TINY, "MODEL.WEIGHTS", weights])
    assert code == 0
    printed = capsys.readouterr()
    payload = json.loads((out / "predictions.json").read_text())
    # the bad inputs are named, with why, and the rest is predicted
    skipped = {s["file"]: s["reason"] for s in payload["skipped"]}
    assert set(skipped) == {str(tmp_path / "photos" / "broken.jpg"), missing, str(tmp_path / "none" / "*.jpg")}
    assert "no file matches" in skipped[str(tmp_path / "none" / "*.jpg")]
    for name in skipped:
        assert name in printed.out
    assert [img["file_name"] for img in payload["images"]] == [str(p) for p in images] + [str(same_name)]
    assert [img["output"] for img in payload["images"]] == ["a.png", "b.jpg", "a_1.png"]
    assert payload["info"]["confidence"] == CONFIDENCE and payload["info"]["weights"] == weights
    assert [c["name"] for c in payload["categories"]] and [c["id"] for c in payload["categories"]] == [1, 2, 3, 4]

    names = {c["id"]: c["name"] for c in payload["categories"]}
    total = 0
    for path in images + [same_name]:
        img, anns = _by_image(payload)[str(path)]
        source = np.asarray(Image.open(path).convert("RGB"))
        drawn = np.asarray(Image.open(out / img["output"]).convert("RGB"))
        assert (img["height"], img["width"]) == source.shape[:2] == drawn.shape[:2]
        expected = _expected("frcnn_r101.yaml", TINY, weights, path)
        assert len(anns) == len(expected)
        total += len(anns)
        if len(anns):
            assert np.abs(drawn.astype(int) - source.astype(int)).max() > 50  # boxes and labels are drawn
        for ann, box, score, cls in zip(anns, expected.pred_boxes.tensor, expected.scores, expected.pred_classes):
            x0, y0, x1, y1 = box.tolist()
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
            assert ann["score"] == pytest.approx(score.item(), abs=1e-4) and ann["score"] >= CONFIDENCE
            assert ann["category_id"] == cls.item() + 1  # the dataset's COCO ids (1..4), not the contiguous ones
            assert ann["category_name"] == names[ann["category_id"]]
    assert total > 0 and len(payload["annotations"]) == total
    assert f"{len(images) + 1} images predicted" in printed.out


def test_mask_rcnn_writes_masks(predict, tmp_path):
    images, _ = _images(tmp_path / "photos")
    weights = _trained_detector(tmp_path, "mask_rcnn_r101_fpn.yaml", TINY_FPN)
    out = tmp_path / "pred"
    assert predict.main(["--config", str(REPO / "configs" / "coco" / "mask_rcnn_r101_fpn.yaml"), "--input",
                         str(images[0]), "--output", str(out), "--confidence", str(CONFIDENCE), *TINY_FPN,
                         "MODEL.WEIGHTS", weights]) == 0
    payload = json.loads((out / "predictions.json").read_text())
    expected = _expected("mask_rcnn_r101_fpn.yaml", TINY_FPN, weights, images[0])
    assert len(payload["annotations"]) == len(expected) > 0
    for ann, mask in zip(payload["annotations"], expected.pred_masks):
        decoded = mask_util.decode({"size": ann["segmentation"]["size"],
                                    "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask.numpy())
    assert (out / "a.png").stat().st_size > 0


# TINY for the LazyConfig twin of frcnn_r101.yaml (configs/lazy/frcnn_r101.py)
TINY_LAZY = ["train.device=cpu", "model.backbone.depth=18", "dataloader.test.mapper.augmentations.0.short_edge_length=64",
             "dataloader.test.mapper.augmentations.0.max_size=96", "model.proposal_generator.post_nms_topk=[2000,30]",
             "model.proposal_generator.anchor_generator.sizes=[[16,32,64]]",
             "dataloader.test.dataset.names=rb_shapes_coco_val", "model.roi_heads.num_classes=4"]


def test_lazy_config_predicts_what_its_yaml_twin_does(predict, tmp_path):
    images, _ = _images(tmp_path / "photos")
    weights = _trained_detector(tmp_path, "frcnn_r101.yaml", TINY)
    common = ["--input", str(images[0]), str(images[1]), "--confidence", str(CONFIDENCE)]
    assert predict.main(["--config", str(REPO / "configs" / "coco" / "frcnn_r101.yaml"), *common, "--output",
                         str(tmp_path / "yaml"), *TINY, "MODEL.WEIGHTS", weights]) == 0
    assert predict.main(["--config", str(REPO / "configs" / "lazy" / "frcnn_r101.py"), *common, "--output",
                         str(tmp_path / "lazy"), *TINY_LAZY, f"train.init_checkpoint={weights}"]) == 0
    from_yaml, from_lazy = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("yaml", "lazy"))
    assert len(from_lazy["annotations"]) == len(from_yaml["annotations"]) > 0
    for a, b in zip(from_lazy["annotations"], from_yaml["annotations"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-4)
    with pytest.raises(ValueError, match="train.init_checkpoint=output"):
        predict.main(["--config", str(REPO / "configs" / "lazy" / "frcnn_r101.py"), *common, "--output",
                      str(tmp_path / "o"), *TINY_LAZY, "train.init_checkpoint="])


def test_weights_that_do_not_make_a_detector_are_refused(predict, tmp_path):
    images, _ = _images(tmp_path / "photos")
    config = str(REPO / "configs" / "coco" / "frcnn_r101.yaml")
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        predict.main(["--config", config, "--input", str(images[0]), "--output", str(tmp_path / "o"), *TINY,
                      "MODEL.WEIGHTS", ""])
    # an ImageNet backbone alone: the RPN and box predictor would be random
    cfg = load_config(config, TINY + ["MODEL.WEIGHTS", ""])
    backbone_only = {k: v for k, v in build_model(cfg).state_dict().items()
                     if k.startswith(("backbone.", "roi_heads.res5."))}  # what ImageNet weights cover in C4
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match="predictions would be random"):
        predict.main(["--config", config, "--input", str(images[0]), "--output", str(tmp_path / "o"), *TINY,
                      "MODEL.WEIGHTS", str(tmp_path / "backbone.pth")])
    with pytest.raises(ValueError, match="--confidence"):
        predict.main(["--config", config, "--input", str(images[0]), "--output", str(tmp_path / "o"),
                      "--confidence", "1.5", *TINY, "MODEL.WEIGHTS", str(tmp_path / "backbone.pth")])
