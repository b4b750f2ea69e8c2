"""``--tracking mlflow``: training logs every loss term, the metrics and the config to a local sqlite store;
evaluation logs its metrics and config to the store ``tracking_uri`` names; every training and evaluation config
routes MONAI's MLflow handlers to the engine that runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser, run
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS
from monai.bundle.workflows import ConfigWorkflow
from monai.handlers import MLFlowHandler

from common.tracking import ReportEngine, numeric_items
from tests.conftest import tiny_distillation_task

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
IAD = BUNDLES / "iad_student" / "configs"
# (configs merged in order, the engine id that runs, the handler list id MONAI's tracking appends to)
RUNS = {
    "teacher_lora train": (["teacher_lora/configs/train.json"], "train#trainer", "train#handlers"),
    "teacher_lora evaluate": (["teacher_lora/configs/train.json", "teacher_lora/configs/evaluate.json"], "evaluator",
                              "handlers"),
    "iad_student train": (["iad_student/configs/train.json"], "train#trainer", "train#handlers"),
    "iad_student kd": (["iad_student/configs/train.json", "iad_student/configs/kd.json"], "train#trainer",
                       "train#handlers"),
    "iad_student evaluate": (["iad_student/configs/train.json", "iad_student/configs/evaluate.json"], "evaluator",
                             "handlers"),
    "recokd_student train": (["recokd_student/configs/train.json"], "train#trainer", "train#handlers"),
    "recokd_student teacher": (["recokd_student/configs/train.json", "recokd_student/configs/teacher.json"],
                               "train#trainer", "train#handlers"),
    "recokd_student evaluate": (["recokd_student/configs/train.json", "recokd_student/configs/evaluate.json"],
                                "evaluator", "handlers"),
    "transfer_diffusion train": (["transfer_diffusion/configs/train.json"], "train#trainer", "train#handlers"),
    "transfer_diffusion evaluate": (["transfer_diffusion/configs/evaluate.json"], "evaluator", "handlers"),
    "tskd_student train": (["tskd_student/configs/train.json"], "train#trainer", "train#handlers"),
    "tskd_student pretrain": (["tskd_student/configs/pretrain.json"], "train#trainer", "train#handlers"),
    "tskd_student evaluate": (["tskd_student/configs/train.json", "tskd_student/configs/evaluate.json"], "evaluator",
                              "handlers"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(RUNS))
def test_tracking_attaches_mlflow_to_the_engine_that_runs(name):
    """MONAI's patch (what ``--tracking mlflow`` does) lands an MLflow handler that logs the config and closes its
    run in the handler list of the engine that ``run`` starts."""
    files, engine_id, handlers_id = RUNS[name]
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / f) for f in files])
    parser["bundle_root"] = "/tmp/unused"
    ConfigWorkflow.patch_bundle_tracking(parser, copy.deepcopy(DEFAULT_MLFLOW_SETTINGS))
    assert any(f"@{engine_id}.run()" in str(step).replace("::", "#") for step in parser["run"]), parser["run"]
    engine = parser[engine_id]
    engine = parser[engine[1:]] if isinstance(engine, str) and engine.startswith("@") else engine
    attached = str(engine.get("train_handlers", engine.get("val_handlers", engine.get("handlers")))).replace("::", "#")
    assert f"@{handlers_id}" in attached, attached
    mlflow = [h for h in parser[handlers_id] if isinstance(h, dict) and h.get("_target_") == "MLFlowHandler"]
    assert mlflow and mlflow[-1].get("artifacts") == "@save_execute_config" and mlflow[-1].get("close_on_complete")


def _runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])], client


@pytest.fixture(scope="module")
def iad_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return root, tiny_distillation_task(root, teacher_cache_dir=str(root / "cache"))


def test_iad_training_and_evaluation_log_terms_metrics_and_config(iad_task):
    root, o = iad_task
    bundle = root / "bundle"
    run(config_file=[str(IAD / "train.json")], bundle_root=str(bundle), epochs=2, kis_epochs=1, tracking="mlflow", **o)
    store = bundle / "outputs" / "mlruns.db"
    assert store.is_file(), "the default store is a sqlite file under output_dir"
    (train,), client = _runs(f"sqlite:///{store}")
    assert train.info.status == "FINISHED"
    terms = {"train_loss", "train_gt", "train_sld", "train_cpd", "train_kas_rfc", "train_kas_css", "val_mean_dice"}
    assert terms <= set(train.data.metrics), sorted(train.data.metrics)
    assert len(client.get_metric_history(train.info.run_id, "train_sld")) == 1  # KIS epoch only
    assert len(client.get_metric_history(train.info.run_id, "val_mean_dice")) == 2
    assert any(a.path.startswith("config_") for a in client.list_artifacts(train.info.run_id))

    elsewhere = f"sqlite:///{root / 'elsewhere.db'}"  # any tracking URI by override
    run(config_file=[str(IAD / "train.json"), str(IAD / "evaluate.json")], bundle_root=str(bundle), tracking="mlflow",
        tracking_uri=elsewhere, experiment_name="iad_eval", **o)  # fmt: skip
    (evaluation,), client = _runs(elsewhere)
    assert evaluation.info.status == "FINISHED"
    assert "val_mean_dice" in evaluation.data.metrics
    assert any(a.path.startswith("config_") for a in client.list_artifacts(evaluation.info.run_id))
    assert client.get_experiment(evaluation.info.experiment_id).name == "iad_eval"
    assert (bundle / "eval" / "metrics_summary.json").is_file()  # the evaluation itself still ran


class _Report:
    def run(self) -> dict:
        return {"name": "set", "count": 3, "generated": {"psnr": 21.5, "fid": float("nan")}, "ok": True}


def test_report_engine_exposes_a_reports_numbers_to_mlflow(tmp_path):
    assert numeric_items(_Report().run()) == {"count": 3.0, "generated_psnr": 21.5}
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    handler = MLFlowHandler(tracking_uri=uri, experiment_name="report", iteration_log=False, close_on_complete=True)
    engine = ReportEngine(_Report(), handlers=[handler])
    engine.run()
    assert engine.state.metrics == {"count": 3.0, "generated_psnr": 21.5}
    (logged,), _ = _runs(uri)
    assert logged.data.metrics == {"count": 3.0, "generated_psnr": 21.5} and logged.info.status == "FINISHED"
