"""safe_load: checkpoints are read without running code, in every format the project meets."""
import builtins
import io
import os
import pickle
import struct
from collections import OrderedDict

import numpy as np
import pytest
import torch

from resnet_backbone.checkpoint.safe_load import (
    ALLOWED_EXTENSIONS,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_file,
    state_dict_from,
)


class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint contains."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    """Ways a pickle can create ``marker`` when loaded, each with the global it must name."""
    return [
        (_Payload(os.system, f"touch {marker}"), "system"),
        (_Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "exec"),
        (_Payload(builtins.eval, f"open({str(marker)!r}, 'w')"), "eval"),
        (_Payload(builtins.open, str(marker), "w"), "open"),
    ]


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as the MSRA / Caffe2 model-zoo pickles hold
    numpy array data; the result needs ``encoding="latin1"`` to load in Python 3."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump(obj, path, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


# ----------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pkl_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    for payload, name in _payloads(marker):
        path = tmp_path / f"evil_{name}.pkl"
        _dump({"model": {"w": np.ones(2)}, "x": payload}, path, protocol)
        with pytest.raises(UnsafeCheckpointError) as info:
            load_file(path)
        message = str(info.value)
        assert str(path) in message and name in message, message
        assert "only containers, numbers, strings and numpy arrays" in message
        assert not marker.exists()


@pytest.mark.parametrize("source", [
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'x'\ntR.",  # the usual gadget: getattr(...)
    b"c__builtin__\neval\n(S'1+1'\ntR.",  # Python 2 spelling of builtins
    b"(S'true'\nios\nsystem\n.",  # INST opcode, protocol 0
    b"c_codecs\nencode\n(S'abc'\nS'rot13'\ntR.",  # an admitted function with a refused argument
])
def test_hand_written_gadgets_are_refused(tmp_path, source):
    path = tmp_path / "gadget.pkl"
    path.write_bytes(source)
    with pytest.raises(UnsafeCheckpointError):
        load_file(path)


def test_malicious_pth_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "MARKER"
    for payload, name in _payloads(marker):
        path = tmp_path / f"evil_{name}.pth"
        torch.save({"model": {"w": torch.ones(2)}, "x": payload}, path)
        with pytest.raises(UnsafeCheckpointError) as info:
            load_file(path)
        message = str(info.value)
        assert str(path) in message and name in message, message
        assert not marker.exists()
    # the error is a pickle error, as torch's own refusal is
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def test_pth_with_numpy_arrays_is_refused_not_run(tmp_path):
    # torch.load(weights_only=True) does not admit numpy; such files must be re-saved with tensors.
    path = tmp_path / "numpy.pth"
    torch.save({"w": np.ones(3)}, path)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_file(path)


# ------------------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])  # legacy: torch < 1.6 files
def test_pth_state_dict_round_trip(tmp_path, zipfile):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict(), "iteration": 7, "lrs": [0.1, 0.01]}, path,
               _use_new_zipfile_serialization=zipfile)
    loaded = load_file(path)
    assert loaded["iteration"] == 7 and loaded["lrs"] == [0.1, 0.01]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v) and loaded["model"][k].device.type == "cpu"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_detectron2_format_numpy_pkl_loads(tmp_path, protocol):
    rng = np.random.default_rng(0)
    model = OrderedDict(
        [("stem.conv1.weight", rng.standard_normal((8, 3, 7, 7)).astype(np.float32)),
         ("stem.conv1.norm.running_var", rng.random(8)),
         ("res2.0.conv1.num_batches_tracked", np.int64(3))]
    )
    data = {"model": model, "__author__": "torchvision", "matching_heuristics": True, "tags": {"a", "b"},
            "misc": (b"raw", bytearray(b"ba"), 1 + 2j, None, True)}
    path = tmp_path / "d2.pkl"
    _dump(data, path, protocol)
    loaded = load_file(path)
    assert loaded["__author__"] == "torchvision" and loaded["matching_heuristics"] is True
    assert loaded["tags"] == {"a", "b"} and loaded["misc"] == data["misc"]
    for k, v in model.items():
        assert np.array_equal(loaded["model"][k], v)
        assert np.asarray(loaded["model"][k]).dtype == np.asarray(v).dtype


def test_python2_msra_blobs_pkl_loads(tmp_path):
    rng = np.random.default_rng(1)
    blobs = {"conv1_w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
             "res_conv1_bn_s": np.ones(4, np.float32),
             "conv1_w_momentum": np.zeros((4, 3, 1, 1), np.float32)}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({"blobs": blobs, "cfg": "MODEL: {}"})
    assert b"_codecs" not in buf.getvalue()  # array data really is stored as py2 str
    path = tmp_path / "R-50.pkl"
    path.write_bytes(buf.getvalue())
    loaded = load_file(path)
    assert loaded["cfg"] == "MODEL: {}"
    for k, v in blobs.items():
        assert np.array_equal(loaded["blobs"][k], v)


@pytest.mark.parametrize("written_by, read_as", [("numpy.core", "numpy._core"), ("numpy._core", "numpy.core")])
def test_numpy_1_and_2_module_names_both_load(tmp_path, written_by, read_as):
    # numpy 2 renamed numpy.core to numpy._core and pickles name the module that wrote them; a file
    # from either must load under whichever numpy is installed.
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = pickle.dumps({"a": array, "s": np.float64(2.5)}, protocol=2)
    for current in (b"numpy.core.", b"numpy._core."):
        raw = raw.replace(current + b"multiarray\n", read_as.encode() + b".multiarray\n")
    assert (read_as + ".multiarray").encode() in raw
    path = tmp_path / "np.pkl"
    path.write_bytes(raw)
    loaded = load_file(path)
    assert np.array_equal(loaded["a"], array) and loaded["s"] == 2.5


# ------------------------------------------------------------------------------------------ damage


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_truncated_pth_is_corrupt_and_names_the_file(tmp_path, zipfile):
    path = tmp_path / "model_0000999.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, path, _use_new_zipfile_serialization=zipfile)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        load_file(path)
    assert str(path) in str(info.value) and "previous checkpoint" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_truncated_pkl_is_corrupt(tmp_path):
    path = tmp_path / "model.pkl"
    _dump({"model": {"w": np.ones((16, 16))}}, path, 2)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptCheckpointError, match="model.pkl"):
        load_file(path)


def test_garbage_is_refused(tmp_path):
    # Random bytes never load; torch's weights-only reader reports them as an unsupported opcode.
    for name in ("junk.pth", "junk.pkl"):
        path = tmp_path / name
        path.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
        with pytest.raises((CorruptCheckpointError, UnsafeCheckpointError), match=name):
            load_file(path)


def test_missing_file_and_bad_extension(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_file(missing)
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError) as info:
        load_file(bad)
    assert ".h5" in str(info.value) and all(ext in str(info.value) for ext in ALLOWED_EXTENSIONS)


def test_non_dict_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.ones(2), path)
    with pytest.raises(ValueError, match="Tensor"):
        load_file(path)


# ------------------------------------------------------------------------------------ state_dict_from


@pytest.mark.parametrize("layout", ["model", "state_dict", "model_state", "blobs", None])
def test_state_dict_from_common_layouts(layout):
    sd = OrderedDict([("conv.weight", np.ones((2, 2), np.float32)), ("conv.bias", torch.zeros(2))])
    obj = sd if layout is None else {layout: sd, "iteration": 3}
    out = state_dict_from(obj)
    assert list(out) == ["conv.weight", "conv.bias"]
    assert all(isinstance(v, torch.Tensor) for v in out.values())
    assert torch.equal(out["conv.weight"], torch.ones(2, 2))


def test_state_dict_from_strips_ddp_prefix_and_rejects_non_tensors():
    out = state_dict_from({"state_dict": {"module.a": torch.ones(1), "module.b": np.float32(2)}})
    assert list(out) == ["a", "b"] and out["b"].item() == 2
    with pytest.raises(ValueError, match="'lr'"):
        state_dict_from({"w": torch.ones(1), "lr": "0.1"})
