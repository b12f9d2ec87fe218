"""The CUDA side: the deploy path (BN folding, channels-last, float16 / bfloat16, torch.compile) against float32,
mixed-precision detection training (detectron2's AMPTrainer through SOLVER.AMP.ENABLED), the benchmark's CUDA
contenders. Marked `gpu` and skipped without CUDA; tools/gpu_check.sh runs them on a GPU machine. No timings."""
import copy
import itertools
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import load_tool, randomize_norms
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model

import resnet_backbone  # noqa: F401  registers the plugin's backbones and heads
from resnet_backbone import add_resnet_backbone_config, create_model
from resnet_backbone.benchmarking.contenders import backbone_contenders, detector_inputs
from resnet_backbone.deploy import OneDNNConv2d, channels_last_helps, prepare_for_inference, precision_supported
from resnet_backbone.engine.trainer import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (tools/gpu_check.sh runs these on a GPU machine)")]

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # float32 (TF32 off) as on CPU
LOW_RTOL = {"float16": 2e-2, "bfloat16": 5e-2}  # 10 / 7 bits of mantissa through a ResNet-50


@pytest.fixture(autouse=True)
def strict_float32():
    """Exact float32 convolutions / matmuls for the float32 comparisons (TF32 rounds to 10 bits)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rel_err(out, ref) -> float:
    if isinstance(ref, dict):
        return max(_rel_err(out[k], ref[k]) for k in ref)
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def _backbones():
    models = backbone_contenders(50, "FrozenBN", 2, "cuda")
    d2 = randomize_norms(models["detectron2"])  # non-trivial frozen norms, so that folding has something to do
    models["plugin"].load_state_dict(d2.state_dict())
    return {k: m.cuda().eval() for k, m in models.items()}


def test_deploy_on_cuda_keeps_float32_outputs_and_skips_the_cpu_kernels(caplog):
    models = _backbones()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    assert not channels_last_helps("cuda")  # measured by tools/benchmark.py, not assumed
    with torch.no_grad():
        ref = models["detectron2"](x)
        for channels_last in (False, True):
            with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"):
                fast = prepare_for_inference(copy.deepcopy(models["plugin"]), onednn=True,
                                             channels_last=channels_last)
            assert "onednn=True ignored" in caplog.text
            assert not any(isinstance(m, OneDNNConv2d) for m in fast.modules())
            assert fast.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert _rel_err(fast(x), ref) < RTOL


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_deploy_on_cuda_in_reduced_precision_against_float32(precision):
    if not precision_supported("cuda", precision):
        pytest.skip(f"{precision} autocast is not supported on {torch.cuda.get_device_name()}")
    models = _backbones()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    with torch.no_grad():
        ref = models["detectron2"](x)
        for channels_last in (False, True):
            fast = prepare_for_inference(copy.deepcopy(models["plugin"]), channels_last=channels_last,
                                         precision=precision)
            out = fast(x)
            assert all(v.dtype == torch.float32 for v in out.values())
            err = _rel_err(out, ref)
            assert 0 < err < LOW_RTOL[precision], err


def test_deploy_on_cuda_with_torch_compile_against_float32():
    torch._dynamo.reset()
    models = _backbones()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    with torch.no_grad():
        ref = models["detectron2"](x)
        fast = prepare_for_inference(copy.deepcopy(models["plugin"]), compile=True)
        outs = [fast(x), fast(x)]
    assert getattr(fast, "compiled_ok", True), "torch.compile fell back to eager on CUDA"
    assert all(_rel_err(o, ref) < RTOL for o in outs)


def _c4_cfg(*opts):
    # randomly initialised: unit-scale inputs (PIXEL_STD), so that activations growing through the identity-like
    # residual stages stay far inside float16's range (65504)
    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/coco/frcnn_r101.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "50",
                         "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
                         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "4", *opts])
    return cfg


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_deployed_c4_detector_on_cuda_returns_float32_detections(precision):
    cfg = _c4_cfg("MODEL.RB_DEPLOY.FUSE_BN", "True", "MODEL.RB_DEPLOY.PRECISION", precision)
    model = build_model(cfg).eval()
    images = [{k: v for k, v in d.items() if k != "instances"} for d in detector_inputs(2, 192, 256, num_classes=4)]
    from resnet_backbone.deploy import apply_deploy_config

    with torch.no_grad():
        ref = model.backbone(model.preprocess_image(images).tensor)["res4"]
        fast = apply_deploy_config(cfg, copy.deepcopy(model))
        outs = fast(images)
        feats = fast.backbone(fast.preprocess_image(images).tensor)["res4"]
    for o in outs:
        inst = o["instances"]
        assert inst.pred_boxes.tensor.dtype == torch.float32 and torch.isfinite(inst.pred_boxes.tensor).all()
    assert _rel_err(feats, ref) < RTOL  # the backbone called outside the model's autocast: folded float32


def test_amp_detection_training_on_cuda_uses_detectron2s_amp_trainer():
    torch.manual_seed(0)
    # as the demo trains from scratch: batch-statistics BN, residual branches starting at zero
    cfg = _c4_cfg("SOLVER.AMP.ENABLED", "True", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
                  "MODEL.RB_RESNET.ZERO_INIT_LAST", "True")
    model = build_model(cfg).train()
    inputs = detector_inputs(2, 192, 256, num_classes=4)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    trainer = Trainer.build_step_trainer(cfg, model, itertools.repeat(inputs), opt)
    assert type(trainer) is AMPTrainer
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainer.train(0, 5)  # GradScaler may skip a step whose gradients overflowed float16; not all five
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[k], p) for k, p in model.named_parameters())


def test_benchmark_quick_on_cuda_has_the_cuda_contenders(tmp_path):

    benchmark = load_tool("benchmark")
    out = tmp_path / "bench"
    benchmark.main(["--quick", "--device", "cuda", "--sections", "backbone", "--output-dir", str(out), "--no-plot"])
    results = json.loads((out / "benchmark.json").read_text())
    assert results["environment"]["cuda_device"] == torch.cuda.get_device_name()
    backbone = results["sections"]["backbone_r50"]
    train, infer = backbone["train"]["contenders"], backbone["inference"]["contenders"]
    assert {"plugin-channels-last", "plugin-amp", "detectron2-amp"} <= set(train)
    assert {"plugin-deploy", "plugin-deploy-channels-last", "plugin-deploy-fp16"} <= set(infer)
    diffs = backbone["max_rel_diff_vs_detectron2"]
    assert diffs["plugin-deploy"] < 1e-3  # float32 (TF32 off: the fixture)
    assert diffs["plugin-deploy-fp16"] < LOW_RTOL["float16"]


def test_cuda_float32_model_is_unchanged_by_a_cpu_only_option():
    model = create_model("resnet18").cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = model(x)
        fast = prepare_for_inference(copy.deepcopy(model), winograd=True, kernels="measure")
        assert _rel_err(fast(x), ref) < RTOL
