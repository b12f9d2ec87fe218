"""Processes started by a cluster launcher: torchrun (and torch.distributed.run / elastic agents) or SLURM's srun.

`detect_launcher(environ)` reads what the launcher put in the environment:

* torchrun: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and TORCHELASTIC_RESTART_COUNT,
  how often the group was restarted after a failure);
* srun: SLURM_PROCID, SLURM_NTASKS (SLURM_STEP_NUM_TASKS inside a step), SLURM_LOCALID, the tasks per node
  (SLURM_NTASKS_PER_NODE or SLURM_STEP_TASKS_PER_NODE), the master = the first host of SLURM_STEP_NODELIST /
  SLURM_NODELIST / SLURM_JOB_NODELIST, its port MASTER_PORT or one derived from SLURM_JOB_ID.

One SLURM task (`sbatch` running `python tools/train_net.py --num-gpus 8` itself) is not a launcher: detectron2's
launch starts the processes as everywhere else. `join_process_group(launcher)` then does what detectron2's launch
does in each worker it spawns: init_process_group (NCCL on GPUs, GLOO on CPU), the per-machine group that
detectron2's comm needs (get_local_rank / get_local_size), the GPU of the local rank, a barrier.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Optional

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["Launcher", "detect_launcher", "first_host", "join_process_group", "launcher_mismatch"]

# the port of a SLURM job's rendezvous when MASTER_PORT is not set: one per job id in an unprivileged range
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 20000, 20000


@dataclasses.dataclass(frozen=True)
class Launcher:
    kind: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    restart_count: int = 0  # torchrun --max-restarts: how many times this group has been restarted

    @property
    def num_machines(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def machine_rank(self) -> int:
        return self.rank // self.local_world_size

    @property
    def elastic(self) -> bool:
        return self.kind == "torchrun" and self.restart_count > 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: "gpu[003-005,9],cpu1" -> "gpu003", "a,b" -> "a"."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def _slurm_tasks_per_node(environ: Mapping[str, str], world: int) -> int:
    if "SLURM_NTASKS_PER_NODE" in environ:
        return _int(environ, "SLURM_NTASKS_PER_NODE")
    # "2(x3)" = 2 tasks on each of 3 nodes; "2,1" = uneven (refused below: detectron2 needs the same on each)
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or str(world)
    counts = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(\(x\d+\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM tasks per node {spec!r}")
        counts.add(int(m.group(1)))
    if len(counts) != 1:
        raise ValueError(f"SLURM started an uneven number of tasks per node ({spec}); detectron2 needs the same "
                         f"number on every node (sbatch --ntasks-per-node)")
    return counts.pop()


def detect_launcher(environ: Optional[Mapping[str, str]] = None) -> Optional[Launcher]:
    """The launcher that started this process as one of a group of several, or None (run detectron2's launch)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also under srun: its variables describe the group)
        world = _int(env, "WORLD_SIZE")
        if world < 2:
            return None
        local_world = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world
        for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
            if key not in env:
                raise ValueError(f"RANK and WORLD_SIZE are set (a torchrun-style launch) but {key} is not")
        return Launcher("torchrun", _int(env, "RANK"), world, _int(env, "LOCAL_RANK"), local_world,
                        env["MASTER_ADDR"], _int(env, "MASTER_PORT"),
                        _int(env, "TORCHELASTIC_RESTART_COUNT") if "TORCHELASTIC_RESTART_COUNT" in env else 0)
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        if world < 2:
            return None
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise ValueError("SLURM_PROCID is set but none of SLURM_STEP_NODELIST / SLURM_NODELIST / "
                             "SLURM_JOB_NODELIST is: cannot tell which node is the master")
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else \
            _SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID") % _SLURM_PORT_SPAN if "SLURM_JOB_ID" in env else 29500
        return Launcher("slurm", _int(env, "SLURM_PROCID"), world, _int(env, "SLURM_LOCALID"),
                        _slurm_tasks_per_node(env, world), env.get("MASTER_ADDR") or first_host(nodes), port)
    return None


def launcher_mismatch(launcher: Launcher, num_gpus: Optional[int], num_machines: Optional[int],
                      machine_rank: Optional[int]) -> str:
    """What in --num-gpus / --num-machines / --machine-rank (None: not given) contradicts the launcher ("": nothing)."""
    problems = []
    if num_gpus is not None and num_gpus != launcher.local_world_size:
        problems.append(f"--num-gpus {num_gpus}, but {launcher.kind} started {launcher.local_world_size} processes "
                        f"per machine")
    if num_machines is not None and num_machines != launcher.num_machines:
        problems.append(f"--num-machines {num_machines}, but {launcher.kind} started {launcher.num_machines} "
                        f"machine(s) ({launcher.world_size} processes)")
    if machine_rank is not None and machine_rank != launcher.machine_rank:
        problems.append(f"--machine-rank {machine_rank}, but this is machine {launcher.machine_rank} of "
                        f"{launcher.kind}'s group")
    if launcher.world_size % launcher.local_world_size:
        problems.append(f"{launcher.kind} started {launcher.world_size} processes, not a multiple of "
                        f"{launcher.local_world_size} per machine")
    return "; ".join(problems)


def _create_local_group(per_machine: int) -> None:
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(per_machine)
        return
    # detectron2 v0.6 builds the group inside its launch's worker; the same steps
    for i in range(comm.get_world_size() // per_machine):
        ranks = list(range(i * per_machine, (i + 1) * per_machine))
        group = dist.new_group(ranks)
        if i == comm.get_rank() // per_machine:
            comm._LOCAL_PROCESS_GROUP = group


def _group_store(launcher: Launcher, timeout) -> dist.Store:
    """The key-value store the group's ranks meet in, with keys of their own for each restart of the group.

    Under torchrun the elastic agent serves a store at MASTER_ADDR:MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True)
    and keeps it across restarts; torch's `env://` adds no prefix per restart there, so a restarted rank could read
    the address a dead rank of the previous attempt wrote and hang or fail connecting to it. Otherwise (srun, or an
    agent without a store) rank 0 serves the store at the first node.
    """
    agent_serves = launcher.kind == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(launcher.master_addr, launcher.master_port, launcher.world_size,
                          is_master=not agent_serves and launcher.rank == 0, timeout=timeout)
    return dist.PrefixStore(f"resnet_backbone/attempt_{launcher.restart_count}", store)


def join_process_group(launcher: Launcher, timeout=None) -> None:
    """Join the launcher's process group as detectron2's launch joins its workers' (see the module docstring)."""
    from detectron2.engine.launch import DEFAULT_TIMEOUT

    timeout = timeout or DEFAULT_TIMEOUT
    use_gpu = torch.cuda.is_available()
    if use_gpu:  # before NCCL starts: its first collectives then run on this rank's GPU, not on GPU 0
        torch.cuda.set_device(launcher.local_rank)
    dist.init_process_group(backend="NCCL" if use_gpu else "GLOO", store=_group_store(launcher, timeout),
                            world_size=launcher.world_size, rank=launcher.rank, timeout=timeout)
    _create_local_group(launcher.local_world_size)
    comm.synchronize()
