"""The setup step is idempotent: a second run installs and builds nothing."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.v06


def test_second_setup_run_changes_nothing():
    # what it does, not how long it takes (a wall-clock bound fails on a busy machine and passes a slow no-op)
    res = subprocess.run([sys.executable, str(REPO / "tools" / "setup_env.py")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "environment ready" in res.stdout
    assert "$ " not in res.stdout, f"setup ran pip although everything was installed:\n{res.stdout}"
    assert "building detectron2" not in res.stdout, res.stdout


def test_setup_failure_names_the_step(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import setup_env
    finally:
        sys.path.pop(0)

    def boom(_workdir, source=None):
        raise setup_env.StepError("simulated")

    monkeypatch.setattr(setup_env, "STEPS", [("detectron2", boom)])
    assert setup_env.main([]) == 1
    out = capsys.readouterr().out
    assert "FAILED at step 'detectron2': simulated" in out
