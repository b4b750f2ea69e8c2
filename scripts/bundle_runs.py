"""What the table scripts share: a MONAI config-file list for the command line, and a logged, timed bundle run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

__all__ = ["config_list", "run_logged"]


def config_list(paths: list[Path]) -> str:
    """``--config_file`` value merging ``paths`` in order (MONAI's "['a.json','b.json']" form)."""
    return "[" + ",".join(f"'{p}'" for p in paths) + "]"


def run_logged(cmd: list[str], log: Path, env: dict, cwd: Path) -> float:
    """Run a command with its output in ``log``; return its wall time; stop the table on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if code:
        sys.exit(f"error: {' '.join(cmd[:6])} ... failed (exit {code}); see {log}")
    return time.perf_counter() - start
