"""Overrides of the multi-process tests' detector: ResNet-18 C4 on the embedded 64 px images, GroupNorm (no batch
statistics, so every rank holds the same state), 6 iterations with a checkpoint every 3. Not a test module."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnet_backbone.checkpoint.safe_load import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIG = ["--config", "configs/coco/frcnn_r101.yaml"]
TINY = ["DATASETS.TRAIN", "('rb_shapes_coco_train',)", "DATASETS.TEST", "('rb_shapes_coco_val','rb_shapes_voc_test')",
        "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "6", "MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "96", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16,32,64]]", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(100,)", "SOLVER.CHECKPOINT_PERIOD", "3",
        "RB_TRAIN.LOG_PERIOD", "1", "SOLVER.BASE_LR", "0.01", "SEED", "1"]
# the shipped configs evaluate one data set
ONE_TEST_SET = ["DATASETS.TEST", "('rb_shapes_coco_val',)"]
# the same detector as a LazyConfig (configs/lazy/frcnn_r101.py), key=value
LAZY_CONFIG = ["--config", "configs/lazy/frcnn_r101.py"]
LAZY_TINY = ["train.device=cpu", "train.init_checkpoint=", 'dataloader.train.dataset.names=["rb_shapes_coco_train"]',
             'dataloader.test.dataset.names=["rb_shapes_coco_val"]',
             "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
             "dataloader.train.mapper.augmentations.0.max_size=96",
             "dataloader.test.mapper.augmentations.0.short_edge_length=64",
             "dataloader.test.mapper.augmentations.0.max_size=96", "dataloader.train.total_batch_size=2",
             "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "train.max_iter=6",
             "train.log_period=1", "train.checkpointer.period=3", "train.seed=1", "model.backbone.norm=GN",
             "model.backbone.freeze_at=0", "model.backbone.depth=18", "model.roi_heads.num_classes=4",
             "model.roi_heads.batch_size_per_image=16", "model.proposal_generator.pre_nms_topk=[200,100]",
             "model.proposal_generator.post_nms_topk=[32,16]",
             "model.proposal_generator.anchor_generator.sizes=[[16,32,64]]"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, *extra):
    """torchrun's command line (python -m torch.distributed.run) on this machine, a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), *extra]


def child_processes(pid):
    """The processes whose parent is `pid`, in pid (= start) order, as (pid, command line bytes)."""
    children = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                children.append((int(entry.name), (entry / "cmdline").read_bytes()))
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return sorted(children)


def _descendants(pid):
    """Every process below `pid` (torchrun starts its workers in sessions of their own: killpg misses them)."""
    found, todo = [], [pid]
    while todo:
        kids = [child for child, _ in child_processes(todo.pop())]
        found += kids
        todo += kids
    return found


def _wait(proc, timeout):
    """proc's exit code; on a timeout it and every process below it (workers, torchrun's agent) are killed first,
    so that no hung worker outlives the test."""
    try:
        return proc.wait(timeout=timeout)
    finally:
        _kill(proc)


def _kill(proc):
    if proc.poll() is None:
        for pid in _descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_tool(argv, env, log, timeout=600):
    """Run a command (output to the file `log`: a full pipe could stall a worker); returns its exit code."""
    with open(log, "w") as f:
        return _wait(subprocess.Popen(argv, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True), timeout)


def stop_at(argv, env, log, *, iteration, marker, ranks=1, sig=None, who=None, timeout=300):
    """Run `argv` with the preemption test hook (engine/preemption.py): when every rank has started `iteration`
    (and waits there), send `sig` to the process `who(proc, marker)` names (default: the command's own process).
    Returns the exit code."""
    env = dict(env, RB_TEST_STOP_AT=str(iteration), RB_TEST_MARKER=str(marker))
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not all(Path(f"{marker}.rank{r}").exists() for r in range(ranks)):
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(proc)
                raise AssertionError(f"iteration {iteration} never started:\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.05)
        os.kill(who(proc, marker) if who else proc.pid, sig)
        return _wait(proc, timeout)


def marker_pid(rank):
    """`who` for stop_at: the process of `rank` (the marker holds "iteration pid")."""
    return lambda proc, marker: int(Path(f"{marker}.rank{rank}").read_text().split()[1])


def final_weights(out, name="model_final.pth"):
    return load_file(str(Path(out) / name))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"


def tag(out):
    return (Path(out) / "last_checkpoint").read_text().strip()


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines() if line.strip()]
