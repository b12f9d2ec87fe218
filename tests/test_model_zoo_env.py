"""The environment the setup step builds imports all of detectron2, `detectron2.model_zoo` included (it needs
pkg_resources: setuptools<81, pinned by tools/setup_env.py), and a model-zoo config loads from the installed
package, as detectron2's tutorials and tests start. Marked v06: CI runs it on detectron2 main and on v0.6."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.v06

CONFIG = "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"


def test_model_zoo_imports_and_loads_a_packaged_config():
    import detectron2
    from detectron2 import model_zoo

    # the configs ship inside the installed package (detectron2/model_zoo/configs), not only in a source checkout
    path = Path(model_zoo.get_config_file(CONFIG))
    assert path.is_file()
    assert Path(detectron2.__file__).parent / "model_zoo" / "configs" in path.parents
    cfg = model_zoo.get_config(CONFIG)
    # what the file and its _BASE_ (Base-RCNN-C4.yaml) say: a ResNet-50 C4 Faster R-CNN
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert not cfg.MODEL.MASK_ON
