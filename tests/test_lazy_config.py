"""LazyConfigs (configs/lazy/) against their YAML twins (configs/coco/), a training step of each on the embedded data,
the C4 / VGG-16 heads from keyword arguments, and tools/lazy_train_net.py end to end.

The YAML side is what detectron2 builds from the yacs config (build_model, build_optimizer, build_lr_scheduler,
DatasetMapper.from_config): the lazy side must build the same modules with the same hyperparameters, buffers
(pixel mean / std, anchors), parameter shapes, frozen parameters, optimizer groups, schedule and data pipeline.
"""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import registered_shapes
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader
from detectron2.engine import SimpleTrainer, hooks
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.solver import build_lr_scheduler, build_optimizer
from omegaconf import DictConfig, ListConfig
from torch import nn
from torchvision.ops import RoIPool

import resnet_backbone  # noqa: F401  (registers the plugin's builders)
from resnet_backbone.d2.roi_heads import RBRes5ROIHeads, RBVGG16FCHead, build_res5_head_stage, res5_head_stage
from resnet_backbone.data.checked_mapper import CheckedDatasetMapper
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.lazy import load_lazy_config, parse_override, yacs_view
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import lazy_train_net  # noqa: E402  (tools/lazy_train_net.py)

CONFIGS = ["frcnn_r101", "frcnn_vgg16", "mask_rcnn_r101_fpn", "retinanet_r101_fpn"]


def yaml_cfg(name):
    return load_config(str(REPO / "configs" / "coco" / f"{name}.yaml"), ["MODEL.DEVICE", "cpu"])


def lazy_cfg(name, overrides=()):
    return load_lazy_config(str(REPO / "configs" / "lazy" / f"{name}.py"), ["train.device=cpu", *overrides])


# ---------------------------------------------------------------------------------------------- YAML vs lazy

def plain(value):
    """A comparable form of a module attribute: containers as lists / dicts, objects as (type, their attributes)."""
    if isinstance(value, (ListConfig, list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (DictConfig, dict)):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value) and not hasattr(value, "__dict__"):
        return getattr(value, "__name__", repr(value))
    attrs = {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")} if hasattr(value, "__dict__") \
        else repr(value)
    return type(value).__name__, attrs


def hyperparameters(model: nn.Module) -> dict:
    """{module name: (type, its plain attributes)}: every setting a module keeps besides weights and children."""
    out = {}
    for name, m in model.named_modules():
        attrs = {k: plain(v) for k, v in vars(m).items()
                 if not k.startswith("_") and k != "training" and not isinstance(v, (nn.Module, torch.Tensor))}
        out[name] = (type(m).__name__, attrs)
    return out


@pytest.fixture(scope="module", params=CONFIGS)
def twins(request):
    torch.manual_seed(0)
    ycfg = yaml_cfg(request.param)
    lcfg = lazy_cfg(request.param)
    return request.param, ycfg, build_model(ycfg), lcfg, instantiate(lcfg.model)


def bottom_up(model):
    return getattr(model.backbone, "bottom_up", model.backbone)


def test_same_modules_settings_buffers_shapes_and_frozen_parameters(twins):
    _, ycfg, ymodel, lcfg, lmodel = twins
    same_models(ymodel, lmodel)


def same_models(ymodel, lmodel):
    assert hyperparameters(lmodel) == hyperparameters(ymodel)
    assert {k: v.shape for k, v in lmodel.state_dict().items()} == {k: v.shape for k, v in ymodel.state_dict().items()}
    ybuf, lbuf = dict(ymodel.named_buffers()), dict(lmodel.named_buffers())
    assert set(lbuf) == set(ybuf) and all(torch.equal(lbuf[k], ybuf[k]) for k in ybuf)  # pixel mean/std, anchors
    assert {k for k, p in lmodel.named_parameters() if not p.requires_grad} == \
        {k for k, p in ymodel.named_parameters() if not p.requires_grad}


def test_named_settings_agree(twins):
    """The values the paper's setup fixes, spelled out (the generic comparison above covers them too)."""
    name, ycfg, ymodel, lcfg, lmodel = twins
    net = bottom_up(lmodel)
    if "vgg" in name:
        assert ycfg.MODEL.BACKBONE.FREEZE_AT == 2
        assert not net.conv2_2.weight.requires_grad and net.conv3_1.weight.requires_grad
    else:
        assert net.depth == ycfg.MODEL.RESNETS.DEPTH == 101
        assert type(net.res3[0].conv1.norm).__name__ == "FrozenBatchNorm2d" and ycfg.MODEL.RESNETS.NORM == "FrozenBN"
        assert ycfg.MODEL.BACKBONE.FREEZE_AT == 2 and not any(p.requires_grad for p in net.res2.parameters())
        assert net.res2[0].conv1.stride == (1, 1) and net.res3[0].conv1.stride == (2, 2)  # stride in the 1x1
    retinanet = name.startswith("retinanet")
    anchors = lmodel.anchor_generator if retinanet else lmodel.proposal_generator.anchor_generator
    lazy_sizes = (lcfg.model.anchor_generator if retinanet else lcfg.model.proposal_generator.anchor_generator).sizes
    assert [[float(a) for a in s] for s in lazy_sizes] == [[float(a) for a in s] for s in
                                                           ycfg.MODEL.ANCHOR_GENERATOR.SIZES]
    assert anchors.num_anchors == ([9] * 5 if retinanet else [3] * 5 if "fpn" in name else [9])
    if name.startswith("retinanet"):
        assert lmodel.anchor_matcher.thresholds[1:-1] == list(ycfg.MODEL.RETINANET.IOU_THRESHOLDS)
        return
    rpn, roi = lmodel.proposal_generator, lmodel.roi_heads
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (ycfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE,
                                                                 ycfg.MODEL.RPN.POSITIVE_FRACTION)
    assert rpn.pre_nms_topk == {True: ycfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, False: ycfg.MODEL.RPN.PRE_NMS_TOPK_TEST}
    assert rpn.post_nms_topk == {True: ycfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, False: ycfg.MODEL.RPN.POST_NMS_TOPK_TEST}
    assert (roi.batch_size_per_image, roi.positive_fraction) == (ycfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
                                                                 ycfg.MODEL.ROI_HEADS.POSITIVE_FRACTION)
    pooler = roi.pooler if hasattr(roi, "pooler") else roi.box_pooler
    assert pooler.output_size == (ycfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,) * 2
    level = pooler.level_poolers[0]
    if ycfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIPool":  # Fast R-CNN's max pooling, as the paper
        assert isinstance(level, RoIPool) and "frcnn" in name
    else:
        assert isinstance(level, ROIAlign) and level.aligned and ycfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert roi.box_predictor.test_nms_thresh == ycfg.MODEL.ROI_HEADS.NMS_THRESH_TEST


# how torch runs the update, not what it computes (detectron2 main asks SGD for foreach=True, v0.6 does not)
_IMPLEMENTATION = ("params", "foreach", "fused", "differentiable", "capturable")


def _per_parameter(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in group.items() if k not in _IMPLEMENTATION}
            for group in optimizer.param_groups for p in group["params"]}


def test_same_solver(twins):
    _, ycfg, ymodel, lcfg, lmodel = twins
    same_solver(ycfg, ymodel, lcfg, lmodel)
    assert lcfg.train.output_dir == ycfg.OUTPUT_DIR


def same_solver(ycfg, ymodel, lcfg, lmodel):
    yopt = build_optimizer(ycfg, ymodel)
    lcfg.optimizer.params.model = lmodel
    lopt = instantiate(lcfg.optimizer)
    assert type(lopt) is type(yopt) and _per_parameter(lopt, lmodel) == _per_parameter(yopt, ymodel)
    assert lcfg.train.max_iter == ycfg.SOLVER.MAX_ITER
    schedule = build_lr_scheduler(ycfg, yopt)._multiplier  # the ParamScheduler detectron2 builds from SOLVER.*
    multiplier = instantiate(lcfg.lr_multiplier)
    marks = {0, 1, ycfg.SOLVER.WARMUP_ITERS, ycfg.SOLVER.MAX_ITER - 1}
    marks |= {s + d for s in ycfg.SOLVER.STEPS for d in (-1, 0, 1)}
    marks |= {ycfg.SOLVER.WARMUP_ITERS // 2, max(ycfg.SOLVER.WARMUP_ITERS - 1, 0)}
    for it in sorted(marks):
        assert multiplier(it / lcfg.train.max_iter) == pytest.approx(schedule(it / ycfg.SOLVER.MAX_ITER), rel=1e-12), it
    assert lcfg.dataloader.train.total_batch_size == ycfg.SOLVER.IMS_PER_BATCH
    assert not ycfg.SOLVER.CLIP_GRADIENTS.ENABLED and lcfg.train.amp.enabled == ycfg.SOLVER.AMP.ENABLED
    t = lcfg.train
    assert (t.checkpointer.period, t.eval_period, t.log_period) == (ycfg.SOLVER.CHECKPOINT_PERIOD,
                                                                    ycfg.TEST.EVAL_PERIOD, ycfg.RB_TRAIN.LOG_PERIOD)
    assert (t.init_checkpoint, t.seed) == (ycfg.MODEL.WEIGHTS, ycfg.SEED)
    w = ycfg.MODEL.RB_WEIGHTS
    assert (t.allow_partial, t.check_preprocessing) == (w.ALLOW_PARTIAL, w.CHECK_PREPROCESSING)
    assert t.allow_random_frozen == w.get("ALLOW_RANDOM_FROZEN", False)


def test_same_data_pipeline(twins):
    _, ycfg, _, lcfg, _ = twins
    same_data(ycfg, lcfg)


def same_data(ycfg, lcfg):
    loaders = lcfg.dataloader
    for is_train, lazy_mapper in ((True, loaders.train.mapper), (False, loaders.test.mapper)):
        ymapper = CheckedDatasetMapper(ycfg, is_train=is_train, skip_unreadable=ycfg.RB_TRAIN.SKIP_UNREADABLE_IMAGES)
        assert plain(instantiate(lazy_mapper)) == plain(ymapper), is_train
    assert list(loaders.train.dataset.names) == list(ycfg.DATASETS.TRAIN)
    assert list(loaders.test.dataset.names) == list(ycfg.DATASETS.TEST)
    assert loaders.train.num_workers == loaders.test.num_workers == ycfg.DATALOADER.NUM_WORKERS
    assert loaders.train.dataset.get("filter_empty", True) == ycfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    view = yacs_view(lcfg)  # what the plugin's checks read from the lazy config
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "MODEL.BACKBONE.NAME", "MODEL.META_ARCHITECTURE",
                "MODEL.MASK_ON", "MODEL.WEIGHTS", "DATASETS.TEST"):
        a, b = view, ycfg
        for part in key.split("."):
            a, b = a[part], b[part]
        assert plain(a) == plain(b), key


def test_demo_scale_twin_agrees():
    """configs/lazy/demo/frcnn_r101_shapes.py = configs/coco/frcnn_r101.yaml + configs/demo/shapes_small_scale.yaml."""
    sections = load_override_sections(REPO / "configs" / "demo" / "shapes_small_scale.yaml")
    ycfg = load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"),
                       overrides_to_opts(sections["common"], sections["resnet"]) + ["MODEL.DEVICE", "cpu"])
    lcfg = load_lazy_config(str(REPO / "configs" / "lazy" / "demo" / "frcnn_r101_shapes.py"), ["train.device=cpu"])
    torch.manual_seed(0)
    ymodel, lmodel = build_model(ycfg), instantiate(lcfg.model)
    same_models(ymodel, lmodel)
    same_solver(ycfg, ymodel, lcfg, lmodel)
    same_data(ycfg, lcfg)


def test_depth_override_reaches_the_c4_head():
    cfg = lazy_cfg("frcnn_r101", ["model.backbone.depth=50", "model.backbone.shortcut=C"])
    model = instantiate(cfg.model)
    assert len(model.backbone.res4) == 6 and len(model.roi_heads.res5) == 3
    assert model.roi_heads.res5[1].shortcut is not None  # option C: projections everywhere, in the head too


# ------------------------------------------------------------------------------------ heads from keyword arguments

def test_c4_head_from_keyword_arguments_equals_the_cfg_one():
    cfg = yaml_cfg("frcnn_r101")
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.ROI_HEADS.NUM_CLASSES = 18, 64, 4
    shapes = {"res4": ShapeSpec(channels=256, stride=16)}
    torch.manual_seed(0)
    from_cfg = RBRes5ROIHeads(cfg, shapes)
    from_kwargs = RBRes5ROIHeads(
        num_classes=4, batch_size_per_image=128, positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False), in_features=["res4"],
        pooler=ROIPooler(output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIPool"),
        res5=res5_head_stage(18, norm="FrozenBN"),
        box_predictor=FastRCNNOutputLayers(ShapeSpec(channels=512, height=1, width=1),
                                           box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=4,
                                           test_score_thresh=0.05, test_nms_thresh=0.3,
                                           loss_weight={"loss_box_reg": 1.0}))
    assert hyperparameters(from_kwargs) == hyperparameters(from_cfg)
    from_kwargs.load_state_dict(from_cfg.state_dict())
    x = torch.randn(3, 256, 14, 14)
    torch.testing.assert_close(from_kwargs.res5.eval()(x), from_cfg.res5.eval()(x), rtol=0, atol=0)
    assert [type(m) for m in build_res5_head_stage(cfg).modules()] == [type(m) for m in from_kwargs.res5.modules()]


def test_c4_head_names_a_predictor_that_does_not_fit_res5():
    with pytest.raises(ValueError, match="box_predictor takes 1024 channels but res5 returns 512"):
        RBRes5ROIHeads(num_classes=4, batch_size_per_image=16, positive_fraction=0.25,
                       proposal_matcher=Matcher([0.5], [0, 1]), in_features=["res4"],
                       pooler=ROIPooler(14, (1.0 / 16,), 0, "ROIPool"), res5=res5_head_stage(18),
                       box_predictor=FastRCNNOutputLayers(ShapeSpec(channels=1024), box2box_transform=Box2BoxTransform(
                           (10.0, 10.0, 5.0, 5.0)), num_classes=4))


def test_vgg_head_from_keyword_arguments_equals_the_cfg_one():
    cfg = yaml_cfg("frcnn_vgg16")
    shape = ShapeSpec(channels=512, height=7, width=7)
    from_cfg, from_kwargs = RBVGG16FCHead(cfg, shape), RBVGG16FCHead(input_shape=shape, dropout=0.5)
    assert hyperparameters(from_kwargs) == hyperparameters(from_cfg)
    from_kwargs.load_state_dict(from_cfg.state_dict())
    x = torch.randn(2, 512, 7, 7)
    torch.testing.assert_close(from_kwargs.eval()(x), from_cfg.eval()(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------- one step on the embedded data

@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb_datasets")
    with registered_shapes(root, num_train=6, num_val=3, image_size=(64, 96)):
        yield root


def tiny(name, out=None):
    """Overrides for a run on the embedded 64x96 data from scratch (trainable BN, nothing frozen), as README shows."""
    opts = ["train.init_checkpoint=", "model.backbone.freeze_at=0" if "vgg" in name else None,
            'dataloader.train.dataset.names=["rb_shapes_coco_train"]',
            'dataloader.test.dataset.names=["rb_shapes_coco_val","rb_shapes_voc_test"]',
            "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
            "dataloader.train.mapper.augmentations.0.max_size=96",
            "dataloader.test.mapper.augmentations.0.short_edge_length=64",
            "dataloader.test.mapper.augmentations.0.max_size=96",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "train.max_iter=1", "train.log_period=1"]
    if "vgg" not in name:
        net = "model.backbone.bottom_up" if "fpn" in name else "model.backbone"
        opts += [f"{net}.norm=BN", f"{net}.freeze_at=0", f"{net}.zero_init_last=True"]
    if name.startswith("retinanet"):
        opts += ["model.num_classes=4"]
    else:
        opts += ["model.roi_heads.num_classes=4", "model.roi_heads.batch_size_per_image=16",
                 "model.proposal_generator.pre_nms_topk=[200,100]", "model.proposal_generator.post_nms_topk=[32,16]"]
    if name.startswith("frcnn"):
        opts += ["model.proposal_generator.anchor_generator.sizes=[[16,32,64]]"]
    if out is not None:
        opts += [f"train.output_dir={out}"]
    return [o for o in opts if o]


@pytest.mark.parametrize("name", CONFIGS)
def test_lazy_config_trains_one_step(name, datasets_root, one_thread):
    torch.manual_seed(0)
    cfg = lazy_cfg(name, tiny(name))
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optimizer)
    trainer.register_hooks([hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier))])
    trainer.train(0, cfg.train.max_iter)
    assert math.isfinite(trainer.storage.history("total_loss").latest())
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith(("roi_heads.", "head.")) for k in
                                                                    changed)
    model.eval()
    with torch.no_grad():
        batch = next(iter(build_detection_test_loader(
            dataset=instantiate(cfg.dataloader.test.dataset)[:1], mapper=instantiate(cfg.dataloader.test.mapper))))
        assert "instances" in model(batch)[0]


# ----------------------------------------------------------------------------------------- tools/lazy_train_net.py

def test_override_key_typo_is_named():
    with pytest.raises(ValueError, match="model.backbone.depth"):
        lazy_cfg("frcnn_r101", ["model.backbone.dept=50"])
    with pytest.raises(ValueError, match="key=value"):
        lazy_cfg("frcnn_r101", ["model.backbone.depth"])
    with pytest.raises(ValueError, match="tools/train_net.py"):
        load_lazy_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"))
    assert parse_override("train.device=cpu") == ("train.device", "cpu")
    assert parse_override("a.b=[64]") == ("a.b", [64]) and parse_override("a.b=") == ("a.b", "")


def test_weights_needing_other_preprocessing_are_named():
    """torchvision's VGG-16 weights (the lazy VGG config's default) need RGB input: BGR is refused before any
    download, in the LazyConfig's own keys."""
    args = lazy_train_net.build_parser().parse_args(
        ["--config", str(REPO / "configs" / "lazy" / "frcnn_vgg16.py"), "train.device=cpu", "model.input_format=BGR"])
    with pytest.raises(ValueError, match="INPUT.FORMAT is 'BGR'.*model.input_format"):
        lazy_train_net.setup(args)


def test_training_refuses_random_frozen_layers(datasets_root, tmp_path, one_thread):
    opts = [o for o in tiny("frcnn_r101", tmp_path) if "norm=" not in o and "freeze_at=" not in o]
    with pytest.raises(ValueError, match="train.allow_random_frozen=True"):
        lazy_train_net.main(["--config", str(REPO / "configs" / "lazy" / "frcnn_r101.py"), "train.device=cpu"] + opts
                            + ["model.backbone.depth=18"])


@pytest.mark.slow
def test_lazy_train_net_trains_evaluates_resumes_and_evaluates_only(datasets_root, tmp_path, one_thread):
    config = str(REPO / "configs" / "lazy" / "frcnn_r101.py")
    out = tmp_path / "run"
    base = ["--config", config, "train.device=cpu"] + tiny("frcnn_r101", out) + ["model.backbone.depth=18"]
    results = lazy_train_net.main(base + ["train.max_iter=4", "train.checkpointer.period=2"])
    assert set(results) == {"rb_shapes_coco_val", "rb_shapes_voc_test"}
    written = json.loads((out / "eval_results.json").read_text())
    assert written["label"] == "ResNet-18" and written["backbone"] == "build_rb_resnet_backbone"
    assert {r["format"] for r in written["results"].values()} == {"coco", "pascal_voc"}
    assert all(math.isfinite(r["bbox"]["AP50"]) for r in written["results"].values())
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / "config.yaml").is_file()

    lazy_train_net.main(["--resume"] + base + ["train.max_iter=6"])
    iters = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
             if "total_loss" in line]
    assert iters.count(4) == 1 and max(iters) == 5  # continued at iteration 4, not from 0
    resumed = json.loads((out / "eval_results.json").read_text())["results"]

    again = lazy_train_net.main(["--eval-only", "--config", str(out / "config.yaml"),
                                 f"train.init_checkpoint={out / 'model_final.pth'}",
                                 f"train.output_dir={tmp_path / 'eval'}"])
    for ds, res in resumed.items():
        assert again[ds]["bbox"]["AP"] == pytest.approx(res["bbox"]["AP"], abs=1e-6)
