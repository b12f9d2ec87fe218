"""How the training tools start their processes: joined to a group that torchrun or SLURM's srun started
(engine/cluster.py), else detectron2's launch (the default), with the checks it lacks, a clear message when a worker
process dies, and the preemption exit code (engine/preemption.py) passed on from the workers."""
import contextlib
import functools
import gc
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from .cluster import detect_launcher, join_process_group, launcher_mismatch
from .preemption import EXIT_PREEMPTED, PREEMPTION_SIGNALS, TrainingPreempted

logger = logging.getLogger(__name__)


def launch_supports_cpu() -> bool:
    """Whether this detectron2's launch starts several processes without CUDA (GLOO backend; detectron2 main).
    v0.6 asserts CUDA in every worker instead. Both call themselves 0.6, so the worker's code is what tells."""
    worker = importlib.import_module("detectron2.engine.launch")._distributed_worker  # the module, not the function
    return "GLOO" in inspect.getsource(worker).upper()


def check_launch_args(num_gpus: int, num_machines: int = 1, machine_rank: int = 0):
    if num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {num_gpus}")
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank must be in [0, --num-machines={num_machines}), got {machine_rank}")
    world = num_gpus * num_machines
    if not torch.cuda.is_available():
        if world > 1 and not launch_supports_cpu():
            raise SystemExit(f"--num-gpus {num_gpus} x --num-machines {num_machines} asks for {world} processes, "
                             f"but CUDA is not available and this detectron2's launch needs CUDA for more than one "
                             f"process (detectron2 v0.6; detectron2 main runs CPU processes with GLOO). Run with "
                             f"--num-gpus 1 (one CPU process), build detectron2 main, or use {num_gpus} GPUs.")
    elif num_gpus > torch.cuda.device_count():
        raise SystemExit(f"--num-gpus {num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")


def _run_worker(main_func, args):
    """`main_func(args)` in one process; a preempted training (checkpoint saved) exits with EXIT_PREEMPTED."""
    preempted = None
    try:
        result = main_func(args)
    except TrainingPreempted as e:  # every rank stopped after the same iteration: no collective is pending
        preempted = str(e)
    # outside the handler: the exception's frames, which hold the model and through it the groups, are gone
    _leave_process_group()
    if preempted is not None:
        print(f"{preempted}; exiting with code {EXIT_PREEMPTED}: continue with --resume", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_PREEMPTED)
    return result


def _run_launched_worker(main_func, args):
    """One of the processes detectron2's launch started on this machine. Without CUDA they share its CPU cores:
    each takes its share of threads instead of one per core each (oversubscribed cores slow every process down),
    unless OMP_NUM_THREADS says how many (torchrun sets it to 1)."""
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // args.num_gpus))  # the default: one per core
    return _run_worker(main_func, args)


def _leave_process_group():
    """Destroy the process groups of a process that finished, so that their threads are joined while Python runs:
    a gloo thread may still hold the last collective's tensors, and freeing them during interpreter shutdown aborts
    the process (SIGABRT). Not after an error: a collective that another rank never joins may be pending, and
    destroying the group would wait for it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # the training's DDP wrapper, in reference cycles, holds the group too
    dist.destroy_process_group()
    # detectron2's comm keeps the groups it made or looked up (its local group; its gloo group, cached): a group
    # lives, threads and all, until its last reference goes
    cached_gloo_group = getattr(comm, "_get_global_gloo_group", None)
    if hasattr(cached_gloo_group, "cache_clear"):
        cached_gloo_group.cache_clear()
    if hasattr(comm, "_LOCAL_PROCESS_GROUP"):
        comm._LOCAL_PROCESS_GROUP = None


@contextlib.contextmanager
def _signals_forwarded_to_workers():
    """While detectron2's launch waits for its workers: SIGTERM / SIGUSR1 sent to this process (kill, a scheduler
    that signals the job's first process) go on to them, so that they save and exit instead of being cut off."""
    def forward(signum, frame):
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in PREEMPTION_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _launch_by_launcher(main_func, args, launcher):
    """Join the group torchrun / srun started (after checking the flags against it) and run `main_func` in it."""
    mismatch = launcher_mismatch(launcher, args.num_gpus, args.num_machines, args.machine_rank)
    if mismatch:
        raise SystemExit(f"{launcher.kind} started this process as rank {launcher.rank} of {launcher.world_size} "
                         f"({launcher.local_world_size} per machine), and the command line says otherwise: "
                         f"{mismatch}. Drop --num-gpus / --num-machines / --machine-rank under {launcher.kind}, or "
                         f"give the values it uses.")
    if not torch.cuda.is_available():
        if not launch_supports_cpu():
            raise SystemExit(f"{launcher.kind} started {launcher.world_size} processes, but CUDA is not available "
                             f"and this detectron2 cannot train several CPU processes (detectron2 v0.6; detectron2 "
                             f"main runs them with GLOO). Build detectron2 main, use GPUs, or run one process.")
    elif launcher.local_world_size > torch.cuda.device_count():
        raise SystemExit(f"{launcher.kind} started {launcher.local_world_size} processes per machine but only "
                         f"{torch.cuda.device_count()} CUDA devices are visible")
    args.num_gpus, args.num_machines, args.machine_rank = (launcher.local_world_size, launcher.num_machines,
                                                           launcher.machine_rank)
    if launcher.elastic and not args.resume:
        # torchrun restarted the group after a failure: continue from the last checkpoint, not from the start
        print(f"restart {launcher.restart_count} of an elastic torchrun group: resuming from the last checkpoint",
              file=sys.stderr, flush=True)
        args.resume = True
    join_process_group(launcher)
    return _run_worker(main_func, args)


def launch_checked(main_func, args):
    """Run `main_func(args)` in every process of the job: in a group that torchrun / srun started (detected from
    the environment; --num-gpus / --num-machines / --machine-rank must agree with it or be left out), else
    through detectron2's launch after validating its arguments (one process: here, returning its result).
    A worker that dies (killed, out of memory) ends the job with a message naming its rank; the others are
    stopped by torch. A preempted training exits with EXIT_PREEMPTED (engine/preemption.py)."""
    launcher = detect_launcher()
    if launcher is not None:
        return _launch_by_launcher(main_func, args, launcher)
    args.num_gpus = 1 if args.num_gpus is None else args.num_gpus
    args.num_machines = 1 if args.num_machines is None else args.num_machines
    args.machine_rank = 0 if args.machine_rank is None else args.machine_rank
    check_launch_args(args.num_gpus, args.num_machines, args.machine_rank)
    if args.num_gpus * args.num_machines == 1:
        return _run_worker(main_func, args)  # what detectron2's launch does for one process, keeping the result
    try:
        with _signals_forwarded_to_workers():
            return launch(functools.partial(_run_launched_worker, main_func), args.num_gpus, num_machines=args.num_machines,
                          machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except mp.ProcessExitedException as e:
        rank = args.machine_rank * args.num_gpus + e.error_index
        if e.exit_code == EXIT_PREEMPTED:
            print(f"training preempted: worker rank {rank} exited with code {EXIT_PREEMPTED} after the checkpoint "
                  f"was saved; continue with --resume", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_PREEMPTED) from None
        how = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        raise SystemExit(f"worker rank {rank} (local rank {e.error_index}) died with {how}; the other workers were "
                         f"stopped. Checkpoints already written are intact: continue with --resume.") from None


def parse_and_launch(worker, argv=None):
    """The training tools' main: train_net's arguments (a config file required), then `worker(args)` launched."""
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("--config-file (or --config) is required")
    return launch_checked(worker, args)


def build_argument_parser():
    """detectron2's train_net arguments (--config-file, --num-gpus, --resume, ... KEY VALUE) plus --config."""
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file", metavar="FILE", help="alias of --config-file")
    # None = not given: under torchrun / srun the launcher's numbers apply (a given one must agree); else 1, 1, 0
    parser.set_defaults(num_gpus=None, num_machines=None, machine_rank=None)
    return parser
