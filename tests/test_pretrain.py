"""Pretraining stage: config keys and files, schedule, resumable sampler, a short run on generated data (loss falls,
accuracy beats chance, 1-/10-crop evaluation), resume after a crash, non-finite loss, CIFAR batches, export into
the Faster R-CNN configs and the preprocessing check."""
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_backbone import create_model
from resnet_backbone.checkpoint.preprocessing import check_preprocessing, write_preprocessing
from resnet_backbone.checkpoint.provenance import read_provenance
from resnet_backbone.checkpoint.safe_load import load_file
from resnet_backbone.data.transforms import IMAGENET_TORCHVISION, Preprocessing
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.pretrain import NonFiniteLossError, PretrainRun, evaluate_pretrained, run_pretraining
from resnet_backbone.engine.pretrain.data import (
    IterationBatchSampler,
    build_pretrain_dataset,
    build_train_loader,
    preprocessing_from_cfg,
)
from resnet_backbone.engine.pretrain.eval import evaluate_classifier, topk_correct
from resnet_backbone.engine.pretrain.export import EXPORT_NAME, export_for_detection
from resnet_backbone.engine.pretrain.metrics import read_metrics
from resnet_backbone.engine.pretrain.schedule import LRSchedule, scaled_base_lr

REPO = Path(__file__).resolve().parents[1]
IMAGENET_TINY = str(REPO / "configs" / "imagenet" / "tiny.yaml")
CIFAR_TINY = str(REPO / "configs" / "cifar" / "tiny.yaml")


def tiny_cfg(config, out, root, *opts):
    """A tiny config on generated data under `root` (absolute, so nothing is written into the checkout)."""
    return load_config(config, ["OUTPUT_DIR", str(out), "PRETRAIN.DATASET.ROOT", str(root),
                                "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "30",
                                "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "8", *opts])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rb_classification")


# ------------------------------------------------------------------------------------------------ configs


def test_every_pretrain_key_has_a_comment():
    source = (REPO / "resnet_backbone" / "config.py").read_text().splitlines()
    start = next(i for i, line in enumerate(source) if line.startswith("def _pretrain_defaults"))
    for i, line in enumerate(source[start:], start):
        if re.match(r"\s+p(\.[A-Z_]+)+ = (?!CN\(\))", line):
            assert source[i - 1].strip().startswith("#"), f"config.py:{i + 1} has no comment: {line.strip()}"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "imagenet").glob("*.yaml"))
                         + sorted((REPO / "configs" / "cifar").glob("*.yaml")), ids=lambda p: p.name)
def test_pretrain_configs_load_and_name_valid_models(path):
    cfg = load_config(str(path))
    if path.name.startswith("Base"):
        return
    name = cfg.PRETRAIN.MODEL
    assert name.startswith("cifar_") == ("cifar" in str(path.parent))
    preprocessing_from_cfg(cfg)  # valid mean / std / format
    LRSchedule.from_cfg(cfg)  # valid schedule
    if name.startswith("cifar_"):
        create_model(name, **({"shortcut": cfg.PRETRAIN.SHORTCUT} if cfg.PRETRAIN.SHORTCUT else {}))


def test_imagenet_configs_follow_the_paper_and_fit_the_detectors():
    cfg = load_config(str(REPO / "configs" / "imagenet" / "resnet101.yaml"))
    s = cfg.PRETRAIN.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == (256, 0.1, 0.9, 1e-4)
    assert tuple(cfg.PRETRAIN.INPUT.SCALE) == (256, 480) and cfg.PRETRAIN.INPUT.CROP_SIZE == 224
    det = load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"))
    # the pretraining input convention is the detection config's
    pre = preprocessing_from_cfg(cfg).as_detectron2()
    assert set(pre) == {"MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT"}
    assert pre["MODEL.PIXEL_MEAN"] == pytest.approx(list(det.MODEL.PIXEL_MEAN))
    assert pre["MODEL.PIXEL_STD"] == pytest.approx(list(det.MODEL.PIXEL_STD))
    assert pre["INPUT.FORMAT"] == det.INPUT.FORMAT
    c = load_config(str(REPO / "configs" / "cifar" / "resnet110.yaml")).PRETRAIN.SOLVER
    assert (c.IMS_PER_BATCH, scaled_base_lr(c.BASE_LR, c.IMS_PER_BATCH, c.REFERENCE_BATCH)) == (128, 0.1)
    assert (tuple(c.STEPS), c.MAX_ITER, c.WARMUP_FACTOR * 0.1, c.WARMUP_UNTIL_ERROR) == ((32000, 48000), 64000,
                                                                                       pytest.approx(0.01), 0.8)


def test_unknown_pretrain_dataset_names_the_known_ones(tmp_path):
    # refused when the config loads (every plugin key is checked there), naming the known names
    with pytest.raises(ValueError, match="PRETRAIN.DATASET.NAME 'imagenet21k'.*'cifar10'.*'generated_cifar10'"):
        load_config(CIFAR_TINY, ["PRETRAIN.DATASET.NAME", "imagenet21k", "OUTPUT_DIR", str(tmp_path)])
    cfg = load_config(CIFAR_TINY, ["OUTPUT_DIR", str(tmp_path)])
    cfg.PRETRAIN.DATASET.NAME = "imagenet21k"  # set after loading: the data set builder refuses it too
    with pytest.raises(ValueError, match="'imagenet21k'.*'cifar10'.*'generated_cifar10'"):
        build_pretrain_dataset(cfg, "train")


def test_unknown_pretrain_key_is_a_clear_error():
    with pytest.raises(ValueError, match="PRETRAIN.SOLVER.BASE_LR"):
        load_config(CIFAR_TINY, ["PRETRAIN.SOLVER.BASE_LRR", "0.1"])


# ------------------------------------------------------------------------------------------------ schedule


def test_step_schedule_and_linear_scaling():
    assert scaled_base_lr(0.1, 32, 256) == pytest.approx(0.0125)
    s = LRSchedule(0.1, steps=(32000, 48000))
    assert [s.lr(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_warmup_ends_when_training_error_falls_below_threshold():
    s = LRSchedule(0.1, steps=(), warmup_iters=400, warmup_factor=0.1, warmup_until_error=0.8)
    assert s.lr(0) == pytest.approx(0.01)
    for it in range(30):  # error stays above 80%
        assert not s.observe_train_error(it, 0.9)
    assert s.in_warmup(30)
    ended = [s.observe_train_error(it, 0.5) for it in range(30, 60)]
    assert any(ended) and s.lr(60) == pytest.approx(0.1)
    # capped at WARMUP_ITERS even if the error never falls
    t = LRSchedule(0.1, warmup_iters=5, warmup_until_error=0.8)
    assert [t.observe_train_error(i, 0.95) for i in range(5)] == [False] * 4 + [True]
    assert t.lr(5) == pytest.approx(0.1)


def test_plateau_schedule_and_state_roundtrip():
    s = LRSchedule(0.1, kind="plateau", plateau_patience=2, plateau_threshold=0.01, plateau_max_drops=1)
    drops = [s.observe_val_error(e) for e in (0.5, 0.4, 0.395, 0.399, 0.3, 0.3, 0.3)]
    assert drops == [False, False, False, True, False, False, False]  # one drop, then capped
    assert s.lr(10**6) == pytest.approx(0.01)
    t = LRSchedule(0.1, kind="plateau", plateau_patience=2, plateau_threshold=0.01, plateau_max_drops=1)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict() and t.lr(5) == s.lr(5)


@pytest.mark.parametrize("bad", [dict(kind="cosine"), dict(steps=(5, 3)), dict(gamma=0), dict(warmup_factor=2)])
def test_bad_schedules_raise(bad):
    with pytest.raises(ValueError):
        LRSchedule(0.1, **bad)


# ------------------------------------------------------------------------------------------------ sampler


def test_iteration_sampler_is_a_function_of_the_iteration():
    full = IterationBatchSampler(10, 4, seed=3, start_iter=0, max_iter=10)
    tail = IterationBatchSampler(10, 4, seed=3, start_iter=6, max_iter=10)
    batches = list(full)
    assert list(tail) == batches[6:]
    indices = [i for b in batches for i, _ in b]
    for epoch in range(4):  # every image once per epoch
        assert sorted(indices[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)
    # two ranks share each global batch without overlap
    r0 = IterationBatchSampler(10, 4, seed=3, start_iter=0, max_iter=10, rank=0, world_size=2)
    r1 = IterationBatchSampler(10, 4, seed=3, start_iter=0, max_iter=10, rank=1, world_size=2)
    assert [a + b for a, b in zip(r0, r1)] == batches
    with pytest.raises(ValueError, match="multiple"):
        IterationBatchSampler(10, 5, seed=0, start_iter=0, max_iter=1, world_size=2)


def test_augmentation_does_not_depend_on_workers(data_root, tmp_path):
    cfg = tiny_cfg(IMAGENET_TINY, tmp_path, data_root)
    train = build_pretrain_dataset(cfg, "train")
    single = next(iter(build_train_loader(cfg, train, seed=1, start_iter=2, max_iter=3, batch_size=6)))
    cfg.PRETRAIN.NUM_WORKERS = 2
    multi = next(iter(build_train_loader(cfg, train, seed=1, start_iter=2, max_iter=3, batch_size=6)))
    assert torch.equal(single[0], multi[0]) and torch.equal(single[1], multi[1])
    assert single[0].shape == (6, 3, 32, 32)


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_run")
    cfg = tiny_cfg(IMAGENET_TINY, out, data_root, "PRETRAIN.MODEL", "cifar_resnet8",
                   "PRETRAIN.SOLVER.BASE_LR", "0.4", "PRETRAIN.SOLVER.MAX_ITER", "60",
                   "PRETRAIN.SOLVER.STEPS", "(45,)", "PRETRAIN.LOG_PERIOD", "10", "PRETRAIN.EVAL_PERIOD", "30",
                   "PRETRAIN.CHECKPOINT_PERIOD", "30", "PRETRAIN.PRECISE_BN.ENABLED", "True",
                   "PRETRAIN.PRECISE_BN.NUM_ITER", "4")
    cfg.freeze()
    return cfg, run_pretraining(cfg)


def test_short_run_loss_falls_and_beats_chance(trained):
    cfg, results = trained
    records = read_metrics(cfg.OUTPUT_DIR)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    chance = 1 - 1 / cfg.PRETRAIN.DATASET.GENERATED_NUM_CLASSES
    assert results["val"]["top1_err"] < chance - 0.2, results
    assert results["val"]["images"] == 10 * 8
    assert all(r["images_per_s"] > 0 and r["eta_seconds"] >= 0 for r in records if "loss" in r)
    # detectron2's writers: the keys train_net's metrics.json has, for the same tools to read
    assert all({"time", "data_time", "lr"} <= set(r) for r in records if "loss" in r)
    assert [r["iteration"] for r in records if "val/top1_err" in r] == [30, 60]
    assert results["checkpoint"].endswith("model_final.pth")
    state = load_file(results["checkpoint"])
    assert state["iteration"] == 60 and state["precise_bn_done"] is True
    saved = json.loads(Path(cfg.OUTPUT_DIR, "pretrain_results.json").read_text())
    assert saved["val"]["top1_err"] == pytest.approx(results["val"]["top1_err"])


def test_ten_crop_agrees_with_one_crop(trained):
    cfg, results = trained
    one, ten = results["val"], results["val10"]
    assert one["images"] == ten["images"]
    for r in (one, ten):
        assert 0 <= r["top1_err"] <= 1 and 0 <= r["top5_err"] <= r["top1_err"] and r["loss"] > 0
    assert abs(one["top1_err"] - ten["top1_err"]) <= 0.25
    # ten identical crops average to the single crop exactly
    model = create_model("cifar_resnet8", num_classes=10).eval()
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    single = evaluate_classifier(model, [(images, targets)], "cpu")
    repeated = evaluate_classifier(model, [(images[:, None].expand(4, 10, 3, 32, 32), targets)], "cpu",
                                   ten_crop=True)
    assert single == pytest.approx(repeated)


def test_evaluate_only_reproduces_the_final_evaluation(trained):
    cfg, results = trained
    again = evaluate_pretrained(cfg)  # default: OUTPUT_DIR's last checkpoint, model_final.pth
    assert again["weights"] == results["checkpoint"]
    assert again["val"] == pytest.approx(results["val"]) and again["val10"] == pytest.approx(results["val10"])
    other = cfg.clone()
    other.defrost()
    other.PRETRAIN.MODEL = "cifar_resnet14"
    with pytest.raises(ValueError, match="does not fit the model"):
        evaluate_pretrained(other, results["checkpoint"])


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_export_written_with_its_preprocessing(trained):
    cfg, results = trained
    assert results["export"] == os.path.join(cfg.OUTPUT_DIR, EXPORT_NAME)
    exported = load_file(results["export"])
    assert exported["matching_heuristics"] is True
    assert not any(k.startswith("linear.") or k.endswith("num_batches_tracked") for k in exported["model"])
    final = load_file(results["checkpoint"])["model"]
    for k, v in exported["model"].items():
        assert np.array_equal(v, final[k].numpy())
    assert read_provenance(results["export"]).preprocessing == preprocessing_from_cfg(cfg)


def test_resume_continues_the_same_run(data_root, tmp_path):
    opts = ("PRETRAIN.MODEL", "cifar_resnet8", "PRETRAIN.SOLVER.MAX_ITER", "12", "PRETRAIN.SOLVER.STEPS", "(8,)",
            "PRETRAIN.SOLVER.WARMUP_ITERS", "5", "PRETRAIN.SOLVER.IMS_PER_BATCH", "16", "PRETRAIN.LOG_PERIOD", "2",
            "PRETRAIN.EVAL_PERIOD", "4", "PRETRAIN.CHECKPOINT_PERIOD", "4", "PRETRAIN.EXPORT", "False")
    whole = run_pretraining(tiny_cfg(CIFAR_TINY, tmp_path / "whole", data_root, *opts))

    cfg = tiny_cfg(CIFAR_TINY, tmp_path / "split", data_root, *opts)
    run = PretrainRun(cfg)
    run.start()
    step, calls = run.optimizer.step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # during iteration 7: checkpoints exist for 4, not for 8
            raise KeyboardInterrupt("simulated crash")
        return step(*args, **kwargs)

    run.optimizer.step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        run.train()
    assert Path(cfg.OUTPUT_DIR, "last_checkpoint").read_text() == "model_0000004.pth"
    resumed = PretrainRun(cfg)
    assert resumed.start(resume=True) == 4
    resumed.train()
    split = resumed.finish()

    a, b = load_file(whole["checkpoint"]), load_file(split["checkpoint"])
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # bit for bit
    assert a["schedule"] == b["schedule"] and split["val"] == whole["val"]
    # metrics describe one run: no duplicated iterations after the resume
    iters = [r["iteration"] for r in read_metrics(cfg.OUTPUT_DIR) if "loss" in r]
    assert iters == [2, 4, 6, 8, 10, 12]


def test_non_finite_loss_stops_naming_iteration_and_checkpoint(data_root, tmp_path):
    cfg = tiny_cfg(CIFAR_TINY, tmp_path, data_root, "PRETRAIN.MODEL", "cifar_resnet8", "PRETRAIN.SOLVER.MAX_ITER",
                   "10", "PRETRAIN.CHECKPOINT_PERIOD", "2", "PRETRAIN.EVAL_PERIOD", "0",
                   "PRETRAIN.SOLVER.IMS_PER_BATCH", "8")
    run = PretrainRun(cfg)
    run.start()
    calls = []

    def poison(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 5 else output

    run.module.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError) as err:
        run.train()
    message = str(err.value)
    assert "iteration 5 of 10" in message and os.path.join(str(tmp_path), "model_0000004.pth") in message
    assert isinstance(err.value, FloatingPointError)

    cfg = tiny_cfg(CIFAR_TINY, tmp_path / "b", data_root, "PRETRAIN.MODEL", "cifar_resnet8")
    cfg.PRETRAIN.SOLVER.BASE_LR = float("inf")
    with pytest.raises(ValueError, match="base learning rate"):
        PretrainRun(cfg).start()  # an infinite lr is refused before training


# ------------------------------------------------------------------------------------------------ CIFAR files


def _write_cifar(folder, rng, n_per_file):
    folder.mkdir(parents=True)
    names = [f"class{i}" for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_cases_per_batch": n_per_file}, f, protocol=2)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_file).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        written[name] = (data, labels)
    return written


def test_cifar_loader_reads_standard_batch_files(tmp_path):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(0), 4)
    cfg = load_config(str(REPO / "configs" / "cifar" / "resnet20.yaml"),
                      ["PRETRAIN.DATASET.ROOT", str(tmp_path), "PRETRAIN.NUM_WORKERS", "0", "OUTPUT_DIR",
                       str(tmp_path / "out")])
    train, test = build_pretrain_dataset(cfg, "train"), build_pretrain_dataset(cfg, "val")
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "class3"
    data, labels = written["data_batch_2"]
    # image 1 of data_batch_2: row-major 32x32 planes, red first
    assert np.array_equal(train.images[5], data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.targets[5] == labels[1]
    x, y = test[0]
    mean = torch.tensor(cfg.PRETRAIN.INPUT.PIXEL_MEAN).view(3, 1, 1)
    expected = torch.from_numpy(written["test_batch"][0][0].reshape(3, 32, 32).astype(np.float32)) - mean
    assert torch.allclose(x, expected, atol=1e-3) and y == written["test_batch"][1][0]
    batch = next(iter(build_train_loader(cfg, train, seed=0, start_iter=0, max_iter=1, batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 32) and batch[1].dtype == torch.int64


# ------------------------------------------------------------------------------------------------ export


def _load_into_detector(config, weights):
    from detectron2.modeling import build_model

    from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer

    cfg = load_config(str(REPO / "configs" / "coco" / config),
                      ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", "64",
                       "INPUT.MAX_SIZE_TEST", "96"])
    check_preprocessing(cfg, weights)
    detector = build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(detector)
    checkpointer.load(weights)
    return detector, checkpointer.last_load_report


def test_exported_resnet101_loads_into_frcnn_r101(tmp_path):
    torch.manual_seed(0)
    classifier = create_model("resnet101", num_classes=10)
    prep = Preprocessing((103.53, 116.28, 123.675), (1.0, 1.0, 1.0), "BGR", 255)
    weights, record = export_for_detection(classifier, str(tmp_path / "r101.pkl"), prep, model_name="resnet101")
    assert json.loads(Path(record).read_text())["stride_in_1x1"] is True
    detector, report = _load_into_detector("frcnn_r101.yaml", weights)
    missing = [k for k, _ in report.missing]
    assert not [k for k in missing if k.startswith(("backbone.", "roi_heads.res5."))], missing
    assert not report.mismatched and report.coverage.missing_tensors == 0
    state, source = detector.state_dict(), classifier.state_dict()
    assert torch.equal(state["backbone.stem.conv1.weight"], source["stem.conv1.weight"])
    assert torch.equal(state["backbone.res4.22.conv3.norm.running_var"], source["res4.22.conv3.norm.running_var"])
    assert torch.equal(state["roi_heads.res5.2.conv3.weight"], source["res5.2.conv3.weight"])
    detector.eval()
    with torch.no_grad():  # runs on a small image
        out = detector([{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)}])
    assert "instances" in out[0]


@pytest.mark.slow
def test_exported_vgg16_loads_into_frcnn_vgg16(tmp_path):
    classifier = create_model("vgg16", num_classes=10)
    # the input convention of frcnn_vgg16.yaml (torchvision's VGG-16 weights: RGB, mean / std)
    prep = Preprocessing((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB", 255)
    weights, _ = export_for_detection(classifier, str(tmp_path / "vgg16.pkl"), prep, model_name="vgg16")
    detector, report = _load_into_detector("frcnn_vgg16.yaml", weights)
    missing = [k for k, _ in report.missing]
    assert not [k for k in missing if k.startswith("backbone.") or ".fc6." in k or ".fc7." in k], missing
    state, source = detector.state_dict(), classifier.state_dict()
    assert torch.equal(state["backbone.conv5_3.weight"], source["conv5_3.weight"])
    assert torch.equal(state["roi_heads.box_head.fc6.weight"], source["fc6.weight"])
    assert torch.equal(state["roi_heads.box_head.fc7.bias"], source["fc7.bias"])


def test_preprocessing_check_names_every_disagreement(tmp_path):
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    det = load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"))
    assert check_preprocessing(det, str(weights)) is None  # no record: nothing to check
    write_preprocessing(weights, IMAGENET_TORCHVISION, stride_in_1x1=False)
    with pytest.raises(ValueError) as err:
        check_preprocessing(det, str(weights))
    message = str(err.value)
    for part in ("MODEL.PIXEL_MEAN", "123.675", "MODEL.PIXEL_STD", "58.395", "INPUT.FORMAT", "'RGB'",
                 "STRIDE_IN_1X1", str(weights)):
        assert part in message
    # the same normalisation in detectron2's units (x255) and order passes
    ok = load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"),
                     ["MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
                      "INPUT.FORMAT", "RGB", "MODEL.RESNETS.STRIDE_IN_1X1", "False"])
    assert check_preprocessing(ok, str(weights)) == IMAGENET_TORCHVISION
    # a [0, 1]-range mean in a [0, 255] config is caught
    bad = load_config(str(REPO / "configs" / "coco" / "frcnn_r101.yaml"),
                      ["MODEL.PIXEL_MEAN", "[0.485, 0.456, 0.406]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
                       "INPUT.FORMAT", "RGB", "MODEL.RESNETS.STRIDE_IN_1X1", "False"])
    with pytest.raises(ValueError, match="MODEL.PIXEL_MEAN"):
        check_preprocessing(bad, str(weights))


def test_vgg16_fc6_moves_as_at_224_px_on_smaller_crops():
    """Below 224 px pool5 is smaller than the 7x7 fc6 takes and each cell is copied: at 32 px fc6 acts on the one
    cell through the sum V of its 49 position blocks, and one step at the scaled lr moves V exactly as one step at
    the full lr moves a plain 512-input layer holding V."""
    model = create_model("vgg16", num_classes=10)
    assert model.lr_scales(224) == {} and create_model("resnet18", num_classes=10).lr_scales(32) == {}
    assert model.lr_scales(32) == {"fc6.weight": pytest.approx(1 / 49)}  # pool5 1x1, copied 49 times
    assert model.lr_scales(64) == {"fc6.weight": pytest.approx(4 / 49)}  # 2x2
    torch.manual_seed(0)
    fc6 = torch.nn.Linear(512 * 49, 16)
    cell, target = torch.randn(4, 512, 1, 1), torch.randn(4, 16)
    summed = lambda w: w.view(16, 512, 49).sum(2)  # noqa: E731  (the weight V the cell meets)
    plain = torch.nn.Linear(512, 16)
    with torch.no_grad():
        plain.weight.copy_(summed(fc6.weight))
        plain.bias.copy_(fc6.bias)
    copied = torch.nn.functional.adaptive_avg_pool2d(cell, 7).flatten(1)  # what classify feeds fc6 at 32 px
    assert torch.allclose(fc6(copied), plain(cell.flatten(1)), atol=1e-4)
    lr = 0.1
    for layer, x, step in ((fc6, copied, lr * model.lr_scales(32)["fc6.weight"]), (plain, cell.flatten(1), lr)):
        ((layer(x) - target) ** 2).sum().backward()
        with torch.no_grad():
            layer.weight -= step * layer.weight.grad
    assert torch.allclose(summed(fc6.weight), plain.weight, atol=1e-5)
