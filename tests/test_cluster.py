"""The cluster side: cluster.yaml against Ray's schema, `ray job submit` to a real local head, two nodes."""
import copy
import json
import os
import secrets
import shutil
import signal
import socket
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

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate(config)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server" in head and "0.0.0.0" not in head
    assert any("pip install -e" in c for c in config["setup_commands"])
    assert {"head", "gpu_worker"} <= set(config["available_node_types"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_wokers"] = 2
    with pytest.raises(Exception, match="max_wokers"):
        validate(broken)


def free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are chosen."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
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


def test_two_nodes_spread_workers(tmp_path):
    env = {**os.environ, **LOCAL_RAY_ENV, "PYTHONPATH": str(REPO / "tests")}  # the script imports tests/helpers.py
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "two_node_train.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cluster_nodes"] == 2 and result["workers"] == 2
    assert len(result["nodes"]) == 2 and result["epoch"] == 2
