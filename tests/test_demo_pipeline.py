"""tools/demo.py: the paper's two stages end to end at a tiny size (pretraining -> exported weights + provenance ->
Faster R-CNN fine-tuning and the from-scratch control -> COCO + VOC evaluation -> table, plot, pictures), its stage
cache (kept, resumed, re-run when removed: the same numbers), and the overrides file against the paper's configs."""
import json
import math
import pickle
import re

import pytest
from conftest import REPO, load_tool
from PIL import Image

from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts

OVERRIDES = REPO / "configs" / "demo" / "shapes_small_scale.yaml"
# the detection recipe of the paper's configs that fine-tuning keeps (issue: only the scale may change)
RECIPE_KEYS = ("MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.STRIDE_IN_1X1",
               "MODEL.RB_RESNET.SHORTCUT", "MODEL.RB_RESNET.ZERO_INIT_LAST", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
               "INPUT.FORMAT", "MODEL.VGG.DROPOUT", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
               "MODEL.RPN.IOU_THRESHOLDS", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.IOU_THRESHOLDS",
               "MODEL.ROI_HEADS.NMS_THRESH_TEST", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY", "SOLVER.WARMUP_ITERS",
               "SOLVER.GAMMA", "SOLVER.CLIP_GRADIENTS.ENABLED")


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _sections():
    return load_override_sections(OVERRIDES)


@pytest.mark.parametrize("config,section", [("configs/coco/frcnn_r101.yaml", "resnet_pretrained"),
                                            ("configs/coco/frcnn_vgg16.yaml", "vgg16_pretrained")])
def test_fine_tuning_keeps_the_papers_detection_recipe(config, section):
    s = _sections()
    paper = load_config(str(REPO / config), ["MODEL.DEVICE", "cpu"])
    demo = load_config(str(REPO / config), overrides_to_opts(s["common"], s[section]) + ["MODEL.DEVICE", "cpu"])
    for key in RECIPE_KEYS:
        assert _get(demo, key) == _get(paper, key), key
    # the paper's lr, scaled for the batch size only (linear rule), and the decay at the same fraction of training
    s_paper, s_demo = paper.SOLVER, demo.SOLVER
    assert math.isclose(s_demo.BASE_LR / s_demo.IMS_PER_BATCH, s_paper.BASE_LR / s_paper.IMS_PER_BATCH)
    assert math.isclose(s_demo.STEPS[0] / s_demo.MAX_ITER, s_paper.STEPS[0] / s_paper.MAX_ITER, rel_tol=0.01)
    assert demo.MODEL.RESNETS.NORM == "FrozenBN" if "r101" in config else demo.MODEL.BACKBONE.FREEZE_AT == 2


def test_pretraining_keeps_the_papers_classification_recipe():
    s = _sections()
    for config, sections in (("resnet101", ("pretrain",)), ("vgg16", ("pretrain", "pretrain_vgg16"))):
        path = str(REPO / "configs" / "imagenet" / f"{config}.yaml")
        paper = load_config(path)
        demo = load_config(path, overrides_to_opts(*(s[n] for n in sections)))
        for key in ("BASE_LR", "REFERENCE_BATCH", "MOMENTUM", "WEIGHT_DECAY", "GAMMA"):
            assert demo.PRETRAIN.SOLVER[key] == paper.PRETRAIN.SOLVER[key], key
        for key in ("LIGHTING_STD", "FLIP"):
            assert demo.PRETRAIN.INPUT[key] == paper.PRETRAIN.INPUT[key], key
        assert demo.PRETRAIN.DATASET.NAME == "generated_shapes"
        # crops and scale range shrink together: the paper's ratios
        ratio = demo.PRETRAIN.INPUT.CROP_SIZE / paper.PRETRAIN.INPUT.CROP_SIZE
        assert [round(v * ratio) for v in paper.PRETRAIN.INPUT.SCALE] == list(demo.PRETRAIN.INPUT.SCALE)
        assert round(paper.PRETRAIN.INPUT.TEST_RESIZE * ratio) == demo.PRETRAIN.INPUT.TEST_RESIZE
    # VGG-16 is pretrained with the preprocessing the VGG-16 detection config expects of its weights
    vgg = load_config(str(REPO / "configs" / "imagenet" / "vgg16.yaml"), overrides_to_opts(s["pretrain"],
                                                                                        s["pretrain_vgg16"]))
    det = load_config(str(REPO / "configs" / "coco" / "frcnn_vgg16.yaml"))
    assert list(vgg.PRETRAIN.INPUT.PIXEL_MEAN) == list(det.MODEL.PIXEL_MEAN)
    assert list(vgg.PRETRAIN.INPUT.PIXEL_STD) == list(det.MODEL.PIXEL_STD)
    assert vgg.PRETRAIN.INPUT.FORMAT == det.INPUT.FORMAT


def test_a_failed_stage_names_its_log(tmp_path, capsys):
    demo = load_tool("demo")
    stage = demo.Stage("broken", "a stage that fails", ["python", "-c", "import sys; print('boom'); sys.exit(3)"],
                       tmp_path / "broken", ["never.json"])
    with pytest.raises(demo.StageFailed, match=re.escape(str(tmp_path / "logs" / "broken.log"))):
        (tmp_path / "logs").mkdir()
        demo.run_stage(stage, tmp_path / "logs", 1, 1)
    log = (tmp_path / "logs" / "broken.log").read_text()
    assert log.startswith("$ python -c ") and "boom" in log
    assert not (tmp_path / "broken" / demo.STAGE_RECORD).exists()


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def _table(text):
    return [line for line in text.splitlines() if line.startswith("| Faster R-CNN")]


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    demo = load_tool("demo")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "left over").write_text("")
    summary = demo.main(["--tiny", "--output", str(out), "--device", "cpu", "--fresh"])
    assert not (out / "left over").exists()  # --fresh starts over
    first = capsys.readouterr().out
    s = _sections()

    # stage 1: exported detectron2-format weights with their provenance, consistent with the run
    for name, label, _, sections in demo.PRETRAININGS:
        run = out / name
        results = json.loads((run / "pretrain_results.json").read_text())
        record = json.loads((run / "model_final_d2.pkl.provenance.json").read_text())
        opts = dict(zip(*[iter(overrides_to_opts(*(s[n] for n in sections + ("tiny_pretrain",))))] * 2))
        assert record["model"] == results["model"] == ("resnet101" if "r101" in name else "vgg16")
        assert record["dataset"] == "generated_shapes"
        assert record["iterations"] == results["iteration"] == int(opts["PRETRAIN.SOLVER.MAX_ITER"])
        assert record["val_top1_err"] == results["val"]["top1_err"] == summary["pretraining"][name]["val_top1_err"]
        assert record["channel_order"] == ("RGB" if "vgg" in name else "BGR")
        with open(run / "model_final_d2.pkl", "rb") as f:
            weights = pickle.load(f)
        assert weights["__author__"] == "resnet_backbone pretraining" and weights["matching_heuristics"]
        assert ("conv5_3.weight" if "vgg" in name else "res5.2.conv3.weight") in weights["model"]
        assert not any(k.startswith(("linear.", "fc8.")) for k in weights["model"])  # no classifier layer
        curve = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()]
        assert any("val/top1_err" in r for r in curve) and any("loss" in r for r in curve)

    # stage 2: each detector trained (from the export where pretrained) and evaluated in both formats
    rows = {r["detector"] + ", " + r["init"]: r for r in summary["rows"]}
    for name, config, _, pretrained in demo.DETECTORS:
        if name in demo.OPTIONAL_DETECTORS:
            assert not (out / name).exists()
            continue
        run = out / name
        cfg = load_config(str(run / "config.yaml"))
        if pretrained:
            assert cfg.MODEL.WEIGHTS == str(out / pretrained / "model_final_d2.pkl")
        else:
            assert cfg.MODEL.WEIGHTS == ""
        payload = json.loads((run / "eval_results.json").read_text())
        formats = {res["format"]: res["bbox"] for res in payload["results"].values()}
        assert set(formats) == {"coco", "pascal_voc"}
        # a few iterations may detect nothing: pycocotools' AP is then nan
        assert all(isinstance(v, float) for bbox in formats.values() for v in (bbox["AP"], bbox["AP50"]))
        row = rows[f"Faster R-CNN {payload['label']}, {'pretrained' if pretrained else 'from scratch'}"]
        assert _same(row["COCO-format AP50"], formats["coco"]["AP50"])
        assert _same(row["COCO-format AP"], formats["coco"]["AP"])
        assert _same(row["VOC-format mAP@.5"], formats["pascal_voc"]["AP50"])
        assert (row["paper COCO mAP@.5"] is not None) == bool(pretrained)
        pictures = out / "predictions" / name
        predictions = json.loads((pictures / "predictions.json").read_text())
        assert len(predictions["images"]) == demo.PREDICTION_IMAGES["tiny"]
        for image in predictions["images"]:
            assert Image.open(pictures / image["file_name"].split("/")[-1]).size == (image["width"], image["height"])
        log = (out / "logs" / f"{name}.log").read_text()
        assert log.startswith("$ ") and "train_net.py" in log.splitlines()[0]

    # the report: table (printed and written), plot, prediction montage
    table = (out / "results.md").read_text()
    assert _table(table) == _table(first) and len(_table(table)) == 3
    assert "paper VOC07 mAP@.5" in table and "76.4" in table and "73.2" in table  # Tables 7-8 beside ours
    assert Image.open(summary["plot"]).format == "PNG"
    assert Image.open(summary["predictions"]).height > 3 * 100

    # clean console: one line per stage, progress lines, no command lines
    assert "$ " not in first and "eta: " in first
    assert len(re.findall(r"\] \d+/\d+ ", first)) == len(demo.PRETRAININGS) + 2 * 3 + 1

    # re-run: finished stages are kept; a removed stage runs again and gives the same numbers (seeded), an
    # interrupted one resumes from its checkpoint
    losses = (out / "frcnn_r101_pretrained" / "metrics.json").read_text()
    pretrain_results = (out / "pretrain_r101" / "pretrain_results.json").read_text()
    for folder in ("pretrain_r101", "frcnn_r101_pretrained"):
        for path in sorted((out / folder).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (out / folder).rmdir()
    scratch = out / "frcnn_r101_scratch"
    (scratch / "model_final.pth").unlink()
    key = json.loads((scratch / demo.STAGE_RECORD).read_text())["key"]
    (scratch / demo.STAGE_RECORD).unlink()
    (scratch / (demo.STAGE_RECORD + ".started")).write_text(key)
    (scratch / "last_checkpoint").write_text("model_0000001.pth")
    demo.main(["--tiny", "--output", str(out), "--device", "cpu"])
    second = capsys.readouterr().out
    assert second.count("done before, kept") == len(demo.PRETRAININGS) + 2 * 3 - 3
    assert "resuming an interrupted run" in second
    assert "Starting training from iteration 2" in (scratch / "log.txt").read_text()
    assert (out / "pretrain_r101" / "pretrain_results.json").read_text() == pretrain_results
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if "time" not in k and k != "eta_seconds"}
                          for line in text.splitlines()]  # noqa: E731
    assert strip((out / "frcnn_r101_pretrained" / "metrics.json").read_text()) == strip(losses)
    # the re-run stages and the kept ones print the same rows; the resumed detector continues from its
    # checkpoint's weights and schedule, but detectron2's train loader starts its data order over, so its
    # numbers may differ from the uninterrupted run's
    resumed = lambda rows: [r for r in rows if "from scratch" not in r or "ResNet-101" not in r]  # noqa: E731
    assert resumed(_table(second)) == resumed(_table(first)) and len(_table(second)) == len(_table(first))
