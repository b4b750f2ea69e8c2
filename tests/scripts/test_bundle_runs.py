"""A table's run is resumed, not restarted, when an earlier invocation left it unfinished; a variant is chosen on
validation over every candidate's seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bundle_runs import TRAIN_MARKER, best_on_validation, train_and_evaluate


def _train_cmd(root: Path) -> list[str]:
    train, evaluate = train_and_evaluate("run", root, [Path("train.json")], {"seed": 0}, [Path("evaluate.json")])
    assert "--resume" not in evaluate.cmd  # an evaluation never resumes a training
    return train.cmd


def test_an_unfinished_training_resumes_from_its_last_checkpoint(tmp_path):
    fresh = tmp_path / "fresh"
    assert "--resume" not in _train_cmd(fresh)  # nothing there: starts afresh
    (fresh / "models").mkdir(parents=True)
    (fresh / "models" / "model.pt").write_bytes(b"")
    assert "--resume" not in _train_cmd(fresh)  # a best model alone is not a resumable state

    stopped = tmp_path / "stopped"
    (stopped / "models" / "pretrain").mkdir(parents=True)
    (stopped / "models" / "pretrain" / "last.pt").write_bytes(b"")  # TS-KD pre-training keeps it one level down
    cmd = _train_cmd(stopped)
    assert cmd[cmd.index("--resume") + 1] == "true" and cmd[cmd.index("--seed") + 1] == "0"

    (stopped / TRAIN_MARKER).write_text(json.dumps({"seconds": 1.0}))
    assert "--resume" not in _train_cmd(stopped)  # finished (the runner skips it anyway)


def test_best_on_validation_averages_seeds_breaks_ties_by_order_and_waits_for_every_candidate():
    best, means = best_on_validation({"a": [0.6, 0.8], "b": [0.9, 0.5], "c": [0.65, 0.7]})
    assert best == "a" and means == pytest.approx({"a": 0.7, "b": 0.7, "c": 0.675})  # a and b tie: a is first
    assert best_on_validation({"b": [0.9, 0.5], "a": [0.6, 0.8]})[0] == "b"
    best, means = best_on_validation({"a": [0.6, None], "b": [0.9, 0.9]})
    assert best is None and means == {"a": None, "b": 0.9}  # a seed of a is unvalidated: no choice yet
    assert best_on_validation({"a": []}) == (None, {"a": None})
