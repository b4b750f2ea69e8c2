"""IAD training runs through ``python -m monai.bundle``: a run killed mid-epoch with SIGKILL and continued with
``--resume true`` ends bit-identical to an uninterrupted one; the same seed and config give bit-identical metrics;
a NaN loss term stops the run with one line naming it and keeps the last good checkpoint.

Runs are subprocesses with one CPU thread: the same thread count is what makes CPU results bit-reproducible, and
one thread keeps them fast on a busy machine. Tiny settings: 8 training images of 64 px, batch 2 (4 iterations per
epoch), 2 epochs, a checkpoint every iteration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ITERS_PER_EPOCH = 4
SAVED = re.compile(r"Saved \S+last\.pt \(epoch (?P<epoch>\d+), iteration (?P<iteration>\d+)\)")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, object]:
    """Command-line overrides for a tiny synthetic IAD task (a random tiny SAM and its adapter)."""
    root = tmp_path_factory.mktemp("reliability")
    return tiny_distillation_task(root, (2 * ITERS_PER_EPOCH, 2, 1), epochs=2, kis_epochs=1, ckpt_interval=1)


def _cmd(task: dict, bundle_root: Path, **extra) -> list[str]:
    configs = REPO / "bundles" / "iad_student" / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "train.json")]
    cmd += ["--logging_file", str(configs / "logging.conf"), "--bundle_root", str(bundle_root)]
    for key, value in {**task, **extra}.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _assert_identical(a, b, where: str = "") -> None:
    """Recursive equality; tensors with ``torch.equal`` (bit-identical, not merely close)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), f"{where}: {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory) -> Path:
    """The bundle_root of one uninterrupted IAD run."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _run(_cmd(task, root))
    return root


def test_killed_mid_epoch_then_resumed_ends_with_the_uninterrupted_weights(task, uninterrupted, tmp_path):
    """IAD, killed in the middle of epoch 2 (the KAS stage): student, KAS projections, optimiser, scheduler, stage
    and data order must all come back. (test_teacher_lora.py checks the teacher's resume in-process.)"""
    cmd = _cmd(task, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=ENV)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    log = []
    try:
        for line in proc.stdout:
            log.append(line)
            saved = SAVED.search(line)
            # iteration 5 is the first of epoch 2 (IAD's KAS stage begins): kill there, in the middle of the epoch
            if saved and int(saved["iteration"]) >= ITERS_PER_EPOCH + 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(log[-30:])
    killed_at = _load(tmp_path / "models" / "last.pt")["trainer"]["iteration"]
    assert ITERS_PER_EPOCH < killed_at < 2 * ITERS_PER_EPOCH, "killed in the middle of epoch 2"

    resumed = _run(cmd + ["--resume", "true"])
    assert f"Resumed from {tmp_path / 'models' / 'last.pt'}: epoch 2, iteration {killed_at}" in resumed.stdout

    ref = uninterrupted / "models"
    # the whole final checkpoint: student, KAS projections, optimiser moments, scheduler, best-metric bookkeeping
    # and counters; and the best model chosen by validation
    _assert_identical(_load(ref / "last.pt"), _load(tmp_path / "models" / "last.pt"), "last.pt")
    _assert_identical(_load(ref / "model.pt"), _load(tmp_path / "models" / "model.pt"), "model.pt")


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_same_seed_and_config_give_bit_identical_metrics(task, uninterrupted, tmp_path):
    _run(_cmd(task, tmp_path))
    first, second = _scalars(uninterrupted / "outputs"), _scalars(tmp_path / "outputs")
    assert len(first["loss"]) == 2 * ITERS_PER_EPOCH and len(first["val_mean_dice"]) == 2  # per iteration, per epoch
    assert {"sld", "cpd", "kas_rfc", "kas_css"} <= set(first)
    assert first == second  # every logged loss term and validation Dice, exactly
    _assert_identical(_load(uninterrupted / "models" / "last.pt"), _load(tmp_path / "models" / "last.pt"))


def test_nan_term_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(task, tmp_path):
    """A zero contrastive temperature makes L_css non-finite as soon as stage 2 (KAS) starts, at iteration 5."""
    out = subprocess.run(_cmd(task, tmp_path, css_temperature=0), capture_output=True, text=True,
                         cwd=REPO, env=ENV, timeout=300)  # fmt: skip
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    last_line = out.stderr.strip().splitlines()[-2]
    assert re.match(r"error: loss term 'kas_css' is (nan|inf|-inf) at epoch 2, iteration 5 \(batch: image_", last_line)
    assert f"last good checkpoint is '{tmp_path / 'models' / 'last.pt'}' (iteration 4)" in last_line
    last = _load(tmp_path / "models" / "last.pt")
    assert last["trainer"]["iteration"] == ITERS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in last["model"].values())
