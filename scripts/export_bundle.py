"""Export a bundle of this repository as a self-contained MONAI Model Zoo bundle folder, then run MONAI's checks on it.

    python scripts/export_bundle.py bundles/iad_student --out dist/iad_student [--ckpt runs/x/models/model.pt]
        [--weights-url https://host/releases/iad_student] [--onnx] [--set image_size=64 ...] [--force]

What the folder holds (the Model Zoo layout):

- ``configs/``: every config of the bundle, with ``_target_``s and ``$import``/``$from`` expressions that named
  ``common.*`` rewritten to the bundle's own ``scripts`` package (each ``_target_`` to the module that defines it);
  ``metadata.json`` with ``required_packages_version`` completed from what the copied code imports;
- ``scripts/``: the modules of ``common/`` the configs need, found by following their imports, with ``common.``
  imports rewritten to ``scripts.`` (packages get an empty ``__init__`` unless code imports a name from one);
- ``models/``: the checkpoint of ``inference.json``'s ``ckpt_path`` when there is one (the bundle's own or
  ``--ckpt``), and what the checks export from it (``model.ts``, ``model.onnx``);
- ``large_files.yml``: every weight file with its sha256 and its download URL (``--weights-url`` + file name:
  where you will upload it; the Model Zoo keeps weights out of git), ``LICENSE``, ``docs/`` (and
  ``docs/data_license.txt`` from the metadata's ``data_license``).

The checks run in a fresh Python process inside the exported folder, where ``common`` cannot be imported, so they
also prove that the folder is self-contained: every copied module imports; ``verify_metadata`` against the schema
copy in ``schemas/`` (the file named at the end of the metadata's ``schema`` URL, which cannot be downloaded here);
``verify_net_in_out`` on ``inference.json`` (image → pred bundles); and, when a checkpoint is there, ``ckpt_export``
to TorchScript (scripted, or traced when scripting fails), ``onnx_export`` with ``--onnx`` (needs ``onnx`` and
``onnxscript``), and a reload of each exported model whose output must match the PyTorch network's.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMMON = "common"
PACKAGE = "scripts"  # the bundle's own code package (MONAI Label and the Model Zoo expect this name)
SCHEMAS = REPO / "schemas"
CONFIG_SUFFIXES = {".json", ".yaml", ".yml"}
WEIGHT_SUFFIXES = {".pt", ".pth", ".ts", ".onnx"}
_TOKEN = re.compile(r"(?<![\w.])common(?:\.[A-Za-z_]\w*)+")
_FROM_IMPORT = re.compile(r"^\$\s*from\s+(common(?:\.\w+)*)\s+import\s+(\w+)(?:\s+as\s+(\w+))?\s*$")
_SOURCE_IMPORT = re.compile(r"(?<![\w.])common(?=\.[A-Za-z_])|(?<=from )common(?= import )|(?<=^import )common$", re.M)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.errors import InputError  # noqa: E402


class ExportError(InputError):
    """The bundle cannot be exported as asked, or an exported bundle failed one of MONAI's checks."""


# ------------------------------------------------------------------------------------------------------------------
# finding and rewriting the code the configs use
# ------------------------------------------------------------------------------------------------------------------
def _module_file(module: str) -> Path | None:
    """The source file of ``common...`` module ``module`` (a package's ``__init__.py``), or None."""
    base = REPO.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_package(module: str) -> bool:
    return (REPO.joinpath(*module.split(".")) / "__init__.py").is_file()


def _split_module(dotted: str) -> tuple[str, list[str]]:
    """``common.a.b.C.d`` → (longest module prefix ``common.a.b``, attributes ``["C", "d"]``)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if _module_file(".".join(parts[:i])) is not None:
            return ".".join(parts[:i]), parts[i:]
    raise ExportError(f"'{dotted}' names no module of {COMMON}/.")


def _check_one_hop(module: str, attrs: list[str]) -> None:
    """A target must name the module that defines it (one hop from ``_target_`` to code), not a re-export."""
    if not attrs:
        return
    try:
        obj = getattr(importlib.import_module(module), attrs[0])
    except (ImportError, AttributeError) as err:
        raise ExportError(f"'{module}.{attrs[0]}' cannot be imported: {err}") from None
    defined = getattr(obj, "__module__", None) if not isinstance(obj, type(sys)) else obj.__name__
    if isinstance(defined, str) and defined.startswith(COMMON + ".") and defined != module:
        raise ExportError(f"'{module}.{attrs[0]}' is a re-export: target '{defined}.{attrs[0]}', its defining module.")


def _renamed(module: str) -> str:
    return PACKAGE + module[len(COMMON) :]


class CodeCollector:
    """The ``common`` modules a bundle needs, and the config text rewritten to the ``scripts`` package."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.namespace_packages: set[str] = set()  # packages whose __init__ is needed as written

    # config side ----------------------------------------------------------------------------------------------
    def resolve(self, dotted: str) -> str:
        """``common.x.Name...`` → ``scripts.x.Name...`` (``x`` must define ``Name``); records the module."""
        module, attrs = _split_module(dotted)
        if attrs and _module_file(f"{module}.{attrs[0]}") is not None:  # a submodule not imported by the package
            module, attrs = f"{module}.{attrs[0]}", attrs[1:]
        _check_one_hop(module, attrs)
        self.add(module)
        return ".".join([_renamed(module), *attrs])

    def rewrite_value(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {k: self.rewrite_value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rewrite_value(v) for v in value]
        if not isinstance(value, str):
            return value
        if key == "_target_" and value.startswith(COMMON + "."):
            return self.resolve(value)
        if value.startswith("$"):
            return self.rewrite_expression(value)
        return value

    def rewrite_expression(self, expr: str) -> str:
        m = _FROM_IMPORT.match(expr)
        if m:  # "$from common.x import y [as z]": MONAI imports it with getattr, so name submodules explicitly
            package, name, alias = m.group(1), m.group(2), m.group(3) or m.group(2)
            if _module_file(f"{package}.{name}") is not None:
                self.add(f"{package}.{name}")
                return f"$import {_renamed(package)}.{name} as {alias}"
            module = _split_module(package)[0]
            _check_one_hop(module, [name])
            self.add(module)
            return f"$from {_renamed(module)} import {name}" + (f" as {alias}" if alias != name else "")
        return _TOKEN.sub(lambda t: self.resolve(t.group(0)), expr)

    # code side ------------------------------------------------------------------------------------------------
    def add(self, module: str) -> None:
        """Record ``module`` and, transitively, the ``common`` modules its code imports."""
        if module in self.modules:
            return
        self.modules.add(module)
        path = _module_file(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == COMMON or alias.name.startswith(COMMON + "."):
                        self.add(_split_module(alias.name)[0])
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parent = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                    parent = ".".join(parent.split(".")[: len(parent.split(".")) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                if not (base == COMMON or base.startswith(COMMON + ".")):
                    continue
                for alias in node.names:
                    if _module_file(f"{base}.{alias.name}") is not None:
                        self.add(f"{base}.{alias.name}")
                    else:  # a name from the module (or from a package's __init__, then kept as written)
                        self.add(base)
                        if _is_package(base):
                            self.namespace_packages.add(base)

    def files(self) -> dict[str, str]:
        """Exported relative path → source text, for every needed module and every package above one."""
        out: dict[str, str] = {}
        packages = {".".join(m.split(".")[:i]) for m in self.modules for i in range(1, len(m.split(".")))}
        packages |= {m for m in self.modules if _is_package(m)}
        for package in sorted(packages):
            rel = Path(*_renamed(package).split(".")) / "__init__.py"
            if package in self.namespace_packages:
                out[str(rel)] = rewrite_source(_module_file(package).read_text())
            else:
                out[str(rel)] = f'"""{_renamed(package)}: code of this bundle, exported from {package}."""\n'
        for module in sorted(self.modules - packages):
            rel = Path(*_renamed(module).split(".")).with_suffix(".py")
            out[str(rel)] = rewrite_source(_module_file(module).read_text())
        return out


def rewrite_source(text: str) -> str:
    """``common`` imports (and dotted mentions) of a module's source → ``scripts``."""
    return _SOURCE_IMPORT.sub(PACKAGE, text)


def third_party_packages(sources: Iterable[str]) -> dict[str, str]:
    """Distribution → installed version of every third-party package the exported code imports (not the standard
    library, not torch/numpy/monai, which the metadata names in their own fields)."""
    names: set[str] = set()
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    mapping = importlib.metadata.packages_distributions()
    skip = {"torch", "numpy", "monai", PACKAGE, COMMON}
    found: dict[str, str] = {}
    for name in sorted(names - skip - set(sys.stdlib_module_names)):
        for dist in mapping.get(name, []):
            found[dist] = importlib.metadata.version(dist)
    return found


# ------------------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"'{path}' is not readable JSON: {err}") from None


def check_metadata_consistency(metadata: Mapping, inference: Mapping, where: Path) -> None:
    """What the schema cannot see: the version has a changelog entry, and the prediction's channels match its
    channel definitions and the inference config's ``num_classes``."""
    version = metadata.get("version")
    if version not in (metadata.get("changelog") or {}):
        raise ExportError(f"{where}: version {version!r} has no entry in 'changelog'.")
    pred = (metadata.get("network_data_format") or {}).get("outputs", {}).get("pred")
    if isinstance(pred, Mapping) and pred.get("format") == "segmentation":
        channels, defs = pred.get("num_channels"), pred.get("channel_def") or {}
        if len(defs) != channels:
            raise ExportError(f"{where}: pred has num_channels {channels} but {len(defs)} channel_def entries.")
        classes = inference.get("num_classes")
        if isinstance(classes, int) and classes != channels:
            raise ExportError(f"{where}: pred has {channels} channels, inference.json num_classes is {classes}.")


def _large_files(bundle_dir: Path) -> list[dict[str, str]]:
    path = bundle_dir / "large_files.yml"
    if not path.is_file():
        return []
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("large_files", [])
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and "path" in e for e in entries):
        raise ExportError(f"{path}: expected 'large_files:' with a list of entries that each have a 'path'.")
    return [dict(e) for e in entries]


def _inference_ckpt(config: Mapping) -> str | None:
    """``ckpt_path`` of inference.json relative to the bundle root (``models/model.pt``), when it is written as
    ``$@ckpt_dir + '/<name>'`` with ``ckpt_dir`` ``$@bundle_root + '/models'`` (every bundle here)."""
    ckpt_path, ckpt_dir = str(config.get("ckpt_path", "")), str(config.get("ckpt_dir", ""))
    m = re.fullmatch(r"\$@ckpt_dir\s*\+\s*'/([^']+)'", ckpt_path)
    d = re.fullmatch(r"\$@bundle_root\s*\+\s*'/([^']+)'", ckpt_dir)
    return f"{d.group(1)}/{m.group(1)}" if m and d else None


def _dataset_info(configs: Path, dataset_dir: str | os.PathLike[str] | None):
    """The ``DatasetInfo`` of the data the bundle was trained on: ``dataset_dir``'s ``dataset.json``, by default the
    folder inference.json names (relative to the repository); None when the configs do not read one."""
    from common.data.dataset_info import load_dataset_info

    inference = _read_json(configs / "inference.json")
    if "dataset_info" not in inference:
        return None
    if dataset_dir is None:
        dataset_dir = REPO / str(inference.get("dataset_dir", ""))
    if not (Path(dataset_dir) / "dataset.json").is_file():
        raise ExportError(
            f"no dataset.json in '{dataset_dir}': give --dataset-dir, the folder of the data the weights were trained "
            "on (its labels, channels, normalisation and licence go into the exported bundle)."
        )
    return load_dataset_info(dataset_dir)


def _literal_dataset_info(info) -> dict[str, Any]:
    """A config item that rebuilds ``info`` without its file: the exported bundle carries the training data's
    description (labels, channels, normalisation) in its configs."""
    fields = {
        k: v
        for k, v in info.to_json().items()
        if k in ("name", "dim", "channel_names", "labels", "normalisation", "modality", "description", "spacing")
    }
    extra = {k: info.extra[k] for k in ("regions", "licence") if k in info.extra}
    return {"_target_": "common.data.dataset_info.DatasetInfo", **fields, "extra": extra}


def describe_data(metadata: dict[str, Any], info) -> dict[str, Any]:
    """``metadata`` with its data description taken from the training data's ``DatasetInfo``: input channels and
    modality, output classes, label/prediction classes, image description, data source and licence."""
    out = json.loads(json.dumps(metadata))
    labels = {str(k): v for k, v in info.labels.items()}
    classes = ", ".join(f"{k} {v}" for k, v in labels.items())
    fmt = out.setdefault("network_data_format", {})
    image = fmt.setdefault("inputs", {}).get("image")
    if isinstance(image, dict):
        image["num_channels"] = info.in_channels
        image["channel_def"] = {str(i): name for i, name in enumerate(info.channel_names)}
        image["modality"] = info.modality or image.get("modality", "")
    pred = fmt.setdefault("outputs", {}).get("pred")
    if isinstance(pred, dict) and pred.get("format") == "segmentation":
        pred["num_channels"] = info.num_classes
        pred["channel_def"] = labels
    norm = info.normalisation
    out["image_classes"] = (
        f"{info.in_channels} channel(s) {', '.join(info.channel_names)} ({info.modality or 'image'}), "
        f"normalised by the bundle ({norm['method']} {norm['range']} -> [0, 1])"
    )
    out["label_classes"] = out["pred_classes"] = classes
    source = info.extra.get("source")
    out["data_source"] = f"{info.name}: {info.description}" + (f" (source: {source})" if source else "")
    if info.extra.get("licence"):
        out["data_license"] = str(info.extra["licence"])
    return out


def export_bundle(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    ckpt: str | os.PathLike[str] | None = None,
    weights_url: str | None = None,
    force: bool = False,
    dataset_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the self-contained bundle folder ``out_dir`` from ``bundle_dir`` (see the module docstring), describing
    the data of ``dataset_dir`` (its ``dataset.json``; default: the folder inference.json names)."""
    bundle, out = Path(bundle_dir).resolve(), Path(out_dir).resolve()
    configs = bundle / "configs"
    for need in (configs / "metadata.json", configs / "inference.json", bundle / "LICENSE"):
        if not need.is_file():
            raise ExportError(f"'{bundle}' is not an exportable bundle: '{need.relative_to(bundle)}' is missing.")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ExportError(f"'{out}' exists and is not empty: choose another --out or add --force to replace it.")
        shutil.rmtree(out)
    if ckpt is not None and not Path(ckpt).is_file():
        raise ExportError(f"--ckpt '{ckpt}' does not exist.")

    info = _dataset_info(configs, dataset_dir)
    collector = CodeCollector()
    written: dict[Path, str] = {}
    for path in sorted(configs.iterdir()):
        if path.suffix == ".json":
            config = _read_json(path)
            if info is not None and isinstance(config, dict) and "dataset_info" in config:
                config["dataset_info"] = _literal_dataset_info(info)
            if info is not None and path.name == "metadata.json":
                config = describe_data(config, info)
            written[Path("configs") / path.name] = json.dumps(collector.rewrite_value(config), indent=4)
        elif path.suffix in CONFIG_SUFFIXES:
            import yaml

            data = collector.rewrite_value(yaml.safe_load(path.read_text()))
            written[Path("configs") / path.name] = yaml.safe_dump(data, sort_keys=False)
        elif path.is_file():  # logging.conf and the like
            written[Path("configs") / path.name] = path.read_text()
    code = collector.files()
    for rel, text in code.items():
        written[Path(rel)] = text

    metadata = json.loads(written[Path("configs/metadata.json")])
    inference = json.loads(written[Path("configs/inference.json")])
    if info is not None:
        inference = {**inference, "num_classes": info.num_classes}
    check_metadata_consistency(metadata, inference, configs / "metadata.json")
    required = dict(metadata.get("required_packages_version") or {})
    for dist_name, version in third_party_packages(code.values()).items():
        required.setdefault(dist_name, version)
    metadata["required_packages_version"] = required
    written[Path("configs/metadata.json")] = json.dumps(metadata, indent=4)

    out.mkdir(parents=True, exist_ok=True)
    for rel, text in written.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text if text.endswith("\n") else text + "\n")
    shutil.copy2(bundle / "LICENSE", out / "LICENSE")
    if (bundle / "docs").is_dir():
        shutil.copytree(bundle / "docs", out / "docs")
    schema = _schema_for(metadata)  # the schema the checks verify against travels with the bundle
    (out / "docs").mkdir(exist_ok=True)
    shutil.copy2(schema, out / "docs" / schema.name)
    if metadata.get("data_license"):
        (out / "docs").mkdir(exist_ok=True)
        (out / "docs" / "data_license.txt").write_text(str(metadata["data_license"]).strip() + "\n")

    # weights: the large_files.yml entries that exist in the bundle, and --ckpt as inference.json's checkpoint
    entries = {e["path"]: e for e in _large_files(bundle)}
    for rel in entries:
        if (bundle / rel).is_file():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle / rel, out / rel)
    if ckpt is not None:
        rel = _inference_ckpt(inference)
        if rel is None:
            raise ExportError("--ckpt needs inference.json's ckpt_path as \"$@ckpt_dir + '/<file>'\".")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ckpt, out / rel)
        entries.setdefault(rel, {"path": rel})
    write_large_files(out, entries, weights_url)
    return out


def write_large_files(out: Path, entries: Mapping[str, Mapping] | None = None, weights_url: str | None = None) -> Path:
    """``large_files.yml`` for every weight file under ``out/models`` (and each of ``entries``): path, URL, sha256."""
    import yaml

    entries = dict(entries or {})
    models = out / "models"
    if models.is_dir():
        for f in sorted(models.iterdir()):
            if f.suffix in WEIGHT_SUFFIXES:
                entries.setdefault(f"models/{f.name}", {"path": f"models/{f.name}"})
    rows = []
    for rel, entry in sorted(entries.items()):
        row = {"path": rel, "url": str(entry.get("url") or ""), "hash_val": "", "hash_type": "sha256"}
        if weights_url:
            row["url"] = f"{weights_url.rstrip('/')}/{Path(rel).name}"
        if (out / rel).is_file():
            row["hash_val"] = _sha256(out / rel)
        rows.append(row)
    path = out / "large_files.yml"
    path.write_text(yaml.safe_dump({"large_files": rows}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------------------------
# MONAI's checks, run inside the exported folder
# ------------------------------------------------------------------------------------------------------------------
def _schema_for(metadata: Mapping) -> Path:
    name = str(metadata.get("schema", "")).rsplit("/", 1)[-1]
    path = SCHEMAS / name
    if not name or not path.is_file():
        known = sorted(p.name for p in SCHEMAS.glob("*.json"))
        raise ExportError(f"metadata 'schema' names '{name}', which schemas/ does not hold (it has {known}).")
    return path


def run_checks(
    out_dir: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    onnx: bool = False,
    n: int = 1,
    weights_url: str | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run MONAI's checks on the exported folder in a fresh process (cwd = the folder, ``common`` not importable)
    and list what they exported in ``large_files.yml``; returns the report, raises :class:`ExportError` with the
    failing check's message."""
    job = {"out": str(out_dir), "overrides": dict(overrides or {}), "onnx": onnx, "n": n}
    return check_bundles([job], weights_url=weights_url, timeout=timeout)[0]


def check_bundles(
    jobs: list[Mapping[str, Any]], weights_url: str | None = None, timeout: float = 600
) -> list[dict[str, Any]]:
    """:func:`run_checks` for several exported folders in one process (one start-up of torch and MONAI): each job
    is ``{"out", "overrides", "onnx", "n"}``; the folders are checked one after the other, as MONAI Label loads
    bundles (``scripts`` unloaded between them)."""
    full = []
    for job in jobs:
        out = Path(job["out"]).resolve()
        schema = _schema_for(_read_json(out / "configs" / "metadata.json"))
        full.append({"overrides": {}, "onnx": False, "n": 1, **job, "out": str(out), "schema": str(schema)})
    with tempfile.TemporaryDirectory() as tmp:
        report_path, job_path = Path(tmp) / "report.json", Path(tmp) / "jobs.json"
        job_path.write_text(json.dumps(full))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_checks", str(job_path), str(report_path)]
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        reports = json.loads(report_path.read_text()) if report_path.is_file() else []
    if len(reports) != len(full):
        raise ExportError(f"the check process failed before reporting:\n{proc.stderr[-4000:]}")
    for job, report in zip(full, reports):
        if report.get("error"):
            raise ExportError(f"checks of the exported bundle '{job['out']}' failed at {report['error']}")
        write_large_files(Path(job["out"]), {e["path"]: e for e in _large_files(Path(job["out"]))}, weights_url)
    return reports


def _child_checks(job_path: str, report_path: str) -> int:
    """The check process: for each job, works in the exported folder with only it (not the repository) on
    ``sys.path`` and the previous bundle's ``scripts`` unloaded."""
    jobs = json.loads(Path(job_path).read_text())
    base = [p for p in sys.path[1:] if p not in ("", ".") and Path(p).resolve() not in (REPO, REPO / PACKAGE)]
    reports = []
    for job in jobs:
        os.chdir(job["out"])
        sys.path[:] = [job["out"], *base]
        for name in [m for m in sys.modules if m.split(".")[0] in (PACKAGE, COMMON)]:
            del sys.modules[name]
        report: dict[str, Any] = {"bundle": job["out"], "checks": []}
        try:
            _checks(Path(job["out"]), job, report)
            report.pop("step", None)
        except Exception as err:  # the report carries the failing check's message
            report["error"] = f"{report.get('step', 'start')}: {type(err).__name__}: {err}"
        reports.append(report)
    Path(report_path).write_text(json.dumps(reports, indent=2))
    return 1 if any("error" in r for r in reports) else 0


def _checks(out: Path, job: dict, report: dict) -> None:
    import pkgutil

    import torch
    from monai.bundle import ConfigParser, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
    from monai.bundle.scripts import _get_fake_spatial_shape

    checks = report["checks"]
    overrides, n = job["overrides"], int(job["n"])
    report["step"] = "importing scripts/"
    for info in pkgutil.walk_packages([str(out / PACKAGE)], prefix=PACKAGE + "."):
        importlib.import_module(info.name)
    importlib.import_module(PACKAGE)
    checks.append("every module of scripts/ imports without the repository")

    meta, infer = str(out / "configs" / "metadata.json"), str(out / "configs" / "inference.json")
    report["step"] = "verify_metadata"
    with tempfile.TemporaryDirectory() as tmp:  # verify_metadata "downloads" to filepath: an existing file is used
        local = Path(tmp) / Path(job["schema"]).name
        shutil.copy2(job["schema"], local)
        verify_metadata(meta_file=meta, filepath=str(local))
    checks.append(f"verify_metadata against schemas/{Path(job['schema']).name}")

    metadata = json.loads(Path(meta).read_text())
    fmt = metadata["network_data_format"]
    if "image" not in fmt["inputs"] or "pred" not in fmt["outputs"]:
        report["skipped"] = "network checks: the network does not map an 'image' input to a 'pred' output"
        return
    common_kw = {"meta_file": meta, "config_file": infer, "bundle_root": str(out), **overrides}
    report["step"] = "verify_net_in_out"
    verify_net_in_out(net_id="network_def", device="cpu", n=n, any=n, **common_kw)
    checks.append("verify_net_in_out on inference.json")

    report["step"] = "loading the checkpoint"
    parser = ConfigParser()
    parser.read_config(infer)
    parser.read_meta(meta)
    parser.update({"bundle_root": str(out), **overrides})
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    if not ckpt.is_file():
        report["skipped"] = f"exports: no checkpoint at {ckpt.relative_to(out)}"
        return
    image = fmt["inputs"]["image"]
    shape = (1, int(image["num_channels"]), *_get_fake_spatial_shape(image["spatial_shape"], n=n, any=n))
    torch.manual_seed(0)
    x = torch.rand(shape)
    net = parser.get_parsed_content("network_def").eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"] if isinstance(state.get("model"), Mapping) else state)
    with torch.no_grad():
        expected = net(x)

    ts_path = out / "models" / "model.ts"
    report["step"] = "ckpt_export (TorchScript)"
    try:
        ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(ckpt), **common_kw)
        how = "scripted"
    except Exception as err:  # noqa: BLE001 - scripting is known to fail on some architectures: trace instead
        ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(ckpt), use_trace=True,
                    input_shape=list(shape), **common_kw)  # fmt: skip
        how = f"traced (scripting failed: {type(err).__name__})"
    reloaded = torch.jit.load(str(ts_path), map_location="cpu").eval()
    with torch.no_grad():
        diff = float((reloaded(x) - expected).abs().max())
    if diff > 1e-4:
        raise ExportError(f"the reloaded TorchScript model differs from the network by {diff:.3g}.")
    checks.append(f"ckpt_export to models/model.ts ({how}); reloaded output matches (max |diff| {diff:.2g})")
    report["torchscript"] = {"path": "models/model.ts", "how": how, "max_abs_diff": diff}

    if job["onnx"]:
        import onnxruntime

        onnx_path = out / "models" / "model.onnx"
        report["step"] = "onnx_export"
        onnx_export(net_id="network_def", filepath=str(onnx_path), ckpt_file=str(ckpt), input_shape=list(shape),
                    use_trace=True, converter_kwargs={"verify": False}, **common_kw)  # fmt: skip
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        diff = float((torch.as_tensor(got) - expected).abs().max())
        if diff > 1e-3:
            raise ExportError(f"the ONNX model (onnxruntime) differs from the network by {diff:.3g}.")
        checks.append(f"onnx_export to models/model.onnx; onnxruntime output matches (max |diff| {diff:.2g})")
        report["onnx"] = {"path": "models/model.onnx", "max_abs_diff": diff}


# ------------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------------
def _parse_set(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExportError(f"--set expects key=value, got '{item}'.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_checks"]:
        return _child_checks(argv[1], argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="the bundle folder, e.g. bundles/iad_student")
    parser.add_argument("--out", required=True, help="the folder to write (Model Zoo layout)")
    parser.add_argument("--ckpt", help="the trained weights for inference.json's ckpt_path (default: the bundle's)")
    parser.add_argument("--weights-url", help="where the weight files will be downloadable from (large_files.yml)")
    parser.add_argument("--onnx", action="store_true", help="also export models/model.onnx and check it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the checks only, e.g. --set image_size=64")  # fmt: skip
    parser.add_argument("--n", type=int, default=1, help="n of the metadata's '32*n' shapes for the checks")
    parser.add_argument("--skip-checks", action="store_true", help="write the folder only")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--dataset-dir", help="the training data's folder (its dataset.json describes the bundle's "
                        "input, classes and licence; default: the one inference.json names)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        out = export_bundle(args.bundle, args.out, ckpt=args.ckpt, weights_url=args.weights_url, force=args.force,
                            dataset_dir=args.dataset_dir)  # fmt: skip
        print(f"exported {args.bundle} to {out}")
        if not args.skip_checks:
            report = run_checks(out, _parse_set(args.set), args.onnx, args.n, args.weights_url)
            for line in report["checks"]:
                print(f"  ok: {line}")
            if report.get("skipped"):
                print(f"  skipped: {report['skipped']}")
        if not args.weights_url:
            print("  note: large_files.yml has no URLs yet: give --weights-url before publishing")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
