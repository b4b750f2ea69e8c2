"""Nothing is unpickled from a user-supplied file: every load is ``weights_only=True``, and pickled payloads are
refused with a clear error by each reader the bundles use."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from common.checkpoints import read_checkpoint, read_state_dict
from common.engines.teacher_cache import TeacherCache
from common.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def _sources() -> list[Path]:
    return sorted(p for d in ("common", "scripts") for p in (REPO / d).rglob("*.py"))


def _unsafe_calls(path: Path) -> list[str]:
    """``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)`` and imports of pickle-like
    modules in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            kwargs = {k.arg: k.value for k in node.keywords}
            owner = ast.unparse(node.func.value)
            safe = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
            if owner == "torch" and not safe:
                found.append(f"{path}:{node.lineno} torch.load without weights_only=True")
            pickle_ok = kwargs.get("allow_pickle")
            if owner in ("np", "numpy") and isinstance(pickle_ok, ast.Constant) and pickle_ok.value:
                found.append(f"{path}:{node.lineno} np.load(allow_pickle=True)")
    return found


def test_the_scan_finds_unsafe_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\ntorch.load('x')\ntorch.load('y', weights_only=False)\n")
    assert len(_unsafe_calls(bad)) == 3


def test_no_source_loads_unsafely():
    sources = _sources()
    assert len(sources) > 20
    assert [f for p in sources for f in _unsafe_calls(p)] == []
    for config in (REPO / "bundles").rglob("*.json"):  # "$" expressions in configs are Python too
        assert "torch.load" not in config.read_text() and "pickle" not in config.read_text(), config


class _Payload:
    """A pickled object: unpickling it would import and build it (a real attack would run code)."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def _pickled(path: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload()}, path)
    return path


def test_checkpoint_readers_refuse_pickled_payloads(tmp_path, capsys):
    path = _pickled(tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read teacher_ckpt"):
        read_state_dict(path, "teacher_ckpt")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "plain.pkl")
    # MONAI's CheckpointLoader, used by the evaluate/inference configs, reads weights only too
    loader = CheckpointLoader(str(path), {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(Exception, match="Weights only load failed"):
        loader(Engine(lambda e, b: None))
    assert "unpickled!" not in capsys.readouterr().out


def test_teacher_cache_refuses_pickled_entries(tmp_path, capsys):
    cache = TeacherCache(tmp_path, "fp")
    image = torch.zeros(1, 4, 4)
    cache.path(image).parent.mkdir(parents=True)
    _pickled(cache.path(image))
    with pytest.raises(DataError, match="is unreadable"):
        cache.load(image)
    assert "unpickled!" not in capsys.readouterr().out
