"""engine/run_config.py: one way from a config (YAML or LazyConfig) to a model, with the same checks for both kinds."""
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import randomize_norms
from detectron2.config import LazyConfig
from detectron2.layers import FrozenBatchNorm2d
from omegaconf import OmegaConf

from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.checkpoint.preprocessing import write_preprocessing
from resnet_backbone.checkpoint.safe_load import UnsafeCheckpointError
from resnet_backbone.data.transforms import IMAGENET_TORCHVISION
from resnet_backbone.engine.lazy import LAZY_KEYS, lazy_key, load_lazy_config, yacs_view
from resnet_backbone.engine.run_config import RunConfig

REPO = Path(__file__).resolve().parents[1]
YAML = str(REPO / "configs" / "coco" / "frcnn_r101.yaml")
LAZY = str(REPO / "configs" / "lazy" / "frcnn_r101.py")
# yacs key -> LazyConfig key, for the overrides both kinds get (the twins build the same detector otherwise)
TWIN_KEYS = {"MODEL.DEVICE": "train.device", "MODEL.WEIGHTS": "train.init_checkpoint",
             "DATASETS.TEST": "dataloader.test.dataset.names", "MODEL.RESNETS.DEPTH": "model.backbone.depth",
             "MODEL.ROI_HEADS.NUM_CLASSES": "model.roi_heads.num_classes", "MODEL.RB_DEPLOY.FUSE_BN": None}
# a small detector of each kind: ResNet-18 C4, 4 classes
SMALL = {"MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "", "MODEL.RESNETS.DEPTH": 18, "MODEL.ROI_HEADS.NUM_CLASSES": 4}


def load(kind, **settings):
    """RunConfig of frcnn_r101 (YAML or its LazyConfig twin) with `settings` (yacs keys) as overrides."""
    settings = {k.replace("__", "."): v for k, v in settings.items()}
    if kind == "yaml":
        opts = [str(x) for k, v in settings.items() for x in (k, v)]
        if settings.get("MODEL.RESNETS.DEPTH") == 18:
            opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
        return RunConfig.load(YAML, opts)
    opts = [f"{TWIN_KEYS[k]}={v}" for k, v in settings.items() if TWIN_KEYS[k]]
    return RunConfig.load(LAZY, [o.replace("(", "[").replace(",)", "]").replace(")", "]") for o in opts])


def errors(check, **settings):
    """The ValueError `check(run)` raises for the YAML config and for its LazyConfig twin."""
    found = []
    for kind in ("yaml", "lazy"):
        with pytest.raises(ValueError) as info:
            check(load(kind, **settings))
        found.append(str(info.value))
    return found


def same_error(check, lazy_key_named, **settings):
    yaml_msg, lazy_msg = errors(check, **settings)
    assert lazy_msg.startswith(yaml_msg), (yaml_msg, lazy_msg)  # one message, the LazyConfig's keys added
    assert lazy_key_named in lazy_msg[len(yaml_msg):]
    return yaml_msg


def test_a_bad_device_is_the_same_error():
    msg = same_error(lambda run: run.check(), "train.device", MODEL__DEVICE="gpu0")
    assert "MODEL.DEVICE 'gpu0' is not a device name" in msg


def test_a_missing_dataset_is_the_same_error():
    msg = same_error(lambda run: run.check(datasets=("TEST",)), "dataloader.test.dataset.names", MODEL__DEVICE="cpu",
                     DATASETS__TEST="('coco_2077_val',)")
    assert msg.startswith("DATASETS.TEST: Dataset 'coco_2077_val' is not registered") and "rb_shapes_coco_val" in msg


def test_weights_with_other_preprocessing_are_the_same_error(tmp_path):
    weights = tmp_path / "torchvision_style.pth"
    torch.save({"model": {}}, weights)
    write_preprocessing(weights, IMAGENET_TORCHVISION, source="torchvision")
    msg = same_error(lambda run: run.check(), "model.input_format", MODEL__DEVICE="cpu", MODEL__WEIGHTS=weights)
    assert str(weights) in msg and "INPUT.FORMAT is 'BGR' but the weights need 'RGB'" in msg


def test_empty_weights_are_refused_where_a_tool_needs_them():
    msg = same_error(lambda run: run.check(weights_needed="this tool predicts"), "train.init_checkpoint",
                     MODEL__DEVICE="cpu", MODEL__WEIGHTS="")
    assert msg == "MODEL.WEIGHTS is empty: this tool predicts"
    for kind in ("yaml", "lazy"):
        load(kind, MODEL__DEVICE="cpu", MODEL__WEIGHTS="").check()  # training from scratch: allowed


def _detector_file(tmp_path, keep=lambda key: True):
    """A checkpoint of the small detector, every weight and BN statistic set (as trained ones would be)."""
    model = randomize_norms(load("yaml", **SMALL).build_model())
    state = {k: v for k, v in model.state_dict().items() if keep(k)}
    path = tmp_path / "detector.pth"
    torch.save({"model": state}, path)
    return str(path), state


@pytest.mark.parametrize("kind", ["yaml", "lazy"])
def test_model_gets_the_weights_through_the_safe_loader(kind, tmp_path, one_thread):
    path, state = _detector_file(tmp_path)
    model = load(kind, **dict(SMALL, MODEL__WEIGHTS=path)).inference_model()
    assert not model.training
    loaded = model.state_dict()
    assert set(state) <= set(loaded)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key

    class Payload:  # a pickle that runs code when loaded
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'MARKER'}",)

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": {}, "x": Payload()}))
    with pytest.raises(UnsafeCheckpointError):
        load(kind, **dict(SMALL, MODEL__WEIGHTS=evil)).inference_model()
    assert not (tmp_path / "MARKER").exists()


def test_weights_leaving_part_of_the_detector_random_are_refused_when_complete(tmp_path, one_thread):
    path, _ = _detector_file(tmp_path, keep=lambda key: key.startswith(("backbone.", "roi_heads.res5.")))
    for kind in ("yaml", "lazy"):
        load(kind, **dict(SMALL, MODEL__WEIGHTS=path)).inference_model()  # evaluation may, prediction may not
    msg = same_error(lambda run: run.inference_model(complete=True), "train.init_checkpoint",
                     **dict(SMALL, MODEL__WEIGHTS=path))
    assert "predictions would be random" in msg and "proposal_generator" in msg


def test_deploy_options_are_applied(tmp_path, one_thread):
    path, _ = _detector_file(tmp_path)

    def frozen_norms(model):
        return sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())

    assert frozen_norms(load("yaml", **dict(SMALL, MODEL__WEIGHTS=path)).inference_model()) > 0
    folded = load("yaml", **dict(SMALL, MODEL__WEIGHTS=path, MODEL__RB_DEPLOY__FUSE_BN=True)).inference_model()
    assert frozen_norms(folded) == 0  # every FrozenBN folded into its convolution
    # a LazyConfig has no deploy keys: its model comes as built and loaded
    lazy = load("lazy", **dict(SMALL, MODEL__WEIGHTS=path))
    assert not lazy.view.MODEL.RB_DEPLOY.FUSE_BN and frozen_norms(lazy.inference_model()) > 0


@pytest.mark.parametrize("name", ["frcnn_r101", "frcnn_vgg16", "mask_rcnn_r101_fpn", "retinanet_r101_fpn"])
def test_yacs_view_reads_each_key_where_the_table_says(name):
    cfg = load_lazy_config(str(REPO / "configs" / "lazy" / f"{name}.py"), ["train.device=cpu"])
    view = yacs_view(cfg)
    for key in LAZY_KEYS:
        if key.startswith(("MODEL.RESNETS.", "MODEL.RB_RESNET.")) and "vgg" in name or key == "MODEL.BACKBONE.NAME":
            continue  # VGG-16 has no ResNet keys; the name is the registered builder's, not the class
        have = view
        for part in key.split("."):
            have = have[part]
        want = OmegaConf.select(cfg, lazy_key(cfg, key))
        if isinstance(have, (list, tuple)):
            have, want = [str(v) for v in have], [str(v) for v in (OmegaConf.to_object(want) if not
                                                                   isinstance(want, str) else [want])]
        assert have == want, key


def test_the_config_a_lazy_run_saved_loads_as_a_lazy_config(tmp_path):
    run = load("lazy", MODEL__DEVICE="cpu")
    LazyConfig.save(run.cfg, str(tmp_path / "config.yaml"))
    again = RunConfig.load(str(tmp_path / "config.yaml"))
    assert again.is_lazy and again.view.MODEL.DEVICE == "cpu" and again.view.MODEL.WEIGHTS == run.view.MODEL.WEIGHTS
    assert not RunConfig.load(YAML, ["MODEL.DEVICE", "cpu"]).is_lazy


def test_a_lazy_config_without_the_plugins_train_keys_is_named(tmp_path):
    config = tmp_path / "no_allow_partial.py"
    config.write_text(f"from detectron2.config import LazyConfig\n_cfg = LazyConfig.load({LAZY!r})\n"
                      "model, train, dataloader = _cfg.model, _cfg.train, _cfg.dataloader\n"
                      "del train.allow_partial\n")
    with pytest.raises(ValueError, match="lacks train.allow_partial.*configs/lazy/common/train.py"):
        load_lazy_config(str(config))
