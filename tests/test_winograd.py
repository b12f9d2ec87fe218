"""Winograd F(m x m, 3 x 3) convolutions of the deploy path (resnet_backbone/deploy/winograd.py) against float64
F.conv2d: the same function within 1e-4 relative, every shape / padding / epilogue the deploy path uses, and the
guards around the compiled kernels. No timings here (tools/benchmark.py measures speed)."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_norms
from detectron2.layers import Conv2d

from resnet_backbone import create_model
from resnet_backbone.deploy import OneDNNConv2d, prepare_for_inference, winograd

RTOL = 1e-4


def _rel_err(out, ref) -> float:
    return float((out.double() - ref).abs().max() / ref.abs().max())


def _reference(x, w, b, padding, add=None, relu=False):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=padding)
    if add is not None:
        y = y + add.double()
    return F.relu(y) if relu else y


@pytest.fixture(scope="module", autouse=True)
def kernels_built():
    # the kernels are part of the project: a machine that runs the tests has the C compiler setup_env checks for
    assert winograd.available(), f"Winograd kernels did not build: {winograd.unavailable_reason()}"


@pytest.mark.parametrize("m", winograd.VARIANTS)
@pytest.mark.parametrize("n,c,k,h,w,padding", [
    (2, 64, 64, 14, 14, (1, 1)),    # tiles fit exactly (m = 2) / with a clipped border tile (m = 4)
    (1, 3, 5, 7, 9, (1, 1)),        # odd sizes, channel counts below one channel block
    (2, 70, 130, 11, 6, (1, 1)),    # channels over one block of 64, not multiples of it
    (1, 16, 8, 9, 8, (0, 0)),       # "valid" convolution
    (1, 8, 8, 5, 6, (2, 1)),        # padding larger than 1, different per side
    (3, 32, 32, 3, 3, (1, 1)),      # a feature map smaller than one tile
])
def test_conv3x3_equals_direct_convolution(m, n, c, k, h, w, padding):
    g = torch.Generator().manual_seed(n * 1000 + c + h)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    bias = torch.randn(k, generator=g)
    assert winograd.transform_weight(weight, m).shape == ((m + 2) ** 2, c, k)
    ref = _reference(x, weight, bias, padding)
    # the GEMM through oneDNN's grouped convolution and through torch.bmm; NCHW inputs converted, NHWC used in place
    for onednn, layout in ((True, torch.contiguous_format), (True, torch.channels_last), (False, torch.channels_last)):
        wt = winograd.WinogradWeight(weight, m, onednn=onednn)
        assert wt.onednn == onednn and wt.nbytes == 4 * (m + 2) ** 2 * c * k
        out = winograd.conv3x3(x.contiguous(memory_format=layout), wt, bias, padding)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert _rel_err(out, ref) < RTOL


@pytest.mark.parametrize("m", winograd.VARIANTS)
def test_fused_epilogue_bias_shortcut_and_relu(m):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(2, 64, 10, 13, generator=g)
    weight = torch.randn(96, 64, 3, 3, generator=g) / 24
    add = torch.randn(2, 96, 10, 13, generator=g)
    ref = _reference(x, weight, None, (1, 1), add=add, relu=True)
    for onednn in (True, False):
        out = winograd.conv3x3(x, winograd.WinogradWeight(weight, m, onednn=onednn), None, (1, 1), relu=True, add=add)
        assert _rel_err(out, ref) < RTOL
        assert (out >= 0).all() and (out == 0).any()


def test_bad_arguments_are_named():
    x = torch.randn(1, 8, 6, 6)
    wt = winograd.WinogradWeight(torch.randn(4, 8, 3, 3), 2)
    with pytest.raises(ValueError, match="must be one of"):
        winograd.transform_weight(torch.randn(4, 8, 3, 3), 3)
    with pytest.raises(ValueError, match=r"\[K, C, 3, 3\]"):
        winograd.transform_weight(torch.randn(4, 8, 5, 5), 2)
    with pytest.raises(ValueError, match="8 channels.*made for 7"):
        winograd.conv3x3(x, winograd.WinogradWeight(torch.randn(4, 7, 3, 3), 2))
    with pytest.raises(ValueError, match="WinogradWeight"):
        winograd.conv3x3(x, winograd.transform_weight(torch.randn(4, 8, 3, 3), 2))
    with pytest.raises(ValueError, match="float32"):
        winograd.conv3x3(x.double(), wt)
    with pytest.raises(ValueError, match="shape"):
        winograd.conv3x3(x, wt, add=torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="no output"):
        winograd.conv3x3(torch.randn(1, 8, 1, 1), wt, None, (0, 0))


def test_packed_weight_follows_the_tile_count_then_settles_on_bmm():
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(64, 64, 3, 3, generator=g) / 24
    wt = winograd.WinogradWeight(weight, 4, onednn=True)
    sizes = [8, 8, 12, 16, 8, 20, 24, 28, 12]  # tile counts 4, 4, 9, 16, 4, 25, 36, 49, 9 at batch 1
    for s in sizes:
        x = torch.randn(1, 64, s, s, generator=g)
        assert _rel_err(winograd.conv3x3(x, wt), _reference(x, weight, None, (1, 1))) < RTOL
    # re-packed whenever the count changes (not for a repeat of the last one) until MAX_REPACKS, then torch.bmm
    assert wt.repacks == winograd.WinogradWeight.MAX_REPACKS and not wt.onednn


def test_choose_variant_follows_the_thresholds():
    # ResNet at 224 px, batch 2: every stage on F(4x4); at batch 1 res5 (7x7: 4 tiles) stays direct
    assert [winograd.choose_variant(2, s, s, c, c) for s, c in ((56, 64), (28, 128), (14, 256), (7, 512))] == \
        [4, 4, 4, 4]
    assert winograd.choose_variant(1, 7, 7, 512, 512) is None
    assert winograd.choose_variant(2, 32, 32, 16, 16) is None  # fewer channels than MIN_CHANNELS
    assert winograd.choose_variant(1, 1, 1, 64, 64, (0, 0)) is None  # no output


def test_resnet50_deploy_with_winograd_keeps_outputs_and_uses_it():
    model = randomize_norms(create_model("resnet50")).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
    fast = prepare_for_inference(copy.deepcopy(model), winograd=True, onednn=True, channels_last=True,
                                 kernels="rules")
    convs = [m for m in fast.modules() if isinstance(m, OneDNNConv2d)]
    assert sum(m.winograd for m in convs) == 16  # the 3x3 / stride-1 convolutions of the 16 bottlenecks
    with torch.no_grad():
        out = fast(x)
    assert _rel_err(out, ref.double()) < RTOL
    used = [m for m in convs if m.cached_weight_bytes() > 0]
    assert used, "no layer took the Winograd path at 96 px, batch 2"
    # the derived weights are rebuilt after a copy, not carried along; the copy computes the same
    again = copy.deepcopy(fast)
    assert all(m.cached_weight_bytes() == 0 for m in again.modules() if isinstance(m, OneDNNConv2d))
    with torch.no_grad():
        assert torch.equal(again(x), out)
    # a weight changed in place (load_state_dict copies into it) invalidates the transformed weight
    conv = used[0]
    with torch.no_grad():
        before = fast(x)
        conv.weight.mul_(2.0)
        assert not torch.equal(fast(x), before)


def test_winograd_off_and_missing_kernels_fall_back(monkeypatch, caplog):
    model = randomize_norms(create_model("resnet18")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    off = prepare_for_inference(copy.deepcopy(model), winograd=False, onednn=True)
    assert not any(m.winograd for m in off.modules() if isinstance(m, OneDNNConv2d))
    monkeypatch.setattr(winograd, "_load", lambda: (None, "no C compiler here"))
    monkeypatch.setattr(winograd._load, "_warned", False, raising=False)
    with caplog.at_level(logging.WARNING, logger="resnet_backbone.deploy"):
        fast = prepare_for_inference(copy.deepcopy(model), winograd=True, onednn=True)
        with torch.no_grad():
            out = fast(x)
    assert "no C compiler here" in caplog.text
    assert not any(m.winograd for m in fast.modules() if isinstance(m, OneDNNConv2d))
    assert _rel_err(out, ref.double()) < RTOL


def test_build_failure_names_the_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("RB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RB_CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no-such-cc"):
        winograd.build()
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*.tmp"))  # nothing half-written left


def test_build_is_cached_and_keyed_by_source(monkeypatch, tmp_path):
    monkeypatch.setenv("RB_CACHE_DIR", str(tmp_path))
    first = winograd.build()
    assert first.parent == tmp_path and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert winograd.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    # a library without its completion record (utils/completion) is not trusted: built again
    first.with_name(first.name + ".complete.json").unlink()
    assert winograd.build() == first and first.stat().st_mtime_ns != mtime


def test_gradients_and_other_convolutions_keep_the_direct_path():
    conv = Conv2d(64, 64, 3, padding=1, bias=True).eval()
    conv.__class__ = OneDNNConv2d
    conv.winograd = True
    x = torch.randn(2, 64, 28, 28, requires_grad=True)
    out = conv(x)  # gradients wanted: F.conv2d, autograd intact
    out.sum().backward()
    assert x.grad is not None and conv.cached_weight_bytes() == 0


@pytest.mark.slow  # torch.compile of a ResNet-18 (~20 s)
def test_winograd_under_torch_compile_keeps_outputs():
    # the C kernels write through raw pointers: conv3x3 runs eagerly inside a compiled model (without that, compiled
    # outputs were wrong by 1e-2 to 1)
    torch._dynamo.reset()
    model = randomize_norms(create_model("resnet18")).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        fast = prepare_for_inference(copy.deepcopy(model), winograd=True, onednn=True, compile=True, kernels="rules")
        outs = [fast(x), fast(x)]
    assert all(_rel_err(out, ref.double()) < RTOL for out in outs)
    eager = getattr(fast, "eager", fast)
    assert any(m.cached_weight_bytes() > 0 for m in eager.modules() if isinstance(m, OneDNNConv2d))
