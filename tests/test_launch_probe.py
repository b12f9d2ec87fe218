"""The multi-process tests (test_distributed.py, test_pretrain_distributed.py) skip without CUDA when
engine/launch.py's `launch_supports_cpu()` says this detectron2's launch cannot start CPU processes. That probe reads
detectron2's source text, so a change there could turn it False on detectron2 main and silently skip those tests
in CI. Here the probe is held against what the setup step knows independently: which detectron2 it installed."""
import os
import sys

import pytest

from conftest import REPO
from resnet_backbone.engine.launch import launch_supports_cpu

pytestmark = pytest.mark.v06  # both CI environments: main (probe True) and the v0.6 fallback (probe False)


def _detectron2_is_v06() -> bool:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import setup_env  # the setup step's own record: the v0.6 fallback's package / empty compiled extension
    finally:
        sys.path.pop(0)
    return setup_env.detectron2_is_v06()


def test_cpu_launch_probe_matches_the_installed_detectron2():
    v06 = _detectron2_is_v06()
    assert launch_supports_cpu() == (not v06), (
        f"launch_supports_cpu() is {launch_supports_cpu()} on detectron2 {'v0.6' if v06 else 'main'}: the multi-process "
        "tests would " + ("run and fail" if v06 else "skip") + "; fix the probe in resnet_backbone/engine/launch.py")


def test_ci_main_environment_is_detectron2_main():
    """CI's first stage sets RB_DETECTRON2_SOURCE (.ci/run): there detectron2 is main, which runs the multi-process
    tests on the CPU, so they cannot skip."""
    if not os.environ.get("RB_DETECTRON2_SOURCE"):
        return  # not CI's main stage: the test above still holds the probe to the installed detectron2
    assert not _detectron2_is_v06(), "RB_DETECTRON2_SOURCE is set but the installed detectron2 is the v0.6 fallback"
    assert launch_supports_cpu(), "detectron2 main runs CPU processes (GLOO); the multi-process tests must not skip"
