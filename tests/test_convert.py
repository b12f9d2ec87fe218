"""Weight conversion: torchvision / MSRA / detectron2 namings <-> the plugin's, checked against the real modules.

References are independent: torchvision's own ResNet / VGG modules with the same (random) weights, detectron2's own
ResNet (build_resnet_backbone, Res5ROIHeads) and its Caffe2 name conversion. No downloads.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool, randomize_norms
import torch
import torchvision

from resnet_backbone.checkpoint import convert as C
from resnet_backbone.checkpoint.pkl_writer import save_pkl
from resnet_backbone.checkpoint.provenance import (PROVENANCE, Provenance, get_provenance, provenance_path,
                                                  read_provenance)
from resnet_backbone.checkpoint.safe_load import load_file
from resnet_backbone.modeling import create_model
from resnet_backbone.utils.atomic import atomic_save

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


def _load_into(model, weights, strict=True):
    """Weights of any naming (a file, read safely, or a state dict) into a plugin model, converted as
    tools/convert_weights.py converts them; with `strict`, a ValueError naming what does not fit, before loading."""
    checkpoint = load_file(weights) if isinstance(weights, (str, Path)) else weights
    eps = {name: m.eps for name, m in model.named_modules() if hasattr(m, "running_var")}
    converted, report = C.convert_to_plugin(checkpoint, "auto", target=model, eps=eps)
    if strict and not report.ok:
        raise ValueError(f"weights do not fit this {type(model).__name__}:\n{report}")
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in converted.items() if k in own and k not in report.shape_mismatches},
                          strict=False)
    return report


def _close(a, b, rel=1e-5):
    return (a - b).abs().max().item() <= rel * max(a.abs().max().item(), 1.0)


@pytest.fixture(scope="module")
def tv_resnet50():
    torch.manual_seed(0)
    return randomize_norms(torchvision.models.resnet50(weights=None)).eval()


@pytest.fixture(scope="module")
def plugin_resnet18():
    torch.manual_seed(1)
    return randomize_norms(create_model("resnet18")).eval()


# ------------------------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvision_logits(name, tv_resnet50):
    tv = tv_resnet50 if name == "resnet50" else randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    plugin = create_model(name, stride_in_1x1=False).eval()  # torchvision's stride placement
    report = _load_into(plugin, tv.state_dict())
    assert report.ok and report.source == "torchvision" and report.converted == len(tv.state_dict()), str(report)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _close(plugin(x), tv(x))


def test_stride_placement_matters(tv_resnet50):
    # the same weights in the paper's placement give other logits: the test above does see the placement
    plugin = create_model("resnet50", stride_in_1x1=True).eval()
    _load_into(plugin, tv_resnet50.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not _close(plugin(x), tv_resnet50(x), rel=1e-2)


def test_plugin_to_torchvision_loads_strictly(tv_resnet50):
    plugin = randomize_norms(create_model("resnet50", stride_in_1x1=False), seed=3).eval()
    sd, report = C.plugin_to_torchvision(plugin.state_dict(), target=tv_resnet50)
    assert report.ok and not report.unexpected, str(report)
    tv = torchvision.models.resnet50(weights=None).eval()
    tv.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _close(plugin(x), tv(x))


def test_vgg16_torchvision_same_logits():
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None).eval()
    plugin = create_model("vgg16").eval()
    report = _load_into(plugin, tv.state_dict())
    assert report.ok and report.converted == 32, str(report)  # 13 convs + 3 fc, weight and bias each
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _close(plugin(x), tv(x))
    back, report = C.plugin_to_torchvision(plugin.state_dict(), target=tv)
    assert report.ok and list(back) == list(tv.state_dict())
    assert all(torch.equal(back[k], v) for k, v in tv.state_dict().items())


def test_vgg16_bn_is_refused():
    sd = {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.running_mean": torch.zeros(64)}
    with pytest.raises(ValueError, match="vgg16_bn"):
        C.torchvision_to_plugin(sd)


# ------------------------------------------------------------------------------------------------------------
# detectron2 format
# ------------------------------------------------------------------------------------------------------------


def test_detectron2_pkl_round_trip_is_bitwise(tmp_path, plugin_resnet18):
    sd = plugin_resnet18.state_dict()
    checkpoint, report = C.plugin_to_detectron2(sd)
    assert report.ok and report.converted == len(sd)
    assert checkpoint["matching_heuristics"] is True and checkpoint["__author__"]
    assert all(isinstance(v, np.ndarray) for v in checkpoint["model"].values())
    path = tmp_path / "r18.pkl"
    save_pkl(checkpoint, path)
    loaded = load_file(path)
    assert C.detect_format(loaded) == "detectron2"
    back, report = C.detectron2_to_plugin(loaded)
    assert report.ok and list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    model = create_model("resnet18").eval()
    assert _load_into(model, path).ok
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), sd.values()))


def _d2_cfg(**resnets):
    from detectron2.config import get_cfg

    cfg = get_cfg()  # detectron2's defaults are the R50-C4 Faster R-CNN
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 50
    for k, v in resnets.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    return cfg


def test_c4_layout_fills_detectron2s_own_r50_c4():
    from detectron2.modeling import build_model

    plugin = randomize_norms(create_model("resnet50"), seed=4).eval()
    detector = build_model(_d2_cfg())
    checkpoint, report = C.to_detection_checkpoint(plugin.state_dict(), "c4", target=detector)
    assert report.ok and not report.unexpected, str(report)
    assert set(report.dropped) >= {"linear.weight", "linear.bias"}
    keys = list(checkpoint["model"])
    assert "backbone.stem.conv1.weight" in keys and "roi_heads.res5.2.conv3.norm.bias" in keys
    assert not any(k.startswith("backbone.res5") for k in keys)
    incompatible = detector.load_state_dict({k: torch.as_tensor(v) for k, v in checkpoint["model"].items()},
                                            strict=False)
    assert not incompatible.unexpected_keys
    assert not [k for k in incompatible.missing_keys if k.startswith(("backbone.", "roi_heads.res5."))]
    assert torch.equal(detector.roi_heads.res5[1].conv2.weight, plugin.res5[1].conv2.weight)
    # and back: the backbone and head tensors return under their plugin names
    back, report = C.detectron2_to_plugin({k: v for k, v in detector.state_dict().items()})
    assert "detector layout 'c4'" in report.notes
    assert torch.equal(back["res4.5.conv3.weight"], plugin.res4[5].conv3.weight)
    assert any("proposal_generator" in k for k in report.dropped)


def test_raw_detectron2_names_match_detectron2s_heuristics():
    # DetectionCheckpointer matches plain names by suffix (align_and_update_state_dicts): all backbone keys must land
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

    cfg = _d2_cfg(OUT_FEATURES=["res2", "res3", "res4", "res5"])
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    model_sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    plugin = create_model("resnet50").state_dict()
    checkpoint, _ = C.plugin_to_detectron2(plugin)
    aligned = align_and_update_state_dicts(model_sd, {k: torch.as_tensor(v) for k, v in checkpoint["model"].items()},
                                           c2_conversion=False)
    bottom_up = [k for k in model_sd if k.startswith("backbone.bottom_up.")]
    assert bottom_up and all(k in aligned for k in bottom_up)
    # the exact FPN layout fills the same keys
    exact, report = C.to_detection_checkpoint(plugin, "fpn", target=model_sd)
    assert report.ok and not report.unexpected, str(report)
    assert set(exact["model"]) == set(bottom_up)


# ------------------------------------------------------------------------------------------------------------
# MSRA / Caffe2
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_msra_round_trip_same_eval_outputs(tmp_path, name):
    from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

    plugin = randomize_norms(create_model(name), seed=5).eval()
    msra, report = C.plugin_to_msra(plugin.state_dict())
    assert report.ok and "conv1_w" in msra and "res_conv1_bn_s" in msra and "fc1000_w" in msra
    assert "res3_0_branch1_w" in msra and "res3_0_branch2a_bn_b" in msra
    # detectron2's own Caffe2 renaming agrees with ours on every backbone blob
    blobs = [k for k in msra if not k.startswith("fc1000")]
    ours, _ = C.msra_to_plugin({k: msra[k] for k in blobs})
    assert convert_basic_c2_names(blobs) == [k for k in ours if not k.endswith("running_mean")
                                             and not k.endswith("running_var")]
    path = tmp_path / "R.pkl"
    save_pkl(msra, path)  # a bare {blob: array} dict, like ImageNetPretrained/MSRA/R-50.pkl
    frozen = create_model(name, norm="FrozenBN").eval()
    report = _load_into(frozen, path)
    assert report.ok and report.source == "msra", str(report)
    norm = frozen.stem.conv1.norm
    assert torch.equal(norm.running_var + norm.eps, torch.ones_like(norm.running_var))  # exact affine
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _close(frozen(x), plugin(x))


def test_msra_momentum_dropped_and_junk_unmapped():
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "conv1_w_momentum": np.zeros((64, 3, 7, 7), np.float32),
             "res_conv1_bn_s": np.ones(64, np.float32), "res_conv1_bn_b": np.zeros(64, np.float32),
             "pred_w": np.zeros((3, 3), np.float32)}
    out, report = C.msra_to_plugin(blobs)
    assert set(out) == {"stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.bias",
                        "stem.conv1.norm.running_mean", "stem.conv1.norm.running_var"}
    assert "conv1_w_momentum" in report.dropped and list(report.unmapped) == ["pred_w"]
    assert not report.ok and "pred_w" in str(report)


def test_group_norm_cannot_fold_to_msra():
    plugin = create_model("resnet18", norm="GN")
    _, report = C.plugin_to_msra(plugin.state_dict())
    assert "stem.conv1.norm.weight" in report.unmapped and not report.ok


# ------------------------------------------------------------------------------------------------------------
# reporting, detection, strictness
# ------------------------------------------------------------------------------------------------------------


def test_unmapped_missing_and_mismatched_keys_are_reported():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    sd = dict(tv, **{"foo.weight": torch.zeros(1), "layer1.0.extra.weight": torch.zeros(1)})
    del sd["layer4.1.bn2.running_var"]
    target = create_model("resnet18", num_classes=10)
    out, report = C.torchvision_to_plugin(sd, target=target)
    assert list(report.unmapped) == ["foo.weight", "layer1.0.extra.weight"]
    assert report.missing == ["res5.1.conv2.norm.running_var"]
    assert set(report.shape_mismatches) == {"linear.weight", "linear.bias"}
    text = str(report)
    assert "PROBLEMS" in text and "foo.weight" in text and "res5.1.conv2.norm.running_var" in text
    with pytest.raises(ValueError, match="foo.weight"):
        _load_into(target, sd)
    before = target.linear.weight.clone()
    report = _load_into(target, sd, strict=False)
    assert torch.equal(target.stem.conv1.weight, tv["conv1.weight"]) and torch.equal(target.linear.weight, before)


def test_classifier_is_unexpected_not_fatal_for_a_backbone(plugin_resnet18):
    backbone = create_model("resnet18", num_classes=None, out_features=["res5"])
    report = _load_into(backbone, plugin_resnet18.state_dict())
    assert report.ok and report.unexpected == ["linear.weight", "linear.bias"]


def test_detect_format(tv_resnet50, plugin_resnet18):
    msra, _ = C.plugin_to_msra(plugin_resnet18.state_dict())
    c4, _ = C.to_detection_checkpoint(plugin_resnet18.state_dict(), "c4")
    assert C.detect_format(tv_resnet50.state_dict()) == "torchvision"
    assert C.detect_format(torchvision.models.vgg16(weights=None).state_dict()) == "torchvision"
    assert C.detect_format(plugin_resnet18.state_dict()) == "plugin"
    assert C.detect_format({"blobs": msra}) == "msra"
    assert C.detect_format(c4["model"]) == "detectron2"
    with pytest.raises(ValueError, match="cannot tell"):
        C.detect_format({"what.is.this": torch.zeros(1)})
    with pytest.raises(ValueError, match="'caffe'"):
        C.convert_to_plugin(msra, "caffe")
    with pytest.raises(ValueError, match="'c5'"):
        C.to_detection_checkpoint(plugin_resnet18.state_dict(), "c5")


def test_provenance_table_round_trips_through_json(tmp_path):
    for provenance in PROVENANCE.values():
        assert Provenance.from_dict(json.loads(json.dumps(provenance.to_dict()))) == provenance
    msra, tv = get_provenance("msra"), get_provenance("torchvision")
    assert msra.preprocessing.channel_order == "BGR" and msra.stride_in_1x1 is True
    assert tv.preprocessing.channel_order == "RGB" and tv.preprocessing.input_range == 1 and tv.stride_in_1x1 is False
    assert tv.detectron2_settings()["INPUT.FORMAT"] == "RGB"
    with pytest.raises(ValueError, match="'caffe'"):
        get_provenance("caffe")
    assert read_provenance(tmp_path / "none.pth") is None


# ------------------------------------------------------------------------------------------------------------
# the command-line tool
# ------------------------------------------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, tv_resnet50, capsys):
    tool = load_tool("convert_weights")
    src = tmp_path / "tv_r50.pth"
    atomic_save(tv_resnet50.state_dict(), src)

    c4 = tmp_path / "r50_c4.pkl"
    assert tool.main(["--input", str(src), "--output", str(c4), "--to", "detectron2", "--layout", "c4",
                      "--model", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "torchvision -> plugin" in out and "[OK]" in out and "ImageNet classifier" in out
    record = json.loads(Path(provenance_path(c4)).read_text())
    assert record["source"] == "torchvision" and record["channel_order"] == "RGB"
    assert record["stride_in_1x1"] is False and record["detectron2"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert record["pixel_mean"] == list(get_provenance("torchvision").preprocessing.pixel_mean)
    assert "roi_heads.res5.0.conv1.weight" in load_file(c4)["model"]

    # back to the plugin (auto-detected detectron2 C4 layout); the provenance beside the input is carried over
    plugin_file = tmp_path / "r50.pth"
    assert tool.main(["--input", str(c4), "--output", str(plugin_file), "--to", "plugin"]) == 0
    assert read_provenance(plugin_file).source == "torchvision"
    plugin = create_model("resnet50", stride_in_1x1=False).eval()
    report = _load_into(plugin, plugin_file, strict=False)
    assert report.missing == ["linear.weight", "linear.bias"]  # a detector has no ImageNet classifier
    assert report.converted == len(load_file(c4)["model"]) and not report.unmapped
    assert torch.equal(plugin.res3[0].conv2.weight, tv_resnet50.layer2[0].conv2.weight)

    # MSRA output; --provenance overrides
    msra = tmp_path / "r50_msra.pkl"
    assert tool.main(["--input", str(src), "--output", str(msra), "--to", "msra", "--provenance", "msra"]) == 0
    assert C.detect_format(load_file(msra)) == "msra" and read_provenance(msra).preprocessing.channel_order == "BGR"


def test_cli_refuses_bad_conversions(tmp_path, capsys):
    tool = load_tool("convert_weights")
    vgg = tmp_path / "vgg.pth"
    atomic_save(create_model("vgg16").state_dict(), vgg)
    out = tmp_path / "vgg_msra.pkl"
    assert tool.main(["--input", str(vgg), "--output", str(out), "--to", "msra"]) == 1
    assert not out.exists() and "unmapped" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"\.pkl"):
        tool.main(["--input", str(vgg), "--output", str(tmp_path / "x.pth"), "--to", "detectron2"])
    with pytest.raises(SystemExit):
        tool.main(["--input", str(vgg), "--output", str(tmp_path / "x.pth"), "--to", "plugin", "--layout", "c4"])
