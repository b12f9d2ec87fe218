"""The demo's real images: scikit-learn's 1,797 scanned handwritten digits (``sklearn.datasets.load_digits``: 8x8
pixels, 17 grey levels, 10 classes, BSD licence; shipped inside the package, so nothing is downloaded).

Two embedded sets are made from them, each digit upscaled (bicubic):

- ``generate_digit_classes``: the pretraining "ImageNet" (PRETRAIN.DATASET.NAME "digits"), ImageNet folder layout
  ``root/{train,val}/digit_<d>/*.png``: one digit per 32x32 image, 18-28 px tall, black on white as scanned;
- ``generate_digit_detection``: the detection set (COCO json + Pascal VOC xml, the ``rb_digits_*`` names of
  data/register.py): 2-4 digits per image at 20-40 px, boxes never touching, 10 classes "0".."9", in dark ink on
  cluttered paper: light paper of a random level and tint carrying a faint noise / gradient / texture pattern (those
  of data/synthetic_detection.py) and grey pencil strokes. Dark on light, as the pretraining images: a detector
  starting from the pretrained weights keeps its FrozenBN statistics, which came from those.

The split (``digit_pools``): one fixed permutation of the 1,797 digits cut into four disjoint pools,

    pretrain_train 1000   pretrain_val 200   detect_train 297   detect_val 300

The detection validation images use only detect_val digits, which neither pretraining nor detection training ever
sees. Detection training image i draws its digits from the first 237 detect_train digits when i < 4/5 of the
training images ("tune_train") and from the other 60 otherwise ("tune_val"): the lr grid of tools/demo.py --tune
trains on tune_train and is scored on tune_val, a held-out part of the training data.

Every image comes from ``numpy.random.RandomState([seed, split, index])`` (frozen streams, NEP 19). Each set's
completion record (utils/completion) holds its parameters: the same parameters find it and write nothing; others
regenerate it.
"""
from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..modeling.options import check_int
from ..utils.atomic import atomic_write_bytes, atomic_write_text
from ..utils.completion import read_record
from .manifest import prepare, write_manifest
from .synthetic_detection import BACKGROUNDS
from .writers import CocoWriter, VocWriter

__all__ = ["CLASS_NAMES", "POOL_SIZES", "TUNE_FRACTION", "DigitBox", "DigitSample", "digit_pools", "load_glyphs",
           "render_classification_image", "render_detection_sample", "generate_digit_classes",
           "generate_digit_detection", "ensure_digit_detection", "detection_paths", "RECORD_NAME"]

GENERATOR_VERSION = 3  # bump when the drawing changes: records of older versions then no longer match
RECORD_NAME = "complete.json"
CLASS_NAMES = tuple(str(d) for d in range(10))
POOL_SIZES = (("pretrain_train", 1000), ("pretrain_val", 200), ("detect_train", 297), ("detect_val", 300))
POOL_SEED = 20160627  # the permutation that cuts the pools: fixed, so the split never depends on a run's seed
TUNE_FRACTION = 0.8  # the first 4/5 of the detection training images (and of its digits) form tune_train
CLASS_IMAGE_SIZE = 32
CLASS_DIGIT_SIZE = (18, 28)
DETECTION_DIGIT_SIZE = (20, 40)
DETECTION_DIGITS = (2, 4)
DETECTION_IMAGE_SIZE = (96, 96)  # (height, width)
INK_THRESHOLD = 0.3  # a digit's box: the upscaled pixels with at least this much ink
BOX_GAP = 2  # pixels kept free around each digit's box
STROKES = {"detection": (2, 6)}  # clutter strokes per detection image
PAPER_LEVEL = (175, 245)  # the detection images' paper: its mean grey level ...
PAPER_TINT = 12  # ... and tint (per channel)
PAPER_CONTRAST = 0.35  # the background pattern's contrast on the paper, relative to the shapes set's
STROKE_DARKENING = (40, 100)  # clutter strokes: this much darker than the paper (the ink is darker still)
INK_LEVEL = (0, 60)  # the digits' ink
INK_TINT = 24  # per channel
_SPLIT_CODE = {"train": 0, "val": 1}
# the shapes set's noise, gradient and texture backgrounds (its stripes, ink-like edges at a digit's stroke width,
# would hide the digits rather than clutter them)
_BACKGROUNDS = tuple(b for b in BACKGROUNDS if "stripes" not in b.__name__)


@functools.lru_cache(maxsize=1)
def load_glyphs() -> Tuple[np.ndarray, np.ndarray]:
    """(ink in [0, 1], float32 (1797, 8, 8); labels (1797,)) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the demo's data sets need scikit-learn (its bundled digits): pip install scikit-learn, "
                          "or run tools/setup_env.py") from None
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def digit_pools() -> Dict[str, np.ndarray]:
    """The four disjoint pools of digit indices (see the module docstring)."""
    _, labels = load_glyphs()
    order = np.random.RandomState(POOL_SEED).permutation(len(labels))
    pools, start = {}, 0
    for name, size in POOL_SIZES:
        pools[name] = np.sort(order[start:start + size])
        start += size
    assert start == len(labels), "the pools cover every digit once"
    return pools


def _tune_cut(n: int) -> int:
    return int(round(TUNE_FRACTION * n))


def detection_pool(split: str, index: int, num_train: int) -> np.ndarray:
    """The digits detection image ``index`` of ``split`` draws from."""
    pools = digit_pools()
    if split == "val":
        return pools["detect_val"]
    train = pools["detect_train"]
    cut = _tune_cut(len(train))
    return train[:cut] if index < _tune_cut(num_train) else train[cut:]


def _glyph(digit: int, size: int) -> np.ndarray:
    ink = Image.fromarray(load_glyphs()[0][digit], mode="F").resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(ink, dtype=np.float64), 0.0, 1.0)


def _strokes(rng, image: np.ndarray, count: Tuple[int, int]) -> np.ndarray:
    # clutter: thin grey lines and arcs, darker than the paper but lighter than the ink (pencil marks, ruled lines)
    height, width = image.shape[:2]
    canvas = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    paper = image.reshape(-1, 3).mean(axis=0)
    for _ in range(rng.randint(count[0], count[1] + 1)):
        grey = paper - rng.uniform(*STROKE_DARKENING) + rng.uniform(-INK_TINT, INK_TINT, size=3) / 2
        colour = tuple(int(c) for c in np.clip(grey, 0, 255))
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, size=2) * width)
        y0, y1 = sorted(rng.uniform(-0.2, 1.2, size=2) * height)
        if rng.rand() < 0.5:
            draw.line([(x0, y0), (x1, y1)] if rng.rand() < 0.5 else [(x0, y1), (x1, y0)], fill=colour,
                      width=int(rng.randint(1, 3)))
        else:
            draw.arc([x0, y0, x1 + 1, y1 + 1], float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour,
                     width=int(rng.randint(1, 3)))
    return np.asarray(canvas, dtype=np.float64)


def _background(rng, height: int, width: int, strokes: Tuple[int, int]) -> np.ndarray:
    # the shapes set's noise / gradient / texture patterns, their contrast reduced and moved onto light paper of a
    # random level and tint: digits are dark ink on paper, as scanned (and as the pretraining images show them)
    pattern = _BACKGROUNDS[rng.randint(len(_BACKGROUNDS))](rng, height, width)
    level = rng.uniform(*PAPER_LEVEL) + rng.uniform(-PAPER_TINT, PAPER_TINT, size=3)
    image = level + PAPER_CONTRAST * (pattern - pattern.mean(axis=(0, 1)))
    return _strokes(rng, np.clip(image, 0, 255), strokes)


def _ink(rng, image: np.ndarray, glyph: np.ndarray, x: int, y: int) -> None:
    # dark ink of a random level and slight tint
    size = glyph.shape[0]
    patch = image[y:y + size, x:x + size]
    colour = np.clip(rng.uniform(*INK_LEVEL) + rng.uniform(-INK_TINT, INK_TINT, size=3), 0, 255)
    alpha = glyph[..., None]
    image[y:y + size, x:x + size] = patch * (1 - alpha) + colour * alpha


def _finish(rng, image: np.ndarray) -> np.ndarray:
    image = image + rng.normal(0.0, 3.0, size=image.shape[:2] + (1,))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def render_classification_image(digit: int, rng: np.random.RandomState) -> np.ndarray:
    """One pretraining image of digit ``digit`` (an index into load_glyphs): uint8 (32, 32, 3) RGB, the digit as
    scanned (black ink on white paper) at a random size and place.

    Why no backgrounds here (the detection images keep them): on 32 px inputs ResNet-101's last map is 1x1, and in
    the few hundred iterations the demo affords it learned these digits on white (35% validation error after 100
    iterations of 32) but not on the detection set's backgrounds, nor even on plain light-grey or coloured paper
    (84-92%, near chance): the background's level and colour, which vary from image to image, are what it learned
    first (docs/demo.md)."""
    size = CLASS_IMAGE_SIZE
    glyph = _glyph(digit, int(rng.randint(CLASS_DIGIT_SIZE[0], CLASS_DIGIT_SIZE[1] + 1)))
    x, y = (int(rng.randint(0, size - glyph.shape[0] + 1)) for _ in range(2))
    image = np.full((size, size, 3), 255.0)
    image[y:y + glyph.shape[0], x:x + glyph.shape[1]] *= 1.0 - glyph[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DigitBox:
    category_id: int  # the digit, 0..9
    polygon: Tuple[float, ...]  # the box as a polygon (pixel-edge coordinates), for the COCO / VOC writers
    bbox: Tuple[int, int, int, int]  # x, y, w, h of the pixels with at least INK_THRESHOLD ink
    area: int  # w * h
    digit: int  # index into load_glyphs(): which scanned digit it is


@dataclass(frozen=True)
class DigitSample:
    stem: str
    image: np.ndarray
    instances: Tuple[DigitBox, ...]


def render_detection_sample(split: str, index: int, num_train: int, image_size=DETECTION_IMAGE_SIZE,
                            seed: int = 0) -> DigitSample:
    """Detection image ``index`` of ``split`` ("train" / "val"): a pure function of its arguments."""
    height, width = image_size
    rng = np.random.RandomState([seed, _SPLIT_CODE[split], index])
    pool = detection_pool(split, index, num_train)
    labels = load_glyphs()[1]
    image = _background(rng, height, width, STROKES["detection"])
    occupied = np.zeros((height, width), dtype=bool)
    instances: List[DigitBox] = []
    for _ in range(rng.randint(DETECTION_DIGITS[0], DETECTION_DIGITS[1] + 1)):
        for _attempt in range(30):
            digit = int(pool[rng.randint(len(pool))])
            glyph = _glyph(digit, int(rng.randint(DETECTION_DIGIT_SIZE[0], DETECTION_DIGIT_SIZE[1] + 1)))
            size = glyph.shape[0]
            x, y = int(rng.randint(0, width - size + 1)), int(rng.randint(0, height - size + 1))
            ys, xs = np.nonzero(glyph >= INK_THRESHOLD)
            x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
            if occupied[max(y0 - BOX_GAP, 0):y1 + BOX_GAP, max(x0 - BOX_GAP, 0):x1 + BOX_GAP].any():
                continue
            occupied[max(y0 - BOX_GAP, 0):y1 + BOX_GAP, max(x0 - BOX_GAP, 0):x1 + BOX_GAP] = True
            _ink(rng, image, glyph, x, y)
            w, h = int(x1 - x0), int(y1 - y0)
            polygon = tuple(float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1))
            instances.append(DigitBox(int(labels[digit]), polygon, (int(x0), int(y0), w, h), w * h, digit))
            break
    return DigitSample(f"{split}_{index:06d}", _finish(rng, image), tuple(instances))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def generate_digit_classes(root, train_renders: int = 2, seed: int = 0) -> dict:
    """The pretraining set under ``root`` (idempotent): each pretrain_train digit drawn ``train_renders`` times
    (different size, place, colours, background), each pretrain_val digit once. Returns the record."""
    check_int("train_renders", train_renders, 1)
    check_int("seed", seed, 0, 2**32 - 1)
    root = Path(root)
    record = root / RECORD_NAME
    params = {"set": "digit_classes", "generator_version": GENERATOR_VERSION, "train_renders": train_renders,
              "seed": seed}
    if not prepare(record, params, ("train", "val")):
        pools, labels, files = digit_pools(), load_glyphs()[1], []
        for split, pool, renders in (("train", pools["pretrain_train"], train_renders),
                                     ("val", pools["pretrain_val"], 1)):
            for d in range(10):
                (root / split / f"digit_{d}").mkdir(parents=True, exist_ok=True)
            for i, digit in enumerate(pool):
                for r in range(renders):
                    rng = np.random.RandomState([seed, _SPLIT_CODE[split], int(digit), r])
                    rel = f"{split}/digit_{labels[digit]}/{int(digit):04d}_{r}.png"
                    atomic_write_bytes(root / rel, _png(render_classification_image(int(digit), rng)))
                    files.append(rel)
        write_manifest(record, params, [f"digit_{d}" for d in range(10)], files, digits={
            s: [int(v) for v in pools[p]] for s, p in (("train", "pretrain_train"), ("val", "pretrain_val"))})
    return read_record(record)


def detection_paths(root) -> dict:
    """The files of the detection set: COCO json / image folders per split (tune_* share the train images), the
    VOC2007-style folder."""
    root = Path(root)
    paths = {f"coco_{s}": (root / "coco" / f"{s}.json", root / "coco" / "images" / ("val" if s == "val" else "train"))
             for s in ("train", "val", "tune_train", "tune_val")}
    paths["voc"] = root / "voc" / "VOC2007"
    return paths


def generate_digit_detection(root, num_train: int = 300, num_val: int = 100, image_size=DETECTION_IMAGE_SIZE,
                             seed: int = 0) -> dict:
    """The detection set under ``root`` (idempotent); returns its record (parameters, digits used per split)."""
    check_int("num_train", num_train, 2)  # VOC split files need >= 2 lines (detectron2 reads them with np.loadtxt)
    check_int("num_val", num_val, 2)
    height, width = (check_int("image_size", v, 48) for v in image_size)
    check_int("seed", seed, 0, 2**32 - 1)
    root = Path(root)
    record = root / RECORD_NAME
    params = {"set": "digit_detection", "generator_version": GENERATOR_VERSION, "num_train": num_train,
              "num_val": num_val, "image_size": [height, width], "seed": seed}
    if not prepare(record, params, ("coco", "voc")):
        paths = detection_paths(root)
        used = {}
        for split, count in (("train", num_train), ("val", num_val)):
            json_file, image_root = paths[f"coco_{split}"]
            coco = CocoWriter(str(json_file), str(image_root), CLASS_NAMES, description=f"rb_digits {split}")
            voc = VocWriter(str(paths["voc"]), "train" if split == "train" else "test", CLASS_NAMES)
            digits = set()
            for index in range(count):
                sample = render_detection_sample(split, index, num_train, (height, width), seed)
                coco.add(sample)
                voc.add(sample)
                digits.update(inst.digit for inst in sample.instances)
            coco.close()
            voc.close()
            used[split] = sorted(digits)
            if split == "train":  # the lr grid's split of the training images (shared image files)
                full = coco.to_dict()
                cut = _tune_cut(num_train)
                for name, keep in (("tune_train", lambda i: i <= cut), ("tune_val", lambda i: i > cut)):
                    ids = {im["id"] for im in full["images"] if keep(im["id"])}
                    part = dict(full, images=[im for im in full["images"] if im["id"] in ids],
                                annotations=[a for a in full["annotations"] if a["image_id"] in ids])
                    atomic_write_text(paths[f"coco_{name}"][0], _json(part))
        write_manifest(record, params, CLASS_NAMES, [], digits=used)
    return read_record(record)


def ensure_digit_detection(root) -> dict:
    """The detection set at ``root`` as it is when a complete one is there (whatever its size: tools/demo.py --tiny
    writes a small one), else the default one, generated now. Returns its record."""
    record = read_record(Path(root) / RECORD_NAME)
    key = record["key"] if record and record.get("complete") is True else {}
    if key.get("set") == "digit_detection" and key.get("generator_version") == GENERATOR_VERSION:
        return generate_digit_detection(root, key["num_train"], key["num_val"], key["image_size"], key["seed"])
    return generate_digit_detection(root)


def _json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))

