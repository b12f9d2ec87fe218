"""data/digits.py: the demo's real images (scikit-learn's digits). The split is disjoint (the detection validation
images hold only digits no training sees; the lr grid's held-out images only digits its training images lack), the
boxes are the digits' ink, both formats say the same, and a set is made again only when its parameters change."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from resnet_backbone.data import digits
from resnet_backbone.data.digits import (
    CLASS_NAMES,
    INK_THRESHOLD,
    RECORD_NAME,
    detection_paths,
    digit_pools,
    generate_digit_classes,
    generate_digit_detection,
    load_glyphs,
    render_detection_sample,
)
from resnet_backbone.utils.completion import COMPLETE, state


def test_pools_are_disjoint_and_cover_every_digit_once():
    pools = digit_pools()
    ink, labels = load_glyphs()
    assert ink.shape == (1797, 8, 8) and 0.0 <= ink.min() and ink.max() == 1.0
    together = np.concatenate(list(pools.values()))
    assert sorted(together) == list(range(len(labels)))  # each digit in exactly one pool
    assert {k: len(v) for k, v in pools.items()} == dict(digits.POOL_SIZES)
    for name, pool in pools.items():  # every class in every pool
        assert set(labels[pool]) == set(range(10)), name


def test_detection_images_draw_from_their_own_pools():
    pools, num_train = digit_pools(), 10
    cut = round(digits.TUNE_FRACTION * num_train)
    tune_train, tune_val, val = set(), set(), set()
    for i in range(num_train):
        used = {inst.digit for inst in render_detection_sample("train", i, num_train).instances}
        (tune_train if i < cut else tune_val).update(used)
    for i in range(4):
        val.update(inst.digit for inst in render_detection_sample("val", i, num_train).instances)
    assert val <= set(pools["detect_val"]) and (tune_train | tune_val) <= set(pools["detect_train"])
    assert not tune_train & tune_val and not val & (tune_train | tune_val)


def test_boxes_are_the_ink_and_never_touch():
    sample = render_detection_sample("val", 3, 10)
    assert digits.DETECTION_DIGITS[0] <= len(sample.instances) <= digits.DETECTION_DIGITS[1]
    labels = load_glyphs()[1]
    boxes = []
    for inst in sample.instances:
        x, y, w, h = inst.bbox
        assert inst.category_id == labels[inst.digit] and inst.area == w * h
        assert inst.polygon == (x, y, x + w, y, x + w, y + h, x, y + h)
        assert 0 <= x and x + w <= sample.image.shape[1] and 0 <= y and y + h <= sample.image.shape[0]
        boxes.append((x, y, x + w, y + h))
    gap = digits.BOX_GAP
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    assert INK_THRESHOLD > 0


def test_detection_digits_are_dark_ink_on_light_paper():
    # the pretraining images' polarity (black on white): a pretrained detector keeps its FrozenBN statistics
    for index in range(6):
        sample = render_detection_sample("val", index, 10)
        paper = float(np.median(sample.image))
        assert paper >= digits.PAPER_LEVEL[0] - 20
        for inst in sample.instances:
            x, y, w, h = inst.bbox
            ink = np.percentile(sample.image[y:y + h, x:x + w].mean(axis=2), 5)
            assert ink <= digits.INK_LEVEL[1] + 50 < paper - 60, (index, inst)


def test_detection_set_files_agree_and_regenerate_only_on_new_parameters(tmp_path):
    root = tmp_path / "det"
    record = generate_digit_detection(root, num_train=5, num_val=2)
    paths = detection_paths(root)
    coco = {s: json.loads(paths[f"coco_{s}"][0].read_text()) for s in ("train", "val", "tune_train", "tune_val")}
    assert [c["name"] for c in coco["val"]["categories"]] == list(CLASS_NAMES)
    assert len(coco["train"]["images"]) == 5 and len(coco["val"]["images"]) == 2
    assert len(coco["tune_train"]["images"]) + len(coco["tune_val"]["images"]) == 5  # the grid's cut of train
    assert {im["id"] for im in coco["tune_train"]["images"]}.isdisjoint(im["id"] for im in coco["tune_val"]["images"])
    voc = sorted(os.listdir(paths["voc"] / "Annotations"))
    assert len(voc) == 7 and (paths["voc"] / "ImageSets" / "Main" / "test.txt").read_text().split() == [
        im["file_name"][:-4] for im in coco["val"]["images"]]
    assert set(record["digits"]["val"]) <= set(digit_pools()["detect_val"])
    image = Image.open(paths["coco_val"][1] / coco["val"]["images"][0]["file_name"])
    assert image.size == (96, 96)

    stamp = (root / RECORD_NAME).stat().st_mtime_ns
    generate_digit_detection(root, num_train=5, num_val=2)  # complete: nothing written
    assert (root / RECORD_NAME).stat().st_mtime_ns == stamp
    generate_digit_detection(root, num_train=3, num_val=2)  # other parameters: made again, nothing stale left
    assert len(json.loads(paths["coco_train"][0].read_text())["images"]) == 3
    assert len(os.listdir(paths["coco_train"][1])) == 3
    assert state(root / RECORD_NAME, {**record["key"], "num_train": 3}) == COMPLETE
    with pytest.raises(ValueError, match="num_train"):
        generate_digit_detection(root, num_train=1)


def test_classification_set_uses_the_pretraining_pools(tmp_path):
    record = generate_digit_classes(tmp_path / "cls", train_renders=1)
    pools = digit_pools()
    assert record["digits"] == {"train": sorted(int(d) for d in pools["pretrain_train"]),
                                "val": sorted(int(d) for d in pools["pretrain_val"])}
    assert sorted(os.listdir(tmp_path / "cls" / "train")) == [f"digit_{d}" for d in range(10)]
    files = [f for d in os.listdir(tmp_path / "cls" / "val") for f in os.listdir(tmp_path / "cls" / "val" / d)]
    assert len(files) == len(pools["pretrain_val"])
    pixels = np.asarray(Image.open(tmp_path / "cls" / "val" / "digit_0" / sorted(
        os.listdir(tmp_path / "cls" / "val" / "digit_0"))[0]))
    assert pixels.shape == (32, 32, 3) and pixels.std() > 10
    # the digit as scanned: black ink on white paper, grey (no colour)
    assert pixels.max() == 255 and pixels.min() < 64 and (pixels == pixels[..., :1]).all()
