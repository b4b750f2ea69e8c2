"""scripts/export_bundle.py: every bundle exports to a self-contained Model Zoo folder that passes MONAI's checks."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("export_bundle", REPO / "scripts" / "export_bundle.py")
export_module = importlib.util.module_from_spec(_spec)
sys.modules["export_bundle"] = export_module
_spec.loader.exec_module(export_module)
CodeCollector, ExportError = export_module.CodeCollector, export_module.ExportError
check_bundles, export_bundle, main = export_module.check_bundles, export_module.export_bundle, export_module.main
BUNDLES = REPO / "bundles"
# settings that make each bundle's network tiny for the checks (the checkpoints are random networks)
TINY: dict[str, dict] = {
    "teacher_lora": {"overrides": {"teacher_arch": "test", "image_size": 64}},
    "iad_student": {"onnx": True},
    "recokd_student": {"overrides": {"filters": [8, 16, 32, 64]}, "n": 2},
    "transfer_diffusion": {"ckpt": False},
}
EXPORTABLE = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "inference.json").is_file())


def _random_checkpoint(bundle: str, overrides: dict, path: Path) -> Path:
    """A state dict of the bundle's inference network (random weights), as training would leave it."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
    parser.update(overrides)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _code_strings(config, key=None):
    """The ``_target_`` values and ``$`` expressions of a config."""
    if isinstance(config, dict):
        return [s for k, v in config.items() for s in _code_strings(v, k)]
    if isinstance(config, list):
        return [s for v in config for s in _code_strings(v)]
    return [config] if isinstance(config, str) and (key == "_target_" or config.startswith("$")) else []


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every bundle exported (with a random checkpoint where it has a network to export) and checked in one
    process; returns {bundle: (folder, report)}."""
    from common.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("export")
    volumes = make_synthetic_dataset(root / "volumes", num_items=(1, 0, 0), size=16, ndim=3)  # the 3D bundle's data
    jobs, folders = [], {}
    for bundle in EXPORTABLE:
        settings = TINY.get(bundle, {})
        data = volumes if bundle == "recokd_student" else None  # the others: the sample data (data/lits_liver)
        overrides = {**settings.get("overrides", {}), **({"dataset_dir": str(data)} if data else {})}
        ckpt = _random_checkpoint(bundle, overrides, root / f"{bundle}.pt") if settings.get("ckpt", True) else None
        out = export_bundle(BUNDLES / bundle, root / bundle, ckpt=ckpt, weights_url="https://example.org/w",
                            dataset_dir=data)  # fmt: skip
        folders[bundle] = out
        jobs.append({"out": str(out), "overrides": overrides, "n": settings.get("n", 1),
                     "onnx": settings.get("onnx", False)})  # fmt: skip
    reports = check_bundles(jobs, weights_url="https://example.org/w")
    return {b: (folders[b], r) for b, r in zip(EXPORTABLE, reports)}


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_export_passes_monai_checks(exported, bundle):
    out, report = exported[bundle]
    checks = "\n".join(report["checks"])
    assert "every module of scripts/ imports without the repository" in checks
    assert "verify_metadata" in checks
    if TINY.get(bundle, {}).get("ckpt", True):
        assert "verify_net_in_out" in checks and "ckpt_export" in checks, report
        ts = torch.jit.load(str(out / "models" / "model.ts"), _extra_files=(extra := {"metadata.json": ""}))
        assert ts is not None and json.loads(extra["metadata.json"])["version"]  # ckpt_export embeds the metadata
        assert report["torchscript"]["max_abs_diff"] <= 1e-4
    if TINY.get(bundle, {}).get("onnx"):
        assert (out / "models" / "model.onnx").is_file() and report["onnx"]["max_abs_diff"] <= 1e-3


@pytest.mark.parametrize("bundle", EXPORTABLE)
def test_export_is_self_contained_model_zoo_layout(exported, bundle):
    out, _ = exported[bundle]
    for need in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "large_files.yml",
                 "scripts/__init__.py"):  # fmt: skip
        assert (out / need).is_file(), need
    if "data_license" in json.loads((out / "configs" / "metadata.json").read_text()):
        assert (out / "docs" / "data_license.txt").is_file()
    for path in (out / "configs").glob("*.json"):  # no _target_ or expression names the repository's package
        for code in _code_strings(json.loads(path.read_text())):
            assert not re.search(r"(?<![\w.])common\.", code), f"{path.name}: {code}"
    for path in (out / "scripts").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) common\b", path.read_text(), re.M), path
    train = out / "configs" / "train.json"
    if train.is_file():  # every _target_ of ours leads to a module that exists in the folder
        for target in re.findall(r'"_target_": "(scripts\.[\w.]+)"', train.read_text()):
            module = target.rsplit(".", 1)[0]
            assert (out / (module.replace(".", "/") + ".py")).is_file(), target
    files = yaml.safe_load((out / "large_files.yml").read_text())["large_files"]
    for entry in files:
        if (out / entry["path"]).is_file():
            assert entry["url"] == f"https://example.org/w/{Path(entry['path']).name}"
            assert re.fullmatch(r"[0-9a-f]{64}", entry["hash_val"])


def test_metadata_lists_the_packages_the_code_imports(exported):
    out, _ = exported["iad_student"]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert {"peft", "pytorch-ignite", "segment-anything"} <= set(meta["required_packages_version"])
    assert meta["version"] in meta["changelog"]


def test_config_rewriting_resolves_targets_to_their_defining_module():
    collector = CodeCollector()
    assert collector.rewrite_value({"_target_": "common.handlers.progress.ProgressBar"}) == {
        "_target_": "scripts.handlers.progress.ProgressBar"
    }
    assert collector.rewrite_expression("$from common.engines import distillation") == (
        "$import scripts.engines.distillation as distillation"
    )
    assert collector.rewrite_expression("$import common.distributed as distributed") == (
        "$import scripts.distributed as distributed"
    )
    assert collector.rewrite_value("$common.networks.students.EfficientUNetStudent(3)") == (
        "$scripts.networks.students.EfficientUNetStudent(3)"
    )
    # the modules those need, and what they import in turn (students -> checkpoints, errors)
    assert {"common.networks.students", "common.checkpoints", "common.errors"} <= collector.modules
    assert "common.networks.sam_teacher" not in collector.modules  # only what is needed
    files = collector.files()
    assert "scripts/handlers/__init__.py" in files and "import" not in files["scripts/handlers/__init__.py"]


def test_bad_input_is_refused_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(ExportError, match="LICENSE"):
        bundle = tmp_path / "nolicense"
        shutil.copytree(BUNDLES / "iad_student" / "configs", bundle / "configs")
        export_bundle(bundle, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ExportError, match="--force"):
        export_bundle(BUNDLES / "iad_student", tmp_path / "busy")
    bad = tmp_path / "bad"
    shutil.copytree(BUNDLES / "iad_student", bad, ignore=shutil.ignore_patterns("models", "outputs", "eval"))
    meta = json.loads((bad / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (bad / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="version '9.9.9' has no entry in 'changelog'"):
        export_bundle(bad, tmp_path / "bad_out")
    with pytest.raises(ExportError, match="no dataset.json in .*--dataset-dir"):
        export_bundle(BUNDLES / "iad_student", tmp_path / "nodata", dataset_dir=tmp_path)
    assert main([str(BUNDLES / "iad_student"), "--out", str(tmp_path / "x"), "--ckpt", str(tmp_path / "none.pt")]) == 1
    assert "error: --ckpt" in capsys.readouterr().err


def test_export_describes_the_training_data(tmp_path):
    """The exported bundle takes labels, channels, normalisation and licence from the training data's dataset.json,
    not the sample data's, and its configs no longer need that file."""
    from common.data.dataset_info import load_dataset_info, write_dataset_info
    from common.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "rgb", num_items=(1, 0, 0), size=32, num_classes=2, in_channels=3,
                                  file_format="png")  # fmt: skip
    info = load_dataset_info(data)
    info.extra["licence"] = "CC BY 4.0 (test data)"
    write_dataset_info(data, info)
    out = export_bundle(BUNDLES / "iad_student", tmp_path / "out", dataset_dir=data)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3 and fmt["outputs"]["pred"]["num_channels"] == 2
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "class1"}
    assert meta["data_license"] == "CC BY 4.0 (test data)" and "range [0.0, 255.0]" in meta["image_classes"]
    assert (out / "docs" / "data_license.txt").read_text().strip() == "CC BY 4.0 (test data)"
    assert (out / "docs" / Path(meta["schema"]).name).is_file()  # the schema the checks used travels with it
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    literal = parser.get("dataset_info")
    assert (
        literal["_target_"] == "scripts.data.dataset_info.DatasetInfo"
        and literal["channel_names"] == info.channel_names
    )
    assert literal["normalisation"] == {"method": "range", "range": [0.0, 255.0]}
    # the one-line error report is installed where the exported commands start
    assert parser.get("initialize")[0] == {"_target_": "scripts.errors.install_excepthook"}
