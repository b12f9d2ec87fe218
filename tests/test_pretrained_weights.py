"""The detection configs' ImageNet weights, offline: MSRA Caffe2 pickles and torchvision state dicts in their exact
formats (written here by the project's own writers), loaded through MODEL.WEIGHTS from a file, a detectron2:// path
and a URL (a local HTTP server standing in for the internet), downloaded once into the cache with a checksum; the
provenance check for these sources; the refusal to train frozen layers that got no weights; and detectron2's own
R-50 C4 detector reproduced by the plugin's from a detectron2-format checkpoint.
"""
import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import load_tool, randomize_norms
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import resnet_backbone
from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.checkpoint.convert import plugin_to_msra
from resnet_backbone.checkpoint.download import cached_path, fetch
from resnet_backbone.checkpoint.frozen import check_frozen_layers_loaded, check_training_weights, loaded_keys
from resnet_backbone.checkpoint.pkl_writer import save_pkl
from resnet_backbone.checkpoint.preprocessing import check_preprocessing
from resnet_backbone.checkpoint.provenance import PROVENANCE, known_source, read_provenance
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts
from resnet_backbone.modeling import ResNet
from resnet_backbone.utils.atomic import atomic_save

# also run on the detectron2 v0.6 fallback: loading leans on detectron2's checkpointer and Caffe2 name conversion
pytestmark = pytest.mark.v06
REPO = Path(__file__).resolve().parents[1]
DETECTION_CONFIGS = sorted(p for d in ("coco", "voc") for p in (REPO / "configs" / d).glob("*.yaml")
                           if not p.name.startswith("Base"))
MSRA_R50 = "ImageNetPretrained/MSRA/R-50.pkl"
SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "20"]


def _cfg(name, *opts):
    return load_config(str(REPO / "configs" / name), SMALL + list(opts))


@pytest.fixture(scope="module")
def msra_r50(tmp_path_factory):
    """An MSRA / Caffe2 ImageNet pickle (bare {blob: array}, BatchNorm folded) of a plugin ResNet-50, where
    detectron2 keeps it: .../ImageNetPretrained/MSRA/R-50.pkl. Returns (path, classifier, blobs)."""
    torch.manual_seed(0)
    classifier = randomize_norms(resnet_backbone.create_model("resnet50", num_classes=1000)).eval()
    blobs, report = plugin_to_msra(classifier.state_dict())
    assert report.ok and "res_conv1_bn_s" in blobs and "res5_2_branch2c_w" in blobs and "fc1000_w" in blobs
    path = tmp_path_factory.mktemp("msra") / MSRA_R50
    path.parent.mkdir(parents=True)
    save_pkl(blobs, path)
    return path, classifier, blobs


class _Server:
    """A local HTTP server over a folder, counting the requests per path."""

    def __init__(self, root):
        self.root, self.requests = Path(root), []
        handler = functools.partial(self._Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = self.requests
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    class _Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            self.server.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    srv = _Server(tmp_path / "www")
    srv.root.mkdir()
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _published_name(state_dict, folder, arch):
    """torch.save a state dict as torchvision publishes it: <arch>-<first 8 hex digits of its SHA-256>.pth."""
    tmp = folder / f"{arch}.tmp.pth"
    atomic_save(state_dict, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{arch}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def _load(cfg):
    model = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)
    return model, checkpointer.last_load_report


def _assert_msra_weights_in(model, blobs, res5_prefix, prefix):
    state = model.state_dict()
    pairs = {f"{prefix}stem.conv1.weight": "conv1_w", f"{prefix}stem.conv1.norm.weight": "res_conv1_bn_s",
             f"{prefix}res2.0.shortcut.weight": "res2_0_branch1_w", f"{prefix}res3.1.conv2.norm.bias":
             "res3_1_branch2b_bn_b", f"{prefix}res4.5.conv3.weight": "res4_5_branch2c_w",
             f"{res5_prefix}res5.2.conv3.norm.weight": "res5_2_branch2c_bn_s"}
    for key, blob in pairs.items():
        assert torch.equal(state[key], torch.as_tensor(blobs[blob])), key


# ------------------------------------------------------------------------------------------- the shipped configs


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_detection_config_names_imagenet_weights_with_their_preprocessing(path):
    cfg = load_config(str(path))
    weights = cfg.MODEL.WEIGHTS
    provenance, network = known_source(weights)
    if "vgg" in cfg.MODEL.BACKBONE.NAME:
        assert weights == "https://download.pytorch.org/models/vgg16-397923af.pth"
        assert provenance is PROVENANCE["torchvision"] and network == {"arch": "vgg16"}
    else:
        assert weights == f"detectron2://ImageNetPretrained/MSRA/R-{cfg.MODEL.RESNETS.DEPTH}.pkl"
        assert provenance is PROVENANCE["msra"] and cfg.MODEL.RESNETS.STRIDE_IN_1X1
    # the config's PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT are what these weights need
    assert check_preprocessing(cfg, weights) == provenance.preprocessing
    # and the config (or, for VOC, its header) says so in a comment
    comments = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    assert any("ImageNet" in line and ("MSRA" in line or "torchvision" in line) for line in comments), path


def test_known_sources_mismatch_names_both_settings():
    with pytest.raises(ValueError) as err:
        check_preprocessing(_cfg("coco/frcnn_vgg16.yaml", "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]",
                                 "MODEL.PIXEL_STD", "[1, 1, 1]", "INPUT.FORMAT", "BGR"),
                            "https://download.pytorch.org/models/vgg16-397923af.pth")
    message = str(err.value)
    for part in ("MODEL.PIXEL_MEAN is [103.53", "need [123.675, 116.28, 103.53]", "MODEL.PIXEL_STD",
                 "58.395", "INPUT.FORMAT is 'BGR' but the weights need 'RGB'", "torchvision"):
        assert part in message, (part, message)
    with pytest.raises(ValueError, match=r"STRIDE_IN_1X1 is False but the weights need True"):
        check_preprocessing(_cfg("coco/frcnn_r101.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", "False"),
                            "detectron2://ImageNetPretrained/MSRA/R-101.pkl")
    # the name also says which network the file holds
    with pytest.raises(ValueError, match=r"MODEL.RESNETS.DEPTH is 50 but the weights are ResNet-101"):
        check_preprocessing(_cfg("coco/frcnn_r101.yaml", "MODEL.RESNETS.DEPTH", "50"),
                            "detectron2://ImageNetPretrained/MSRA/R-101.pkl")
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.NAME is 'build_rb_resnet_backbone' but the weights are "
                                         r"vgg16"):
        check_preprocessing(_cfg("coco/frcnn_r101.yaml", "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
                                 "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]", "INPUT.FORMAT", "RGB",
                                 "MODEL.RESNETS.STRIDE_IN_1X1", "False"),
                            "/some/cache/download.pytorch.org/models/vgg16-397923af.pth")
    # names that say nothing are not guessed at
    assert check_preprocessing(_cfg("coco/frcnn_r101.yaml"), "weights/R-101.pkl") is None


# ----------------------------------------------------------------------------------------- MSRA Caffe2 pickles


@pytest.mark.parametrize("config,layout", [("coco/frcnn_r101.yaml", "c4"), ("coco/mask_rcnn_r101_fpn.yaml", "fpn")])
def test_msra_pickle_fills_the_c4_and_fpn_layouts(msra_r50, config, layout):
    path, classifier, blobs = msra_r50
    cfg = _cfg(config, "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", str(path))
    assert check_preprocessing(cfg, path) == PROVENANCE["msra"].preprocessing  # recognised by its path
    model, report = _load(cfg)
    prefix = "backbone." if layout == "c4" else "backbone.bottom_up."
    res5 = "roi_heads." if layout == "c4" else prefix
    assert [k for k, _ in report.missing if k.startswith((prefix, res5 + "res5."))
            and not k.endswith(("running_mean", "running_var"))] == []
    assert not report.mismatched
    assert {k for k, _ in report.unexpected} == {"fc1000.weight", "fc1000.bias"}
    _assert_msra_weights_in(model, blobs, res5, prefix)
    assert check_training_weights(cfg, model, report) == {}  # every frozen layer got weights
    # the detector's backbone computes what the classifier it came from computes (BN folded by the pickle)
    x = torch.randn(1, 3, 64, 64)
    bottom_up = model.backbone if layout == "c4" else model.backbone.bottom_up
    with torch.no_grad():
        ours = bottom_up(x)["res4"]
        theirs = classifier.res4(classifier.res3(classifier.res2(classifier.stem(x))))
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3 * theirs.abs().max().item())


def test_detectron2_path_downloads_once_through_detectron2s_handler(msra_r50, server, cache, monkeypatch):
    from detectron2.utils.file_io import Detectron2Handler

    path, _, blobs = msra_r50
    (server.root / "detectron2" / MSRA_R50).parent.mkdir(parents=True)
    (server.root / "detectron2" / MSRA_R50).write_bytes(path.read_bytes())
    # detectron2's model-zoo handler maps detectron2://X to its download prefix + X: point that prefix here
    monkeypatch.setattr(Detectron2Handler, "S3_DETECTRON2_PREFIX", server.url + "/detectron2/")
    weights = "detectron2://" + MSRA_R50
    cfg = _cfg("coco/frcnn_r101.yaml", "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", weights)
    assert check_preprocessing(cfg, weights) == PROVENANCE["msra"].preprocessing
    model, report = _load(cfg)
    _assert_msra_weights_in(model, blobs, "roi_heads.", "backbone.")
    local = cached_path(server.url + "/detectron2/" + MSRA_R50)
    assert local.startswith(str(cache) + os.sep) and Path(local).read_bytes() == path.read_bytes()
    assert local.endswith(MSRA_R50)  # the cached copy keeps the name that says what it is
    assert check_preprocessing(cfg, local) == PROVENANCE["msra"].preprocessing
    assert server.requests == ["/detectron2/" + MSRA_R50]
    assert fetch(weights) == local and len(server.requests) == 1  # downloaded once


# ------------------------------------------------------------------------------------------------ torchvision


@pytest.fixture(scope="module")
def tv_vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


def test_torchvision_vgg16_url_loads_converted_with_its_checksum(tv_vgg16, server, cache):
    # the published file holds features.* and classifier.*; the convolutions carry what is being checked here
    # (the full file, fc6 / fc7 included, is loaded in the slow test below)
    features = {k: v for k, v in tv_vgg16.state_dict().items() if k.startswith("features.")}
    published = _published_name(features, server.root, "vgg16")
    url = f"{server.url}/{published.name}"
    cfg = _cfg("coco/frcnn_vgg16.yaml", "MODEL.WEIGHTS", url)
    assert check_preprocessing(cfg, url) == PROVENANCE["torchvision"].preprocessing
    model, report = _load(cfg)
    state = model.state_dict()
    assert torch.equal(state["backbone.conv1_1.weight"], features["features.0.weight"])
    assert torch.equal(state["backbone.conv2_2.bias"], features["features.7.bias"])
    assert torch.equal(state["backbone.conv5_3.weight"], features["features.28.weight"])
    assert not [k for k, _ in report.missing if k.startswith("backbone.")]
    assert check_training_weights(cfg, model, report) == {}  # conv1_x / conv2_x (frozen) got weights
    assert Path(cached_path(url)).read_bytes() == published.read_bytes()
    # the offline route: convert from the same URL (read from the cache now), load the written file
    out = server.root.parent / "weights" / "vgg16.pkl"
    assert load_tool("convert_weights").main(["--input", url, "--output", str(out), "--to", "detectron2"]) == 0
    assert server.requests == [f"/{published.name}"]
    assert read_provenance(out).source == "torchvision"
    offline = _cfg("coco/frcnn_vgg16.yaml", "MODEL.WEIGHTS", str(out))
    assert check_preprocessing(offline, out) == PROVENANCE["torchvision"].preprocessing
    model, report = _load(offline)
    assert torch.equal(model.state_dict()["backbone.conv4_2.weight"], features["features.19.weight"])


def test_checksum_mismatch_and_failed_download_leave_nothing_cached(tv_vgg16, server, cache):
    wrong = server.root / "vgg16-00000000.pth"
    atomic_save({"features.0.bias": torch.zeros(64)}, wrong)
    with pytest.raises(ValueError, match="SHA-256 is [0-9a-f]{64}, the published one starts with 00000000"):
        fetch(f"{server.url}/{wrong.name}", progress=False)
    assert not Path(cached_path(f"{server.url}/{wrong.name}")).exists()
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no partial download either
    with pytest.raises(OSError) as err:
        fetch(f"{server.url}/missing/R-50.pkl", progress=False)
    assert "tools/convert_weights.py" in str(err.value) and "RB_CACHE_DIR" in str(err.value)


def test_torchvision_names_are_kept_for_a_model_that_has_them(tmp_path):
    source, target = torchvision.models.resnet18(weights=None), torchvision.models.resnet18(weights=None)
    randomize_norms(source).eval()
    published = _published_name(source.state_dict(), tmp_path, "resnet18")
    checkpointer = SafeDetectionCheckpointer(target)
    checkpointer.load(str(published))
    assert checkpointer.last_load_report.missing == [] and checkpointer.last_load_report.unexpected == []
    assert torch.equal(target.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


@pytest.mark.slow
def test_full_torchvision_vgg16_file_fills_backbone_and_fc6_fc7(tv_vgg16, tmp_path):
    published = _published_name(tv_vgg16.state_dict(), tmp_path, "vgg16")
    cfg = _cfg("coco/frcnn_vgg16.yaml", "MODEL.WEIGHTS", str(published))
    assert check_preprocessing(cfg, published) == PROVENANCE["torchvision"].preprocessing
    model, report = _load(cfg)
    state, source = model.state_dict(), tv_vgg16.state_dict()
    assert torch.equal(state["roi_heads.box_head.fc6.weight"], source["classifier.0.weight"])
    assert torch.equal(state["roi_heads.box_head.fc7.bias"], source["classifier.3.bias"])
    assert {k for k, _ in report.unexpected} == {"fc8.weight", "fc8.bias"}  # the ImageNet classifier
    assert not [k for k, _ in report.missing if k.startswith(("backbone.", "roi_heads.box_head."))]


# ------------------------------------------------------------------------------------- tools/convert_weights.py


def test_convert_weights_downloads_converts_and_records_provenance(msra_r50, server, cache, tmp_path):
    tool = load_tool("convert_weights")
    path, classifier, blobs = msra_r50
    (server.root / MSRA_R50).parent.mkdir(parents=True)
    (server.root / MSRA_R50).write_bytes(path.read_bytes())
    out = tmp_path / "weights" / "R-50.pkl"
    assert tool.main(["--input", f"{server.url}/{MSRA_R50}", "--output", str(out), "--to", "detectron2",
                      "--model", "resnet50"]) == 0
    record = json.loads((tmp_path / "weights" / "R-50.pkl.provenance.json").read_text())
    assert record["source"] == "msra" and record["converted_from"] == f"{server.url}/{MSRA_R50}"
    assert record["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["detectron2"]["INPUT.FORMAT"] == "BGR" and record["stride_in_1x1"] is True
    # the written file is what MODEL.WEIGHTS takes on a machine without internet access
    cfg = _cfg("coco/frcnn_r101.yaml", "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", str(out))
    assert check_preprocessing(cfg, out) == PROVENANCE["msra"].preprocessing
    model, report = _load(cfg)
    _assert_msra_weights_in(model, blobs, "roi_heads.", "backbone.")
    assert check_training_weights(cfg, model, report) == {}
    # a file:// URL works the same, and is cached too
    out2 = tmp_path / "R-50_file.pkl"
    assert tool.main(["--input", path.as_uri(), "--output", str(out2), "--to", "detectron2"]) == 0
    assert read_provenance(out2).source == "msra"
    assert Path(cached_path(path.as_uri())).read_bytes() == path.read_bytes()
    # an explicit --sha256 that does not match stops before anything is written
    with pytest.raises(SystemExit, match="SHA-256"):
        tool.main(["--input", str(path), "--output", str(tmp_path / "no.pkl"), "--to", "detectron2",
                   "--sha256", "0123abcd"])
    assert not (tmp_path / "no.pkl").exists()


# -------------------------------------------------------------------------------------- frozen layers need weights


@pytest.mark.parametrize("config", ["coco/frcnn_r101.yaml", "coco/frcnn_vgg16.yaml", "coco/mask_rcnn_r101_fpn.yaml",
                                    "coco/retinanet_r101_fpn.yaml"])
def test_training_refuses_frozen_layers_without_weights(config):
    depth = [] if "vgg" in config else ["MODEL.RESNETS.DEPTH", "50"]  # same stages, half the build time
    cfg = _cfg(config, "MODEL.WEIGHTS", "", *depth)
    model = build_model(cfg)
    with pytest.raises(ValueError) as err:
        check_training_weights(cfg, model, None)
    message = str(err.value)
    assert 'MODEL.WEIGHTS ""' in message and "MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN True" in message
    if "vgg" in config:
        for stage in ("backbone.conv1_1", "backbone.conv2_2"):
            assert stage in message
        assert "backbone.conv3_1" not in message and "MODEL.BACKBONE.FREEZE_AT 0" in message
        assert "torchvision" in message
    else:
        prefix = "backbone.bottom_up." if "fpn" in config else "backbone."
        res5 = prefix if "fpn" in config else "roi_heads."
        for stage in ("stem", "res2", "res3", "res4"):
            assert prefix + stage in message
        assert res5 + "res5" in message and "FrozenBN" in message
        assert "MODEL.BACKBONE.FREEZE_AT 0 MODEL.RESNETS.NORM BN" in message
        assert "detectron2://ImageNetPretrained/MSRA/R-50.pkl" in message
    # explicitly allowed: reported, not refused
    cfg.defrost()
    cfg.MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN = True
    left = check_training_weights(cfg, model, None)
    assert left and all(stage.startswith("backbone.") or stage.startswith("roi_heads.") for stage in left)


@pytest.mark.parametrize("family,config", [("resnet", "coco/frcnn_r101.yaml"), ("vgg16", "coco/frcnn_vgg16.yaml")])
def test_demo_from_scratch_settings_have_nothing_frozen(family, config):
    sections = load_override_sections(REPO / "configs" / "demo" / "shapes_small_scale.yaml")
    cfg = _cfg(config, *overrides_to_opts(sections["common"], sections[family]), "MODEL.RESNETS.DEPTH", "18",
               "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")
    assert cfg.MODEL.WEIGHTS == ""
    assert check_training_weights(cfg, build_model(cfg), None) == {}


def test_partly_covered_frozen_layers_are_named():
    model = ResNet(18, norm="FrozenBN", freeze_at=2, out_features=["res4"])
    keys = set(model.state_dict())
    without_res3_norms = {k for k in keys if not (k.startswith("res3.") and ".norm." in k)}
    with pytest.raises(ValueError, match=r"res3: FrozenBN") as err:
        check_frozen_layers_loaded(model, without_res3_norms, weights="w.pth")
    assert "stem" not in str(err.value) and "res2" not in str(err.value) and "'w.pth'" in str(err.value)
    assert check_frozen_layers_loaded(model, keys) == {}


def test_loaded_keys_follow_the_load_report(msra_r50):
    path, _, _ = msra_r50
    cfg = _cfg("coco/frcnn_r101.yaml", "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", str(path))
    model, report = _load(cfg)
    loaded = loaded_keys(model, report)
    assert "backbone.stem.conv1.weight" in loaded and "roi_heads.res5.0.conv1.norm.weight" in loaded
    assert "roi_heads.box_predictor.cls_score.weight" not in loaded
    assert loaded_keys(model, None) == set()


@pytest.mark.slow
def test_train_net_refuses_to_start_then_trains_when_allowed(tmp_path, monkeypatch):
    from resnet_backbone.data.synthetic_detection import generate_dataset

    train_net = load_tool("train_net")
    generate_dataset(tmp_path / "data" / "rb_shapes", num_train=2, num_val=2, image_size=(64, 96))
    monkeypatch.setenv("RB_DATASETS", str(tmp_path / "data"))
    sections = load_override_sections(REPO / "configs" / "demo" / "shapes_small_scale.yaml")
    opts = overrides_to_opts(sections["common"]) + [
        "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.MAX_ITER", "1", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
    args = ["--config", str(REPO / "configs" / "coco" / "frcnn_r101.yaml")]
    # the paper's config as is (FREEZE_AT 2, FrozenBN) with no weights: refused before the first iteration
    with pytest.raises(ValueError, match=r"refusing to train: MODEL.WEIGHTS \"\".*backbone\.stem"):
        train_net.main(args + opts + ["OUTPUT_DIR", str(tmp_path / "refused")])
    metrics = tmp_path / "refused" / "metrics.json"  # opened by the trainer's writers, never written to
    assert not (metrics.exists() and metrics.read_text().strip())
    assert not (tmp_path / "refused" / "model_final.pth").exists()
    # the same, explicitly allowed, trains
    train_net.main(args + opts + ["OUTPUT_DIR", str(tmp_path / "allowed"), "MODEL.RB_WEIGHTS.ALLOW_RANDOM_FROZEN",
                                  "True"])
    assert (tmp_path / "allowed" / "model_final.pth").exists()


# ------------------------------------------------------------------------------------------- known-good numbers


def test_detectron2_r50_c4_checkpoint_gives_detectron2s_boxes_and_scores(tmp_path):
    """detectron2's own R-50 C4 Faster R-CNN (its defaults), random weights, saved in detectron2's model-zoo format;
    loaded into the plugin's C4 detector it gives the same detections on the same image."""
    cfg = get_cfg()  # detectron2's defaults are its R-50 C4 Faster R-CNN: build_resnet_backbone + Res5ROIHeads
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 224
    torch.manual_seed(0)
    theirs = randomize_norms(build_model(cfg)).eval()
    assert type(theirs.backbone).__module__.startswith("detectron2.")
    weights = tmp_path / "model_final_r50_c4.pkl"
    save_pkl({"model": theirs.state_dict(), "__author__": "Detectron2 Model Zoo"}, weights)

    ours_cfg = get_cfg()
    resnet_backbone.add_resnet_backbone_config(ours_cfg)
    ours_cfg.merge_from_other_cfg(cfg)
    ours_cfg.MODEL.BACKBONE.NAME, ours_cfg.MODEL.ROI_HEADS.NAME = "build_rb_resnet_backbone", "RBRes5ROIHeads"
    # NCHW as detectron2 computes (channels-last, the plugin's CPU default, sums in another order: ~1e-3 px apart)
    ours_cfg.MODEL.RB_RESNET.CHANNELS_LAST = False
    ours_cfg.MODEL.WEIGHTS = str(weights)
    ours, report = _load(ours_cfg)
    assert isinstance(ours.backbone, ResNet)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    ours.eval()

    yy, xx = torch.meshgrid(torch.arange(160), torch.arange(224), indexing="ij")
    image = torch.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, ((xx - 80) ** 2 + (yy - 60) ** 2 < 1500) * 200])
    inputs = [{"image": image.float(), "height": 160, "width": 224}]
    with torch.no_grad():
        expected, got = theirs(inputs)[0]["instances"], ours(inputs)[0]["instances"]
    assert len(expected) > 10 and len(got) == len(expected)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-4)
    assert torch.allclose(got.scores, expected.scores, rtol=0, atol=1e-4)
    assert np.isfinite(got.pred_boxes.tensor.numpy()).all()
