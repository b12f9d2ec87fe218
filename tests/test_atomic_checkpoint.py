"""Atomic writes and SafeDetectionCheckpointer: safe reads, crash-proof saves, honest load reports."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbone.checkpoint.checkpointer import SafeDetectionCheckpointer
from resnet_backbone.checkpoint.coverage import ModuleCoverage
from resnet_backbone.checkpoint.pkl_writer import save_pkl
from resnet_backbone.checkpoint.safe_load import CorruptCheckpointError, UnsafeCheckpointError, load_file
from resnet_backbone.utils.atomic import atomic_save, atomic_write_text


def _partial_torch_save(obj, f, *args, **kwargs):
    """Stands in for torch.save killed halfway: some bytes reach the file, then it fails."""
    f.write(b"PK\x03\x04 half a zip archive")
    raise KeyboardInterrupt("killed during save")


def _leftovers(directory):
    return [p for p in os.listdir(directory) if ".tmp-" in p]


# ----------------------------------------------------------------------------------------- atomic.py


def test_atomic_save_round_trip_leaves_no_temporaries(tmp_path):
    path = tmp_path / "a.pth"
    atomic_save({"w": torch.arange(4.0)}, path)
    assert torch.equal(load_file(path)["w"], torch.arange(4.0))
    assert _leftovers(tmp_path) == []
    # permissions follow the umask like a plain open(), not mkstemp's 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_atomic_save_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    atomic_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_torch_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert torch.equal(load_file(path)["w"], torch.ones(3))


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "last_checkpoint"
    atomic_write_text(path, "model_0000004.pth")
    atomic_write_text(path, "model_0000009.pth")
    assert path.read_text() == "model_0000009.pth" and _leftovers(tmp_path) == []


def test_save_pkl_writes_what_load_file_reads(tmp_path):
    path = tmp_path / "converted.pkl"
    weights = {"stem.conv1.weight": torch.randn(4, 3, 1, 1), "stem.conv1.norm.bias": np.zeros(4, np.float32)}
    save_pkl({"model": weights, "__author__": "test", "matching_heuristics": True}, path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x80\x02"  # protocol 2
    loaded = load_file(path)
    assert loaded["__author__"] == "test"
    assert isinstance(loaded["model"]["stem.conv1.weight"], np.ndarray)
    assert np.array_equal(loaded["model"]["stem.conv1.weight"], weights["stem.conv1.weight"].numpy())


def test_save_pkl_refuses_objects_it_could_not_read_back(tmp_path):
    path = tmp_path / "bad.pkl"
    with pytest.raises(ValueError, match=r"checkpoint\['model'\]\['layer'\].*Linear"):
        save_pkl({"model": {"layer": nn.Linear(2, 2)}}, path)
    assert not path.exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ the checkpointer


class _Backbone(nn.Module):
    """Named like detectron2's ResNet stem so that Caffe2 blob names map onto it."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv1 = Conv2d(3, width, 3, bias=False, norm=FrozenBatchNorm2d(width))
        self.res2 = nn.Conv2d(width, width, 3)


class _Detector(nn.Module):
    def __init__(self, width=8, classes=3):
        super().__init__()
        self.backbone = _Backbone(width)
        self.head = nn.Linear(width, classes)


class _Classifier(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, classes)


def _randomize(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn_like(v))
    return model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    handler = _Records()
    log = logging.getLogger("fvcore.common.checkpoint")  # the checkpointer's logger (self.logger)
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    yield handler.messages
    log.removeHandler(handler)
    log.setLevel(old_level)


def test_save_then_resume_round_trip(tmp_path):
    model = _randomize(_Detector(), 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.head(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    SafeDetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert _leftovers(tmp_path) == []

    fresh = _randomize(_Detector(), 1)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    ckpt = SafeDetectionCheckpointer(fresh, str(tmp_path), optimizer=fresh_opt)
    extra = ckpt.resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and "model" not in extra
    assert _same_weights(model, fresh)
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    report = ckpt.last_load_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []


def test_killed_save_keeps_the_previous_checkpoint_tagged(tmp_path, monkeypatch):
    model = _randomize(_Detector(), 0)
    ckpt = SafeDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000004")
    monkeypatch.setattr(torch, "save", _partial_torch_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000009")
    monkeypatch.undo()
    assert not (tmp_path / "model_0000009.pth").exists() and _leftovers(tmp_path) == []
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000004.pth")
    fresh = _randomize(_Detector(), 1)
    SafeDetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert _same_weights(model, fresh)


def test_truncated_last_checkpoint_is_reported_as_corrupt(tmp_path):
    model = _Detector()
    ckpt = SafeDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    path = tmp_path / "model_final.pth"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match="model_final.pth"):
        ckpt.resume_or_load("", resume=True)


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        SafeDetectionCheckpointer(_Detector()).load(str(tmp_path / "absent.pth"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_files_are_refused_by_the_checkpointer(tmp_path, suffix):
    marker = tmp_path / "MARKER"
    path = tmp_path / f"evil{suffix}"
    model = _randomize(_Detector(), 0)
    weights = {k: v.numpy() if suffix == ".pkl" else v for k, v in model.state_dict().items()}
    data = {"model": weights, "__author__": "evil", "payload": _Payload(marker)}
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    else:
        torch.save(data, path)
    target = _randomize(_Detector(), 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError, match="system"):
        SafeDetectionCheckpointer(target).load(str(path))
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_detectron2_format_pkl_loads(tmp_path):
    source = _randomize(_Detector(), 0)
    path = tmp_path / "d2.pkl"
    save_pkl({"model": source.state_dict(), "__author__": "unit-test"}, path)
    target = _randomize(_Detector(), 1)
    SafeDetectionCheckpointer(target).load(str(path))
    assert _same_weights(source, target)


def test_detectron2_format_pkl_with_matching_heuristics(tmp_path):
    # e.g. converted ImageNet weights: names without the detector's "backbone." prefix
    source = _randomize(_Detector(), 0)
    backbone_only = {k[len("backbone."):]: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path / "imagenet.pkl"
    save_pkl({"model": backbone_only, "__author__": "unit-test", "matching_heuristics": True}, path)
    target = _randomize(_Detector(), 1)
    ckpt = SafeDetectionCheckpointer(target)
    ckpt.load(str(path))
    for k, v in target.backbone.state_dict().items():
        assert torch.equal(v, source.backbone.state_dict()[k]), k
    assert [k for k, _ in ckpt.last_load_report.missing] == ["head.bias", "head.weight"]


def test_msra_blobs_pkl_loads_with_caffe2_names(tmp_path):
    rng = np.random.default_rng(0)
    blobs = {
        "conv1_w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "res_conv1_bn_s": rng.random(8).astype(np.float32),
        "res_conv1_bn_b": rng.random(8).astype(np.float32),
        "conv1_w_momentum": np.zeros((8, 3, 3, 3), np.float32),
        "res2_w": rng.standard_normal((8, 8, 3, 3)).astype(np.float32),
        "res2_b": rng.random(8).astype(np.float32),
    }
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "MODEL: {}"}, f, protocol=2)
    target = _randomize(_Detector(), 1)
    ckpt = SafeDetectionCheckpointer(target)
    ckpt.load(str(path))
    conv = target.backbone.stem.conv1
    assert np.array_equal(conv.weight.detach().numpy(), blobs["conv1_w"])
    assert np.array_equal(conv.norm.weight.numpy(), blobs["res_conv1_bn_s"])
    assert np.array_equal(conv.norm.bias.numpy(), blobs["res_conv1_bn_b"])
    assert np.array_equal(target.backbone.res2.weight.detach().numpy(), blobs["res2_w"])
    # FrozenBatchNorm2d fills its absent statistics with identity values (detectron2 batch_norm.py)
    assert torch.equal(conv.norm.running_var, torch.ones(8))
    report = ckpt.last_load_report
    assert {k for k, _ in report.missing} == {"head.weight", "head.bias"}
    assert report.coverage.missing_tensors == 0


def test_report_lists_missing_unexpected_and_mismatched_with_shapes(tmp_path, records):
    source = _randomize(_Detector(classes=5), 0)
    weights = source.state_dict()
    del weights["backbone.res2.bias"]
    weights["backbone.extra.weight"] = torch.zeros(2, 7)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": weights}, path)
    target = _randomize(_Detector(classes=3), 1)
    ckpt = SafeDetectionCheckpointer(target)
    ckpt.load(str(path))
    report = ckpt.last_load_report
    assert report.missing == [("backbone.res2.bias", (8,))]
    assert report.unexpected == [("backbone.extra.weight", (2, 7))]
    assert sorted(report.mismatched) == [("head.bias", (5,), (3,)), ("head.weight", (5, 8), (3, 8))]
    assert report.coverage.missing_tensors == 1
    assert torch.equal(target.backbone.res2.weight, source.backbone.res2.weight)
    log = "\n".join(records)
    for text in ("backbone.res2.bias: (8,)", "backbone.extra.weight: (2, 7)",
                 "head.weight: (5, 8) in checkpoint, (3, 8) in model", "1 of 5 tensors"):
        assert text in log, (text, log)
    # per key, module and part of the model: what received weights
    coverage = report.coverage
    assert coverage.missing_in(["backbone.res2"]) == ["backbone.res2.bias"] == coverage.missing_in("backbone.res2.")
    assert coverage.missing_in(["backbone.stem", "backbone.res2"], kind="buffer") == []
    assert set(coverage.missing_in(["head"], kind="parameter")) == {"head.weight", "head.bias"}
    assert coverage.by_module()["backbone.res2"] == ModuleCoverage(loaded=("backbone.res2.weight",),
                                                                   missing=("backbone.res2.bias",))
    # FrozenBatchNorm2d's affine and statistics are buffers, all of them loaded here
    assert coverage.loaded_in("backbone.stem", kind="buffer") == [
        f"backbone.stem.conv1.norm.{n}" for n in ("weight", "bias", "running_mean", "running_var")]


def test_coverage_names_frozen_bn_buffers_that_got_no_weights(tmp_path):
    source = _randomize(_Detector(), 0)
    weights = source.state_dict()
    for name in ("weight", "bias"):
        del weights[f"backbone.stem.conv1.norm.{name}"]
    torch.save({"model": weights}, tmp_path / "no_stem_affine.pth")
    ckpt = SafeDetectionCheckpointer(_Detector())
    ckpt.load(str(tmp_path / "no_stem_affine.pth"))
    coverage = ckpt.last_load_report.coverage
    assert coverage.missing_in(["backbone.stem"]) == [f"backbone.stem.conv1.norm.{n}" for n in ("weight", "bias")]
    assert coverage.missing_in(["backbone.stem"], kind="parameter") == []  # FrozenBN holds buffers, not parameters
    assert coverage.missing_in(["backbone.res2", "head"]) == []
    with pytest.raises(ValueError, match="kind"):
        coverage.missing_in(kind="weights")


def test_strict_refuses_any_misfit_before_copying(tmp_path):
    source = _randomize(_Detector(), 0)
    weights = source.state_dict()
    del weights["head.bias"]
    torch.save({"model": weights}, tmp_path / "no_head_bias.pth")
    target = _randomize(_Detector(), 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"(?s)does not fit the model \(1 model keys missing.*head\.bias"):
        SafeDetectionCheckpointer(target, strict=True).load(str(tmp_path / "no_head_bias.pth"))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    SafeDetectionCheckpointer(target).load(str(tmp_path / "no_head_bias.pth"))  # not strict: loads the rest


def test_tag_naming_a_missing_file_and_stale_temporaries(tmp_path, monkeypatch):
    model = _Detector()
    ckpt = SafeDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000004")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    monkeypatch.setattr(os, "remove", lambda *a: None)  # the kill also skips the clean-up
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000009")
    monkeypatch.undo()
    assert [t for t in _leftovers(tmp_path) if t.startswith(".model_0000009.pth.tmp-")]
    (tmp_path / ".notes.txt.tmp-1-00000000").write_text("not a checkpoint's")
    assert [n for n in ckpt.remove_stale_temporaries() if n.startswith(".model_0000009.pth")]
    assert _leftovers(tmp_path) == [".notes.txt.tmp-1-00000000"]
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000004.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match="model_0000099.pth"):
        ckpt.resume_or_load("", resume=True)


def test_refuses_to_leave_most_of_the_backbone_uninitialised(tmp_path, records):
    source = _randomize(_Detector(), 0)
    # saved from a model whose backbone had another name: nothing under "backbone." matches
    renamed = {k.replace("backbone.", "body."): v for k, v in source.state_dict().items()}
    path = tmp_path / "other_naming.pth"
    torch.save({"model": renamed}, path)
    target = _randomize(_Detector(), 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        SafeDetectionCheckpointer(target).load(str(path))
    message = str(info.value)
    assert "5 of 5 tensors" in message and "other_naming.pth" in message, message
    assert "backbone.stem.conv1.weight: (8, 3, 3, 3)" in message and "allow_partial=True" in message
    assert "body.stem.conv1.weight" in message  # an example of what the checkpoint has instead
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing copied

    ckpt = SafeDetectionCheckpointer(target, allow_partial=True)
    ckpt.load(str(path))
    assert torch.equal(target.head.weight, source.head.weight)
    assert ckpt.last_load_report.coverage.missing_tensors == 5
    assert any("allow_partial=True" in m for m in records)


def test_refusal_counts_values_not_only_tensors(tmp_path):
    # All BN tensors load but the big convolutions have other shapes: few tensors, most values.
    source = _randomize(_Detector(width=8), 0)
    weights = source.state_dict()
    weights["backbone.stem.conv1.weight"] = torch.zeros(8, 3, 5, 5)
    weights["backbone.res2.weight"] = torch.zeros(8, 8, 5, 5)
    path = tmp_path / "kernels.pth"
    torch.save(weights, path)  # a bare state dict
    with pytest.raises(ValueError, match="2 of 5 tensors"):
        SafeDetectionCheckpointer(_Detector(width=8)).load(str(path))


def test_ddp_prefixed_checkpoint_loads(tmp_path):
    source = _randomize(_Detector(), 0)
    path = tmp_path / "ddp.pth"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    target = _randomize(_Detector(), 1)
    SafeDetectionCheckpointer(target).load(str(path))
    assert _same_weights(source, target)


def test_plain_classifier_without_backbone(tmp_path):
    source = _randomize(_Classifier(classes=10), 0)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    # fine-tuning with another number of classes: only the classifier's head differs
    target = _randomize(_Classifier(classes=4), 1)
    ckpt = SafeDetectionCheckpointer(target)
    ckpt.load(str(path))
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert ckpt.last_load_report.coverage.guarded == ()
    assert {k for k, _, _ in ckpt.last_load_report.mismatched} == {"fc.weight", "fc.bias"}
    # a checkpoint that fits nothing in it is refused, the whole model being what is guarded
    torch.save({"unrelated.weight": torch.ones(3)}, tmp_path / "unrelated.pth")
    with pytest.raises(ValueError, match="under the whole model"):
        SafeDetectionCheckpointer(_Classifier()).load(str(tmp_path / "unrelated.pth"))


def test_detectron2_trainer_state_resumes_through_weights_only(tmp_path):
    # Everything detectron2's training loop saves (iteration, optimizer, LR scheduler hook state) must
    # pass torch.load(weights_only=True), or resuming our own runs would be refused.
    import itertools
    import weakref

    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.solver.lr_scheduler import LRMultiplier
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    class LossModel(_Detector):
        def forward(self, batch):
            features = self.backbone.res2(self.backbone.stem.conv1(batch[0]))
            return {"loss": self.head(features.mean((2, 3))).pow(2).mean()}

    def build():
        model = LossModel()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trainer = SimpleTrainer(model, itertools.repeat([torch.randn(2, 3, 8, 8)]), optimizer)
        multiplier = MultiStepParamScheduler([1.0, 0.1], milestones=[3], num_updates=6)
        scheduler = LRMultiplier(optimizer, multiplier, max_iter=6)
        checkpointer = SafeDetectionCheckpointer(model, str(tmp_path), trainer=weakref.proxy(trainer))
        trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler),
                                hooks.PeriodicCheckpointer(checkpointer, period=2)])
        return trainer, checkpointer, scheduler

    trainer, _, scheduler = build()
    trainer.train(0, 4)  # checkpoints after iterations 1 and 3
    resumed, checkpointer, resumed_scheduler = build()
    checkpointer.resume_or_load("", resume=True)
    assert resumed.iter == 3 and resumed_scheduler.last_epoch == scheduler.last_epoch
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert _same_weights(trainer.model, resumed.model)
