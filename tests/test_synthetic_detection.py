"""The embedded rb_shapes detection dataset: generator, COCO/VOC writers, detectron2 registration."""
import importlib.util
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_voc_instances, register_coco_instances, register_pascal_voc
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

from resnet_backbone.data.register import (
    SYNTHETIC_DATASETS,
    check_dataset_registered,
    register_synthetic_datasets,
)
from resnet_backbone.data.synthetic_detection import (
    CLASS_NAMES,
    VOC_SPLITS,
    coco_paths,
    generate_dataset,
    generate_sample,
    polygon_to_mask,
    read_manifest,
    voc_dirname,
)

TINY = dict(num_train=3, num_val=2, seed=0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rb_shapes"))
    generate_dataset(root, **TINY)
    return root


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if name != ".lock":
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = f.read()
    return out


def _xywh_to_xyxy(box):
    return [float(v) for v in BoxMode.convert(box, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)]


def _chroma(image):
    image = image.astype(np.int32)
    return image.max(axis=2) - image.min(axis=2)


def test_same_seed_gives_identical_files(tiny_root, tmp_path):
    again = str(tmp_path / "again")
    generate_dataset(again, **TINY)
    first, second = _files(tiny_root), _files(again)
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first)
    # 3 + 2 images in each format, two json files, 5 xml, 2 split files, the manifest
    assert len(first) == 2 * 5 + 2 + 5 + 2 + 1

    other = generate_sample("train", 0, seed=1).image
    assert not np.array_equal(other, generate_sample("train", 0, seed=0).image)


def test_coco_json_loads_with_pycocotools(tiny_root):
    for split, num in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
        json_file, image_root = coco_paths(tiny_root, split)
        coco = COCO(json_file)
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == [(i + 1, n) for i, n in enumerate(CLASS_NAMES)]
        assert len(coco.getImgIds()) == num
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(os.path.join(image_root, img["file_name"])) as im:
                assert im.size == (img["width"], img["height"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert 1 <= len(anns) <= 4
            assert all(a["iscrowd"] == 0 for a in anns)


def test_boxes_inside_image_and_match_masks(tiny_root):
    for split in ("train", "val"):
        coco = COCO(coco_paths(tiny_root, split)[0])
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs([ann["image_id"]])[0]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert min(w, h) >= 24  # objects are large enough for a small detector
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            mask_box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.allclose(mask_box, [x, y, x + w, y + h], atol=1)
            assert ann["area"] == int(mask.sum())


def test_drawn_pixels_are_the_masks():
    # On the raw (not JPEG-compressed) pixels: objects are saturated, backgrounds muted, so the
    # saturated pixels are exactly the union of the polygon masks, and masks never overlap.
    for index in range(4):
        sample = generate_sample("train", index)
        height, width = sample.image.shape[:2]
        union = np.zeros((height, width), dtype=np.int32)
        for inst in sample.instances:
            union += polygon_to_mask(inst.polygon, height, width)
        assert union.max() == 1
        chroma = _chroma(sample.image)
        assert chroma[union == 1].min() > 75
        assert chroma[union == 0].max() < 75


def test_voc_matches_coco_through_detectron2(tiny_root):
    for split in ("train", "val"):
        coco = COCO(coco_paths(tiny_root, split)[0])
        by_stem = {os.path.splitext(img["file_name"])[0]: img for img in coco.loadImgs(coco.getImgIds())}
        dicts = load_voc_instances(voc_dirname(tiny_root), VOC_SPLITS[split], list(CLASS_NAMES))
        assert [d["image_id"] for d in dicts] == sorted(by_stem)
        for d in dicts:
            img = by_stem[d["image_id"]]
            assert (d["height"], d["width"]) == (img["height"], img["width"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            expected = [(a["category_id"] - 1, _xywh_to_xyxy(a["bbox"])) for a in anns]
            got = [(a["category_id"], a["bbox"]) for a in d["annotations"]]
            assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])
            assert got == expected


def test_generate_is_idempotent_and_replaces_stale_data(tmp_path):
    root = str(tmp_path)
    generate_dataset(root, num_train=4, num_val=2)
    manifest = os.path.join(root, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    generate_dataset(root, num_train=4, num_val=2)
    assert os.stat(manifest).st_mtime_ns == stamp

    generate_dataset(root, num_train=2, num_val=2, formats=("coco",))
    assert read_manifest(root)["formats"] == ["coco"]
    assert sorted(os.listdir(coco_paths(root, "train")[1])) == ["train_000000.jpg", "train_000001.jpg"]
    assert not os.path.exists(voc_dirname(root))  # the stale VOC copy was removed


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(image_size=(32, 224)), "image_size"),
        (dict(image_size=(160,)), "image_size"),
        (dict(formats=("yolo",)), "formats"),
        (dict(num_val=1), "num_val"),  # a one-line VOC split file cannot be read by load_voc_instances
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        generate_dataset(str(tmp_path), **{"num_train": 2, "num_val": 2, **kwargs})
    assert not os.path.exists(tmp_path / "manifest.json")


@pytest.fixture
def restore_catalogs():
    """Put DatasetCatalog / MetadataCatalog entries touched by a test back as they were."""
    names = list(SYNTHETIC_DATASETS) + ["rb_test_missing_coco", "rb_test_missing_voc"]
    saved = {n: (DatasetCatalog.data.get(n), MetadataCatalog.data.get(n)) for n in names}
    yield
    for name, (loader, meta) in saved.items():
        DatasetCatalog.data.pop(name, None)
        MetadataCatalog.data.pop(name, None)
        if loader is not None:
            DatasetCatalog.data[name] = loader
        if meta is not None:
            MetadataCatalog.data[name] = meta


def test_registration_gives_four_datasets(tiny_root, restore_catalogs):
    names = register_synthetic_datasets(tiny_root)
    assert names == ["rb_shapes_coco_train", "rb_shapes_coco_val", "rb_shapes_voc_train", "rb_shapes_voc_test"]
    assert register_synthetic_datasets(tiny_root) == names  # registering twice is harmless
    for name in names:
        assert name in DatasetCatalog.list()
        check_dataset_registered(name)
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASS_NAMES)
        dicts = DatasetCatalog.get(name)
        expected = TINY["num_train"] if name.endswith("train") else TINY["num_val"]
        assert len(dicts) == expected
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and 1 <= len(d["annotations"]) <= 4
    assert MetadataCatalog.get("rb_shapes_coco_val").evaluator_type == "coco"
    voc = MetadataCatalog.get("rb_shapes_voc_test")
    expected = ("pascal_voc", voc_dirname(tiny_root), "test", 2007)
    assert (voc.evaluator_type, voc.dirname, voc.split, voc.year) == expected


def test_registration_is_lazy_and_generates_on_first_use(tmp_path, restore_catalogs):
    root = str(tmp_path / "lazy")
    register_synthetic_datasets(root)
    assert not os.path.exists(root)  # registering wrote nothing
    check_dataset_registered("rb_shapes_voc_train")  # passes: the loader will generate the data
    dicts = DatasetCatalog.get("rb_shapes_voc_train")
    manifest = read_manifest(root)
    assert manifest["complete"] and manifest["formats"] == ["coco", "voc"]
    assert len(dicts) == manifest["params"]["num_train"]


def test_unknown_dataset_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        check_dataset_registered("coco_2017_trian")
    message = str(info.value)
    assert "'coco_2017_trian' is not registered" in message
    assert "coco_2017_train" in message and "voc_2007_trainval" in message and "rb_shapes_coco_train" in message


def test_missing_files_are_reported_with_the_fix(tmp_path, restore_catalogs):
    missing = str(tmp_path / "nowhere")
    register_coco_instances("rb_test_missing_coco", {}, os.path.join(missing, "a.json"), missing)
    register_pascal_voc("rb_test_missing_voc", os.path.join(missing, "VOC2007"), "test", 2007)
    cases = {
        "rb_test_missing_coco": os.path.join(missing, "a.json"),
        "rb_test_missing_voc": os.path.join(missing, "VOC2007"),
    }
    for name, path in cases.items():
        with pytest.raises(FileNotFoundError) as info:
            check_dataset_registered(name)
        message = str(info.value)
        assert path in message and "DETECTRON2_DATASETS" in message and "datasets/README" in message

    # detectron2's built-in names are checked the same way (whether or not this machine has them).
    coco, voc = MetadataCatalog.get("coco_2017_val"), MetadataCatalog.get("voc_2007_test")
    on_disk = {
        "coco_2017_val": os.path.isfile(coco.json_file) and os.path.isdir(coco.image_root),
        "voc_2007_test": os.path.isdir(os.path.join(voc.dirname, "Annotations"))
        and os.path.isfile(os.path.join(voc.dirname, "ImageSets", "Main", "test.txt")),
    }
    for name, present in on_disk.items():
        if present:
            check_dataset_registered(name)
        else:
            with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
                check_dataset_registered(name)


def test_cli_writes_the_dataset(tmp_path, capsys):
    path = os.path.join(REPO, "tools", "make_synthetic_data.py")
    spec = importlib.util.spec_from_file_location("make_synthetic_data", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = str(tmp_path / "cli")
    assert tool.main(["--root", root, "--num-train", "2", "--num-val", "2", "--image-size", "96", "128"]) == 0
    manifest = read_manifest(root)
    assert manifest["complete"] and manifest["params"]["image_size"] == [96, 128]
    assert os.path.isfile(coco_paths(root, "val")[0]) and root in capsys.readouterr().out


def test_evaluators_score_ground_truth_as_perfect(tiny_root, tmp_path, restore_catalogs):
    # The registered metadata is all COCOEvaluator and PascalVOCDetectionEvaluator need:
    # feeding the ground truth back as predictions must give AP 100 with both.
    import torch
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    register_synthetic_datasets(tiny_root)
    evaluators = {
        "rb_shapes_coco_val": COCOEvaluator("rb_shapes_coco_val", output_dir=str(tmp_path), use_fast_impl=False),
        "rb_shapes_voc_test": PascalVOCDetectionEvaluator("rb_shapes_voc_test"),
    }
    for name, evaluator in evaluators.items():
        evaluator.reset()
        for d in DatasetCatalog.get(name):
            anns = d["annotations"]
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            pred = Instances((d["height"], d["width"]))
            pred.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            pred.scores = torch.ones(len(anns))
            pred.pred_classes = torch.tensor([a["category_id"] for a in anns])
            evaluator.process([{k: d[k] for k in ("image_id", "file_name", "height", "width")}], [{"instances": pred}])
        result = evaluator.evaluate()["bbox"]
        expected = 100.0
        if name.startswith("rb_shapes_voc"):
            # The VOC evaluator averages over all classes and scores a class absent from the split as 0.
            present = {a["category_id"] for d in DatasetCatalog.get(name) for a in d["annotations"]}
            expected = 100.0 * len(present) / len(CLASS_NAMES)
        assert result["AP"] == pytest.approx(expected) and result["AP50"] == pytest.approx(expected), (name, result)
