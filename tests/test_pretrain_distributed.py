"""The pretraining stage on 2 CPU processes (GLOO; detectron2 main): 2 x batch B/2 trains as 1 x batch B with
detectron2's NaiveSyncBatchNorm (statistics over both ranks), every image once per epoch over the ranks, exact
--resume; and PRETRAIN.AMP (bfloat16 autocast on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_backbone.checkpoint.safe_load import load_file
from resnet_backbone.engine.launch import launch_supports_cpu
from resnet_backbone.engine.pretrain.data import IterationBatchSampler

REPO = Path(__file__).resolve().parents[1]
# CIFAR ResNet-20 on the generated CIFAR-format set: 40 training images, batch 8
CONFIG = ["--config", "configs/cifar/tiny.yaml"]
TINY = ["PRETRAIN.SOLVER.IMS_PER_BATCH", "8", "PRETRAIN.SOLVER.STEPS", "(100,)",
        "PRETRAIN.NUM_WORKERS", "0", "PRETRAIN.LOG_PERIOD", "1", "PRETRAIN.EVAL_PERIOD", "3",
        "PRETRAIN.CHECKPOINT_PERIOD", "3", "PRETRAIN.DATASET.GENERATED_TRAIN_PER_CLASS", "4",
        "PRETRAIN.DATASET.GENERATED_VAL_PER_CLASS", "2", "PRETRAIN.NORM", "naiveSyncBN", "MODEL.DEVICE", "cpu"]
needs_cpu_launch = pytest.mark.skipif(not launch_supports_cpu() and not torch.cuda.is_available(),
                                      reason="this detectron2's launch needs CUDA for several processes (v0.6)")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return dict(os.environ, RB_DATASETS=str(tmp_path_factory.mktemp("rb_pre_data")), OMP_NUM_THREADS="1")


def _pretrain(flags, opts, env):
    # KEY VALUE options last: argparse gives them everything after the first one
    res = subprocess.run([sys.executable, str(REPO / "tools" / "pretrain_net.py"), *CONFIG, *flags, *TINY, *opts], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines() if line.strip()]
    return {r["iteration"]: r["loss"] for r in rows if "loss" in r}


def _final_weights(out):
    return load_file(str(Path(out) / "model_final.pth"))["model"]


def test_every_image_once_per_epoch_over_the_ranks():
    size, batch, world = 40, 8, 2
    iters = size // batch
    seen = []
    for rank in range(world):
        sampler = IterationBatchSampler(size, batch, seed=3, start_iter=0, max_iter=2 * iters, rank=rank,
                                        world_size=world)
        batches = list(sampler)
        assert all(len(b) == batch // world for b in batches)
        seen.append([[i for i, _ in b] for b in batches])
    for epoch in range(2):
        images = [i for rank in range(world) for b in seen[rank][epoch * iters:(epoch + 1) * iters] for i in b]
        assert sorted(images) == list(range(size))
    one = IterationBatchSampler(size, batch, seed=3, start_iter=0, max_iter=iters)
    # the 2 ranks' shares of an iteration are the 1-process batch of that iteration, split in two
    assert [i for i, _ in one.batch(1)] == seen[0][1] + seen[1][1]


@pytest.mark.slow
@needs_cpu_launch
def test_two_processes_train_as_one_with_twice_the_batch_and_resume_exactly(env, tmp_path):
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        _pretrain(["--num-gpus", str(n)], ["PRETRAIN.SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(out)], env)
        runs[n] = out
    one, two = _losses(runs[1]), _losses(runs[2])
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=1e-4, abs=1e-5), (it, one, two)
    # the weights after 6 steps, to float precision (the sums run in another order: an all-reduce of halves).
    # BN buffers differ by design: NaiveSyncBatchNorm's running variance has no N/(N-1) correction and it does not
    # count num_batches_tracked, while with one process it runs as plain BatchNorm2d.
    w1, w2 = _final_weights(runs[1]), _final_weights(runs[2])
    for k in w1:
        a, b = torch.as_tensor(w1[k]).double(), torch.as_tensor(w2[k]).double()
        if k.endswith("num_batches_tracked"):
            continue
        tol = 5e-3 * a.abs().max().item() if k.endswith(("running_var", "running_mean")) else 2e-4
        assert (a - b).abs().max().item() < max(tol, 1e-5), k

    # 2 processes: 3 iterations, then --resume to 6: the same weights, bit for bit, as the uninterrupted run
    part = tmp_path / "part"
    _pretrain(["--num-gpus", "2"], ["PRETRAIN.SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(part)], env)
    _pretrain(["--num-gpus", "2", "--resume"], ["PRETRAIN.SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(part)], env)
    resumed = _final_weights(part)
    assert all(torch.equal(torch.as_tensor(resumed[k]), torch.as_tensor(w2[k])) for k in w2)
    assert "resumed from" in (part / "log.txt").read_text()


@pytest.mark.slow
def test_pretraining_amp_runs_the_forward_in_bfloat16_on_cpu(env, tmp_path):
    from resnet_backbone.engine.config_io import load_config
    from resnet_backbone.engine.pretrain import PretrainRun

    outs = {}
    for amp in (False, True):
        cfg = load_config(str(REPO / "configs" / "cifar" / "tiny.yaml"),
                          TINY + ["PRETRAIN.NORM", "BN", "PRETRAIN.AMP", str(amp), "PRETRAIN.SOLVER.MAX_ITER", "3",
                                      "OUTPUT_DIR", str(tmp_path / f"amp{amp}")])
        os.environ["RB_DATASETS"] = env["RB_DATASETS"]
        run = PretrainRun(cfg)
        run.start()
        dtypes = []
        conv = next(m for m in run.module.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        run.train()
        outs[amp] = (_losses(cfg.OUTPUT_DIR), set(dtypes))
    (loss32, dt32), (loss16, dt16) = outs[False], outs[True]
    assert dt32 == {torch.float32} and dt16 == {torch.bfloat16}
    assert not run.scaler.is_enabled()  # bfloat16 needs no loss scaling
    # the same first step in both precisions, to bfloat16's precision
    assert loss16[1] == pytest.approx(loss32[1], rel=2e-2)
    assert all(v == v and abs(v) < 1e3 for v in loss16.values())
