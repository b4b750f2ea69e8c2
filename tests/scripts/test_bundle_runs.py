"""A table's run is resumed, not restarted, when an earlier invocation left it unfinished."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.bundle_runs import TRAIN_MARKER, train_and_evaluate


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
