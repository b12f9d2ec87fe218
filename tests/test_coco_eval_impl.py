"""detectron2's C++ COCO evaluator (used where detectron2 has it compiled) and pycocotools' COCOeval (the v0.6
fallback) give the same AP on the same predictions; the plugin picks the one this detectron2 has."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from resnet_backbone.data.synthetic_detection import coco_paths, generate_dataset
from resnet_backbone.engine.trainer import build_detection_evaluator, has_fast_coco_eval

NAME = "rb_test_eval_impl"
pytestmark = pytest.mark.v06


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rb_eval_impl"))
    generate_dataset(root, num_train=2, num_val=6, seed=3)
    json_file, image_root = coco_paths(root, "val")
    register_coco_instances(NAME, {}, json_file, image_root)
    yield DatasetCatalog.get(NAME)
    DatasetCatalog.remove(NAME)
    MetadataCatalog.remove(NAME)


def _score(evaluator, dicts):
    """Ground truth jittered, with false positives and wrong classes, so that AP is far from 0 and 100."""
    rng = np.random.default_rng(0)
    evaluator.reset()
    for d in dicts:
        boxes, classes = [], []
        for a in d["annotations"]:
            box = np.array(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float64)
            boxes += [box + rng.normal(0, 3, 4), box + rng.normal(0, 12, 4)]
            classes += [a["category_id"], int(rng.integers(0, 4))]
        pred = Instances((d["height"], d["width"]))
        pred.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        pred.scores = torch.tensor(rng.uniform(0.05, 1.0, len(boxes)), dtype=torch.float32)
        pred.pred_classes = torch.tensor(classes)
        evaluator.process([{k: d[k] for k in ("image_id", "file_name", "height", "width")}], [{"instances": pred}])
    return evaluator.evaluate()["bbox"]


def test_fast_and_pycocotools_evaluators_agree(dataset, tmp_path):
    if not has_fast_coco_eval():
        pytest.skip("this detectron2 has no compiled C++ COCO evaluator (detectron2._C without COCOeval ops)")
    slow = _score(COCOEvaluator(NAME, output_dir=str(tmp_path / "slow"), use_fast_impl=False), dataset)
    fast = _score(COCOEvaluator(NAME, output_dir=str(tmp_path / "fast"), use_fast_impl=True), dataset)
    assert 5 < slow["AP"] < 95, slow
    assert set(fast) == set(slow)
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-6, nan_ok=True), key


def test_plugin_uses_the_fast_evaluator_where_compiled(dataset, tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    MetadataCatalog.get(NAME).evaluator_type = "coco"
    evaluator = build_detection_evaluator(cfg, NAME)
    assert evaluator._use_fast_impl == has_fast_coco_eval()
