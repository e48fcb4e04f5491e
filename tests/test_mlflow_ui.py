"""The MLflow UI in a real browser: scripts/mlflow_screenshots.py over a small study store (skipped without
Chromium: apt-get install chromium)."""
import importlib.util
from pathlib import Path

import pytest

from ct_ray.orchestration import mlflow_runs

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mlflow_screenshots", REPO / "scripts" / "mlflow_screenshots.py")
shots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shots)


@pytest.mark.skipif(shots.chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_study_run_page_renders_in_headless_chromium(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = mlflow_runs.TrackedRun.open(uri, tmp_path / "study_run.json", "demo", "quickstart", {"preset": "small"},
                                         {"kind": "study"})
    parent.describe("## quickstart\n\n| tracker | AUC |\n| --- | --- |\n| teacher | 38.0 |\n")
    for name, auc in (("teacher", 38.0), ("ct4-s0", 37.9)):
        run = mlflow_runs.start_run(uri, "demo", name, {}, {"kind": "compresstracker"}, parent_run_id=parent.run_id)
        mlflow_runs.log_metrics(uri, run, {"test_auc": auc}, step=0)
        mlflow_runs.end_run(uri, run)
    parent.finish()
    experiment = mlflow_runs.client(uri).get_experiment_by_name("demo")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "test_auc"
    texts = {}
    (path,) = shots.screenshots(uri, tmp_path / "shots", only=["study_run.png"], texts=texts)
    import cv2

    image = cv2.imread(str(path))
    assert image is not None and image.shape[:2] == (1200, 1920)
    assert image.std() > 3  # a rendered page, not a blank one
    # what the screenshot shows: the study run, its description rendered as a table, the assistant panel closed
    text = texts["study_run.png"]
    assert "quickstart" in text and "tracker\tAUC" in text and "38.0" in text and "ct4-s0" in text
    assert "Ask questions about your experiments" not in text
