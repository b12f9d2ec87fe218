"""Pretraining survives kills: SIGKILL tools/pretrain_net.py at several points (during a checkpoint save, between
checkpoints, before the first one), --resume each time, and the final weights equal an uninterrupted run's bit for
bit. A truncated or missing checkpoint stops the resume with a message naming the file."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_backbone.checkpoint.safe_load import CorruptCheckpointError, load_file
from resnet_backbone.data.synthetic_classification import generate_classification_set
from resnet_backbone.engine.config_io import load_config
from resnet_backbone.engine.pretrain import PretrainRun, run_pretraining

REPO = Path(__file__).resolve().parents[1]
CIFAR_TINY = str(REPO / "configs" / "cifar" / "tiny.yaml")

# Runs tools/pretrain_net.py with fault hooks that only this test installs: the Nth torch.save writes its
# (temporary) file, then the process announces itself and hangs before the rename; or the Nth optimizer step hangs.
RUNNER = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
marker = os.environ["RB_TEST_MARKER"]
hang_save, hang_step = int(os.environ.get("RB_TEST_HANG_SAVE", 0)), int(os.environ.get("RB_TEST_HANG_STEP", 0))

def hang():
    open(marker, "w").close()
    time.sleep(600)

if hang_save:
    real_save, saves = torch.save, []
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        saves.append(1)
        if len(saves) == hang_save:
            f.flush()
            hang()
    torch.save = save
if hang_step:
    real_step, steps = torch.optim.SGD.step, []
    def step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == hang_step:
            hang()
        return real_step(self, *args, **kwargs)
    torch.optim.SGD.step = step
sys.path.insert(0, sys.argv[1])
import pretrain_net
pretrain_net.main(sys.argv[2:])
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _opts(out, root):
    return ["OUTPUT_DIR", str(out), "PRETRAIN.DATASET.ROOT", str(root), "PRETRAIN.MODEL", "cifar_resnet8",
            "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "10", "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "4",
            "PRETRAIN.SOLVER.IMS_PER_BATCH", "8", "PRETRAIN.SOLVER.MAX_ITER", "12", "PRETRAIN.SOLVER.STEPS", "(8,)",
            "PRETRAIN.CHECKPOINT_PERIOD", "3", "PRETRAIN.KEEP_CHECKPOINTS", "0", "PRETRAIN.EVAL_PERIOD", "6",
            "PRETRAIN.LOG_PERIOD", "3", "PRETRAIN.EXPORT", "False", "PRETRAIN.NUM_WORKERS", "1"]


def _run(tmp_path, out, root, *, resume, hang_save=0, hang_step=0):
    """Run the tool; with a hang hook, SIGKILL it once it hangs. Returns the exit code."""
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    marker = tmp_path / f"hung-{time.monotonic_ns()}"
    env = dict(os.environ, RB_TEST_MARKER=str(marker), RB_TEST_HANG_SAVE=str(hang_save),
               RB_TEST_HANG_STEP=str(hang_step), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    argv = [sys.executable, str(runner), str(REPO / "tools"), "--config-file", CIFAR_TINY]
    argv += ["--resume"] if resume else []
    proc = subprocess.Popen(argv + _opts(out, root), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if not (hang_save or hang_step):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]
        return proc.returncode
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its hook fired:\n{proc.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the run never reached its hook"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    return proc.returncode


def _tag(out):
    tag = out / "last_checkpoint"
    return tag.read_text() if tag.exists() else None


def _temporaries(out):
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "data"
    generate_classification_set(root, num_classes=10, train_per_class=10, val_per_class=4, layout="cifar")
    ref, out = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(tmp_path, ref, root, resume=False)

    # 1. killed while writing the first checkpoint (iteration 3): no checkpoint, a stray temporary file
    assert _run(tmp_path, out, root, resume=False, hang_save=1) == -signal.SIGKILL
    assert _tag(out) is None and not (out / "model_0000003.pth").exists()
    assert [t for t in _temporaries(out) if t.startswith(".model_0000003.pth")]
    # 2. --resume finds nothing and starts afresh; killed inside iteration 5 (checkpoint 3 written)
    assert _run(tmp_path, out, root, resume=True, hang_step=5) == -signal.SIGKILL
    assert _tag(out) == "model_0000003.pth" and not _temporaries(out)  # the stray file was cleaned up
    # 3. resumed at 3; checkpoint 6 is written, killed while writing checkpoint 9
    assert _run(tmp_path, out, root, resume=True, hang_save=2) == -signal.SIGKILL
    assert _tag(out) == "model_0000006.pth" and not (out / "model_0000009.pth").exists()
    assert load_file(out / "model_0000006.pth")["iteration"] == 6
    # 4. resumed at 6: runs to the end
    _run(tmp_path, out, root, resume=True)

    a, b = load_file(ref / "model_final.pth"), load_file(out / "model_final.pth")
    assert a["iteration"] == b["iteration"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    momenta_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momenta_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momenta_a, momenta_b))


def _short_cfg(tmp_path, out):
    root = tmp_path / "data"
    return load_config(CIFAR_TINY, _opts(out, root) + ["PRETRAIN.SOLVER.MAX_ITER", "3", "PRETRAIN.LOG_PERIOD", "1"])


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    out = tmp_path / "run"
    run_pretraining(_short_cfg(tmp_path, out))
    final = out / "model_final.pth"
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="model_final.pth"):
        PretrainRun(_short_cfg(tmp_path, out)).start(resume=True)

    (out / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match="model_0000099.pth"):
        PretrainRun(_short_cfg(tmp_path, out)).start(resume=True)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    out = tmp_path / "run"
    run_pretraining(_short_cfg(tmp_path, out))
    other = _short_cfg(tmp_path, out)
    other.PRETRAIN.MODEL = "cifar_resnet14"
    with pytest.raises(ValueError, match="model_name='cifar_resnet8'"):
        PretrainRun(other).start(resume=True)
