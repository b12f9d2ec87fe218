"""Several processes without CUDA (GLOO), as `--num-gpus 2`, as two local "machines" and under torchrun: identical
weights on every rank, rank 0 alone writes, evaluation gathered over ranks equals one process's (and torchrun's group
trains as detectron2's launch does), --resume, a killed worker ends the job with its rank named and the last
checkpoint intact, and under torchrun --max-restarts the group restarts after a killed worker, resumes by itself and
ends with the weights of an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_backbone.checkpoint.safe_load import load_file
from resnet_backbone.data.synthetic_detection import generate_dataset
from resnet_backbone.engine.launch import launch_supports_cpu

from tiny_detector import (  # noqa: E402  (tests/tiny_detector.py)
    CONFIG,
    ONE_TEST_SET,
    REPO,
    TINY,
    assert_same_weights,
    child_processes,
    final_weights,
    free_port,
    marker_pid,
    run_tool,
    stop_at,
    torchrun,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not launch_supports_cpu() and not torch.cuda.is_available(),
    reason="this detectron2's launch needs CUDA for several processes (v0.6); its refusal is tested instead")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb_dist_data")
    generate_dataset(str(root / "rb_shapes"), num_train=8, num_val=4, image_size=(64, 96))
    return dict(os.environ, RB_DATASETS=str(root), OMP_NUM_THREADS="1")


def _train_net(args, env, probe=None, check=True, timeout=600):
    script = [str(REPO / "tests" / "distributed_probe.py"), str(probe)] if probe else [str(REPO / "tools" / "train_net.py")]
    res = subprocess.run([sys.executable, *script, *args], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=timeout)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def two_process_run(env, tmp_path_factory):
    base = tmp_path_factory.mktemp("rb_dist")
    out, probe = base / "out", base / "probe"
    _train_net(CONFIG + ["--num-gpus", "2"] + TINY + ["OUTPUT_DIR", str(out)], env, probe=probe)
    return out, probe


def _weights(path):
    return torch.load(path, weights_only=True)


def test_ranks_hold_identical_weights_and_only_rank0_writes(two_process_run):
    out, probe = two_process_run
    w0, w1 = _weights(probe / "weights_rank0.pth"), _weights(probe / "weights_rank1.pth")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])][:5]
    saved = load_file(str(out / "model_final.pth"))["model"]
    assert all(torch.equal(torch.as_tensor(saved[k]), w0[k]) for k in w0)
    rank0 = set(json.loads((probe / "writes_rank0.json").read_text()))
    rank1 = set(json.loads((probe / "writes_rank1.json").read_text()))
    assert {"metrics.json", "eval_results.json", "last_checkpoint", "config.yaml"} <= rank0
    assert any(f.startswith("model_final.pth") for f in rank0)
    assert rank1 <= {"log.txt.rank1"}, f"rank 1 wrote {sorted(rank1)}"
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iters == sorted(set(iters)) and max(iters) == 5  # one line per iteration: one writer


def test_eval_only_on_two_processes_equals_one(two_process_run, env, tmp_path):
    out, _ = two_process_run
    results = {}
    for n in (1, 2):
        ev = tmp_path / f"eval{n}"
        _train_net(CONFIG + ["--eval-only", "--num-gpus", str(n)] + TINY +
                   ["OUTPUT_DIR", str(ev), "MODEL.WEIGHTS", str(out / "model_final.pth")], env)
        results[n] = json.loads((ev / "eval_results.json").read_text())["results"]
    assert results[2] == results[1]
    assert {"rb_shapes_coco_val", "rb_shapes_voc_test"} == set(results[2])


def test_two_local_machines_train_like_two_gpus(two_process_run, env, tmp_path):
    out, probe = two_process_run
    url = f"tcp://127.0.0.1:{free_port()}"
    mout, mprobe = tmp_path / "out", tmp_path / "probe"
    script = [sys.executable, str(REPO / "tests" / "distributed_probe.py"), str(mprobe)]
    procs, logs = [], [tmp_path / f"machine{r}.log" for r in (0, 1)]
    for r in (0, 1):
        args = CONFIG + ["--num-machines", "2", "--machine-rank", str(r), "--dist-url", url] + TINY + \
            ["OUTPUT_DIR", str(mout)]  # KEY VALUE options last: argparse gives them everything after
        with open(logs[r], "w") as log:  # files, not pipes: a full pipe would stall the other machine
            procs.append(subprocess.Popen(script + args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], logs[0].read_text()[-2000:] + logs[1].read_text()[-2000:]
    w_gpus, w_machines = _weights(probe / "weights_rank0.pth"), _weights(mprobe / "weights_rank1.pth")
    assert all(torch.allclose(w_gpus[k], w_machines[k], atol=1e-6) for k in w_gpus)
    assert set(json.loads((mprobe / "writes_rank1.json").read_text())) <= {"log.txt.rank1"}


def test_resume_on_two_processes(two_process_run, env, tmp_path):
    out, _ = two_process_run
    resumed = tmp_path / "resumed"
    subprocess.run(["cp", "-r", str(out), str(resumed)], check=True)
    _train_net(CONFIG + ["--resume", "--num-gpus", "2"] + TINY + ["OUTPUT_DIR", str(resumed), "SOLVER.MAX_ITER", "9"],
               env)
    assert "Starting training from iteration 6" in (resumed / "log.txt").read_text()
    iters = [m["iteration"] for m in _metrics(resumed) if "total_loss" in m]
    assert iters == list(range(9)), iters
    assert (resumed / "last_checkpoint").read_text().strip() == "model_final.pth"


def _spawned_workers(parent_pid):
    """The worker processes torch's spawn started for `parent_pid`, in start (= rank) order."""
    return [pid for pid, cmdline in child_processes(parent_pid) if b"spawn_main" in cmdline]


def test_killed_worker_ends_the_job_naming_its_rank(env, tmp_path):
    out = tmp_path / "out"
    args = CONFIG + ["--num-gpus", "2"] + TINY + ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2000"]
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "train_net.py"), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    workers = _spawned_workers(proc.pid)
    assert proc.poll() is None and len(workers) == 2, (workers, proc.poll())
    os.kill(workers[1], signal.SIGKILL)
    killed_at = time.time()
    log = proc.communicate(timeout=120)[0]
    assert time.time() - killed_at < 120
    assert proc.returncode != 0
    assert "worker rank 1" in log and "SIGKILL" in log and "--resume" in log, log[-3000:]

    last = (out / "last_checkpoint").read_text().strip()
    state = load_file(str(out / last))  # intact: loads through the safe loader
    start = state["iteration"] + 1
    _train_net(CONFIG + ["--resume", "--num-gpus", "2"] + TINY +
               ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(start + 3)], env)
    assert f"Starting training from iteration {start}" in (out / "log.txt").read_text()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"



def test_torchrun_joins_one_group_equal_to_detectron2_launch(two_process_run, env, tmp_path):
    out, probe = two_process_run
    tout, tprobe = tmp_path / "out", tmp_path / "probe"
    log = tmp_path / "torchrun.log"
    code = run_tool(torchrun(2) + [str(REPO / "tests" / "distributed_probe.py"), str(tprobe)] + CONFIG + TINY +
                    ["OUTPUT_DIR", str(tout)], env, log)
    assert code == 0, log.read_text()[-3000:]
    for rank in (0, 1):
        assert json.loads((tprobe / f"world_rank{rank}.json").read_text()) == {"rank": rank, "world_size": 2,
                                                                              "local_size": 2}
        assert_same_weights(_weights(probe / f"weights_rank{rank}.pth"), _weights(tprobe / f"weights_rank{rank}.pth"))
    assert set(json.loads((tprobe / "writes_rank1.json").read_text())) <= {"log.txt.rank1"}
    assert len(list(tout.glob("events.out.tfevents.*"))) == 1
    assert "World size: 2" in (tout / "log.txt").read_text()


def test_srun_tasks_join_one_group_equal_to_detectron2_launch(two_process_run, env, tmp_path):
    """Two tasks with the variables srun gives each (no SLURM here): they meet at the first node of the node list
    (rank 0 serves the store) and train as `--num-gpus 2` does."""
    out, probe = two_process_run
    sprobe, sout = tmp_path / "probe", tmp_path / "out"
    base = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    base.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="127.0.0.1",
                SLURM_JOB_ID="4242", MASTER_PORT=str(free_port()))
    logs = [tmp_path / f"task{r}.log" for r in (0, 1)]
    argv = [sys.executable, str(REPO / "tests" / "distributed_probe.py"), str(sprobe)] + CONFIG + TINY + \
        ["OUTPUT_DIR", str(sout)]
    procs = [subprocess.Popen(argv, env=dict(base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)), cwd=REPO,
                              stdout=open(logs[r], "w"), stderr=subprocess.STDOUT) for r in (0, 1)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    for rank in (0, 1):
        assert json.loads((sprobe / f"world_rank{rank}.json").read_text()) == {"rank": rank, "world_size": 2,
                                                                              "local_size": 2}
        assert_same_weights(_weights(probe / f"weights_rank{rank}.pth"), _weights(sprobe / f"weights_rank{rank}.pth"))


def test_torchrun_with_contradictory_num_gpus_stops_writing_nothing(env, tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    code = run_tool(torchrun(2) + [str(REPO / "tools" / "train_net.py")] + CONFIG + ["--num-gpus", "8"] + TINY +
                    ["OUTPUT_DIR", str(out)], env, log, timeout=300)
    text = log.read_text()
    assert code != 0 and "--num-gpus 8, but torchrun started 2 processes per machine" in text, text[-3000:]
    assert not out.exists()


def test_torchrun_restarts_after_a_killed_worker_and_ends_equal(two_process_run, env, tmp_path):
    out, _ = two_process_run
    elastic = tmp_path / "elastic"
    log = tmp_path / "elastic.log"
    # rank 1 is SIGKILLed when iteration 4 starts (checkpoint of iteration 2 written); torchrun restarts both ranks,
    # which resume by themselves and end with the shipped configs' one test set (evaluation does not touch the
    # weights, so the two-set reference run compares). A restart that hangs while joining fails here after 240 s, workers killed.
    code = stop_at(torchrun(2, "--max-restarts", "1") + [str(REPO / "tools" / "train_net.py")] + CONFIG + TINY +
                   ONE_TEST_SET + ["OUTPUT_DIR", str(elastic)], env, log, iteration=4, marker=tmp_path / "marker", ranks=2,
                   sig=signal.SIGKILL, who=marker_pid(1), timeout=240)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "failed (exitcode: -9) local_rank: 1" in text, text[-3000:]  # the kill happened and torchrun saw it
    assert "restart 1 of an elastic torchrun group: resuming from the last checkpoint" in text, text[-3000:]
    assert "Starting training from iteration 3" in text, text[-3000:]
    assert_same_weights(final_weights(out), final_weights(elastic))
