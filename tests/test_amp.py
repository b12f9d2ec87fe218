"""Mixed precision on CPU (bfloat16 autocast): detection training with SOLVER.AMP.ENABLED through the plugin's Trainer
(engine/amp.py), and reduced-precision inference of the deploy path (deploy/precision.py), both against float32
runs of the same model. The CUDA side (detectron2's AMPTrainer, float16) is in tests/test_gpu.py."""
import copy
import itertools
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import resnet_backbone  # noqa: F401  registers the plugin's backbones and heads
from resnet_backbone import add_resnet_backbone_config, create_model
from resnet_backbone.benchmarking.contenders import detector_inputs
from resnet_backbone.deploy import apply_deploy_config, prepare_for_inference
from resnet_backbone.deploy.precision import autocast_forward, precision_supported, run_in_precision
from resnet_backbone.engine.amp import CPUAMPTrainer, amp_dtype, build_amp_step_trainer
from resnet_backbone.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
BF16_RTOL = 3e-2  # bfloat16 keeps 8 bits of mantissa: ~4e-3 per rounding, a few 1e-3..1e-2 through a ResNet


def _autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu")


def _c4_cfg(*opts):
    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/coco/frcnn_r101.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]",
                         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_HEADS.NUM_CLASSES", "4", *opts])
    return cfg


def _inputs(n=2):
    return detector_inputs(n, 64, 96, num_classes=4)


def test_amp_dtype_per_device():
    assert amp_dtype("cuda") == torch.float16 and amp_dtype("cuda:1") == torch.float16
    assert amp_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="'mps'"):
        amp_dtype("mps")


def test_trainer_picks_the_step_trainer_from_solver_amp():
    cfg = _c4_cfg()
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = itertools.repeat(_inputs())
    plain = Trainer.build_step_trainer(cfg, model, loader, opt)
    assert type(plain) is SimpleTrainer
    cfg.SOLVER.AMP.ENABLED = True
    amp = Trainer.build_step_trainer(cfg, model, loader, opt)
    assert type(amp) is CPUAMPTrainer and amp.precision == torch.bfloat16
    if torch.cuda.is_available():  # detectron2's own on CUDA
        assert type(build_amp_step_trainer(model, loader, opt, "cuda")) is AMPTrainer


def test_cpu_amp_training_runs_the_forward_in_bfloat16_and_the_rest_in_float32():
    torch.manual_seed(0)
    cfg = _c4_cfg("SOLVER.AMP.ENABLED", "True")
    model = build_model(cfg).train()
    reference = copy.deepcopy(model)
    inputs = _inputs()
    seen = {}

    def backbone_hook(_module, _args, out):
        seen["autocast_in_forward"] = _autocast_on()
        seen["feature_dtype"] = next(iter(out.values())).dtype

    model.backbone.register_forward_hook(backbone_hook)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    step = opt.step

    def checked_step(*args, **kwargs):
        seen["autocast_in_step"] = _autocast_on()
        seen["grad_dtypes"] = {p.grad.dtype for g in opt.param_groups for p in g["params"] if p.grad is not None}
        return step(*args, **kwargs)

    opt.step = checked_step
    trainer = Trainer.build_step_trainer(cfg, model, itertools.repeat(inputs), opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train(0, 2)
    assert seen["autocast_in_forward"] and seen["feature_dtype"] == torch.bfloat16
    assert not seen["autocast_in_step"] and seen["grad_dtypes"] == {torch.float32}
    assert not _autocast_on()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained
    # the hooks that put the forward under autocast are gone after each step
    with torch.no_grad():
        model.eval()(inputs[:1])
    assert seen["feature_dtype"] == torch.float32

    # the losses of one bfloat16 forward are those of float32 within bfloat16 rounding (same weights, same data,
    # same anchor sampling); the RPN's, since the RoIs the box head samples follow the (rounded) proposals
    torch.manual_seed(1)
    with EventStorage(0):
        fp32 = reference.train()(inputs)
    torch.manual_seed(1)
    with EventStorage(0), autocast_forward(reference, "cpu", torch.bfloat16):
        bf16 = reference(inputs)
    assert fp32.keys() == bf16.keys()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in bf16.values())
    for k in ("loss_rpn_cls", "loss_rpn_loc"):
        a, b = fp32[k].item(), bf16[k].item()
        assert abs(a - b) <= 0.05 * abs(a) + 1e-3, (k, a, b)


def test_autocast_forward_leaves_no_hooks_also_after_an_error():
    model = create_model("cifar_resnet8")
    with pytest.raises(RuntimeError):
        with autocast_forward(model, "cpu", "bfloat16"):
            model(torch.randn(1, 5, 32, 32))  # wrong channel count: the forward raises inside autocast
    assert not _autocast_on()
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_deploy_in_bfloat16_against_float32():
    model = create_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for onednn in (True, False):
            fast = prepare_for_inference(copy.deepcopy(model), onednn=onednn, precision="bfloat16")
            out = fast(x)
            assert out.dtype == torch.float32 and not _autocast_on()
            err = float((out - ref).abs().max() / ref.abs().max())
            assert 0 < err < BF16_RTOL  # low precision indeed, and close
            # a deep copy keeps running in bfloat16
            assert torch.equal(copy.deepcopy(fast)(x), out)


def test_deployed_detector_in_bfloat16_returns_float32_detections():
    cfg = _c4_cfg("MODEL.RB_DEPLOY.FUSE_BN", "True", "MODEL.RB_DEPLOY.PRECISION", "bfloat16")
    model = build_model(cfg).eval()
    images = [{k: v for k, v in d.items() if k != "instances"} for d in _inputs(1)]
    with torch.no_grad():
        ref_feats = model.backbone(model.preprocess_image(images).tensor)["res4"]
        fast = apply_deploy_config(cfg, copy.deepcopy(model))
        (out,) = fast(images)
        feats = fast.backbone(fast.preprocess_image(images).tensor)
    inst = out["instances"]
    assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.scores.dtype == torch.float32
    assert torch.isfinite(inst.pred_boxes.tensor).all()
    # the backbone alone (called directly, outside the model's autocast) is float32 folded: same as before
    assert float((feats["res4"] - ref_feats).abs().max() / ref_feats.abs().max()) < 1e-4


def test_precision_checks():
    assert precision_supported("cpu", "bfloat16") and precision_supported("cpu", "float32")
    assert not precision_supported("cpu", "float16")
    with pytest.raises(ValueError, match="float16 is not supported on cpu"):
        prepare_for_inference(create_model("cifar_resnet8"), precision="float16")
    with pytest.raises(ValueError, match="precision"):
        prepare_for_inference(create_model("cifar_resnet8"), precision="int8")
    once = run_in_precision(create_model("cifar_resnet8").eval(), "bfloat16", "cpu")
    with pytest.raises(ValueError, match="already runs in bfloat16"):
        run_in_precision(once, "bfloat16", "cpu")
    cfg = _c4_cfg("MODEL.RB_DEPLOY.PRECISION", "half")
    with pytest.raises(ValueError, match="MODEL.RB_DEPLOY.PRECISION"):
        apply_deploy_config(cfg, create_model("cifar_resnet8"))
