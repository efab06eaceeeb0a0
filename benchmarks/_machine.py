"""What produced a benchmark's numbers: command, commit, date and machine (run.py and perf.py)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    """Output of a git command in the repository ('' when git or the repository is missing)."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_record(command: str) -> dict:
    """Command, commit (``+dirty`` with uncommitted changes), date and machine of a run."""
    import torch

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain"):
        commit += "+dirty"
    return {
        "command": command,
        "commit": commit,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": (
            f"{platform.platform()}; CPU {cpu_model()}; {os.cpu_count()} cores; "
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s)"
        ),
    }
