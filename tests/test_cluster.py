"""The cluster side: cluster.yaml against Ray's schema, `ray job submit` to a real local head, two nodes."""
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from ct_ray.orchestration.cluster import LOCAL_RAY_ENV
from ct_ray.models import OneStreamTracker, save_tracker
from helpers import TINY_TRACKER, write_lasot_tree
from s3server import free_ports, stop_process_group

REPO = Path(__file__).resolve().parents[1]
OUTAGE_S = 15  # the MLflow outage of the cluster path: longer than the 10 s a checkpoint waits for its metrics
BIN = Path(sys.executable).parent


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate(config)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server" in head and "0.0.0.0" not in head
    assert any("pip install --quiet -e" in c for c in config["setup_commands"])
    assert {"head", "gpu_worker"} <= set(config["available_node_types"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_wokers"] = 2
    with pytest.raises(Exception, match="max_wokers"):
        validate(broken)


def test_cluster_yaml_names_only_what_exists():
    """Every project file, extra, variable and version that cluster.yaml (commands and comments) names is real."""
    import re
    import tomllib

    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    for path in sorted(set(re.findall(r"(?:experiments|tests|scripts|docs)/[\w./-]+\.(?:yaml|py|md)", text))):
        assert (REPO / path).is_file(), path
    for local in config["file_mounts"].values():
        local = local.removeprefix("./")
        assert (REPO / local).exists() or (REPO / f"{local}.example").is_file(), local
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    for group in re.findall(r"ct-ray\[([\w,]+)\]", text):
        assert set(group.split(",")) <= extras, group
    pinned = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    version = pinned.split("==")[1]
    assert config["docker"]["image"].startswith(f"rayproject/ray:{version}-py311")
    assert config["docker"]["head_image"] == f"rayproject/ray:{version}-py311"
    assert f"ray.__version__ == '{version}'" in " ".join(config["setup_commands"])
    example = (REPO / "cluster.env.example").read_text()
    commands = " ".join(config["head_start_ray_commands"])
    for variable in set(re.findall(r"\$(CT_RAY_\w+)", commands)):
        assert re.search(rf"^{variable}=", example, re.M), variable
    assert "cluster.env" in (REPO / ".gitignore").read_text().split()
    assert config["available_node_types"]["head"]["resources"]["CPU"] == 0  # no training tasks on the head
    assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())
    mlflow_line = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    assert "--host \"$(hostname -I" in mlflow_line and "$CT_RAY_STORAGE/mlartifacts" in mlflow_line


@pytest.fixture
def local_head(tmp_path):
    """A real `ray start --head` on 127.0.0.1 run as a child process; stopped by its pid (not `ray stop`). Its
    ports are free ones, so it does not collide with the test session's own Ray instance."""
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env, client = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="ctray-", dir="/tmp")  # short: Ray's unix socket paths must stay short
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Token auth, explicitly and with the test's own token: `ray start` enables it by itself only when
    # ~/.ray/auth_token already exists, which depends on what ran on this machine before.
    env = {**os.environ, **LOCAL_RAY_ENV, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--num-cpus=4", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    client_env = env
    deadline = time.time() + 90
    while time.time() < deadline:
        ready = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=client_env,
                               capture_output=True, text=True)
        if ready.returncode == 0:
            break
        time.sleep(2)
    else:
        head.terminate()
        pytest.fail("the local Ray head did not come up")
    yield address, f"127.0.0.1:{gcs}", client_env
    stop_process_group(head, timeout=5)  # `ray start --block` takes 20 s and more to stop
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_training_job(local_head, tmp_path):
    address, gcs, env = local_head
    lasot = write_lasot_tree(tmp_path / "lasot", sequences=3, frames=10)
    torch.manual_seed(0)
    save_tracker(tmp_path / "teacher.pt", OneStreamTracker(TINY_TRACKER))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(3):  # a driver may find the fresh head not yet ready for connections
        build = subprocess.run(
            [str(BIN / "ct-ray"), "data", "shards", "--source", f"lasot:{lasot}@train", "--pairs-per-epoch", "32",
             "--pairs-per-shard", "16", "--template-size", "32", "--search-size", "64", "--max-gap", "5",
             "--out", str(tmp_path / "shards"), "--address", gcs],
            env=env, capture_output=True, text=True, timeout=300)
        if "Failed to connect" not in build.stderr:
            break
        time.sleep(5)
    assert build.returncode == 0, build.stderr[-2000:]
    overrides = [f"teacher.path={tmp_path / 'teacher.pt'}", "student.num_stages=2",
                 f"data.shards={tmp_path / 'shards'}", f"data.val_dataset=lasot:{lasot}", "data.val_split=test",
                 "data.batch_size=8", "run.epochs=2", f"run.storage_path={tmp_path / 'runs'}", "run.name=job",
                 "data.synth=null", "mlflow.experiment=jobs"]
    # RAY_ADDRESS pins the job's own processes to this head (the machine may run another Ray instance).
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": store, "RAY_ADDRESS": gcs},
                   "excludes": [".git", "data", "runs", ".venv*"]}
    submission = "ct-ray-test-job"
    for _ in range(30):  # the job agent comes up a little after the dashboard answers
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", submission, "--no-wait",
             "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
             "ct-ray", "train", "--config", "experiments/smoke.yaml", *overrides],
            env=env, capture_output=True, text=True, timeout=120)
        if "No available agent" not in submit.stderr:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stderr[-2000:]
    status = ""
    deadline = time.time() + 420
    while time.time() < deadline:
        status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, submission], env=env,
                                capture_output=True, text=True).stdout.lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, submission], env=env,
                          capture_output=True, text=True).stdout
    assert "succeeded" in status, logs[-3000:]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["kind"] == "compresstracker"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss_total")] == [1, 2]
    assert "val_auc" in runs[0].data.metrics


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend store and its artifacts in the S3 server; stopped and
    started again on the same port and store (an outage), always by its own pid."""

    def __init__(self, folder: Path, s3_endpoint: str) -> None:
        self.folder, self.port = folder, free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://{s3_endpoint}"}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "mlflow-server.log", "ab")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", "s3://ctray/mlartifacts/cluster", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError((self.folder / "mlflow-server.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout=3)


def test_cluster_path_two_nodes_s3_killed_worker_and_mlflow_outage(s3_server, tmp_path):
    """tests/scripts/cluster_path.py on two local nodes with everything durable in s3:// and MLflow on a server:
    a worker killed mid-epoch resumes from the S3 checkpoint to the uninterrupted run's weights, a 15 s MLflow
    outage loses no metric, a Tune trial keeps its state under the storage root."""
    import pyarrow.fs as pafs
    from s3server import ACCESS_KEY, SECRET_KEY

    pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=s3_server.endpoint,
                      scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir("ctray/mlartifacts")
    server = MlflowServer(tmp_path, s3_server.endpoint)
    server.start()
    try:
        _run_cluster_path(server, s3_server, tmp_path)
    finally:
        server.stop()


def _run_cluster_path(server: "MlflowServer", s3_server, tmp_path: Path) -> None:
    import pyarrow.fs as pafs
    from s3server import ACCESS_KEY, SECRET_KEY

    env = {**os.environ, **LOCAL_RAY_ENV, "PYTHONPATH": str(REPO / "tests"), "CT_RAY_TEST_S3": s3_server.endpoint,
           "MLFLOW_TRACKING_URI": server.uri}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "cluster_path.log"
    with log.open("w") as err:
        script = subprocess.Popen([sys.executable, str(REPO / "tests" / "scripts" / "cluster_path.py"),
                                   str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                  start_new_session=True)
    outage = tmp_path / "outage"
    down_for = None
    try:
        deadline = time.time() + 600
        while script.poll() is None and time.time() < deadline and not outage.exists():
            time.sleep(0.2)
        if outage.exists():  # the script killed a worker and asks for the outage, longer than a flush's 10 s
            server.stop()
            stopped = time.time()
            time.sleep(OUTAGE_S)
            server.start()
            down_for = time.time() - stopped
        try:
            stdout, _ = script.communicate(timeout=max(60.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            stdout = ""
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(timeout=30)
    assert script.returncode == 0, log.read_text()[-4000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    print("cluster path, seconds per phase:", result["seconds"])  # shown with a failure
    assert result["cluster_nodes"] == 2 and len(result["nodes"]) == 2  # the workers spread over both nodes
    assert result["killed"].get("killed_pid") and down_for is not None and down_for >= OUTAGE_S
    assert result["difference"] == 0.0  # resumed from the S3 checkpoint: the uninterrupted run's weights
    assert result["final"].startswith("s3://ctray/cluster/runs/killed/final_tracker.pt")
    assert any(name.endswith("-teacher.pt") for name in result["fetched"])  # fetched once, by content hash
    assert result["trials"] == 1 and any(name.startswith("search") or "experiment_state" in name
                                         or name.endswith(".json") for name in result["tune_files"])
    client = MlflowClient(server.uri)
    for run_id in (result["reference_run"], result["killed_run"]):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        # Every epoch's metrics arrived, the outage's included, each once per epoch it was trained.
        steps = sorted({m.step for m in client.get_metric_history(run_id, "loss_total")})
        assert steps == list(range(1, 6)), steps
        assert [m.step for m in client.get_metric_history(run_id, "val_auc")] == [5]
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"checkpoints", "config.yaml", "tracker"} <= artifacts
    # The artifacts went through the server into the S3 store.
    s3 = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=s3_server.endpoint,
                           scheme="http", region="us-east-1")
    stored = s3.get_file_info(pafs.FileSelector("ctray/mlartifacts/cluster", recursive=True))
    assert any(info.path.endswith("final_tracker.pt") for info in stored)
