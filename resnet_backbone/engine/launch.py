"""detectron2's launch, with the checks it lacks and a clear message when a worker process dies."""
import importlib
import inspect

import torch
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, launch


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


def launch_checked(main_func, args):
    """Validate the distributed arguments, then run `main_func(args)` through detectron2's launch (one process:
    here, returning its result). A worker that
    dies (killed, out of memory) ends the job with a message naming its rank; the others are stopped by torch."""
    check_launch_args(args.num_gpus, args.num_machines, args.machine_rank)
    if args.num_gpus * args.num_machines == 1:
        return main_func(args)  # what detectron2's launch does for one process, keeping the return value
    try:
        return launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))
    except mp.ProcessExitedException as e:
        rank = args.machine_rank * args.num_gpus + e.error_index
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
    return parser
