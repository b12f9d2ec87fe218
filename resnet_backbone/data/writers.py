"""Writers for detection samples in the two layouts detectron2 reads: COCO json and Pascal VOC xml.

A *sample* is any object with
  - ``stem``: file name without extension, unique within the dataset (also the VOC file id);
  - ``image``: ``uint8`` array of shape (height, width, 3), RGB;
  - ``instances``: objects with ``category_id`` (0-based index into ``class_names``),
    ``polygon`` (flat [x0, y0, x1, y1, ...] in pixel-edge coordinates), ``bbox`` (integer
    [x, y, w, h] of the pixels the polygon covers) and ``area`` (number of those pixels).
The generator in :mod:`resnet_backbone.data.synthetic_detection` produces such samples.

Every file is written through :mod:`resnet_backbone.utils.atomic`, so a reader never sees a
half-written file, even when several processes generate the same dataset at once.
"""
import io
import json
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Sequence

import numpy as np
from PIL import Image

from ..utils.atomic import atomic_write_bytes

__all__ = ["CocoWriter", "VocWriter", "encode_jpeg", "voc_annotation_xml"]

# Quality 95 without chroma subsampling keeps the coloured shapes' edges sharp; Pillow's JPEG
# encoder is deterministic, so the same pixels give the same bytes with the same Pillow build.
JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4


def encode_jpeg(image: np.ndarray) -> bytes:
    """Encode an RGB ``uint8`` (H, W, 3) array as JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            "encode_jpeg expects a uint8 array of shape (H, W, 3), got dtype {} shape {}".format(
                image.dtype, image.shape
            )
        )
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


class _Writer:
    """A context manager that calls ``close()`` (which writes the index file) when its block completes."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()


def _check_class_names(class_names: Sequence[str]) -> List[str]:
    names = list(class_names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("class_names must be distinct non-empty strings, got {!r}".format(class_names))
    return names


def _check_category(category_id: int, class_names: Sequence[str]) -> int:
    if not 0 <= int(category_id) < len(class_names):
        raise ValueError(
            "category_id {} is out of range: allowed 0..{} for classes {}".format(
                category_id, len(class_names) - 1, list(class_names)
            )
        )
    return int(category_id)


class CocoWriter(_Writer):
    """Collects samples into one COCO instances json; images go to ``image_root/<stem>.jpg``.

    Categories get ids 1..K in ``class_names`` order (COCO ids start at 1; 0 is unused),
    images get ids 1..N in the order they are added, annotations ids 1..M.
    Use as a context manager, or call :meth:`close` to write the json.
    """

    def __init__(self, json_file: str, image_root: str, class_names: Sequence[str], description: str = ""):
        self.json_file = json_file
        self.image_root = image_root
        self.class_names = _check_class_names(class_names)
        self.description = description
        self._images: List[Dict[str, Any]] = []
        self._annotations: List[Dict[str, Any]] = []
        os.makedirs(image_root, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)

    def add(self, sample) -> None:
        """Write the sample's image and record its image entry and annotations."""
        height, width = sample.image.shape[:2]
        file_name = sample.stem + ".jpg"
        atomic_write_bytes(os.path.join(self.image_root, file_name), encode_jpeg(sample.image))
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for inst in sample.instances:
            category_id = _check_category(inst.category_id, self.class_names)
            self._annotations.append(
                {
                    "id": len(self._annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id + 1,
                    "bbox": [int(v) for v in inst.bbox],
                    "area": int(inst.area),
                    "iscrowd": 0,
                    "segmentation": [[float(v) for v in inst.polygon]],
                }
            )

    def to_dict(self) -> Dict[str, Any]:
        """The COCO json content for the samples added so far."""
        return {
            "info": {"description": self.description, "version": "1.0"},
            "licenses": [],
            "images": list(self._images),
            "annotations": list(self._annotations),
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(self.class_names)
            ],
        }

    def close(self) -> None:
        """Write the json file."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        atomic_write_bytes(self.json_file, text.encode("utf-8"))


def voc_annotation_xml(sample, class_names: Sequence[str], folder: str = "VOC2007") -> bytes:
    """One Pascal VOC annotation file for ``sample``.

    VOC boxes are 1-based inclusive pixel indices (the VOC devkit's convention; detectron2's
    ``load_voc_instances`` subtracts 1 from xmin/ymin): a box covering pixel columns
    x0..x1 (0-based) is written as xmin = x0 + 1, xmax = x1 + 1.
    """
    height, width = sample.image.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = sample.stem + ".jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "resnet_backbone synthetic shapes"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(width))
    ET.SubElement(size, "height").text = str(int(height))
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for inst in sample.instances:
        category_id = _check_category(inst.category_id, class_names)
        x, y, w, h = (int(v) for v in inst.bbox)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[category_id]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root)
    return (ET.tostring(root, encoding="unicode") + "\n").encode("utf-8")


class VocWriter(_Writer):
    """Writes one split of a Pascal VOC style folder:

    ``dirname/JPEGImages/<stem>.jpg``, ``dirname/Annotations/<stem>.xml`` and, on :meth:`close`,
    ``dirname/ImageSets/Main/<split>.txt`` listing the stems in the order added.
    """

    def __init__(self, dirname: str, split: str, class_names: Sequence[str]):
        if not split or os.sep in split or "/" in split:
            raise ValueError("split must be a plain name such as 'train' or 'test', got {!r}".format(split))
        self.dirname = dirname
        self.split = split
        self.class_names = _check_class_names(class_names)
        self._stems: List[str] = []
        for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(dirname, sub), exist_ok=True)

    def add(self, sample) -> None:
        """Write the sample's image and annotation xml."""
        atomic_write_bytes(os.path.join(self.dirname, "JPEGImages", sample.stem + ".jpg"), encode_jpeg(sample.image))
        folder = os.path.basename(os.path.normpath(self.dirname))
        xml = voc_annotation_xml(sample, self.class_names, folder=folder)
        atomic_write_bytes(os.path.join(self.dirname, "Annotations", sample.stem + ".xml"), xml)
        self._stems.append(sample.stem)

    def close(self) -> None:
        """Write the split's image-set file."""
        text = "".join(stem + "\n" for stem in self._stems)
        atomic_write_bytes(os.path.join(self.dirname, "ImageSets", "Main", self.split + ".txt"), text.encode("utf-8"))
