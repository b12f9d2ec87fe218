"""The deploy path (resnet_backbone.deploy) computes what the unfused model computes, within 1e-4 relative.

No timings here (tools/benchmark.py measures speed); only numerical equality, what gets folded, the guards, and
a smoke run of the benchmark tool.
"""
import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_tool, randomize_norms
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone as d2_build_resnet_backbone
from torch import nn

import resnet_backbone  # noqa: F401  registers the plugin's backbones and heads
from resnet_backbone import add_resnet_backbone_config, create_model
from resnet_backbone import deploy
from resnet_backbone.deploy import OneDNNConv2d, apply_deploy_config, fold_batchnorm, prepare_for_inference
from resnet_backbone.deploy import kernels as deploy_kernels
from resnet_backbone.modeling import VGG, ResNet

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4


def _rel_err(out, ref) -> float:
    if isinstance(ref, dict):
        assert out.keys() == ref.keys()
        return max(_rel_err(out[k], ref[k]) for k in ref)
    return float((out - ref).abs().max() / ref.abs().max())


def _norms(model):
    return sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())


def _check_equal(model, x, *, expect_folded, **options):
    model = randomize_norms(model).eval()
    with torch.no_grad():
        ref = model(x)
    fast = prepare_for_inference(copy.deepcopy(model), fuse_bn=True, **options)
    assert _norms(fast) == _norms(model) - expect_folded
    with torch.no_grad():
        out = fast(x)
    assert _rel_err(out, ref) < RTOL
    return fast


def test_resnet50_classifier():
    model = create_model("resnet50")
    n_bn = _norms(model)
    assert n_bn == 53  # 49 convs + 4 projection shortcuts
    x = torch.randn(2, 3, 64, 64)
    for channels_last, onednn in ((False, False), (True, False), (False, True), (True, True)):
        fast = _check_equal(model, x, expect_folded=n_bn, channels_last=channels_last, onednn=onednn)
        assert all(m.norm is None and m.bias is not None for m in fast.modules() if isinstance(m, Conv2d))
        assert fast.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        fused = [m for m in fast.modules() if type(m).__name__ in ("_FusedResidualBlock", "_FusedStem")]
        assert len(fused) == (17 if onednn else 0)  # 16 bottlenecks + the stem
        assert all(isinstance(m, OneDNNConv2d) for m in fast.modules() if isinstance(m, Conv2d)) == onednn
    # same parameter names as the folded model: weights can be loaded into the deployed model
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    assert list(fast.state_dict()) == list(folded.state_dict())


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_plain20"])
def test_cifar_nets_option_a_shortcuts_and_plain(name):
    model = create_model(name)
    fast = _check_equal(model, torch.randn(4, 3, 32, 32), expect_folded=_norms(model), channels_last=True,
                        onednn=True)
    assert type(fast.res3[0]).__name__ == "_FusedResidualBlock"


def test_vgg_backbone_has_nothing_to_fold_and_keeps_outputs():
    model = VGG(out_features=["conv4_3", "conv5_3"])
    for onednn in (False, True):
        fast = _check_equal(model, torch.randn(1, 3, 64, 64), expect_folded=0, channels_last=True, onednn=onednn)
        assert fast.conv1_1.weight.is_contiguous(memory_format=torch.channels_last)
        assert isinstance(fast.conv5_3, OneDNNConv2d) == onednn


def test_detectron2_builtin_resnet_is_folded_too():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3"]
    model = d2_build_resnet_backbone(cfg, ShapeSpec(channels=3))
    fast = _check_equal(model, torch.randn(1, 3, 64, 64), expect_folded=_norms(model), channels_last=True,
                        onednn=True)
    assert type(fast.stem).__name__ == "_FusedStem" and type(fast.res3[0]).__name__ == "_FusedResidualBlock"


def _c4_cfg(**deploy_keys):
    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/coco/frcnn_r101.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 50  # the R-101 config's C4 layout at half the build time
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    for key, value in deploy_keys.items():
        cfg.MODEL.RB_DEPLOY[key] = value
    return cfg


def test_c4_detector_backbone_and_res5_through_apply_deploy_config():
    # the fixed kernel rule, so that the Winograd path is taken where asserted below (tests/test_kernel_choice.py
    # covers "measure")
    cfg = _c4_cfg(FUSE_BN=True, CHANNELS_LAST=True, ONEDNN=True, WINOGRAD=True, KERNELS="rules")
    model = randomize_norms(build_model(cfg)).eval()
    assert isinstance(model.backbone, ResNet)
    assert isinstance(model.backbone.res2[0].conv1.norm, FrozenBatchNorm2d)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref_res4 = model.backbone(x)["res4"]
        ref_res5 = model.roi_heads.res5(ref_res4)
    fast = apply_deploy_config(cfg, copy.deepcopy(model))
    assert _norms(fast) == 0
    assert not [k for k in fast.state_dict() if ".norm." in k]
    assert type(fast.roi_heads.res5[0]).__name__ == "_FusedResidualBlock"
    with torch.no_grad():
        res4 = fast.backbone(x)["res4"]
        res5 = fast.roi_heads.res5(ref_res4)
        assert _rel_err(res4, ref_res4) < RTOL
        assert _rel_err(res5, ref_res5) < RTOL
        # res2's 3x3 convolutions (16x24, 24 tiles) took the Winograd path
        assert fast.backbone.res2[0].conv2.cached_weight_bytes() > 0
        # and the whole deployed detector runs (channels-last features through RPN, RoI pooling, box head)
        image = (torch.rand(3, 64, 96) * 255).to(torch.uint8)
        (out,) = fast([{"image": image, "height": 64, "width": 96}])
    assert out["instances"].image_size == (64, 96)


needs_bf16 = pytest.mark.skipif(not deploy.precision.native_bf16(),
                                reason="the CPU has no bfloat16 instructions (the deploy path stays float32 there)")
BF16_RTOL = 5e-2  # 8 bits of mantissa through a ResNet


@needs_bf16
def test_bfloat16_deploy_converts_weights_once_and_runs_packed_onednn_kernels(monkeypatch):
    """precision bfloat16 on CPU: bfloat16 weights (not float32 weights cast per call), no autocast, the packed
    oneDNN kernels on bfloat16 inputs with the fused epilogue, float32 outputs within bfloat16's accuracy."""
    model = randomize_norms(ResNet(50, norm="FrozenBN", out_features=["res4", "res5"])).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_for_inference(copy.deepcopy(model), precision="bfloat16", kernels="rules")
    convs = [m for m in fast.modules() if isinstance(m, OneDNNConv2d)]
    assert convs and all(m.weight.dtype == m.bias.dtype == torch.bfloat16 for m in convs)

    def no_autocast(*args, **kwargs):
        raise AssertionError("the bfloat16 deploy path entered autocast")

    monkeypatch.setattr(torch, "autocast", no_autocast)
    with torch.no_grad():
        out = fast(x)
        again = fast(x)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert 0 < _rel_err(out, ref) < BF16_RTOL and _rel_err(again, out) == 0
    chosen = {k: v for m in convs for k, v in m.kernel_choices.items()}
    assert chosen and all(" bfloat16 " in k for k in chosen) and set(chosen.values()) == {"onednn"}


@needs_bf16
def test_bfloat16_c4_detector_runs_backbone_and_heads_in_bfloat16():
    cfg = _c4_cfg(FUSE_BN=True, CHANNELS_LAST=True, ONEDNN=True, PRECISION="bfloat16")
    model = randomize_norms(build_model(cfg)).eval()
    fast = apply_deploy_config(cfg, copy.deepcopy(model))
    assert fast.backbone.stem.conv1.weight.dtype == torch.bfloat16
    assert fast.roi_heads.res5[0].conv1.weight.dtype == torch.bfloat16
    assert fast.proposal_generator.rpn_head.objectness_logits.weight.dtype == torch.bfloat16
    assert fast.roi_heads.box_predictor.cls_score.weight.dtype == torch.bfloat16  # res5's output goes on as it is
    image = (torch.rand(3, 64, 96) * 255).to(torch.uint8)
    with torch.no_grad():
        x = fast.preprocess_image([{"image": image}]).tensor
        assert _rel_err(fast.backbone(x), model.backbone(x)) < BF16_RTOL
        (out,) = fast([{"image": image, "height": 64, "width": 96}])
        pooled = torch.randn(5, 1024, 14, 14)
        ref_scores, ref_deltas = model.roi_heads.box_predictor(model.roi_heads.res5(pooled).mean(dim=[2, 3]))
        scores, deltas = fast.roi_heads.box_predictor(fast.roi_heads.res5(pooled).mean(dim=[2, 3]))
    assert scores.dtype == deltas.dtype == torch.float32
    assert _rel_err(scores, ref_scores) < BF16_RTOL and _rel_err(deltas, ref_deltas) < BF16_RTOL
    inst = out["instances"]
    assert inst.image_size == (64, 96) and inst.pred_boxes.tensor.dtype == inst.scores.dtype == torch.float32


def test_openvino_underneath_the_backbone_and_res5(tmp_path):
    """MODEL.RB_DEPLOY.RUNTIME openvino: the backbone, the RPN head and the RoI pooling + res5 run by OpenVINO
    (float32 within 1e-4 of eager, on two input sizes and on RoI counts it has not seen), the rest of the detector
    by detectron2; the detections are eager's; copies rebuild it; the export refuses it."""
    from detectron2.structures import Boxes

    from resnet_backbone.engine import runtimes
    from resnet_backbone.engine.detector_export import check_exportable_model, compare_outputs

    if runtimes.missing("openvino"):
        pytest.skip(f"RUNTIME openvino: {runtimes.missing('openvino')}")
    cfg = _c4_cfg(FUSE_BN=True, RUNTIME="openvino")
    model = randomize_norms(build_model(cfg)).eval()
    fast = apply_deploy_config(cfg, copy.deepcopy(model))
    assert fast.backbone.openvino_part and fast.roi_heads.openvino_part
    assert fast.proposal_generator.rpn_head.openvino_part  # on a list of one feature map
    assert not hasattr(fast.roi_heads.box_predictor, "openvino_part")
    assert not hasattr(fast.roi_heads.res5, "openvino_part")  # inside the RoI heads' part, with the pooling
    with torch.no_grad():
        for shape in ((1, 3, 64, 96), (2, 3, 96, 64)):
            x = torch.randn(*shape)
            assert _rel_err(fast.backbone(x), model.backbone(x)) < RTOL
        res4 = [model.backbone(torch.randn(1, 3, 64, 96))["res4"]]
        for a, b in zip(fast.proposal_generator.rpn_head(res4), model.proposal_generator.rpn_head(res4)):
            assert isinstance(a, list) and _rel_err(a[0], b[0]) < RTOL
        g = torch.Generator().manual_seed(0)
        copied = copy.deepcopy(fast)
        for rois in (7, 5, 7):
            xy = torch.rand(rois, 2, generator=g) * torch.tensor([60.0, 40.0])
            boxes = [Boxes(torch.cat([xy, xy + 4 + torch.rand(rois, 2, generator=g) * 30], dim=1))]
            pooled = model.roi_heads._shared_roi_transform(res4, boxes).mean(dim=[2, 3])
            assert _rel_err(copied.roi_heads._shared_roi_transform(res4, boxes).mean(dim=[2, 3]), pooled) < RTOL
        image = (torch.rand(3, 64, 96) * 255).to(torch.uint8)
        inputs = [{"image": image, "height": 64, "width": 96}]
        (out,), (ref,) = fast(inputs), model(inputs)
    assert out["instances"].image_size == (64, 96) and len(out["instances"]) == len(ref["instances"])
    # pixels on a 96 px image (BN folded, other kernels: the box deltas' exp amplifies the rounding)
    assert compare_outputs([ref], [out])[0] < 1e-2
    with pytest.raises(ValueError, match="runs in OpenVINO"):
        check_exportable_model(fast)
    with pytest.raises(ValueError, match="MODEL.RB_DEPLOY.RUNTIME"):
        apply_deploy_config(_c4_cfg(RUNTIME="tensorrt"), copy.deepcopy(model))


def test_bfloat16_deploy_stays_float32_without_bfloat16_instructions(monkeypatch, caplog):
    monkeypatch.setattr(deploy, "native_bf16", lambda: False)
    model = ResNet(18, norm="FrozenBN", out_features=["res4"]).eval()
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"):
        fast = prepare_for_inference(copy.deepcopy(model), precision="bfloat16")
    assert "no bfloat16 instructions" in caplog.text
    assert all(p.dtype == torch.float32 for p in fast.parameters())


def test_apply_deploy_config_with_everything_off_leaves_the_model_alone():
    cfg = _c4_cfg()
    model = create_model("cifar_resnet8").train()
    assert apply_deploy_config(cfg, model) is model
    assert model.training and _norms(model) > 0


def test_apply_deploy_config_rejects_non_bool():
    cfg = _c4_cfg()
    cfg.MODEL.RB_DEPLOY.FUSE_BN = 1
    with pytest.raises(ValueError, match="FUSE_BN"):
        apply_deploy_config(cfg, create_model("cifar_resnet8"))


def test_fold_refuses_training_mode_and_leaves_batch_dependent_norms():
    model = create_model("cifar_resnet8")
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(model.train())
    gn = ResNet(18, norm="GN", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = gn(x)
    assert fold_batchnorm(gn) == 0
    with torch.no_grad():
        assert torch.equal(gn(x), ref)
    # BatchNorm without running statistics normalises with the batch's: not foldable either
    conv = Conv2d(3, 4, 3, padding=1, bias=False, norm=nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorm(conv) == 0


def test_fold_keeps_an_existing_conv_bias():
    conv = Conv2d(3, 5, 3, padding=1, bias=True, norm=nn.BatchNorm2d(5))
    nn.init.normal_(conv.bias)
    randomize_norms(conv).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = conv(x)
        assert fold_batchnorm(conv) == 1
        assert _rel_err(conv(x), ref) < RTOL


@pytest.mark.parametrize("bad", [dict(channels_last="yes"), dict(channels_last=1), dict(onednn="on"),
                                 dict(fuse_bn="true"), dict(compile=None)])
def test_prepare_for_inference_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        prepare_for_inference(create_model("cifar_resnet8"), **bad)


def test_deployed_model_copies_and_falls_back_when_gradients_are_needed():
    model = randomize_norms(create_model("cifar_resnet8")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_for_inference(copy.deepcopy(model), onednn=True, channels_last=True)
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        fast(x)  # packs the weights
    again = copy.deepcopy(fast)  # the packed oneDNN weights are not copied but rebuilt
    xg = x.clone().requires_grad_()
    out = again(xg)  # input gradients: through F.conv2d, not the fused inference kernels
    assert _rel_err(out.detach(), ref) < RTOL
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_onednn_missing_leaves_the_model_working(monkeypatch, caplog):
    monkeypatch.setattr(deploy._ops, "onednn_ops", lambda: None)
    assert not deploy.onednn_available("cpu")
    model = create_model("cifar_resnet8")
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"):
        fast = _check_equal(model, torch.randn(2, 3, 32, 32), expect_folded=_norms(model), onednn=True)
    assert "not available" in caplog.text
    assert not any(isinstance(m, OneDNNConv2d) for m in fast.modules())


def test_compile_guard_when_torch_compile_raises(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no backend here")

    monkeypatch.setattr(torch, "compile", broken)
    model = create_model("cifar_resnet8")
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"):
        out = prepare_for_inference(model, compile=True)
    assert out is model
    assert "torch.compile failed" in caplog.text and "no backend here" in caplog.text


def test_compile_guard_when_the_first_call_fails(monkeypatch, caplog):
    def fails_when_called(*args, **kwargs):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: fails_when_called)
    model = randomize_norms(create_model("cifar_resnet8")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    wrapped = prepare_for_inference(copy.deepcopy(model), compile=True)
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"), torch.no_grad():
        out = wrapped(x)
        again = wrapped(x)
    assert not wrapped.compiled_ok and "no C++ compiler" in caplog.text
    assert _rel_err(out, ref) < RTOL and torch.equal(out, again)
    assert wrapped.num_classes == 10  # attributes of the model stay reachable
    assert all(k.startswith("eager.") for k in wrapped.state_dict())  # parameters listed once


def _run_benchmark(tmp_path, *extra, in_process=False):
    out = tmp_path / "bench"
    args = ["--quick", "--threads", "1", "--output-dir", str(out), "--peers", *extra]
    if in_process:  # a section registered by the test itself (no runtimes loaded)
        load_tool("benchmark").main(args)
    else:
        # as users run it, in a process of its own: OpenVINO, ONNX Runtime and inductor loaded into the suite's
        # process after the earlier tests crashed it (a segmentation fault, seen in the full suite only)
        res = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), *args], cwd=REPO,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    results = json.loads((out / "benchmark.json").read_text())
    table = (out / "benchmark.txt").read_text()
    assert table.startswith("machine: ") and "\nCPU flags (SIMD): " in table and "\nsection " in table
    return out, results


def test_benchmark_precision_ap_needs_a_trained_detector():
    """--sections precision-ap (run on a trained detector in tests/test_export_trained.py) refuses to start without
    one, naming the options."""
    bench = load_tool("benchmark")
    with pytest.raises(SystemExit, match="--ap-config and --ap-weights"):
        bench.main(["--sections", "precision-ap", "--ap-weights", "model_final.pth"])
    with pytest.raises(SystemExit, match="KEY VALUE pairs"):
        bench.main(["--sections", "precision-ap", "--ap-config", "c.yaml", "--ap-weights", "w.pth", "--ap-opts", "A"])


def test_benchmark_tool_quick_backbone_and_pipeline(tmp_path):
    out, results = _run_benchmark(tmp_path, "--sections", "backbone", "pipeline", "--peers", "onnxruntime", "openvino")
    backbone = results["sections"]["backbone_r50"]
    # the peers users deploy with, on the same weights and input: float32 within 1e-4, OpenVINO's bfloat16 (on CPUs
    # with it) within bfloat16's accuracy; a peer not installed is listed with the reason
    peers = [p for p in ("onnxruntime-fp32", "openvino-fp32") if p in backbone["inference"]["contenders"]]
    assert len(peers) + len(backbone["peers_skipped"]) >= 2
    assert all(backbone["max_rel_diff_vs_detectron2"][p] < RTOL for p in peers)
    if "openvino-bf16" in backbone["inference"]["contenders"]:
        assert backbone["max_rel_diff_vs_detectron2"]["openvino-bf16"] < 5e-2
    assert set(backbone["train"]["contenders"]) == {"plugin", "detectron2", "torchvision", "reference-copy"}
    assert {"plugin-deploy", "detectron2-deploy"} <= set(backbone["inference"]["contenders"])
    # the plugin loads detectron2's weights: the same function (channels-last on CPU: oneDNN's summation order),
    # also after deploy
    assert backbone["max_rel_diff_vs_detectron2"]["plugin"] < 1e-5
    assert backbone["max_rel_diff_vs_detectron2"]["plugin-deploy"] < RTOL
    # the deploy path is compared with detectron2 and with the plugin without deploy; the kernels it chose are
    # listed per layer type, each of them one of the candidates
    deploy = backbone["inference"]["contenders"]["plugin-deploy"]
    assert deploy["speedup_vs_plugin"] > 0 and deploy["speedup_vs_reference"] > 0
    chosen = backbone["kernel_choice"]["chosen"]["plugin-deploy"]
    assert any(kind.startswith("3x3/s1 ") for kind in chosen)
    assert {k for counts in chosen.values() for k in counts} <= set(deploy_kernels.KERNELS)
    table = (out / "benchmark.txt").read_text()
    assert "kernels chosen by plugin-deploy, backbone_r50" in table
    assert "deploy vs detectron2 / vs plugin without deploy, backbone_r50: plugin-deploy " in table
    assert results["environment"]["cpu_model"] and isinstance(results["environment"]["cpu_flags"], list)
    assert results["sections"]["pipeline"]["loader"]["images_per_s"] > 0
    assert results["environment"]["matmul_peak_gflops"] > 0
    assert (out / "benchmark_ratios.png").stat().st_size > 0


@pytest.mark.slow
def test_benchmark_tool_quick_all_sections(tmp_path):
    _, results = _run_benchmark(tmp_path)
    assert {"backbone_r50", "c4_r101", "vgg16", "pipeline"} <= set(results["sections"])
    c4 = results["sections"]["c4_r101"]
    assert set(c4["train"]["contenders"]) == {"plugin", "detectron2", "reference-copy"}
    assert c4["inference"]["contenders"]["plugin-deploy"]["multiply_adds_per_image"] > 0


def test_a_benchmark_section_is_one_entry(tmp_path, monkeypatch):
    """A section registered in benchmarking/sections.py alone gets its option, its --quick setting, its timed group
    in the table and its own lines, with nothing else changed."""
    from resnet_backbone.benchmarking import sections
    from resnet_backbone.benchmarking.suite import timed_group

    def run(args, settings, log):
        calls = {"slow": lambda: sum(range(args.toy_n * 4)), "fast": lambda: sum(range(args.toy_n))}
        return {"toy": {"inference": timed_group(calls, "slow", settings, macs={}, images=1)}}

    toy = sections.Section("toy", "a toy section", run, rows=lambda key, r: [f"toy lines of {key}"],
                           add_arguments=lambda p: p.add_argument("--toy-n", type=int, default=10**6),
                           quick=dict(toy_n=1000))
    monkeypatch.setitem(sections.SECTIONS, "toy", toy)
    out, results = _run_benchmark(tmp_path, "--sections", "toy", "--no-plot", in_process=True)
    assert results["arguments"]["toy_n"] == 1000 and results["sections"]["toy"]["section"] == "toy"
    assert set(results["sections"]["toy"]["inference"]["contenders"]) == {"slow", "fast"}
    table = (out / "benchmark.txt").read_text()
    assert "\ntoy             inference fast " in table and "\ntoy lines of toy\n" in table
