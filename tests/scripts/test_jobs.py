"""The job runner on tiny Python commands: order by needs, N at once, resume, failure, kill, Ctrl-C, wall time.

No timing is asserted: jobs that must overlap wait for each other's files (and give up after a minute)."""

from __future__ import annotations

import _thread
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts import jobs
from scripts.jobs import Job


def _job(tmp_path: Path, key: str, code: str = "", needs: tuple[str, ...] = ()) -> Job:
    """A job running ``code`` then writing ``<key>.out``; done when its marker exists."""
    out = tmp_path / f"{key}.out"
    cmd = [sys.executable, "-c", f"import os, pathlib, time; {code or 'pass'}; pathlib.Path(r'{out}').write_text('ok')"]
    return Job(
        key, f"job {key}", cmd, [out], tmp_path / "markers" / f"{key}.json", needs, tmp_path / "logs" / f"{key}.log"
    )


def _wait_for(path: Path) -> str:
    """Python code waiting (at most a minute) until ``path`` exists, then failing if it never came."""
    return f"t = time.time()\nwhile not pathlib.Path(r'{path}').exists() and time.time() - t < 60: time.sleep(0.05)\n" \
        f"assert pathlib.Path(r'{path}').exists(), 'waited for {path.name} in vain'"  # fmt: skip


def _code(*lines: str) -> str:
    return "exec(" + repr("\n".join(lines)) + ")"


def test_a_job_starts_once_what_it_needs_is_done(tmp_path):
    # listed first, but it needs "a": it must find a's output when it starts
    b = _job(tmp_path, "b", f"assert pathlib.Path(r'{tmp_path / 'a.out'}').read_text() == 'ok'", needs=("a",))
    a = _job(tmp_path, "a")
    times = jobs.run([b, a], env=None, parallel=2)
    assert set(times) == {"a", "b"} and a.done and b.done
    assert json.loads(b.marker.read_text())["command"] == b.cmd
    assert (tmp_path / "logs" / "b.log").is_file()


def test_up_to_n_jobs_run_at_once_and_never_more(tmp_path):
    running = tmp_path / "running"
    running.mkdir()

    def job(key: str, wait_for: str | None) -> Job:
        me = running / key
        lines = [f"pathlib.Path(r'{me}').touch()", f"n = len(list(pathlib.Path(r'{running}').iterdir()))"]
        lines += [f"pathlib.Path(r'{tmp_path / key}.seen').write_text(str(n))"]
        lines += [f"pathlib.Path(r'{tmp_path / key}.started').touch()"]
        lines += [_wait_for(tmp_path / f"{wait_for}.started")] if wait_for else ["time.sleep(0.2)"]
        lines += [f"pathlib.Path(r'{me}').unlink()"]
        return _job(tmp_path, key, _code(*lines))

    # a and b each wait until the other has counted the running jobs: they can only finish if both run at once
    todo = [job("a", "b"), job("b", "a"), job("c", None), job("d", None)]
    assert set(jobs.run(todo, env=None, parallel=2)) == {"a", "b", "c", "d"}
    assert max(int((tmp_path / f"{k}.seen").read_text()) for k in "abcd") == 2


def test_finished_jobs_are_skipped_on_a_second_run(tmp_path, capsys):
    counter = tmp_path / "count"
    count = f"c = pathlib.Path(r'{counter}'); c.write_text(str(int(c.read_text()) + 1) if c.exists() else '1')"
    assert set(jobs.run([_job(tmp_path, "a", count), _job(tmp_path, "b", needs=("a",))])) == {"a", "b"}
    assert jobs.run([_job(tmp_path, "a", count), _job(tmp_path, "b", needs=("a",))]) == {}
    assert counter.read_text() == "1"
    assert "2 steps: 2 done already, 0 to run" in capsys.readouterr().out


def test_a_failure_starts_nothing_new_and_keeps_the_finished_markers(tmp_path):
    ok, bad, later = _job(tmp_path, "ok"), _job(tmp_path, "bad", "raise SystemExit(3)"), _job(tmp_path, "later")
    with pytest.raises(SystemExit, match=r"step 'bad' \(job bad\) failed \(exit 3\); the end of .*bad\.log says why"):
        jobs.run([ok, bad, later])
    assert ok.done and not bad.marker.exists() and not later.done and not (tmp_path / "later.out").exists()
    # two at once: the running job finishes and keeps its marker; the one needing the failed job never starts
    slow = _job(tmp_path, "slow", _code(_wait_for(tmp_path / "bad.started")))
    bad = _job(tmp_path, "bad", f"pathlib.Path(r'{tmp_path / 'bad.started'}').touch(); raise SystemExit(3)")
    after = _job(tmp_path, "after", needs=("bad",))
    with pytest.raises(SystemExit, match=r"step 'bad' .* failed \(exit 3\)"):
        jobs.run([slow, bad, after], parallel=2)
    assert slow.done and not bad.marker.exists() and not (tmp_path / "after.out").exists()


def test_a_job_killed_half_way_runs_again(tmp_path):
    survive = tmp_path / "survive"
    # writes its output, then is killed (as by the OOM killer) unless told to survive
    code = f"pathlib.Path(r'{tmp_path / 'k.out'}').write_text('partial')\n"
    code += f"if not pathlib.Path(r'{survive}').exists(): import signal; os.kill(os.getpid(), signal.SIGKILL)"
    job = _job(tmp_path, "k", _code(code))
    with pytest.raises(SystemExit, match=r"step 'k' .* failed \(exit -9\)"):
        jobs.run([job])
    assert (tmp_path / "k.out").exists() and not job.marker.exists() and not job.done
    survive.touch()
    assert set(jobs.run([job])) == {"k"} and job.done


def test_the_marker_records_the_wall_time(tmp_path):
    job = _job(tmp_path, "a")
    assert jobs.wall_seconds(job.marker) is None
    times = jobs.run([job])
    record = json.loads(job.marker.read_text())
    assert jobs.wall_seconds(job.marker) == record["seconds"] == times["a"] >= 0
    assert record["command"] == job.cmd and "finished" in record
    legacy = tmp_path / "train_time.json"  # what the table scripts wrote before this module
    legacy.write_text(json.dumps({"train_seconds": 42.0}))
    assert jobs.wall_seconds(legacy) == 42.0


def test_threads_are_the_cores_shared_by_the_jobs_unless_set(tmp_path):
    def threads_job(key: str) -> Job:
        return _job(
            tmp_path, key, f"pathlib.Path(r'{tmp_path / key}.threads').write_text(os.environ['OMP_NUM_THREADS'])"
        )

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    jobs.run([threads_job("a")], env=env, parallel=2)
    assert (tmp_path / "a.threads").read_text() == str(max(1, (os.cpu_count() or 1) // 2))
    jobs.run([threads_job("b")], env={**env, "OMP_NUM_THREADS": "3"}, parallel=2)
    assert (tmp_path / "b.threads").read_text() == "3"


def test_ctrl_c_stops_the_running_commands(tmp_path):
    pid = tmp_path / "pid"
    job = _job(tmp_path, "long", f"pathlib.Path(r'{pid}').write_text(str(os.getpid())); time.sleep(600)")

    def press_ctrl_c() -> None:
        deadline = time.time() + 60
        while not pid.exists() and time.time() < deadline:
            time.sleep(0.05)
        _thread.interrupt_main()

    # Python's own Ctrl+C handler, whatever the test runner inherited (a shell's background job ignores SIGINT, and
    # then interrupt_main() does nothing)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            jobs.run([job])
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(int(pid.read_text()), 0)
    assert not job.done


def test_a_job_needs_outputs_or_a_marker_and_keys_are_unique(tmp_path):
    with pytest.raises(ValueError, match="neither outputs nor a marker"):
        Job("a", "a", ["true"])
    with pytest.raises(ValueError, match=r"unique: \['a'\]"):
        jobs.run([_job(tmp_path, "a"), _job(tmp_path, "a")])


def test_a_job_that_ends_without_its_outputs_fails(tmp_path):
    job = Job("lazy", "job lazy", [sys.executable, "-c", "pass"], [tmp_path / "lazy.out"], tmp_path / "lazy.json")
    with pytest.raises(SystemExit, match=r"step 'lazy' .* failed \(exit 0 without writing .*lazy\.out"):
        jobs.run([job])
    assert not job.marker.exists()
