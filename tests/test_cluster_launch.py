"""Launchers read from the environment (torchrun, SLURM's srun), the refusals of contradictory flags before anything
is written, the shared RNG / per-sample seeding pieces and the resumable loader's batches (fast, in-process; the
multi-process runs are in test_distributed.py and test_cluster_preemption.py)."""
import os
import random
import sys

import numpy as np
import pytest
import torch

from resnet_backbone.data.resumable_loader import ResumableTrainLoader, _buckets
from resnet_backbone.engine.cluster import detect_launcher, first_host, launcher_mismatch
from resnet_backbone.engine.launch import build_argument_parser, launch_checked
from resnet_backbone.engine.preemption import EXIT_PREEMPTED, TrainingPreempted
from resnet_backbone.engine.resume import capture_rng_state, preserved_rng, restore_rng_state

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
            "MASTER_PORT": "29501", "TORCHELASTIC_RESTART_COUNT": "1"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)",
         "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_JOB_ID": "123456"}


def test_torchrun_environment():
    la = detect_launcher(TORCHRUN)
    assert (la.kind, la.rank, la.world_size, la.local_rank, la.local_world_size) == ("torchrun", 3, 4, 1, 2)
    assert (la.num_machines, la.machine_rank, la.master_addr, la.master_port, la.elastic) == (2, 1, "10.0.0.1", 29501,
                                                                                             True)


def test_slurm_environment_first_node_is_master():
    la = detect_launcher(SLURM)
    assert (la.kind, la.rank, la.world_size, la.local_rank, la.local_world_size) == ("slurm", 5, 8, 1, 4)
    assert la.master_addr == "gpu017" and la.machine_rank == 1 and 20000 <= la.master_port < 40000
    assert detect_launcher(dict(SLURM, MASTER_PORT="1234")).master_port == 1234
    assert first_host("a1,b[2-3]") == "a1" and first_host("node[07,09-11]") == "node07" and first_host("x") == "x"


def test_no_launcher_one_task_and_uneven_tasks():
    assert detect_launcher({}) is None
    assert detect_launcher(dict(SLURM, SLURM_NTASKS="1")) is None  # sbatch running the tool itself: detectron2's launch
    assert detect_launcher(dict(TORCHRUN, WORLD_SIZE="1")) is None
    with pytest.raises(ValueError, match="uneven"):
        detect_launcher(dict(SLURM, SLURM_TASKS_PER_NODE="4,3", SLURM_NTASKS="7"))


def test_mismatch_names_flag_and_launcher():
    la = detect_launcher(TORCHRUN)
    assert launcher_mismatch(la, None, None, None) == "" and launcher_mismatch(la, 2, 2, 1) == ""
    msg = launcher_mismatch(la, 8, 1, None)
    assert "--num-gpus 8" in msg and "2 processes per machine" in msg and "--num-machines 1" in msg


def test_contradictory_num_gpus_under_torchrun_writes_nothing(tmp_path, monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    args = build_argument_parser().parse_args(["--config", "x.yaml", "--num-gpus", "8", "OUTPUT_DIR", str(out)])
    ran = []
    with pytest.raises(SystemExit, match=r"--num-gpus 8.*torchrun started 2 processes per machine"):
        launch_checked(ran.append, args)
    assert not ran and not out.exists()


def test_preempted_worker_exits_with_the_documented_code(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)

    def preempted(args):
        raise TrainingPreempted(4, "out/model_0000003.pth", "SIGTERM")

    with pytest.raises(SystemExit) as info:
        launch_checked(preempted, build_argument_parser().parse_args(["--config", "x.yaml"]))
    assert info.value.code == EXIT_PREEMPTED


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU processes share the cores")
def test_launched_cpu_workers_share_the_cores(monkeypatch):
    from resnet_backbone.engine.launch import _run_launched_worker

    args = build_argument_parser().parse_args(["--config", "x.yaml", "--num-gpus", "2"])
    default = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert _run_launched_worker(lambda a: torch.get_num_threads(), args) == max(1, default // 2)
        torch.set_num_threads(default)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # said by the user (or torchrun): left alone
        assert _run_launched_worker(lambda a: torch.get_num_threads(), args) == default
    finally:
        torch.set_num_threads(default)


def _threads():
    return len(os.listdir("/proc/self/task"))  # native threads too (gloo's), which `threading` does not list


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
@pytest.mark.parametrize("preempted", [False, True])
def test_finished_worker_joins_its_process_groups_threads(tmp_path, preempted):
    # a gloo thread still holding the last collective's tensors when the interpreter shuts down aborted a finished
    # rank now and then (SIGABRT): the worker destroys its groups, detectron2's local one and cached one included,
    # so that their threads are gone before it returns
    import torch.distributed as dist
    from detectron2.utils import comm
    from resnet_backbone.engine.launch import _run_worker

    torch.nn.Linear(2, 1)(torch.ones(1, 2)).sum().backward()  # any thread pools the computation starts, first
    before = _threads()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    comm._LOCAL_PROCESS_GROUP = dist.new_group([0])  # what detectron2's launch makes (create_local_process_group)

    def work(args):
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))  # holds the group, in a cycle
        model(torch.ones(1, 2)).sum().backward()
        gathered = comm.all_gather({"rank": comm.get_local_rank()})  # detectron2's cached gloo group
        comm.synchronize()
        if preempted:
            raise TrainingPreempted(4, "out/model_0000003.pth", "SIGTERM")
        return gathered

    try:
        assert _threads() > before
        if preempted:
            with pytest.raises(SystemExit) as info:
                _run_worker(work, None)
            assert info.value.code == EXIT_PREEMPTED
        else:
            assert _run_worker(work, None) == [{"rank": 0}]
        assert not dist.is_initialized() and comm._LOCAL_PROCESS_GROUP is None
        assert _threads() == before
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None


def test_rng_state_round_trip_and_preserved_blocks():
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(), random.random())
    restore_rng_state(state)
    with preserved_rng():
        torch.rand(100), np.random.rand(5), random.random()
    again = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


class _Sampler:
    """A seeded, infinite index stream, as detectron2's TrainingSampler."""

    def __init__(self, size, seed):
        self.size, self._seed = size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self._seed)
        while True:
            yield from torch.randperm(self.size, generator=g).tolist()


def _loader(dicts, workers=0):
    def mapper(d):  # "augmentation" from the seeded RNGs
        return (d["id"], random.random(), float(np.random.rand()), float(torch.rand(())))

    return ResumableTrainLoader(dicts, mapper, _Sampler(len(dicts), 7), 2, buckets=_buckets(dicts),
                                num_workers=workers)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.skipif(sys.platform == "win32", reason="worker processes")
def test_resumable_loader_groups_by_aspect_and_resumes_anywhere():
    dicts = [{"id": i, "width": 60 + 20 * (i % 3 == 0), "height": 70} for i in range(10)]
    full = _take(_loader(dicts), 9)
    for batch in full:  # every batch is one aspect group (width > height or not)
        assert len({dicts[s[0]]["width"] > 70 for s in batch}) == 1
    assert _take(_loader(dicts, workers=2), 9) == full  # workers change nothing
    resumed = _loader(dicts)
    resumed.load_state_dict({"batches": 4, "seed": 7})
    assert _take(resumed, 5) == full[4:]
    assert resumed.state_dict() == {"batches": 9, "seed": 7}
    with pytest.raises(ValueError, match="width"):
        _buckets([{"file_name": "a.jpg"}])
