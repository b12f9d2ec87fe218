"""tools/demo.py: the paper's two stages end to end at a tiny size (pretraining -> exported weights + provenance ->
Faster R-CNN fine-tuning and the from-scratch control -> COCO + VOC evaluation -> table, plot, pictures), its stage
cache (kept, resumed, re-run when removed: the same numbers), and the overrides file against the paper's configs."""
import json
import math
import pickle
import re
import shutil

import pytest
from conftest import REPO, load_tool
from PIL import Image

from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.overrides import load_override_sections, overrides_to_opts

OVERRIDES = REPO / "configs" / "demo" / "digits_small_scale.yaml"
# the detection recipe of the paper's configs that fine-tuning keeps (issue: only the scale may change)
RECIPE_KEYS = ("MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT", "MODEL.RESNETS.STRIDE_IN_1X1",
               "MODEL.RB_RESNET.SHORTCUT", "MODEL.RB_RESNET.ZERO_INIT_LAST", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
               "INPUT.FORMAT", "MODEL.VGG.DROPOUT", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
               "MODEL.RPN.IOU_THRESHOLDS", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.ROI_HEADS.IOU_THRESHOLDS",
               "MODEL.ROI_HEADS.NMS_THRESH_TEST", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY", "SOLVER.WARMUP_ITERS",
               "SOLVER.GAMMA", "SOLVER.CLIP_GRADIENTS.ENABLED")
# what the small scale may change in a fine-tuning run (each with its reason in the overrides file), and what a run
# sets that is no recipe (data, weights, where it writes); SOLVER.BASE_LR is the stated exception (the lr grid)
SCALE_KEYS = {"INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
              "INPUT.RANDOM_FLIP", "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
              "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST",
              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "DATALOADER.NUM_WORKERS",
              "SOLVER.IMS_PER_BATCH", "SOLVER.STEPS", "SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD",
              "RB_TRAIN.LOG_PERIOD"}
RUN_KEYS = {"MODEL.WEIGHTS", "DATASETS.TRAIN", "DATASETS.TEST", "MODEL.ROI_HEADS.NUM_CLASSES", "SEED", "OUTPUT_DIR",
            "MODEL.DEVICE"}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _sections():
    return load_override_sections(OVERRIDES)


def _plan(demo, tmp_path):
    return demo.Plan(_sections(), tmp_path, "cpu", False, None)


def _run_config(stage):
    # the config the stage's command trains: everything after --config <file>, less the tool's own flags
    command = stage.command
    i = command.index("--config")
    return load_config(str(REPO / command[i + 1]), command[i + 2:])


@pytest.mark.parametrize("name", ["frcnn_r101_pretrained", "frcnn_vgg16_pretrained"])
def test_fine_tuning_keeps_the_papers_detection_recipe_key_by_key(name, tmp_path):
    demo = load_tool("demo")
    plan = _plan(demo, tmp_path)
    source = next(p for n, _, _, p in demo.DETECTORS if n == name)
    weights = plan.pretraining(source, tmp_path / "seed0" / source, seed=0, lr=plan.tuned(source))
    config, _, stage = plan.detection(name, tmp_path / "seed0" / name, seed=0, lr=plan.tuned(name), weights=weights)
    paper, run = load_config(str(REPO / config)), _run_config(stage)
    changed = {k for k, v in _flat(run).items() if _flat(paper).get(k) != v}
    assert changed - SCALE_KEYS - RUN_KEYS == {"SOLVER.BASE_LR"}, "only the scale and the tuned lr may change"
    assert not changed & set(RECIPE_KEYS)
    # the lr is the arm's grid choice; the decay at the same fraction of training as the paper's
    assert run.SOLVER.BASE_LR == plan.tuned(name)["SOLVER.BASE_LR"]
    assert run.SOLVER.BASE_LR in _sections()["grid"]["detection_lrs"]
    assert math.isclose(run.SOLVER.STEPS[0] / run.SOLVER.MAX_ITER, paper.SOLVER.STEPS[0] / paper.SOLVER.MAX_ITER,
                        rel_tol=0.01)
    assert run.MODEL.WEIGHTS == str(weights.output_dir / "model_final_d2.pkl")
    assert run.MODEL.RESNETS.NORM == "FrozenBN" if "r101" in name else run.MODEL.BACKBONE.FREEZE_AT == 2


def test_the_from_scratch_control_changes_only_what_training_without_weights_needs(tmp_path):
    demo = load_tool("demo")
    plan = _plan(demo, tmp_path)
    config, _, stage = plan.detection("frcnn_r101_scratch", tmp_path / "s", seed=0,
                                      lr=plan.tuned("frcnn_r101_scratch"), weights=None)
    paper, run = load_config(str(REPO / config)), _run_config(stage)
    changed = {k for k, v in _flat(run).items() if _flat(paper).get(k) != v} - SCALE_KEYS - RUN_KEYS
    assert changed == {"SOLVER.BASE_LR", "MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT",
                       "MODEL.RB_RESNET.ZERO_INIT_LAST", "SOLVER.WARMUP_ITERS"}
    assert run.MODEL.WEIGHTS == ""


def test_pretraining_keeps_the_papers_classification_recipe():
    s = _sections()
    for name, config, sections in (("pretrain_r101", "resnet101", ("pretrain", "pretrain_resnet101")),
                                   ("pretrain_vgg16", "vgg16", ("pretrain", "pretrain_vgg16"))):
        path = str(REPO / "configs" / "imagenet" / f"{config}.yaml")
        paper = load_config(path)
        demo = load_config(path, overrides_to_opts(*(s[n] for n in sections), s["tuned"][name]))
        for key in ("REFERENCE_BATCH", "MOMENTUM", "WEIGHT_DECAY", "GAMMA"):
            assert demo.PRETRAIN.SOLVER[key] == paper.PRETRAIN.SOLVER[key], key
        assert demo.PRETRAIN.INPUT.LIGHTING_STD == paper.PRETRAIN.INPUT.LIGHTING_STD
        assert demo.PRETRAIN.PRECISE_BN.ENABLED == paper.PRETRAIN.PRECISE_BN.ENABLED
        assert demo.PRETRAIN.SOLVER.BASE_LR in s["grid"]["pretrain_lrs"]  # the stated exception: the grid's choice
        assert demo.PRETRAIN.DATASET.NAME == "digits"
        # scale augmentation keeps its form (a random shorter side, then a random crop) over the overrides file's
        # stated range: from the whole 32 px image (the size tested) up, the same for both classifiers
        lo, hi = demo.PRETRAIN.INPUT.SCALE
        assert lo == demo.PRETRAIN.INPUT.CROP_SIZE == demo.PRETRAIN.INPUT.TEST_RESIZE < hi
    # VGG-16 is pretrained with the preprocessing the VGG-16 detection config expects of its weights
    vgg = load_config(str(REPO / "configs" / "imagenet" / "vgg16.yaml"), overrides_to_opts(s["pretrain"],
                                                                                        s["pretrain_vgg16"]))
    det = load_config(str(REPO / "configs" / "coco" / "frcnn_vgg16.yaml"))
    assert list(vgg.PRETRAIN.INPUT.PIXEL_MEAN) == list(det.MODEL.PIXEL_MEAN)
    assert list(vgg.PRETRAIN.INPUT.PIXEL_STD) == list(det.MODEL.PIXEL_STD)
    assert vgg.PRETRAIN.INPUT.FORMAT == det.INPUT.FORMAT


def test_pretraining_zero_init_last_starts_every_resnet_block_as_identity():
    # PRETRAIN.ZERO_INIT_LAST (the demo's ResNet-101 classifier): every residual branch's last BN scale is 0, so the
    # classifier's output at initialisation is the same as without the branches; a net without them refuses it
    from resnet_backbone.engine.pretrain.loop import build_classifier

    cfg = load_config(str(REPO / "configs" / "imagenet" / "resnet50.yaml"), ["PRETRAIN.ZERO_INIT_LAST", "True"])
    model = build_classifier(cfg, 10).eval()
    blocks = [b for stage in (model.res2, model.res3, model.res4, model.res5) for b in stage]
    assert blocks and all(float(b.last_conv.norm.weight.detach().abs().sum()) == 0 for b in blocks)
    assert all(float(b.conv1.norm.weight.detach().abs().sum()) > 0 for b in blocks)
    plain = build_classifier(load_config(str(REPO / "configs" / "imagenet" / "resnet50.yaml")), 10)
    assert all(float(b.last_conv.norm.weight.detach().abs().sum()) > 0
               for stage in (plain.res2, plain.res5) for b in stage)
    with pytest.raises(ValueError, match="zero_init_last"):
        build_classifier(load_config(str(REPO / "configs" / "imagenet" / "vgg16.yaml"),
                                     ["PRETRAIN.ZERO_INIT_LAST", "True"]), 10)


def test_each_arms_lr_is_the_best_of_its_recorded_grid(tmp_path):
    demo = load_tool("demo")
    s = _sections()
    arms = [n for n, *_ in demo.PRETRAININGS] + [n for n, *_ in demo.DETECTORS]
    assert set(s["tuned"]) == set(arms) and set(s["grid_results"]) <= set(arms)
    for name in arms:
        pretraining = name.startswith("pretrain")
        grid = s["grid"]["pretrain_lrs" if pretraining else "detection_lrs"]
        key = "PRETRAIN.SOLVER.BASE_LR" if pretraining else "SOLVER.BASE_LR"
        assert list(s["tuned"][name]) == [key] and s["tuned"][name][key] in grid
        if name in s["grid_results"]:  # an arm whose grid has run takes its best lr
            scores = s["grid_results"][name]
            assert sorted(scores) == sorted(grid)
            assert s["tuned"][name][key] == demo.best_lr(scores, lower_is_better=pretraining)
    assert demo.best_lr({0.1: float("nan"), 0.01: 5.0, 0.03: 5.0}, lower_is_better=False) == 0.01
    with pytest.raises(ValueError, match="every lr of the grid failed"):
        demo.best_lr({0.1: float("nan")}, lower_is_better=True)
    # --tune rewrites those two sections and nothing else
    copy = tmp_path / "overrides.yaml"
    copy.write_text(OVERRIDES.read_text())
    choice = {"tuned": {n: {"SOLVER.BASE_LR": 0.5} for n in arms},
              "grid_results": {n: {0.5: 1.0, 0.25: 2.0} for n in arms}}
    demo.write_tuned(copy, choice)
    again = load_override_sections(copy)
    assert again["tuned"] == choice["tuned"] and again["grid_results"] == choice["grid_results"]
    assert {k: v for k, v in again.items() if k not in choice} == {k: v for k, v in s.items() if k not in choice}


def test_a_stage_is_kept_only_for_the_data_set_it_read(tmp_path):
    # the data sets live outside the stages' folders (datasets/): a redrawn set (another generator version or size)
    # must run the stages that read it again, and only those
    demo = load_tool("demo")
    plan = _plan(demo, tmp_path)

    def keys(detection_version):
        plan.data = {"pretraining": {"set": "digit_classes", "generator_version": 3},
                     "detection": {"set": "digit_detection", "generator_version": detection_version}}
        pretraining = plan.pretraining("pretrain_r101", tmp_path / "p", seed=0, lr=plan.tuned("pretrain_r101"))
        detector = plan.detection("frcnn_r101_pretrained", tmp_path / "d", seed=0,
                                  lr=plan.tuned("frcnn_r101_pretrained"), weights=pretraining)[2]
        return pretraining.key(), detector.key()

    (pre_a, det_a), (pre_b, det_b) = keys(3), keys(4)
    assert pre_a == pre_b and det_a != det_b


def test_a_failed_stage_names_its_log(tmp_path, capsys):
    demo = load_tool("demo")
    stage = demo.Stage("broken", "a stage that fails", ["python", "-c", "import sys; print('boom'); sys.exit(3)"],
                       tmp_path / "broken", ["never.json"])
    with pytest.raises(demo.StageFailed, match=re.escape(str(tmp_path / "logs" / "broken.log"))):
        (tmp_path / "logs").mkdir()
        demo.run_stage(stage, tmp_path / "logs", 1, 1)
    log = (tmp_path / "logs" / "broken.log").read_text()
    assert log.startswith("$ python -c ") and "boom" in log
    # its completion record says started, not complete: the next run resumes it, nothing takes it for finished
    from resnet_backbone.utils.completion import STARTED, state

    assert state(tmp_path / "broken" / demo.STAGE_RECORD, stage.key(), stage.outputs) == STARTED


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def _table(text):
    return [line for line in text.splitlines() if line.startswith("| Faster R-CNN")]


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, capsys, monkeypatch):
    from resnet_backbone.data.digits import RECORD_NAME, digit_pools
    from resnet_backbone.utils.completion import mark_started, read_record

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    demo = load_tool("demo")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "left over").write_text("")
    summary = demo.main(["--tiny", "--output", str(out), "--device", "cpu", "--fresh"])
    assert not (out / "left over").exists()  # --fresh starts over
    first = capsys.readouterr().out
    s = _sections()

    # the split: the detection validation images hold only digits that no stage trains on, stated on the console
    pools = digit_pools()
    detection = read_record(out / "datasets" / "rb_digits" / RECORD_NAME)
    classes = read_record(out / "datasets" / "rb_digit_classes" / RECORD_NAME)
    assert set(detection["digits"]["val"]) <= set(pools["detect_val"])
    assert set(detection["digits"]["train"]) <= set(pools["detect_train"])
    assert set(classes["digits"]["train"]) == set(pools["pretrain_train"])
    assert set(classes["digits"]["val"]) == set(pools["pretrain_val"])
    assert summary["split"]["overlap"] == [] and "shared with earlier stages: 0" in first

    # stage 1: exported detectron2-format weights with their provenance, consistent with the run
    for name, label, _, sections in demo.PRETRAININGS:
        run = out / "seed0" / name
        results = json.loads((run / "pretrain_results.json").read_text())
        record = json.loads((run / "model_final_d2.pkl.provenance.json").read_text())
        opts = dict(zip(*[iter(overrides_to_opts(*(s[n] for n in sections + ("tiny_pretrain",))))] * 2))
        assert record["model"] == results["model"] == ("resnet101" if "r101" in name else "vgg16")
        assert record["dataset"] == "digits"
        assert record["iterations"] == results["iteration"] == int(opts["PRETRAIN.SOLVER.MAX_ITER"])
        assert record["val_top1_err"] == results["val"]["top1_err"] == summary["pretraining"][name][0]["val_top1_err"]
        assert record["channel_order"] == ("RGB" if "vgg" in name else "BGR")
        with open(run / "model_final_d2.pkl", "rb") as f:
            weights = pickle.load(f)
        assert weights["__author__"] == "resnet_backbone pretraining" and weights["matching_heuristics"]
        assert ("conv5_3.weight" if "vgg" in name else "res5.2.conv3.weight") in weights["model"]
        assert not any(k.startswith(("linear.", "fc8.")) for k in weights["model"])  # no classifier layer
        curve = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()]
        assert any("val/top1_err" in r for r in curve) and any("loss" in r for r in curve)

    # stage 2: each detector trained (from the export where pretrained) and evaluated in both formats; the table's
    # numbers are the evaluation JSONs' (one seed: the mean is the run's number, the std 0)
    rows = {r["detector"] + ", " + r["init"]: r for r in summary["rows"]}
    for name, config, _, pretrained in demo.DETECTORS:
        run = out / "seed0" / name
        cfg = load_config(str(run / "config.yaml"))
        assert cfg.MODEL.WEIGHTS == (str(out / "seed0" / pretrained / "model_final_d2.pkl") if pretrained else "")
        assert cfg.SEED == 0 and cfg.SOLVER.BASE_LR == s["tiny_detection"]["SOLVER.BASE_LR"]
        payload = json.loads((run / "eval_results.json").read_text())
        formats = {res["format"]: res["bbox"] for res in payload["results"].values()}
        assert set(formats) == {"coco", "pascal_voc"}
        assert all(isinstance(v, float) for bbox in formats.values() for v in (bbox["AP"], bbox["AP50"]))
        row = rows[f"Faster R-CNN {payload['label']}, {'pretrained' if pretrained else 'from scratch'}"]
        assert _same(row["COCO-format AP50"], formats["coco"]["AP50"])
        assert _same(row["COCO-format AP"], formats["coco"]["AP"])
        assert _same(row["VOC-format mAP@.5"], formats["pascal_voc"]["AP50"])
        assert row["VOC-format mAP@.5 std"] in (0.0,) or math.isnan(row["VOC-format mAP@.5 std"])
        assert (row["paper COCO mAP@.5"] is not None) == bool(pretrained)
        pictures = out / "predictions" / name
        predictions = json.loads((pictures / "predictions.json").read_text())
        assert len(predictions["images"]) == demo.PREDICTION_IMAGES["tiny"]
        for image in predictions["images"]:
            assert Image.open(pictures / image["file_name"].split("/")[-1]).size == (image["width"], image["height"])
        log = (out / "logs" / f"seed0_{name}.log").read_text()
        assert log.startswith("$ ") and "train_net.py" in log.splitlines()[0]

    # the report: table (printed and written) with one line per finding, plot, prediction montage (ground truth and
    # one row per detector)
    table = (out / "results.md").read_text()
    assert _table(table) == _table(first) and len(_table(table)) == 3
    assert "paper VOC07 mAP@.5" in table and "76.4" in table and "73.2" in table  # Tables 7-8 beside ours
    assert len(summary["findings"]) == 7 and all(re.search(r": (held|did not hold) \(", line)
                                                 for line in summary["findings"])
    assert all(f"- {line}" in first for line in summary["findings"])
    assert Image.open(summary["plot"]).format == "PNG"
    assert Image.open(summary["predictions"]).height >= 4 * 2 * 96
    assert set(summary["stage_times"]) == {f"seed0_{n}" for n, *_ in demo.PRETRAININGS + demo.DETECTORS} | {
        f"predict_{n}" for n, *_ in demo.DETECTORS}

    # clean console: one line per stage, progress lines, no command lines
    assert "$ " not in first and "eta: " in first
    assert len(re.findall(r"\] \d+/\d+ ", first)) == len(demo.PRETRAININGS) + 2 * 3 + 1

    # re-run: finished stages are kept; a removed stage runs again and gives the same numbers (seeded), an
    # interrupted one resumes from its checkpoint
    losses = (out / "seed0" / "frcnn_r101_pretrained" / "metrics.json").read_text()
    pretrain_results = (out / "seed0" / "pretrain_r101" / "pretrain_results.json").read_text()
    for folder in ("pretrain_r101", "frcnn_r101_pretrained"):
        shutil.rmtree(out / "seed0" / folder)
    scratch = out / "seed0" / "frcnn_r101_scratch"
    (scratch / "model_final.pth").unlink()
    mark_started(scratch / demo.STAGE_RECORD, read_record(scratch / demo.STAGE_RECORD)["key"])
    (scratch / "last_checkpoint").write_text("model_0000001.pth")
    demo.main(["--tiny", "--output", str(out), "--device", "cpu"])
    second = capsys.readouterr().out
    assert second.count("done before, kept") == len(demo.PRETRAININGS) + 2 * 3 - 3
    assert "resuming an interrupted run" in second
    assert "Starting training from iteration 2" in (scratch / "log.txt").read_text()
    assert (out / "seed0" / "pretrain_r101" / "pretrain_results.json").read_text() == pretrain_results
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if "time" not in k and k != "eta_seconds"}
                          for line in text.splitlines()]  # noqa: E731
    assert strip((out / "seed0" / "frcnn_r101_pretrained" / "metrics.json").read_text()) == strip(losses)
    # the re-run stages, the kept ones and the resumed detector (its checkpoint holds the loader position and the
    # RNG states: exact resume) print the same rows
    assert _table(second) == _table(first)


def test_seeds_give_mean_and_std_per_cell():
    from resnet_backbone.demo_report import DetectorEntry, findings, format_markdown, table_rows

    runs = [DetectorEntry("frcnn_r101_pretrained", "ResNet-101", "pretrained", "-", 80.0 + i, 40.0 + 2 * i, 75.0 + i)
            for i in range(3)]
    scratch = [DetectorEntry("frcnn_r101_scratch", "ResNet-101", "from scratch", "-", 50.0, 20.0 + i, 60.0)
               for i in range(3)]
    rows = table_rows([runs, scratch])
    assert rows[0]["COCO-format AP"] == 42.0 and rows[0]["COCO-format AP std"] == 2.0
    assert "42.0 ± 2.0" in format_markdown(rows)
    lines = findings([runs, scratch], [])
    assert lines[0].startswith("ResNet-101 pretrained beats ResNet-101 from scratch in COCO-format AP: held")
    assert "2 x the larger std = 4.0" in lines[0]
    assert lines[-1].startswith("ResNet-101 pretrained reaches VOC-format mAP@.5 >= 70") and "held (76.0)" in lines[-1]


def test_pretraining_finding_states_its_bar_and_no_spread_for_one_seed():
    from resnet_backbone.demo_report import PretrainEntry, findings

    def entries(label, errors):
        return [PretrainEntry(label, "-", 500, e, 0.0, None) for e in errors]

    one, three = findings([], [entries("VGG-16", [0.575])]), findings([], [entries("ResNet-101", [0.1, 0.2, 0.3])])
    assert one == ["VGG-16 pretraining learned the digits (validation top-1 error below 45%, half of chance's 90%): "
                   "did not hold (57.5%)"]
    assert three[0].endswith(": held (20.0% ± 10.0)")
