"""The tracker as an MLflow model: logged and registered with its tags, loaded by ``mlflow.pyfunc`` it tracks
exactly as the online tracker does, and ``mlflow models serve`` answers a real HTTP request on 127.0.0.1."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ct_ray.models import OneStreamTracker, TrackerConfig, save_tracker
from ct_ray.orchestration import mlflow_runs
from ct_ray.orchestration.mlflow_model import encode_frame, log_tracker_model, registered_name
from ct_ray.tracking import OnlineTracker, run_sequence
from ct_ray.tracking.speed import _moving_target_frames
from tests.s3server import free_ports, stop_process_group

CONFIG = TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=32, search_size=64)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A store with one run whose tracker is logged and registered as version 1 of ``demo-tracker``."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    model = OneStreamTracker(CONFIG).eval()
    checkpoint = root / "final_tracker.pt"
    save_tracker(checkpoint, model, {"kind": "compresstracker"})
    run_id = mlflow_runs.start_run(uri, "demo", "ct4", {}, {"kind": "compresstracker"})
    version = log_tracker_model(uri, run_id, checkpoint, registered_name("demo"),
                                {"kind": "compresstracker", "depth": 2, "flops": 123})
    mlflow_runs.end_run(uri, run_id)
    frames, boxes = _moving_target_frames(8, height=96, width=128)
    expected = run_sequence(OnlineTracker(model), frames, boxes[0])[0]
    request = pd.DataFrame({"frame": [encode_frame(f) for f in frames],
                            **{c: [v] + [None] * (len(frames) - 1) for c, v in zip("xywh", boxes[0])}})
    return {"uri": uri, "run_id": run_id, "version": version, "expected": expected, "request": request,
            "root": root}


def test_the_registered_version_carries_its_tags_and_tracks_through_pyfunc(logged, monkeypatch):
    import mlflow

    assert logged["version"] == "1"
    client = mlflow_runs.client(logged["uri"])
    version = client.get_model_version("demo-tracker", "1")
    assert version.run_id == logged["run_id"]
    assert {k: version.tags[k] for k in ("kind", "depth", "flops", "run_id")} == {
        "kind": "compresstracker", "depth": "2", "flops": "123", "run_id": logged["run_id"]}
    mlflow.set_tracking_uri(logged["uri"])
    mlflow.set_registry_uri(logged["uri"])
    tracker = mlflow.pyfunc.load_model("models:/demo-tracker/1")
    assert [c.name for c in tracker.metadata.get_input_schema().inputs] == ["frame", "x", "y", "w", "h"]
    boxes = tracker.predict(logged["request"]).to_numpy()
    np.testing.assert_allclose(boxes, logged["expected"], atol=1e-6)
    with pytest.raises(Exception, match="first row needs the target's box"):
        tracker.predict(logged["request"].assign(x=None))


def test_mlflow_models_serve_answers_on_loopback(logged):
    port = free_ports(1)[0]
    # MLflow starts the scoring server as `uvicorn` by name: the environment's bin folder must be on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PATH": path}
    log = open(logged["root"] / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/demo-tracker/1", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        body = json.dumps({"dataframe_split": logged["request"].to_dict(orient="split")}).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and process.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                time.sleep(1)
        assert answer is not None, (logged["root"] / "serve.log").read_text()[-3000:]
        boxes = pd.DataFrame(answer["predictions"])[list("xywh")].to_numpy()
        np.testing.assert_allclose(boxes, logged["expected"], atol=1e-6)
    finally:
        stop_process_group(process)
