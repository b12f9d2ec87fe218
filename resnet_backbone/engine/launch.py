"""detectron2's launch, with the one check it lacks: several processes per machine without CUDA stop at once."""
import torch
from detectron2.engine import default_argument_parser, launch


def check_launch_args(num_gpus: int, num_machines: int = 1, machine_rank: int = 0):
    if num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {num_gpus}")
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(f"--machine-rank must be in [0, --num-machines={num_machines}), got {machine_rank}")
    world = num_gpus * num_machines
    if world > 1 and not torch.cuda.is_available():
        # detectron2 v0.6's launch asserts CUDA inside every spawned worker, and its DDP wrapper passes device ids;
        # a CPU job therefore runs as one process.
        raise SystemExit(f"--num-gpus {num_gpus} x --num-machines {num_machines} asks for {world} processes, but "
                         f"CUDA is not available on this machine. Run with --num-gpus 1 (one CPU process), or on "
                         f"a machine with {num_gpus} GPUs.")
    if num_gpus > 1 and num_gpus > torch.cuda.device_count():
        raise SystemExit(f"--num-gpus {num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")


def launch_checked(main_func, args):
    """Validate the distributed arguments, then run `main_func(args)` through detectron2's launch."""
    check_launch_args(args.num_gpus, args.num_machines, args.machine_rank)
    return launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


def build_argument_parser():
    """detectron2's train_net arguments (--config-file, --num-gpus, --resume, ... KEY VALUE) plus --config."""
    parser = default_argument_parser()
    parser.add_argument("--config", dest="config_file", metavar="FILE", help="alias of --config-file")
    return parser
