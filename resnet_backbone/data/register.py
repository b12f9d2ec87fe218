"""Registering the embedded detection sets with detectron2, and checking dataset names.

The demo's set of real digits (data/digits.py; root ``$RB_DATASETS/rb_digits``, default ``<repo>/datasets``):

    rb_digits_coco_train / _val          COCO json; the validation images use only digits no training sees
    rb_digits_coco_tune_train / _val     the training images cut in two for the demo's lr grid (tools/demo.py --tune)
    rb_digits_voc_train / _test          Pascal VOC layout, the same images as coco_train / coco_val

The generated shapes set (data/synthetic_detection.py), kept for the tests that need pixel-exact ground truth
(polygons, masks, areas):

Names registered by :func:`register_synthetic_datasets` (root defaults to :func:`default_root`):

    rb_shapes_coco_train   <root>/coco/train.json, images in <root>/coco/images/train
    rb_shapes_coco_val     <root>/coco/val.json,   images in <root>/coco/images/val
    rb_shapes_voc_train    <root>/voc/VOC2007, split "train" (same samples as coco_train)
    rb_shapes_voc_test     <root>/voc/VOC2007, split "test"  (same samples as coco_val)

Registration does no work on disk: each loader generates the data the first time it is called if
it is missing (see :func:`resnet_backbone.data.synthetic_detection.ensure_dataset`).
"""
import functools
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
# Importing detectron2.data.datasets also registers detectron2's built-in datasets (coco_*, voc_*).
from detectron2.data.datasets import register_coco_instances, register_pascal_voc

from . import digits
from .synthetic_detection import CLASS_NAMES, VOC_SPLITS, coco_paths, ensure_dataset, voc_dirname

__all__ = [
    "DIGIT_DATASETS",
    "SYNTHETIC_DATASETS",
    "check_dataset_registered",
    "default_root",
    "ensure_synthetic_dataset",
    "register_digit_datasets",
    "register_synthetic_datasets",
]

# name -> (format, generator split)
SYNTHETIC_DATASETS: Dict[str, Tuple[str, str]] = {
    "rb_shapes_coco_train": ("coco", "train"),
    "rb_shapes_coco_val": ("coco", "val"),
    "rb_shapes_voc_train": ("voc", "train"),
    "rb_shapes_voc_test": ("voc", "val"),
}
VOC_YEAR = 2007  # PascalVOCDetectionEvaluator accepts 2007 or 2012; 2007 selects the 11-point AP

# name -> (format, key of digits.detection_paths, VOC split)
DIGIT_DATASETS: Dict[str, Tuple[str, str, Optional[str]]] = {
    "rb_digits_coco_train": ("coco", "coco_train", None),
    "rb_digits_coco_val": ("coco", "coco_val", None),
    "rb_digits_coco_tune_train": ("coco", "coco_tune_train", None),
    "rb_digits_coco_tune_val": ("coco", "coco_tune_val", None),
    "rb_digits_voc_train": ("voc", "voc", "train"),
    "rb_digits_voc_test": ("voc", "voc", "test"),
}

# Metadata key marking our datasets; its value is the root the loaders generate into.
_ROOT_KEY = "synthetic_root"

_DATASETS_README = "https://github.com/facebookresearch/detectron2/blob/main/datasets/README.md"


def default_root() -> str:
    """``$RB_DATASETS/rb_shapes`` if RB_DATASETS is set, else ``<repo>/datasets/rb_shapes``.

    ``<repo>`` is the source checkout holding this package (found by its setup.py); for an
    installed copy it is the current directory, like detectron2's own default ``./datasets``.
    """
    env = os.environ.get("RB_DATASETS")
    if env:
        return os.path.join(os.path.abspath(os.path.expanduser(env)), "rb_shapes")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(repo, "setup.py")):
        repo = os.getcwd()
    return os.path.join(repo, "datasets", "rb_shapes")


def ensure_synthetic_dataset(root: Optional[str] = None) -> str:
    """Generate the dataset at ``root`` now unless a complete one is there; returns the root.

    Loaders do this on first use; call it before building an evaluator in a process that has not
    loaded the dataset yet (COCOEvaluator reads the json file when it is constructed).
    """
    root = os.path.abspath(root) if root is not None else default_root()
    ensure_dataset(root)
    return root


def _load_after_generating(root: str, load, ensure=ensure_dataset):
    ensure(root)
    return load()


def _make_lazy(name: str, root: str, ensure=ensure_dataset) -> None:
    """Replace the loader detectron2 registered for ``name`` by one that generates data first."""
    load = DatasetCatalog[name]
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(_load_after_generating, root, load, ensure))


def _unregister_if_moved(name: str, root: str) -> bool:
    """False when ``name`` is registered from ``root`` already; else removes it (if there) and returns True."""
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get(_ROOT_KEY) == root:
            return False
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    return True


def digits_root() -> str:
    """Where the demo's digit detection set lives: beside :func:`default_root`."""
    return os.path.join(os.path.dirname(default_root()), "rb_digits")


def register_digit_datasets(root: Optional[str] = None) -> List[str]:
    """Register the rb_digits_* names (see the module docstring) from ``root``; returns them. Idempotent."""
    root = os.path.abspath(root) if root is not None else digits_root()
    paths = digits.detection_paths(root)
    for name, (fmt, key, voc_split) in DIGIT_DATASETS.items():
        if not _unregister_if_moved(name, root):
            continue
        if fmt == "coco":
            json_file, image_root = paths[key]
            metadata = {"thing_classes": list(digits.CLASS_NAMES),
                        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(digits.CLASS_NAMES))},
                        _ROOT_KEY: root}
            register_coco_instances(name, metadata, str(json_file), str(image_root))
        else:
            register_pascal_voc(name, str(paths[key]), voc_split, VOC_YEAR, class_names=list(digits.CLASS_NAMES))
            MetadataCatalog.get(name).set(evaluator_type="pascal_voc", **{_ROOT_KEY: root})
        _make_lazy(name, root, digits.ensure_digit_detection)
    return list(DIGIT_DATASETS)


def register_synthetic_datasets(root: Optional[str] = None) -> List[str]:
    """Register the four rb_shapes datasets from ``root`` and the rb_digits ones from beside it (see the module
    docstring); returns the rb_shapes names (:func:`register_digit_datasets` returns the others).

    Idempotent: names already registered with the same root are left alone; registered with
    another root, they are re-registered to point at ``root``.
    """
    register_digit_datasets(None if root is None else os.path.join(os.path.dirname(
        os.path.abspath(root)), "rb_digits"))
    root = os.path.abspath(root) if root is not None else default_root()
    for name, (fmt, split) in SYNTHETIC_DATASETS.items():
        if not _unregister_if_moved(name, root):
            continue

        if fmt == "coco":
            json_file, image_root = coco_paths(root, split)
            metadata = {
                "thing_classes": list(CLASS_NAMES),
                # Set now (load_coco_json sets the same on load) so that COCOEvaluator maps
                # contiguous ids back to the json's ids 1..K even if the data was not loaded here.
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASS_NAMES))},
                _ROOT_KEY: root,
            }
            register_coco_instances(name, metadata, json_file, image_root)
        else:
            register_pascal_voc(name, voc_dirname(root), VOC_SPLITS[split], VOC_YEAR, class_names=list(CLASS_NAMES))
            MetadataCatalog.get(name).set(evaluator_type="pascal_voc", **{_ROOT_KEY: root})
        _make_lazy(name, root)
    return list(SYNTHETIC_DATASETS)


# Metadata keys that hold paths a registered dataset reads: key -> (what it is, is a directory).
_PATH_KEYS = {
    "json_file": ("annotation file", False),
    "image_root": ("image directory", True),
    "dirname": ("VOC directory", True),
    "gt_dir": ("ground-truth directory", True),
    "sem_seg_root": ("semantic segmentation directory", True),
    "panoptic_root": ("panoptic directory", True),
    "panoptic_json": ("panoptic annotation file", False),
}


def _required_paths(meta) -> List[Tuple[str, str, bool]]:
    """(description, path, is_dir) of everything the dataset with metadata ``meta`` reads."""
    paths = []
    for key, (what, is_dir) in _PATH_KEYS.items():
        value = meta.get(key)
        if isinstance(value, (str, os.PathLike)):
            paths.append((what, os.fspath(value), is_dir))
    dirname, split = meta.get("dirname"), meta.get("split")
    if isinstance(dirname, (str, os.PathLike)) and isinstance(split, str):  # Pascal VOC layout
        paths.append(("VOC annotation directory", os.path.join(dirname, "Annotations"), True))
        paths.append(("VOC image-set file", os.path.join(dirname, "ImageSets", "Main", split + ".txt"), False))
    return paths


def check_dataset_registered(name: str) -> None:
    """Raise a clear error unless dataset ``name`` is registered and its files are on disk.

    - unknown name: ValueError listing the registered names;
    - registered dataset (detectron2's built-in coco_* / voc_* ones included) whose annotation
      file or directory is missing: FileNotFoundError naming the path and how to fix it.
    The rb_shapes datasets pass as long as they are registered: their loaders generate the data.
    """
    known = DatasetCatalog.list()
    if not isinstance(name, str) or name not in known:
        raise ValueError(
            "Dataset {!r} is not registered. Registered datasets: {}. The embedded ones ({}) are "
            "registered by resnet_backbone.data.register.register_synthetic_datasets().".format(
                name, ", ".join(sorted(known)), ", ".join(SYNTHETIC_DATASETS)
            )
        )
    meta = MetadataCatalog.get(name)
    if meta.get(_ROOT_KEY) is not None:
        return
    for what, path, is_dir in _required_paths(meta):
        exists = os.path.isdir(path) if is_dir else os.path.isfile(path)
        if not exists:
            raise FileNotFoundError(
                "Dataset {!r} is registered, but its {} {} does not exist. For detectron2's built-in "
                "datasets, set DETECTRON2_DATASETS to the folder containing coco/ or VOC2007/ (it is read "
                "when detectron2.data is first imported; default ./datasets), see detectron2's "
                "datasets/README.md ({}). For the embedded dataset use the rb_shapes_* names "
                "instead.".format(name, what, os.path.abspath(path), _DATASETS_README)
            )
