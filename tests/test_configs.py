"""House rules of the bundles' configs: they declare and named components compute, and every ``_target_`` of ours
reaches its code in one hop."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "bundles").glob("*/configs/*.json"))
ARITHMETIC = re.compile(r"\b(max|min|round)\(|ceil|//|\blambda\b")


def _values(config, key=None):
    """(key, value) of every string in a config."""
    if isinstance(config, dict):
        return [kv for k, v in config.items() for kv in _values(v, k)]
    if isinstance(config, list):
        return [kv for v in config for kv in _values(v, key)]
    return [(key, config)] if isinstance(config, str) else []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_no_config_value_computes(path):
    """No expression uses max/min/round/ceil, floor division or a lambda: such logic is a tested component."""
    expressions = [v for _, v in _values(json.loads(path.read_text())) if v.startswith("$")]
    assert not [e for e in expressions if ARITHMETIC.search(e)]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_targets_name_their_defining_module(path):
    """``common.a.b.Name`` must be defined in ``common.a.b`` (no re-exports), and exist."""
    for key, value in _values(json.loads(path.read_text())):
        if key != "_target_" or not value.startswith("common."):
            continue
        module, _, name = value.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        assert getattr(obj, "__module__", module) == module, f"{value} is defined in {obj.__module__}"


def test_no_private_monai_attribute_is_read():
    hits = [p for p in (REPO / "common").rglob("*.py") if "_key_metric_checkpoint" in p.read_text()]
    assert not hits
