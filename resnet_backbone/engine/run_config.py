"""One way from a config to a model, for both config kinds the tools take: a yacs YAML with KEY VALUE overrides
(configs/coco, configs/voc) or a LazyConfig with key=value overrides (configs/lazy).

    run = RunConfig.load(config_file, opts)  # a LazyConfig (engine/lazy.py) or a YAML config (config_io.py)
    run.check(datasets=("TRAIN", "TEST"))    # device, weights' preprocessing, datasets
    model = run.inference_model()            # build, load MODEL.WEIGHTS safely, apply MODEL.RB_DEPLOY.*

or the steps one by one (`build_model`, `load_weights`, `deploy`). The checks read the yacs keys (`view`: the config
itself, or engine.lazy.yacs_view of a LazyConfig), so each is written once, here, for both kinds; a LazyConfig run's
message also says where the keys it names live there (engine.lazy.LAZY_KEYS). tools/train_net.py,
lazy_train_net.py, export_model.py and predict.py all go through this.
"""
import os
from contextlib import contextmanager
from typing import Sequence

import yaml
from detectron2.config import CfgNode, instantiate
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.modeling import build_model

from ..checkpoint.checkpointer import SafeDetectionCheckpointer
from ..checkpoint.preprocessing import check_preprocessing
from ..data.checked_mapper import CheckedDatasetMapper
from ..data.register import check_dataset_registered, register_synthetic_datasets
from ..deploy import apply_deploy_config
from .config_io import check_device, load_config
from .lazy import lazy_keys_named, load_lazy_config, yacs_view

__all__ = ["RunConfig"]

# BatchNorm statistics are not learned weights: a checkpoint without them (MSRA pkls) still predicts as trained
_NOT_WEIGHTS = ("running_mean", "running_var", "num_batches_tracked")
_SPLITS = ("TRAIN", "TEST")


def _is_lazy_config(path: str) -> bool:
    if os.path.splitext(path)[1] == ".py":
        return True
    try:
        with open(path) as f:
            top = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False  # load_config names the problem
    return isinstance(top, dict) and "model" in top and "train" in top  # yacs keys are upper case


class RunConfig:
    """A loaded config (`cfg`: a yacs CfgNode or a LazyConfig) and the steps every tool takes from it to a model."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.is_lazy = not isinstance(cfg, CfgNode)

    @classmethod
    def load(cls, config_file: str, opts: Sequence[str] = (), *, lazy=None) -> "RunConfig":
        """The config with its overrides; `lazy` None: a LazyConfig when the file is one (a .py, or the config.yaml
        a LazyConfig run saved)."""
        if lazy is None:
            lazy = _is_lazy_config(config_file)
        return cls(load_lazy_config(config_file, opts) if lazy else load_config(config_file, opts))

    @property
    def view(self) -> CfgNode:
        """The yacs keys the checks read: the config itself, or what a LazyConfig says about them (fresh each time:
        it follows changes to the LazyConfig)."""
        return yacs_view(self.cfg) if self.is_lazy else self.cfg

    @contextmanager
    def _in_its_keys(self):
        """The checks name yacs keys; for a LazyConfig the message also says where those live in it."""
        try:
            yield
        except ValueError as e:
            where = lazy_keys_named(self.cfg, str(e)) if self.is_lazy else ""
            if not where:
                raise
            raise ValueError(f"{e} (in this LazyConfig: {where})") from None

    def check(self, *, datasets: Sequence[str] = (), weights_needed: str = "") -> "RunConfig":
        """Before anything is built: MODEL.DEVICE exists here; MODEL.WEIGHTS fits the config's preprocessing (unless
        MODEL.RB_WEIGHTS.CHECK_PREPROCESSING is False); every dataset of `datasets` ("TRAIN", "TEST": DATASETS.*)
        is registered with its files on disk. `weights_needed`: why the tool needs weights; an empty MODEL.WEIGHTS
        is then an error saying so. Registers the embedded datasets (their names and class names). Each failure is
        a ValueError (FileNotFoundError for a dataset's missing files) naming the key and the value."""
        view = self.view
        with self._in_its_keys():
            check_device(view.MODEL.DEVICE)
            if weights_needed and not view.MODEL.WEIGHTS:
                raise ValueError(f"MODEL.WEIGHTS is empty: {weights_needed}")
            if view.MODEL.RB_WEIGHTS.CHECK_PREPROCESSING:
                check_preprocessing(view, view.MODEL.WEIGHTS)  # its .provenance.json, or the public source it names
            register_synthetic_datasets()
            for split in datasets:
                if split not in _SPLITS:
                    raise ValueError(f"datasets to check are among {_SPLITS}, got {split!r}")
                for name in view.DATASETS[split]:
                    try:
                        check_dataset_registered(name)
                    except ValueError as e:
                        raise ValueError(f"DATASETS.{split}: {e}") from None
        return self

    def build_model(self):
        """The detector on MODEL.DEVICE, weights as initialised: detectron2's build_model, or instantiate(model)."""
        if self.is_lazy:
            return instantiate(self.cfg.model).to(self.cfg.train.device)
        return build_model(self.cfg)

    def load_weights(self, model, *, resume: bool = False, complete: bool = False) -> SafeDetectionCheckpointer:
        """MODEL.WEIGHTS into `model` through the safe checkpointer (no code in the file runs; a load leaving most of
        the backbone random is refused unless MODEL.RB_WEIGHTS.ALLOW_PARTIAL). `resume`: the last checkpoint of
        OUTPUT_DIR instead, where there is one. `complete`: refuse weights that leave any learned weight of the
        detector untouched (an ImageNet backbone alone would predict noise). Returns the checkpointer (its
        last_load_report says what was loaded)."""
        view = self.view
        checkpointer = SafeDetectionCheckpointer(model, view.OUTPUT_DIR,
                                                 allow_partial=view.MODEL.RB_WEIGHTS.ALLOW_PARTIAL)
        checkpointer.resume_or_load(view.MODEL.WEIGHTS, resume=resume)
        report = checkpointer.last_load_report
        if complete and report is not None:
            untrained = ([k for k, _ in report.missing if not k.endswith(_NOT_WEIGHTS)] +
                         [k for k, _, _ in report.mismatched])
            if untrained:
                with self._in_its_keys():
                    raise ValueError(
                        f"MODEL.WEIGHTS {view.MODEL.WEIGHTS!r} leaves {len(untrained)} weights of the detector "
                        f"uninitialised (e.g. {', '.join(untrained[:3])}): its predictions would be random. Use a "
                        "trained detector, e.g. the OUTPUT_DIR/model_final.pth of tools/train_net.py, with the "
                        "config it was trained with")
        return checkpointer

    def deploy(self, model):
        """MODEL.RB_DEPLOY.* (BN folding, oneDNN, channels-last, compile, precision) on a model whose weights are
        loaded; use the returned module. A LazyConfig has no deploy keys: its model comes back as it is."""
        return apply_deploy_config(self.view, model)

    def inference_model(self, *, resume: bool = False, complete: bool = False):
        """build_model, load_weights, eval mode, deploy: the model evaluation, export and prediction run."""
        model = self.build_model()
        self.load_weights(model, resume=resume, complete=complete)
        return self.deploy(model.eval())

    def test_mapper(self):
        """The test-time DatasetMapper (dataset dict or {"file_name": ...} -> the model's input, resized as in
        evaluation)."""
        if self.is_lazy:
            return instantiate(self.cfg.dataloader.test.mapper)
        return CheckedDatasetMapper(self.cfg, is_train=False)

    def test_loader(self, dataset_name: str, mapper=None, num_workers: int = 0):
        """A test loader over one dataset through `mapper` (default: test_mapper())."""
        mapper = mapper or self.test_mapper()
        dataset = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        return build_detection_test_loader(dataset=dataset, mapper=mapper, num_workers=num_workers)
