"""An embedded, seeded image-classification set, written in the ImageNet folder layout or as CIFAR-10 batches.

Real ImageNet and CIFAR-10 cannot be downloaded on every machine that runs this project, so the readers and the
pretraining loop are exercised on generated data: each class is one combination of a shape (6), a colour (8) and
a surface texture (3); each image draws its object's position, size, rotation, colour shade, background and noise
at random. A small CNN separates the classes; colour alone does not (classes share colours, shapes and textures).

Every image comes from its own random stream keyed by (seed, split, class, index), so an image does not change
when the number of images per class does. A completion record written last (data/manifest.py) holds the parameters:
calling again with the same parameters finds it and does nothing; other parameters make the set again.
"""
from __future__ import annotations

import colorsys
import dataclasses
import math
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..modeling.options import check_choice, check_int
from ..utils.atomic import atomic_write
from .manifest import GeneratedClassificationSet, prepare, write_manifest

__all__ = [
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "MAX_CLASSES",
    "LAYOUTS",
    "GeneratedClassificationSet",
    "class_attributes",
    "class_names",
    "render_image",
    "generate_classification_set",
]

GENERATOR_VERSION = 1  # bump when the drawing changes, so old manifests no longer match
SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")
COLOURS = (("red", 0.0), ("yellow", 60.0), ("green", 120.0), ("cyan", 180.0), ("blue", 240.0), ("magenta", 300.0),
           ("orange", 30.0), ("purple", 270.0))  # name, hue in degrees
TEXTURES = ("solid", "stripes", "checker")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)
LAYOUTS = ("imagenet", "cifar")
_DEFAULT_SIZE = {"imagenet": 64, "cifar": 32}
_SPLIT_CODE = {"train": 0, "val": 1}
_OWNED = {"imagenet": ("train", "val"), "cifar": ("cifar-10-batches-py",)}  # what each layout writes under root

# Masks in the object's own frame, unit radius: (u, v) -> bool.
_SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disk": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": lambda u, v: (v <= 0.6) & (np.abs(u) <= (v + 1.0) * 0.6),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55 ** 2),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
}


def class_attributes(index: int) -> tuple[str, str, str]:
    """Class index -> (shape, colour name, texture)."""
    if not 0 <= index < MAX_CLASSES:
        raise ValueError(f"class index must be in [0, {MAX_CLASSES}), got {index}")
    # A bijection onto the 144 combinations in which the colour changes fastest: the first 8 classes have 8
    # colours, 6 shapes and 3 textures, and two classes sharing a colour also differ in shape and texture
    # (q below walks the 18 (shape, texture) pairs; for fixed q // 6 the texture turns with the shape).
    colour, row = index % len(COLOURS), index // len(COLOURS)
    q = (row + colour) % (len(SHAPES) * len(TEXTURES))
    shape = q % len(SHAPES)
    texture = (q // len(SHAPES) + q) % len(TEXTURES)
    return SHAPES[shape], COLOURS[colour][0], TEXTURES[texture]


def class_names(num_classes: int) -> list[str]:
    """Folder names; zero-padded indices first, so sorted names give the class indices 0..K-1."""
    _check_num_classes(num_classes)
    return ["{:03d}_{}_{}_{}".format(i, *class_attributes(i)[::-1]) for i in range(num_classes)]


def _check_num_classes(num_classes):
    check_int("num_classes", num_classes, 2, MAX_CLASSES)


def render_image(class_index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image of class ``class_index``: uint8 [size, size, 3] RGB."""
    shape, colour, texture = class_attributes(class_index)
    hue = dict(COLOURS)[colour] / 360.0
    # Pixel centres in [-1, 1].
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(coords, coords, indexing="ij")
    cx, cy = rng.uniform(-0.25, 0.25, size=2)
    radius = rng.uniform(0.45, 0.7)
    # At most 18 degrees, so a square (|angle| <= 18) never looks like a diamond (a square at 45 +- 18).
    angle = rng.uniform(-math.pi / 10, math.pi / 10)
    c, s = math.cos(angle), math.sin(angle)
    u = ((x - cx) * c + (y - cy) * s) / radius
    v = (-(x - cx) * s + (y - cy) * c) / radius
    mask = _SHAPE_MASKS[shape](u, v)[..., None]

    fg = np.array(colorsys.hsv_to_rgb((hue + rng.normal(0.0, 0.015)) % 1.0, rng.uniform(0.65, 1.0),
                                      rng.uniform(0.7, 1.0)))
    if texture == "solid":
        shade = np.ones_like(u)
    else:
        period = rng.uniform(0.35, 0.5)
        bands = np.floor(v / period) if texture == "stripes" else np.floor(u / period) + np.floor(v / period)
        shade = 1.0 - 0.55 * (bands % 2)
    # A dim, nearly grey background, so the object's hue carries the colour cue.
    bg = rng.uniform(0.05, 0.45) + rng.uniform(-0.05, 0.05, size=3)
    img = np.where(mask, fg * shade[..., None], bg)
    img = img + rng.normal(0.0, 0.03, size=img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _split_images(split: str, num_classes: int, per_class: int, size: int, seed: int):
    for k in range(num_classes):
        for i in range(per_class):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], k, i])
            yield k, i, render_image(k, size, rng)


def _write_file(path: Path, write: Callable) -> None:
    """``write(f)`` into ``path`` through the atomic writer (several processes may generate the same set)."""
    with atomic_write(path, "wb") as f:
        write(f)


def _write_imagenet(root: Path, names, params) -> list[str]:
    files = []
    for split, per_class in (("train", params["train_per_class"]), ("val", params["val_per_class"])):
        for k, i, img in _split_images(split, params["num_classes"], per_class, params["image_size"],
                                       params["seed"]):
            rel = f"{split}/{names[k]}/{names[k]}_{i:05d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _write_file(root / rel, lambda f, img=img: Image.fromarray(img).save(f, format="PNG"))
            files.append(rel)
    return files


def _dump(obj) -> Callable:
    return lambda f: pickle.dump(obj, f, protocol=2)  # the protocol of the official CIFAR files


def _write_cifar(root: Path, names, params) -> list[str]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(split, per_class):
        items = list(_split_images(split, params["num_classes"], per_class, params["image_size"], params["seed"]))
        data = np.stack([img.transpose(2, 0, 1).reshape(-1) for _, _, img in items]) if items else \
            np.zeros((0, 3072), np.uint8)
        labels = [k for k, _, _ in items]
        filenames = [f"{names[k]}_{i:05d}.png".encode() for k, i, _ in items]
        return data, labels, filenames

    data, labels, filenames = batch("train", params["train_per_class"])
    # The official training batches are in random order; so are these (deterministically).
    order = np.random.default_rng([params["seed"], 2]).permutation(len(labels))
    files = []
    for b, chunk in enumerate(np.array_split(order, 5), start=1):
        name = f"data_batch_{b}"
        _write_file(folder / name, _dump({
            b"batch_label": f"training batch {b} of 5".encode(), b"data": data[chunk],
            b"labels": [labels[j] for j in chunk], b"filenames": [filenames[j] for j in chunk]}))
        files.append(f"cifar-10-batches-py/{name}")
    data, labels, filenames = batch("val", params["val_per_class"])
    _write_file(folder / "test_batch", _dump({
        b"batch_label": b"testing batch 1 of 1", b"data": data, b"labels": labels, b"filenames": filenames}))
    _write_file(folder / "batches.meta", _dump({
        b"label_names": [n.encode() for n in names], b"num_cases_per_batch": int(math.ceil(len(order) / 5)),
        b"num_vis": 3072}))
    return files + ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]


def generate_classification_set(root: str | os.PathLike, num_classes: int = 10, train_per_class: int = 20,
                                val_per_class: int = 5, image_size: int | None = None, seed: int = 0,
                                layout: str = "imagenet") -> GeneratedClassificationSet:
    """Write a generated classification set under ``root`` (idempotent).

    layout "imagenet": ``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (image_size default 64).
    layout "cifar": ``root/cifar-10-batches-py/`` with data_batch_1..5 (the training images, shuffled, in five
        near-equal parts), test_batch (the val images) and batches.meta; image_size must be 32 (the default).
    The manifest is ``root/manifest_<layout>.json``; both layouts can share a root.
    """
    check_choice("layout", layout, LAYOUTS)
    _check_num_classes(num_classes)
    image_size = check_int("image_size", _DEFAULT_SIZE[layout] if image_size is None else image_size, 8)
    if layout == "cifar" and image_size != 32:
        raise ValueError(f"the CIFAR layout stores 32x32 images, got image_size={image_size}")
    check_int("train_per_class", train_per_class, 1)
    check_int("val_per_class", val_per_class, 1)
    check_int("seed", seed, 0)

    root = Path(root)
    manifest_path = root / f"manifest_{layout}.json"
    params = {"generator_version": GENERATOR_VERSION, "layout": layout, "num_classes": num_classes,
              "train_per_class": train_per_class, "val_per_class": val_per_class, "image_size": image_size,
              "seed": seed}
    names = class_names(num_classes)
    result = GeneratedClassificationSet(root, layout, tuple(names), num_classes * train_per_class,
                                        num_classes * val_per_class, image_size, manifest_path, created=True)
    if prepare(manifest_path, params, _OWNED[layout]):
        return dataclasses.replace(result, created=False)

    files = (_write_imagenet if layout == "imagenet" else _write_cifar)(root, names, params)
    write_manifest(manifest_path, params, names, files)
    return result
