"""What the table scripts share: a MONAI config-file list for the command line, bundle overrides read from and written
to the command line, a logged, timed bundle run, and the mean ± std cell of a table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["config_list", "run_logged", "mean_std", "parse_overrides", "cli_args"]


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


def mean_std(values: list[float | None], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (population std) of the defined values times ``scale``; one value alone; ``–`` for none."""
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def parse_overrides(tokens: list[str]) -> dict[str, object]:
    """``["--key", "value", ...]`` → {key: value}, values read as JSON when they parse (lists, numbers, booleans)."""
    out: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SystemExit(f"error: unexpected argument {token!r} (bundle overrides are --key value pairs)")
        key, _, value = token[2:].partition("=")
        if not _:
            if i + 1 >= len(tokens):
                raise SystemExit(f"error: {token} needs a value")
            value, i = tokens[i + 1], i + 1
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        i += 1
    return out


def cli_args(overrides: dict[str, object]) -> list[str]:
    """{key: value} → ``["--key", "value", ...]`` for ``monai.bundle run`` (non-strings as JSON)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args
