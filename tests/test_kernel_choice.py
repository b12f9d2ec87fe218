"""The deploy path's measured kernel choice (resnet_backbone/deploy/kernels.py): what is measured, what is cached on
disk and under which key, that a second call / process reuses it, and that every choice computes the same function.
No timings are asserted (the clock is faked where the choice itself is tested)."""
import copy
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import randomize_norms
from detectron2.layers import Conv2d

from resnet_backbone import add_resnet_backbone_config, create_model
from resnet_backbone.deploy import OneDNNConv2d, apply_deploy_config, kernels, prepare_for_inference, winograd
from resnet_backbone.deploy.cache import cache_dir, cpu_flags, cpu_identity, cpu_model

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    """A fresh cache folder per test (the Winograd library already loaded in this process stays loaded)."""
    monkeypatch.setenv("RB_CACHE_DIR", str(tmp_path / "cache"))
    kernels.reset_stats()
    yield tmp_path / "cache"
    kernels.reset_stats()


def _rel_err(out, ref) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def _model(name="cifar_resnet8"):
    return randomize_norms(create_model(name)).eval()


def _convs(model):
    return [m for m in model.modules() if isinstance(m, OneDNNConv2d)]


def test_measured_choice_keeps_outputs_and_is_recorded_per_layer():
    model = _model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fast = prepare_for_inference(copy.deepcopy(model), onednn=True, winograd=True, channels_last=True)
        out = fast(x)
    assert _rel_err(out, ref) < RTOL
    convs = _convs(fast)
    assert convs and all(m.kernel_mode == "measure" and len(m.kernel_choices) == 1 for m in convs)
    for m in convs:
        (kernel,) = m.kernel_choices.values()
        assert kernel in kernels.KERNELS
        assert kernel.startswith("conv2d") or kernel == "onednn" or m.winograd  # Winograd only where eligible
    assert kernels.stats()["measured"] > 0
    # the report groups the choices per layer type
    summary = kernels.summarize(fast)
    assert "3x3/s1 64->64 @16x16" in summary and sum(sum(v.values()) for v in summary.values()) == len(convs)
    # only the chosen kernels' derived weights stay (measuring the others made theirs)
    for m in convs:
        (kernel,) = m.kernel_choices.values()
        if kernel in ("onednn", "conv2d_nhwc"):  # the packed weight is opaque; NHWC is the weight's own layout
            assert m.cached_weight_bytes() == 0


@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_every_candidate_computes_the_same_function(kernel):
    g = torch.Generator().manual_seed(1)
    conv = Conv2d(32, 48, 3, padding=1, bias=True).eval().requires_grad_(False)
    conv.__class__ = OneDNNConv2d
    conv.winograd = winograd.available()
    x = torch.randn(2, 32, 11, 9, generator=g)
    add = torch.randn(2, 48, 11, 9, generator=g)
    ref = torch.relu(torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
                     + add.double())
    if kernel not in kernels.candidates(conv, x):
        pytest.skip(f"{kernel} is not a candidate here: Winograd kernels unavailable "
                    f"({winograd.unavailable_reason()})")
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            out = conv._run(kernel, x.contiguous(memory_format=layout), True, add)
        assert _rel_err(out, ref) < RTOL


def test_second_call_and_second_model_do_not_measure_again(cache):
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = prepare_for_inference(copy.deepcopy(model), onednn=True)
        first = fast(x)
        measured = kernels.stats()["measured"]
        assert measured > 0 and kernels.store_path().is_file()
        assert torch.equal(fast(x), first)  # same kernels again
        assert kernels.stats()["measured"] == measured
        # a second deployed copy finds every choice in the cache
        again = prepare_for_inference(copy.deepcopy(model), onednn=True)
        again(x)
    assert kernels.stats()["measured"] == measured
    assert [m.kernel_choices for m in _convs(again)] == [m.kernel_choices for m in _convs(fast)]
    data = json.loads(kernels.store_path().read_text())
    assert data["cpu"] == cpu_model() and data["torch"] == torch.__version__
    entry = next(iter(data["entries"].values()))
    assert entry["kernel"] in kernels.KERNELS and set(entry["ms"]) >= {"onednn", "conv2d_nchw", "conv2d_nhwc"}


_CHILD = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from resnet_backbone import create_model
    from resnet_backbone.deploy import kernels, prepare_for_inference
    model = prepare_for_inference(create_model("cifar_resnet8"), onednn=True, winograd=False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    choices = [m.kernel_choices for m in model.modules() if hasattr(m, "kernel_choices")]
    print(json.dumps({"stats": kernels.stats(), "choices": choices}))
""")


@pytest.mark.slow  # two fresh interpreters importing torch and detectron2 (~15 s)
def test_a_second_process_reads_the_choices_from_disk(cache):
    env = dict(os.environ, RB_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")

    def child():
        res = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    first, second = child(), child()
    assert first["stats"]["measured"] > 0
    assert second["stats"]["measured"] == 0 and second["stats"]["cached"] > 0
    assert second["choices"] == first["choices"]


def test_key_changes_with_threads_shape_dtype_layout_and_epilogue():
    conv = Conv2d(64, 64, 3, padding=1).eval()
    conv.__class__ = OneDNNConv2d
    x = torch.randn(2, 64, 14, 14)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.layer_key(conv, x, True, False)
        torch.set_num_threads(2)
        two = kernels.layer_key(conv, x, True, False)
    finally:
        torch.set_num_threads(threads)
    assert one != two and one.endswith("t1") and two.endswith("t2")
    base = kernels.layer_key(conv, x, True, False)
    variants = [kernels.layer_key(conv, torch.randn(1, 64, 14, 14), True, False),
                kernels.layer_key(conv, torch.randn(2, 64, 15, 14), True, False),
                kernels.layer_key(conv, x.contiguous(memory_format=torch.channels_last), True, False),
                kernels.layer_key(conv, x.bfloat16(), True, False),
                kernels.layer_key(conv, x, False, False),
                kernels.layer_key(conv, x, True, True)]
    assert len({base, *variants}) == 1 + len(variants)
    # whether Winograd is a candidate (the deploy path with and without it measures different sets)
    conv.winograd = True
    assert kernels.layer_key(conv, x, True, False) != base
    # above EXACT_UP_TO, sides share a key within 2^(1/4) steps: many image sizes, few measurements
    big = [kernels.layer_key(conv, torch.randn(1, 64, 50, w), True, False) for w in (200, 204, 300)]
    assert big[0] == big[1] != big[2]
    # the geometry is part of the key
    other = Conv2d(64, 64, 3, padding=1, stride=2).eval()
    other.__class__ = OneDNNConv2d
    assert kernels.layer_key(other, x, True, False) != base


def test_threads_change_measures_again():
    model = prepare_for_inference(_model(), onednn=True)
    x = torch.randn(2, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            model(x)
            after_one = kernels.stats()["measured"]
            model(x)
            assert kernels.stats()["measured"] == after_one
            torch.set_num_threads(2)
            model(x)
    finally:
        torch.set_num_threads(threads)
    assert kernels.stats()["measured"] > after_one
    assert all(len(m.kernel_choices) == 2 for m in _convs(model))


def test_store_file_is_per_cpu_torch_version_and_cache_dir(monkeypatch, tmp_path):
    path = kernels.store_path()
    assert path.parent == cache_dir() and path.name.startswith("kernels-")
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert kernels.store_path() != path
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "cpu_identity", lambda: "model name : another CPU\nflags : sse2\n")
    assert kernels.store_path() != path
    monkeypatch.setenv("RB_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert kernels.store_path().parent == tmp_path / "elsewhere"


def test_cpu_identity_names_the_model_and_flags():
    assert cpu_model()
    if Path("/proc/cpuinfo").is_file():
        flags = cpu_flags()
        assert flags == sorted(flags) and flags
        assert all(f in cpu_identity() for f in flags[:5])


def test_fastest_candidate_is_kept(monkeypatch):
    # a fake clock: each call advances it by that candidate's cost, so the choice is deterministic
    clock = [0.0]
    monkeypatch.setattr(kernels, "_clock", lambda: clock[0])
    costs = {"conv2d_nchw": 3.0, "conv2d_nhwc": 2.0, "onednn": 5.0, "winograd4": 1.0, "winograd2": 4.0}
    calls = {name: (lambda c=c: clock.__setitem__(0, clock[0] + c)) for name, c in costs.items()}
    best, times = kernels.measure(calls)
    assert best == "winograd4" and times == costs


def test_a_cached_choice_is_used_without_measuring(monkeypatch):
    conv = Conv2d(16, 16, 3, padding=1, bias=True).eval().requires_grad_(False)
    conv.__class__ = OneDNNConv2d
    conv.kernel_mode = "measure"
    x = torch.randn(1, 16, 8, 8)
    path = kernels.store_path()
    path.parent.mkdir(parents=True)
    key = kernels.layer_key(conv, x, False, False)
    path.write_text(json.dumps({"format": kernels._FORMAT, "entries": {key: {"kernel": "conv2d_nchw", "ms": {}}}}))
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("measured although the choice is cached"))
    with torch.no_grad():
        out = conv(x)
    assert conv.kernel_choices == {key: "conv2d_nchw"}
    assert torch.allclose(out, torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-6)


def test_unreadable_cache_is_measured_again_and_rewritten(caplog):
    path = kernels.store_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    model = prepare_for_inference(_model(), onednn=True)
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"), torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert "unreadable" in caplog.text and kernels.stats()["measured"] > 0
    assert json.loads(path.read_text())["entries"]


def test_rules_mode_never_measures_and_follows_the_rule(monkeypatch):
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: pytest.fail("rules mode measured"))
    model = _model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fast = prepare_for_inference(copy.deepcopy(model), onednn=True, winograd=True, kernels="rules")
        out = fast(x)
    assert _rel_err(out, ref) < RTOL
    assert not kernels.store_path().exists()
    for m in _convs(fast):
        (kernel,) = m.kernel_choices.values()
        assert kernel in ("onednn", "winograd4")
        assert (kernel == "winograd4") == (m.winograd and m.cached_weight_bytes() > 0)
    assert any(m.winograd for m in _convs(fast)) == winograd.available()


def test_candidates_offer_winograd_only_on_its_layers():
    conv = Conv2d(32, 32, 3, padding=1).eval()
    conv.__class__ = OneDNNConv2d
    x = torch.randn(1, 32, 8, 8)
    assert kernels.candidates(conv, x) == ("conv2d_nchw", "conv2d_nhwc", "onednn")
    conv.winograd = True
    assert kernels.candidates(conv, x)[-2:] == ("winograd4", "winograd2")
    assert "winograd4" not in kernels.candidates(conv, x.bfloat16())  # the C kernels are float32


def test_unwritable_cache_dir_warns_and_still_chooses(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RB_CACHE_DIR", str(blocker / "cache"))  # a folder inside a file cannot be made
    model = prepare_for_inference(_model(), onednn=True)
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"), torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert "could not write the kernel choice cache" in caplog.text
    assert all(m.kernel_choices for m in _convs(model))


def test_bad_kernel_modes_are_named():
    with pytest.raises(ValueError, match="kernels"):
        prepare_for_inference(create_model("cifar_resnet8"), kernels="fastest")
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_resnet_backbone_config(cfg)
    assert cfg.MODEL.RB_DEPLOY.KERNELS == "measure"
    cfg.MODEL.RB_DEPLOY.FUSE_BN = True
    cfg.MODEL.RB_DEPLOY.KERNELS = "auto"
    with pytest.raises(ValueError, match="MODEL.RB_DEPLOY.KERNELS.*'auto'"):
        apply_deploy_config(cfg, create_model("cifar_resnet8"))
