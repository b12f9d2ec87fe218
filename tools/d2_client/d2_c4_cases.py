"""detectron2's end-to-end model test (tests/modeling/test_model_e2e.py, its InstanceModelE2ETest and
MaskRCNNE2ETest's half-empty case) on detectron2's Mask R-CNN C4 model-zoo config.

detectron2's CPU tests build no C4 model from a config (its C4 cases are export tests that download trained weights
and skip on CPU CI), so without this the C4 head (Res5ROIHeads -> the plugin's RBRes5ROIHeads) would go untested.
The test code is detectron2's, imported from the extracted source; only the config differs. It runs in both runs
of tools/d2_client_tests.py, like detectron2's own files.
"""
import unittest

from tests.modeling import test_model_e2e as d2_e2e


class MaskRCNNC4E2ETest(d2_e2e.InstanceModelE2ETest, unittest.TestCase):
    CONFIG_PATH = "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"
    test_half_empty_data = d2_e2e.MaskRCNNE2ETest.test_half_empty_data
