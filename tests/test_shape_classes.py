"""The demo's pretraining set (data/synthetic_shape_classes.py): the detection set's shapes x colour families as
classes, seeded per image, written once, selected by PRETRAIN.DATASET.NAME "generated_shapes"."""
import colorsys

import numpy as np
import pytest
from PIL import Image

from resnet_backbone.config import add_resnet_backbone_config
from resnet_backbone.data.classification import ImageNetFolder
from resnet_backbone.data.classification_sets import build_classification_set, classification_set
from resnet_backbone.data.synthetic_detection import CLASS_NAMES, SHAPE_CLASSES
from resnet_backbone.data.synthetic_shape_classes import (
    COLOUR_FAMILIES,
    NUM_CLASSES,
    generate_shape_classes,
    render_shape_image,
    shape_class_names,
)


def test_every_detection_shape_in_every_colour_family():
    names = shape_class_names()
    assert len(names) == NUM_CLASSES == len(CLASS_NAMES) * len(COLOUR_FAMILIES) == 16
    assert names == sorted(names)  # folder order = class index
    pairs = {tuple(n.split("_")[1:]) for n in names}
    assert pairs == {(c, s) for c in COLOUR_FAMILIES for s in CLASS_NAMES}
    with pytest.raises(ValueError, match="num_classes"):
        shape_class_names(17)


def _hue(rgb):
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]


@pytest.mark.parametrize("index", range(16))
def test_the_object_has_its_family_colour(index):
    image = render_shape_image(index, 64, np.random.RandomState([0, 0, index, 0])).astype(float)
    family = index % len(COLOUR_FAMILIES)
    # the object is the saturated part of the image (the backgrounds are muted: chroma <= 40)
    chroma = image.max(axis=2) - image.min(axis=2)
    obj = chroma > 100
    assert 0.05 < obj.mean() < 0.6
    palette_hues = [_hue(c) for c in SHAPE_CLASSES[family].palette]
    hue = _hue(np.median(image[obj], axis=0))
    distance = min(min(abs(hue - h), 1 - abs(hue - h)) for h in palette_hues)
    assert distance < 0.05, (index, hue, palette_hues)


def test_images_are_seeded_per_image_and_the_set_is_written_once(tmp_path):
    small = generate_shape_classes(tmp_path / "a", num_classes=4, train_per_class=2, val_per_class=1)
    large = generate_shape_classes(tmp_path / "b", num_classes=4, train_per_class=3, val_per_class=1)
    assert small.created and small.num_train == 8 and small.num_val == 4
    name = small.classes[2]
    first = tmp_path / "a" / "train" / name / f"{name}_00001.png"
    assert np.array_equal(np.asarray(Image.open(first)),
                          np.asarray(Image.open(tmp_path / "b" / "train" / name / f"{name}_00001.png")))
    assert not np.array_equal(np.asarray(Image.open(first)),
                              np.asarray(Image.open(tmp_path / "a" / "train" / name / f"{name}_00000.png")))
    assert large.created
    again = generate_shape_classes(tmp_path / "a", num_classes=4, train_per_class=2, val_per_class=1)
    assert not again.created
    with pytest.raises(ValueError, match="already holds a generated shapes set"):
        generate_shape_classes(tmp_path / "a", num_classes=4, train_per_class=5, val_per_class=1)
    folder = ImageNetFolder(tmp_path / "a", "val")
    assert folder.classes == list(small.classes) and len(folder) == 4


def test_selected_by_the_pretraining_dataset_name(tmp_path):
    from detectron2.config import get_cfg

    cfg = add_resnet_backbone_config(get_cfg())
    d = cfg.PRETRAIN.DATASET
    d.NAME, d.ROOT = "generated_shapes", str(tmp_path / "shapes")
    d.GENERATED_NUM_CLASSES, d.GENERATED_TRAIN_PER_CLASS, d.GENERATED_VAL_PER_CLASS = 16, 1, 1
    assert classification_set("generated_shapes").pipeline == "imagenet"
    train = build_classification_set(d, "train", None)
    assert len(train) == 16 and train.classes == shape_class_names()
    image, label = train[5]
    assert image.size == (64, 64) and label == 5
