"""Runs tools/train_net.py's worker under detectron2's launch (or in the group torchrun started), recording per rank
what it writes.

    python tests/distributed_probe.py PROBE_DIR [train_net arguments ...]

Each rank writes PROBE_DIR/writes_rank{R}.json (the files it opened for writing under OUTPUT_DIR, which
the arguments must set), PROBE_DIR/world_rank{R}.json (its rank, world size and per-machine size) and
PROBE_DIR/weights_rank{R}.pth (its model's state dict after training / evaluation). Not a test module: tests run it as a
subprocess, so that no process group is ever created inside pytest.
"""
import builtins
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import torch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

import train_net  # noqa: E402  (tools/train_net.py)
from resnet_backbone.engine.launch import launch_checked  # noqa: E402

PROBE_DIR = Path(sys.argv[1])


def _record_writes(output_dir, written):
    output_dir = os.path.realpath(output_dir)
    real_open, real_os_open, real_replace, real_rename = builtins.open, os.open, os.replace, os.rename

    def note(path):
        path = os.path.realpath(os.fspath(path))
        if path.startswith(output_dir + os.sep):
            written.add(os.path.relpath(path, output_dir))

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path)
        return real_os_open(path, flags, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        note(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        note(dst)
        return real_rename(src, dst, *args, **kwargs)

    builtins.open, os.open, os.replace, os.rename = open_, os_open, replace, rename


def probed_worker(args):
    written = set()
    _record_writes(args.opts[args.opts.index("OUTPUT_DIR") + 1], written)  # from the start: setup writes too
    real_run = train_net.run

    def run(cfg, run_args):
        results, model = real_run(cfg, run_args)
        model = getattr(model, "module", model)  # DDP
        rank = comm.get_rank()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, PROBE_DIR / f"weights_rank{rank}.pth")
        return results, model

    train_net.run = run
    results = train_net.worker(args)
    (PROBE_DIR / f"writes_rank{comm.get_rank()}.json").write_text(json.dumps(sorted(written)))
    world = {"rank": comm.get_rank(), "world_size": comm.get_world_size(), "local_size": comm.get_local_size()}
    (PROBE_DIR / f"world_rank{comm.get_rank()}.json").write_text(json.dumps(world))
    return results


if __name__ == "__main__":
    PROBE_DIR.mkdir(parents=True, exist_ok=True)
    launch_checked(probed_worker, train_net.build_parser().parse_args(sys.argv[2:]))
