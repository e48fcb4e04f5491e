"""Ray Tune searches: space checks, a 4-trial search over two depths interrupted after its first trial and resumed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ct_ray.config import ConfigError, from_dict, to_dict
from ct_ray.training.search_space import SearchConfig, check_search, grid_points, load_search, parse_space
from helpers import write_training_workspace

REPO = Path(__file__).resolve().parents[1]


def test_space_grid_and_dependent_choices():
    dimensions = parse_space({
        "student.num_stages": [2, 4],
        "student.stages": {"per": "student.num_stages", "choices": {2: [[6, 6]], 4: [[3, 3, 3, 3], [2, 4, 4, 2]]}},
        "schedule.initial_p": [0.3, 0.5],
        "optim.lr": {"loguniform": [1e-4, 1e-3]},
    })
    points = grid_points(dimensions)
    assert len(points) == 6
    assert {"student.num_stages": 4, "student.stages": [2, 4, 4, 2], "schedule.initial_p": 0.3} in points
    with pytest.raises(ConfigError, match=r"search\.student\.stages: no choices for student\.num_stages = \[3\]"):
        parse_space({"student.num_stages": [2, 3],
                     "student.stages": {"per": "student.num_stages", "choices": {2: [[6, 6]]}}})
    with pytest.raises(ConfigError, match=r"search\.optim\.lr: loguniform bounds"):
        parse_space({"optim.lr": {"loguniform": [0, 1]}})


@pytest.fixture(scope="module")
def search_workspace(tmp_path_factory, ray_session):
    root = write_training_workspace(tmp_path_factory.mktemp("search"), pairs_per_epoch=16, epochs=1)
    lasot = root / "lasot"
    base = {"kind": "compresstracker", "teacher": {"path": str(root / "teacher.pt")},
            "data": {"shards": str(root / "shards"), "val_dataset": f"lasot:{lasot}", "val_split": "test",
                     "batch_size": 8, "shuffle_buffer": 0},
            "run": {"epochs": 2, "validate_every": 2, "storage_path": str(root / "runs")}}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def search_config(root: Path) -> SearchConfig:
    return from_dict(SearchConfig, {
        "base": str(root / "base.yaml"),
        "search": {"student.num_stages": [1, 2]},
        "tune": {"name": "s", "storage_path": str(root / "tune"), "max_concurrent_trials": 1},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "search"},
    })


def test_invalid_space_rejected_before_the_search(search_workspace):
    search = from_dict(SearchConfig, {"base": str(search_workspace / "base.yaml"),
                                      "search": {"student.stages": [[1, 2], [2, 2]]}})
    with pytest.raises(ConfigError, match=r"covers 3 blocks, but the teacher has 4"):
        check_search(search)
    bad_key = from_dict(SearchConfig, {"base": str(search_workspace / "base.yaml"),
                                       "search": {"student.num_stage": [1, 2]}})
    with pytest.raises(ConfigError, match=r"student\.num_stage"):
        check_search(bad_key)
    for path in sorted((REPO / "experiments").glob("tune_*.yaml")):
        from_dict(SearchConfig, yaml.safe_load(path.read_text()))
    assert check_search(load_search(str(REPO / "experiments" / "tune_smoke.yaml"))) == 4


def test_search_interrupted_after_first_trial_resumes(search_workspace, ray_session):
    """`ct-ray tune` is interrupted (SIGINT) once its first trial has finished; `--resume` finishes the rest."""
    from ct_ray.orchestration.tune_search import run_search

    search = search_config(search_workspace)
    path = search_workspace / "search.yaml"
    path.write_text(yaml.safe_dump(to_dict(search)))
    client = MlflowClient(f"sqlite:///{search_workspace / 'mlflow.db'}")
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    driver = subprocess.Popen([sys.executable, "-m", "ct_ray.cli", "tune", "--config", str(path), "--address",
                               ray_session.get_runtime_context().gcs_address], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = []
    deadline = time.time() + 300
    while time.time() < deadline and not first and driver.poll() is None:
        time.sleep(1)
        experiment = client.get_experiment_by_name("search")
        if experiment is not None:
            first = [r for r in client.search_runs([experiment.experiment_id])
                     if r.info.run_name.startswith("trial-") and r.info.status == "FINISHED"]
    if not first:
        driver.kill()
        _, err = driver.communicate(timeout=60)
        raise AssertionError(f"the first trial did not finish (driver exit {driver.returncode}):\n{err[-3000:]}")
    time.sleep(3)
    driver.send_signal(signal.SIGINT)
    try:
        driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    experiment = client.get_experiment_by_name("search").experiment_id
    finished_before = [r for r in client.search_runs([experiment])
                       if r.info.run_name.startswith("trial-") and r.info.status == "FINISHED"]
    assert len(finished_before) == 1

    summaries, files = run_search(search, resume=True, progress=False)
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(nested) == 2 and len({r.info.run_name for r in nested}) == 2
    assert sum(r.info.run_name == first[0].info.run_name for r in nested) == 1
    # The first trial trained its 2 epochs once: a repeat would log its epochs again.
    assert [m.step for m in client.get_metric_history(first[0].info.run_id, "loss_total")] == [1, 2]
    assert {r.data.tags["student_depth"] for r in nested} == {"1", "2"}
    assert len(summaries) == 2 and {s.depth for s in summaries} == {1, 2}
    assert all(s.auc is not None and s.fps and s.fps > 0 for s in summaries)
    assert any(s.pareto for s in summaries)
    table = Path(files["table"]).read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("trial,depth,division")
    best = yaml.safe_load(Path(files["best_depth2"]).read_text())
    assert best["student"]["num_stages"] == 2 and best["kind"] == "compresstracker"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "search")}
    assert {"search/pareto.csv", "search/pareto.png", "search/best_depth1.yaml",
            "search/best_depth2.yaml"} <= artifacts


def test_search_whose_every_trial_fails_exits_non_zero(search_workspace, ray_session):
    """Shards that cannot be read pass the checks before the search but fail each trial's training: `ct-ray tune`
    names the failure, exits 2 (not 0 over an empty table) and closes its MLflow run as FAILED."""
    import shutil

    root = search_workspace
    broken = root / "broken-shards"
    shutil.copytree(root / "shards", broken)
    for shard in broken.glob("*.parquet"):
        shard.write_bytes(b"not a parquet file")
    base = yaml.safe_load((root / "base.yaml").read_text())
    base["data"]["shards"] = str(broken)
    base["run"]["storage_path"] = str(root / "runs-broken")
    (root / "base-broken.yaml").write_text(yaml.safe_dump(base))
    search = to_dict(search_config(root))
    search.update(base=str(root / "base-broken.yaml"), search={"student.num_stages": [1]})
    search["tune"].update(name="broken", storage_path=str(root / "tune-broken"))
    search["mlflow"]["experiment"] = "search-broken"
    path = root / "search-broken.yaml"
    path.write_text(yaml.safe_dump(search))
    done = subprocess.run([sys.executable, "-m", "ct_ray.cli", "tune", "--config", str(path), "--address",
                           ray_session.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "ct-ray tune: error: search broken: every trial failed (1 of 1)" in done.stderr
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("search-broken").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"


def test_search_table_marks_failed_trials():
    from ct_ray.orchestration.tune_search import TrialSummary, format_table, pareto_front

    summaries = [TrialSummary("a", {"student.num_stages": 1}, 1, [4], 40.0, 900.0, "a.pt"),
                 TrialSummary("b", {"student.num_stages": 2}, 2, [2, 2], 45.0, None, None,
                              error="ShardError: shard-00001.parquet: not a Parquet file")]
    pareto_front(summaries)
    lines = format_table(summaries).splitlines()
    assert lines[1].endswith("*") and lines[2].endswith("FAILED")
    assert lines[3] == "1 of 2 trials failed:"
    assert lines[4] == '  b {"student.num_stages": 2}: ShardError: shard-00001.parquet: not a Parquet file'
