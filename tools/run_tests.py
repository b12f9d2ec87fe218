#!/usr/bin/env python
"""The test suite, one pytest process per test file (what `make test` runs).

Why: OpenVINO, ONNX Runtime, inductor and oneDNN all load native thread pools into the process that uses them; in
one process for the whole suite, state left by earlier files ended the run with a segmentation fault that no file
shows on its own. A process per file keeps each file's native state to itself, and a crash fails that file only.

    python tools/run_tests.py                 # every tests/test_*.py
    python tools/run_tests.py -m "not slow"   # extra arguments go to every pytest call

Prints each file's pytest output, then one closing line with the totals; exits 1 when any file failed.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")
NO_TESTS = 5  # pytest's exit code when a file has no test left (e.g. all deselected by -m)


def main(argv=None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    totals, failed_files = {}, []
    started = time.time()
    files = sorted((REPO / "tests").glob("test_*.py"))
    for i, path in enumerate(files, 1):
        print(f"[run_tests {i}/{len(files)}, +{time.time() - started:.0f}s] {path.relative_to(REPO)}", flush=True)
        res = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-rfE", "--tb=short", *extra],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(res.stdout, end="", flush=True)
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        for number, kind in COUNT.findall(lines[-1] if lines else ""):
            kind = "errors" if kind.startswith("error") else kind
            totals[kind] = totals.get(kind, 0) + int(number)
        if res.returncode not in (0, NO_TESTS):
            failed_files.append(f"{path.name} (exit {res.returncode})")
    if failed_files:
        print("files that failed: " + ", ".join(failed_files))
    print(f"{len(files)} files, one process each, {time.time() - started:.0f}s; errors: {totals.get('errors', 0)}")
    # the closing line alone: failed counts the failed tests and the files that ended without a count (a crash)
    failed = totals.get("failed", 0) + totals.get("errors", 0)
    if failed_files and not failed:  # a file that crashed before its closing line
        failed = len(failed_files)
    print(f"{totals.get('passed', 0)} passed, {failed} failed, {totals.get('skipped', 0)} skipped")
    return 1 if failed_files else 0


if __name__ == "__main__":
    sys.exit(main())
