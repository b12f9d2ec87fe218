"""Preemption and exact resume, as a cluster does them: SIGTERM / SIGUSR1 at a chosen iteration (the test hook of
engine/preemption.py announces the iteration; no sleeps) -> a checkpoint of that iteration, exit code
EXIT_PREEMPTED; kill -9 after a checkpoint; then --resume to the end gives the weights of an uninterrupted run bit
for bit: train_net with 1 and 2 processes, NUM_WORKERS 0 and 2, lazy_train_net, and the pretraining stage. The
2-process runs evaluate one test set, as the shipped configs do, and must end with exit code 0."""
import json
import os
import signal
import sys

import pytest
import torch

from resnet_backbone.data.synthetic_detection import generate_dataset
from resnet_backbone.engine.launch import launch_supports_cpu
from resnet_backbone.engine.preemption import EXIT_PREEMPTED

from tiny_detector import (  # noqa: E402  (tests/tiny_detector.py)
    CONFIG,
    LAZY_CONFIG,
    LAZY_TINY,
    ONE_TEST_SET,
    REPO,
    TINY,
    assert_same_weights,
    final_weights,
    run_tool,
    stop_at,
    tag,
)

pytestmark = pytest.mark.slow
needs_cpu_processes = pytest.mark.skipif(not launch_supports_cpu() and not torch.cuda.is_available(),
                                         reason="this detectron2's launch needs CUDA for several processes (v0.6)")
TRAIN_NET = [sys.executable, str(REPO / "tools" / "train_net.py")]
LAZY_TRAIN_NET = [sys.executable, str(REPO / "tools" / "lazy_train_net.py")]
PRETRAIN_NET = [sys.executable, str(REPO / "tools" / "pretrain_net.py")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb_preempt_data")
    generate_dataset(str(root / "rb_shapes"), num_train=8, num_val=4, image_size=(64, 96))
    return dict(os.environ, RB_DATASETS=str(root), OMP_NUM_THREADS="1")


def _ok(code, log):
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """train_net uninterrupted, 1 process, one test set."""
    base = tmp_path_factory.mktemp("rb_reference")
    _ok(run_tool(TRAIN_NET + CONFIG + TINY + ONE_TEST_SET + ["OUTPUT_DIR", str(base / "out")], env, base / "log"),
        base / "log")
    return base / "out"


@pytest.mark.parametrize("workers, sig", [("2", signal.SIGTERM), ("0", signal.SIGKILL)])
def test_train_net_stopped_then_resumed_equals_uninterrupted(reference, env, tmp_path, workers, sig):
    out, log = tmp_path / "out", tmp_path / "log"
    args = CONFIG + TINY + ONE_TEST_SET + ["DATALOADER.NUM_WORKERS", workers, "OUTPUT_DIR", str(out)]
    # SIGTERM at iteration 3 (0-based: 3 done before it); SIGKILL at 4, after the checkpoint of iteration 2
    code = stop_at(TRAIN_NET + args, env, log, iteration=3 if sig == signal.SIGTERM else 4, marker=tmp_path / "m",
                   sig=sig)
    if sig == signal.SIGTERM:
        assert code == EXIT_PREEMPTED, log.read_text()[-3000:]
        assert tag(out) == "model_0000003.pth" and "SIGTERM received" in log.read_text()
        assert not (out / "model_final.pth").exists()
    else:
        assert code == -signal.SIGKILL and tag(out) == "model_0000002.pth"
    _ok(run_tool(TRAIN_NET + ["--resume"] + args, env, log), log)
    assert f"Starting training from iteration {4 if sig == signal.SIGTERM else 3}" in log.read_text()
    assert_same_weights(final_weights(reference), final_weights(out))


def test_default_seed_trains_stops_and_resumes_its_own_stream(env, tmp_path):
    """SEED -1 (detectron2's default, which the shipped configs keep): a random loader seed drawn once, kept in the
    checkpoint, and continued by --resume (the run that resumes draws another one)."""
    out, log = tmp_path / "out", tmp_path / "log"
    args = CONFIG + TINY[:-2] + ONE_TEST_SET + ["SEED", "-1", "OUTPUT_DIR", str(out)]
    code = stop_at(TRAIN_NET + args, env, log, iteration=3, marker=tmp_path / "m", sig=signal.SIGTERM)
    assert code == EXIT_PREEMPTED, log.read_text()[-3000:]
    _ok(run_tool(TRAIN_NET + ["--resume"] + args, env, log), log)
    assert "continuing the sample stream of seed" in log.read_text()
    assert (out / "model_final.pth").exists()


@pytest.fixture(scope="module")
def lazy_reference(env, tmp_path_factory):
    """lazy_train_net uninterrupted, 1 process."""
    base = tmp_path_factory.mktemp("rb_lazy_reference")
    _ok(run_tool(LAZY_TRAIN_NET + LAZY_CONFIG + LAZY_TINY + [f"train.output_dir={base / 'out'}"], env, base / "log"),
        base / "log")
    return base / "out"


@pytest.mark.parametrize("workers, sig", [("0", signal.SIGUSR1), ("2", signal.SIGKILL)])
def test_lazy_train_net_stopped_then_resumed_equals_uninterrupted(lazy_reference, env, tmp_path, workers, sig):
    out, log = tmp_path / "out", tmp_path / "log"
    args = LAZY_CONFIG + LAZY_TINY + [f"dataloader.train.num_workers={workers}", f"train.output_dir={out}"]
    # SIGUSR1 at iteration 1; SIGKILL at 4, after the checkpoint of iteration 2
    code = stop_at(LAZY_TRAIN_NET + args, env, log, iteration=1 if sig == signal.SIGUSR1 else 4,
                   marker=tmp_path / "m", sig=sig)
    if sig == signal.SIGUSR1:
        assert code == EXIT_PREEMPTED and tag(out) == "model_0000001.pth", log.read_text()[-3000:]
    else:
        assert code == -signal.SIGKILL and tag(out) == "model_0000002.pth", log.read_text()[-3000:]
    _ok(run_tool(LAZY_TRAIN_NET + ["--resume"] + args, env, log), log)
    assert_same_weights(final_weights(lazy_reference), final_weights(out))


def test_lazy_train_net_cpu_amp(env, tmp_path):
    """train.amp.enabled on the CPU: bfloat16 autocast, as train_net's SOLVER.AMP.ENABLED (not AMPTrainer's CUDA
    assertion)."""
    out, log = tmp_path / "out", tmp_path / "log"
    _ok(run_tool(LAZY_TRAIN_NET + LAZY_CONFIG + LAZY_TINY + ["train.max_iter=2", "train.amp.enabled=True",
                                                             f"train.output_dir={out}"], env, log), log)
    assert (out / "model_final.pth").exists()


@needs_cpu_processes
def test_two_processes_sigterm_then_resume_equals_uninterrupted(env, tmp_path):
    """--num-gpus 2: SIGTERM to the launching process reaches both workers; both stop after the same iteration."""
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "log"
    two = CONFIG + ["--num-gpus", "2"] + TINY + ONE_TEST_SET + ["DATALOADER.NUM_WORKERS", "2"]
    _ok(run_tool(TRAIN_NET + two + ["OUTPUT_DIR", str(ref)], env, log), log)  # one test set: exits 0
    code = stop_at(TRAIN_NET + two + ["OUTPUT_DIR", str(out)], env, log, iteration=4, marker=tmp_path / "m", ranks=2,
                   sig=signal.SIGTERM)
    assert code == EXIT_PREEMPTED and tag(out) == "model_0000004.pth", log.read_text()[-3000:]
    _ok(run_tool(TRAIN_NET + ["--resume"] + two + ["OUTPUT_DIR", str(out)], env, log), log)
    assert_same_weights(final_weights(ref), final_weights(out))


@needs_cpu_processes
@pytest.mark.parametrize("test_sets", [["rb_shapes_coco_val"], ["rb_shapes_coco_val", "rb_shapes_voc_test"]])
def test_lazy_train_net_two_processes_end(env, tmp_path, test_sets):
    out, log = tmp_path / "out", tmp_path / "log"
    names = "dataloader.test.dataset.names=[" + ",".join(f'"{n}"' for n in test_sets) + "]"
    _ok(run_tool(LAZY_TRAIN_NET + LAZY_CONFIG + ["--num-gpus", "2"] + LAZY_TINY +
                 [names, "train.max_iter=1", f"train.output_dir={out}"], env, log), log)
    assert set(json.loads((out / "eval_results.json").read_text())["results"]) == set(test_sets)


def test_pretraining_sigterm_then_resumed_equals_uninterrupted(env, tmp_path):
    opts = ["--config", "configs/cifar/tiny.yaml", "PRETRAIN.SOLVER.IMS_PER_BATCH", "8", "PRETRAIN.SOLVER.MAX_ITER",
            "6", "PRETRAIN.SOLVER.STEPS", "(100,)", "PRETRAIN.CHECKPOINT_PERIOD", "100", "PRETRAIN.EVAL_PERIOD", "0",
            "PRETRAIN.LOG_PERIOD", "1", "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "4",
            "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "2", "PRETRAIN.EXPORT", "False"]
    ref, out, log = tmp_path / "ref", tmp_path / "out", tmp_path / "log"
    _ok(run_tool(PRETRAIN_NET + opts + ["OUTPUT_DIR", str(ref)], env, log), log)
    code = stop_at(PRETRAIN_NET + opts + ["OUTPUT_DIR", str(out)], env, log, iteration=2, marker=tmp_path / "m",
                   sig=signal.SIGTERM)
    assert code == EXIT_PREEMPTED and tag(out) == "model_0000003.pth", log.read_text()[-3000:]
    _ok(run_tool(PRETRAIN_NET + ["--resume"] + opts + ["OUTPUT_DIR", str(out)], env, log), log)
    assert_same_weights(final_weights(ref), final_weights(out))
