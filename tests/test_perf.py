"""The speed benchmark's smoke configuration runs end to end and writes PERF.md (issue #9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_perf_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(BENCH / "perf.py"), "--quick", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "PERF.md").read_text()
    assert "QUICK" in text
    for needed in ("Command:", "Commit:", "Machine:", "train cells/s", "(a) Gene-graph", "(b)"):
        assert needed in text
    assert "error" not in text.lower() and "failed" not in text.lower(), text
