"""An embedded classification set from the detection set's visual domain: single rb_shapes objects, one class per
(shape, colour family).

The pretraining stage of the demo needs an "ImageNet" whose features carry over to the embedded detection set
(data/synthetic_detection.py). This set draws the same things that set does: its four shapes (circle, square,
triangle, cross) with their outlines and rotations, painted with their palettes, colour jitter and shading, on its
four kinds of muted background with its final noise. In the detection set each shape has its own colour family;
here every shape comes in every family (4 x 4 = 16 classes, e.g. "07_blue_square"), so a classifier has to learn
shapes as well as colours. One object per image, 40-75% of the image side (the scale augmentation of the
pretraining pipeline varies that further).

Layout (read by data/classification.py's ImageNetFolder; PRETRAIN.DATASET.NAME "generated_shapes")::

    root/train/<class>/<class>_00000.png ...    root/val/<class>/...    root/manifest_shapes.json (written last)

Determinism: image i of class k in a split comes from ``numpy.random.RandomState([seed, split, k, i])`` (frozen
streams across numpy versions, as in synthetic_detection), so it does not depend on the number of images per class.
Calling again with the same parameters finds the manifest and writes nothing; other parameters for the same root
are refused.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..modeling.options import check_int
from ..utils.atomic import atomic_write_bytes
from .manifest import GeneratedClassificationSet, manifest_matches, write_manifest
from .synthetic_detection import (
    BACKGROUNDS,
    COLOUR_JITTER,
    FINAL_NOISE_STD,
    SHADING,
    SHAPE_CLASSES,
    polygon_to_mask,
)

__all__ = ["COLOUR_FAMILIES", "NUM_CLASSES", "MANIFEST_NAME", "shape_class_names",
           "render_shape_image", "generate_shape_classes"]

GENERATOR_VERSION = 1  # bump when the drawing changes, so old manifests no longer match
MANIFEST_NAME = "manifest_shapes.json"
# the detection classes' palettes, named by their hue (synthetic_detection.SHAPE_CLASSES order)
COLOUR_FAMILIES = ("red", "green", "blue", "yellow")
NUM_CLASSES = len(SHAPE_CLASSES) * len(COLOUR_FAMILIES)
DEFAULT_IMAGE_SIZE = 64
MIN_IMAGE_SIZE = 32  # smaller, the largest objects would not fit inside the 1-pixel border
OBJECT_FRACTION = (0.4, 0.75)  # nominal object size / image side: a rotated square still fits whole
_SPLIT_CODE = {"train": 0, "val": 1}


def _class_parts(index: int) -> Tuple[int, int]:
    """Class index -> (shape index, colour family index); the colour changes fastest."""
    return index // len(COLOUR_FAMILIES), index % len(COLOUR_FAMILIES)


def shape_class_names(num_classes: int = NUM_CLASSES) -> List[str]:
    """Folder names of the first ``num_classes`` classes; sorted names give the indices 0..K-1."""
    check_int("num_classes", num_classes, 2, NUM_CLASSES)
    names = []
    for k in range(num_classes):
        shape, colour = _class_parts(k)
        names.append(f"{k:02d}_{COLOUR_FAMILIES[colour]}_{SHAPE_CLASSES[shape].name}")
    return names


def render_shape_image(class_index: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """One image of class ``class_index``: uint8 (size, size, 3) RGB."""
    check_int("class_index", class_index, 0, NUM_CLASSES - 1)
    shape_index, colour_index = _class_parts(class_index)
    shape = SHAPE_CLASSES[shape_index]
    image = BACKGROUNDS[rng.randint(len(BACKGROUNDS))](rng, size, size)
    nominal = rng.uniform(*OBJECT_FRACTION) * size
    angle = np.deg2rad(rng.uniform(-shape.max_rotation_deg, shape.max_rotation_deg))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    verts = shape.outline(nominal) @ rot.T
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    # anywhere it fits whole (1 pixel from the border), as the detection set places its objects
    cx, cy = rng.uniform(1.0 - lo[0], size - 1.0 - hi[0]), rng.uniform(1.0 - lo[1], size - 1.0 - hi[1])
    mask = polygon_to_mask((verts + np.array([cx, cy])).reshape(-1), size, size)
    # colour, jitter and directional shading as synthetic_detection paints its objects
    palette = SHAPE_CLASSES[colour_index].palette
    colour = np.asarray(palette[rng.randint(len(palette))], dtype=np.float64)
    colour = colour + rng.randint(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.nonzero(mask)
    proj = ((xs - cx) * np.cos(phi) + (ys - cy) * np.sin(phi)) / (0.5 * nominal)
    image[ys, xs] = colour[None, :] * (1.0 + SHADING * np.clip(proj, -1.0, 1.0))[:, None]
    image = image + rng.normal(0.0, FINAL_NOISE_STD, size=(size, size, 1))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def generate_shape_classes(root, num_classes: int = NUM_CLASSES, train_per_class: int = 50, val_per_class: int = 10,
                           image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0) -> GeneratedClassificationSet:
    """Write the set under ``root`` (idempotent); ``num_classes`` takes the first K of the 16 classes."""
    names = shape_class_names(num_classes)
    check_int("image_size", image_size, MIN_IMAGE_SIZE)
    check_int("train_per_class", train_per_class, 1)
    check_int("val_per_class", val_per_class, 1)
    check_int("seed", seed, 0, 2**32 - 1)  # numpy's RandomState seeds are 32-bit
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    params = {"generator_version": GENERATOR_VERSION, "num_classes": num_classes, "train_per_class": train_per_class,
              "val_per_class": val_per_class, "image_size": image_size, "seed": seed}
    result = GeneratedClassificationSet(root, "imagenet", tuple(names), num_classes * train_per_class,
                                        num_classes * val_per_class, image_size, manifest_path, created=True)
    if manifest_matches(manifest_path, params, "shapes"):
        return dataclasses.replace(result, created=False)
    files = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.RandomState([seed, _SPLIT_CODE[split], k, i])
                rel = f"{split}/{name}/{name}_{i:05d}.png"
                atomic_write_bytes(root / rel, _png(render_shape_image(k, image_size, rng)))
                files.append(rel)
    write_manifest(manifest_path, params, names, files)
    return result
