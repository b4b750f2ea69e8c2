"""One way to run jobs: the steps of the pipeline (``run_pipeline.py``) and of every table script.

A job is a command (argv), the files whose existence means it is done (``outputs``) and/or a ``marker`` the runner
writes only after the command succeeded, the keys of the jobs it ``needs``, and a log file. :func:`run`

- skips every job that is done, so an interrupted run resumes; a job killed half-way wrote no marker and starts again
  from its beginning;
- starts up to ``parallel`` ready jobs at once as subprocesses, in list order among the ready ones, each with
  ``OMP_NUM_THREADS`` = cores / ``parallel`` unless the environment sets it;
- when a job fails (or ends without writing its outputs), starts nothing new, lets the running jobs finish (their
  markers are kept), then exits naming the failed job's log and showing its last lines;
- on Ctrl-C (or SIGTERM) stops the running commands and re-raises.

The marker (JSON) records the job's wall time, command and end time; it is the one place a job's wall time is kept
(:func:`wall_seconds` reads it). A table is then: plan a list of jobs, :func:`run` them, collect what they wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["Job", "run", "wall_seconds", "threads_per_job"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    """One command and what tells that it is done.

    ``outputs``: files whose existence means done; ``marker``: a JSON record written after the command succeeded (its
    wall time), for commands that write their outputs before they end; ``needs``: keys of the jobs whose outputs this
    one reads; ``log``: the command's stdout and stderr (None: this process's).
    """

    key: str
    title: str
    cmd: list[str]
    outputs: list[Path] = field(default_factory=list)
    marker: Path | None = None
    needs: tuple[str, ...] = ()
    log: Path | None = None

    def __post_init__(self) -> None:
        if not self.outputs and self.marker is None:
            raise ValueError(f"job {self.key!r} has neither outputs nor a marker: it would always count as done")

    @property
    def done(self) -> bool:
        return all(p.exists() for p in self.outputs) and (self.marker is None or self.marker.is_file())


def print_plan(todo: list[Job]) -> None:
    """What ``--plan`` shows: each job (done or not, what it waits for, its command), then the counts."""
    for job in todo:
        needs = f"  (after {', '.join(job.needs)})" if job.needs else ""
        print(f"[{'done' if job.done else 'todo'}] {job.key}{needs}\n    {shlex.join(job.cmd)}")
    trainings = sum(1 for j in todo if j.marker is not None)
    print(f"\n{len(todo)} jobs: {trainings} trainings, {len(todo) - trainings} evaluations; "
          f"{sum(j.done for j in todo)} done")  # fmt: skip


def wall_seconds(marker: Path) -> float | None:
    """The wall time a job's marker records; None when the job has not finished."""
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return float(record["seconds"] if "seconds" in record else record["train_seconds"])  # tables before this module


def threads_per_job(parallel: int, env: Mapping[str, str] | None = None) -> int:
    """Torch threads of each job: ``OMP_NUM_THREADS`` when the environment sets it, else the cores / ``parallel``."""
    env = os.environ if env is None else env
    return int(env.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // parallel))


@dataclass
class _Running:
    """A job whose command is running."""

    job: Job
    tag: str
    proc: subprocess.Popen
    handle: IO | None
    start: float


def _start(job: Job, tag: str, env: dict, cwd: Path) -> _Running:
    print(f"{tag} run   {job.title}" + (f"  (log: {job.log})" if job.log else ""), flush=True)
    handle = None
    if job.log is not None:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(job.log, "w")
    proc = subprocess.Popen(job.cmd, stdout=handle, stderr=subprocess.STDOUT if handle else None, cwd=cwd, env=env)
    return _Running(job, tag, proc, handle, time.perf_counter())


def _finish(running: _Running) -> float:
    """Record a job that succeeded in its marker (written whole or not at all); return its seconds."""
    job, seconds = running.job, time.perf_counter() - running.start
    if job.marker is not None:
        record = {"seconds": seconds, "command": job.cmd, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        job.marker.parent.mkdir(parents=True, exist_ok=True)
        partial = job.marker.with_name(job.marker.name + ".partial")
        partial.write_text(json.dumps(record, indent=1))
        partial.replace(job.marker)
    print(f"{running.tag} done  {job.key} in {seconds / 60:.1f} min", flush=True)
    return seconds


def _tail(log: Path | None, limit: int = 4096) -> str:
    """The last ``limit`` bytes of a log, tqdm's carriage-return rewrites as new lines."""
    if log is None:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - limit))
            return f.read().decode("utf-8", "replace").replace("\r", "\n")
    except OSError:
        return ""


def _last_progress(log: Path | None) -> str:
    lines = [line.strip() for line in _tail(log).split("\n") if line.strip()]
    return lines[-1] if lines else ""


def _echo_progress(running: dict[str, _Running], tty: bool, last_echo: float) -> float:
    """Show the running jobs' latest progress: one rewritten line each second on a terminal, else a line a minute."""
    now = time.perf_counter()
    if now - last_echo < (1 if tty else 60):
        return last_echo
    if tty:
        width = shutil.get_terminal_size((100, 20)).columns
        line = " | ".join(f"{key}: {_last_progress(r.job.log)}" for key, r in running.items())
        print(f"\r      {line}"[: width - 1].ljust(width - 1), end="", flush=True)
    else:
        for key, r in running.items():
            print(f"      ... {key} {(now - r.start) / 60:.1f} min: {_last_progress(r.job.log)[:140]}", flush=True)
    return now


def _stop(running: dict[str, _Running]) -> None:
    """Terminate the running commands (SIGTERM, then SIGKILL after 10 s) and wait for them."""
    for r in running.values():
        r.proc.terminate()
    for r in running.values():
        try:
            r.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(jobs: list[Job], env: Mapping[str, str] | None = None, parallel: int = 1, cwd: Path = REPO) -> dict[str, float]:
    """Run the jobs that are not done, up to ``parallel`` at once, each once the jobs it ``needs`` are done (a key
    that is not in ``jobs`` counts as done), from ``cwd``; return the seconds of each job run now.

    ``env`` (default: this process's) gets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = :func:`threads_per_job` where it
    lacks them. When a job fails, nothing new starts, the running jobs finish, then ``SystemExit`` names the failed
    job's log. Ctrl-C or SIGTERM stops the running commands and raises ``KeyboardInterrupt``.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"job keys must be unique: {sorted({k for k in keys if keys.count(k) > 1})}")
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_job(parallel, env)))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    tags = {j.key: f"[{i:>2}/{len(jobs)}]" for i, j in enumerate(jobs, 1)}
    finished = {j.key for j in jobs if j.done}
    pending = [j for j in jobs if j.key not in finished]
    at_once = f", up to {parallel} at once" if parallel > 1 and len(pending) > 1 else ""
    print(f"{len(jobs)} steps: {len(finished)} done already, {len(pending)} to run{at_once}", flush=True)
    for job in jobs:
        if job.key in finished:
            print(f"{tags[job.key]} skip  {job.title}: done", flush=True)
    running: dict[str, _Running] = {}
    times: dict[str, float] = {}
    failed: list[str] = []
    tty = sys.stdout.isatty()
    last_echo = time.perf_counter()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        while pending or running:
            while not failed and len(running) < parallel:
                ready = [j for j in pending if all(n in finished or n not in tags for n in j.needs)]
                if not ready:
                    break
                pending.remove(ready[0])
                running[ready[0].key] = _start(ready[0], tags[ready[0].key], env, cwd)
            if not running:
                break  # only jobs waiting on a failed one are left
            time.sleep(0.2)
            for key, r in list(running.items()):
                if r.proc.poll() is None:
                    continue
                if r.handle:
                    r.handle.close()
                del running[key]
                if tty:
                    print("\r" + " " * (shutil.get_terminal_size((100, 20)).columns - 1) + "\r", end="", flush=True)
                missing = [str(p) for p in r.job.outputs if p != r.job.marker and not p.exists()]
                if r.proc.returncode or missing:
                    where = f"the end of {r.job.log} says why" if r.job.log else "its output above says why"
                    why = f"exit {r.proc.returncode}" if r.proc.returncode else f"exit 0 without writing {missing}"
                    failed.append(f"step '{key}' ({r.job.title}) failed ({why}); {where}")
                    print(
                        f"{r.tag} FAILED {key}" + (f"; waiting for {', '.join(running)} to finish" if running else ""),
                        flush=True,
                    )
                    tail = _tail(r.job.log, 2048).splitlines()[-15:]
                    print("".join(f"      | {line}\n" for line in tail), end="", flush=True)
                    continue
                times[key] = _finish(r)
                finished.add(key)
            if running:
                last_echo = _echo_progress(running, tty, last_echo)
    except KeyboardInterrupt:
        print(f"\ninterrupted: stopping {', '.join(running) or 'nothing'}", flush=True)
        _stop(running)
        raise
    finally:
        for r in running.values():
            if r.handle:
                r.handle.close()
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if failed:
        sys.exit("error: " + "; ".join(failed))
    return times
