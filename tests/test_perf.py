"""The speed benchmark's smoke configuration runs end to end and writes PERF.md (issue #9)."""

from __future__ import annotations

import json
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
    # issue #17: the contention columns, the thread grid and the user's scenario
    for needed in (
        "| threads | train cells/s | train busy cells/s | train slowdown |",
        "| predict busy cells/s | predict slowdown |",
        "## Threads: 1, 2 and all cores",
        "| rule train | rule predict |",
        "## As a user runs it",
        "| model default |",
        "before #17",
    ):
        assert needed in text, needed
    results = json.loads((tmp_path / "perf.json").read_text())
    (row,) = results["grid"]
    for key in ("train_busy_cells_per_s", "train_slowdown", "train_threads"):
        assert isinstance(row["train"][key], int | float), key
    for key in ("predict_busy_cells_per_s", "predict_slowdown", "predict_threads"):
        assert isinstance(row["predict"][key], int | float), key
    (entry,) = results["threads"]
    counts = {r["threads"] for r in entry["rows"]}
    assert {1, 2} <= counts
    assert {(r["threads"], r["busy"]) for r in entry["rows"]} == {
        (n, b) for n in counts for b in (False, True)
    }
    for r in entry["rows"]:  # the count asked for is the count used
        assert r["train_threads_seen"] == r["threads"]
        assert f"| default | 50 | {r['threads']} |" in text
    user = results["user"]
    assert set(user["summary"]) == {"default", "global"}
    for run in user["runs"]:  # the model's default vs torch's global count, alone and busy
        if run["variant"] == "global":
            assert run["threads"] == [run["global_threads_before"]]
    assert user["threads_at_end"] == user["threads_after_preprocessing"]
