"""The compressed tracker as an MLflow model: a ``pyfunc`` that tracks, logged by every finished training run and
registered as a version of a model named after the run's experiment (or study).

``predict`` takes one sequence as a DataFrame, one row per frame in order: ``frame`` (the image as a base64 string
of its JPEG or PNG file) and, on the first row, the target's box ``x``, ``y``, ``w``, ``h`` (pixels; the other
rows may leave them empty). It returns one row per frame with the tracked box ``x``, ``y``, ``w``, ``h`` (the first
row is the given box). The crops, the Hann window and the map back are the online tracker's own
(``ct_ray.tracking.OnlineTracker``), with the crop factors the checkpoint records, so a served model tracks exactly as
``ct-ray eval`` does. It runs in the environment that has ct-ray installed (``mlflow models serve --env-manager
local``).
"""
from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from ct_ray.orchestration import mlflow_runs

MODEL_PATH = "tracker"
BOX_COLUMNS = ("x", "y", "w", "h")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "frame"), *(ColSpec("double", c, required=False) for c in BOX_COLUMNS)]),
    outputs=Schema([ColSpec("double", c) for c in BOX_COLUMNS]),
)


def encode_frame(image_rgb: np.ndarray) -> str:
    """An RGB frame as the base64 PNG string ``predict`` takes."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("cannot encode the frame")
    return base64.b64encode(data.tobytes()).decode()


def _decode_frame(text: str) -> np.ndarray:
    import cv2

    data = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError("a frame is not a base64 JPEG or PNG image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TrackerModel(mlflow.pyfunc.PythonModel):
    """One-pass tracking of a sequence (see the module docstring)."""

    def load_context(self, context) -> None:
        from ct_ray.models import load_tracker

        self.model, self.meta = load_tracker(context.artifacts["checkpoint"])
        self.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from ct_ray.tracking import OnlineTracker, run_sequence

        if "frame" not in model_input or not len(model_input):
            raise ValueError("the input needs one row per frame with a 'frame' column")
        first = model_input.iloc[0]
        box = [float(first[c]) if c in model_input and pd.notna(first[c]) else np.nan for c in BOX_COLUMNS]
        if not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise ValueError("the first row needs the target's box x, y, w, h (positive width and height)")
        frames = (_decode_frame(text) for text in model_input["frame"])
        boxes, _ = run_sequence(OnlineTracker(self.model), frames, box)
        return pd.DataFrame(boxes, columns=list(BOX_COLUMNS))


def log_tracker_model(uri: str, run_id: str, checkpoint: str | Path, registered_name: str | None,
                      tags: Mapping[str, Any] | None = None) -> str | None:
    """Logs ``checkpoint`` as the run's ``tracker`` model and, with ``registered_name``, registers it as a new
    version of that model, tagged with ``tags``; returns the version (None when not registered). The model is
    saved "from code" (``tracker_model_code.py`` names :class:`TrackerModel`; nothing is pickled), and MLflow's
    messages go to the command's log file."""
    from ct_ray.orchestration import console

    code = Path(__file__).with_name("tracker_model_code.py")
    with console.quiet(), tempfile.TemporaryDirectory(prefix="ct-ray-model-") as folder:
        target = Path(folder) / MODEL_PATH
        mlflow.pyfunc.save_model(str(target), python_model=str(code), artifacts={"checkpoint": str(checkpoint)},
                                 signature=SIGNATURE, pip_requirements=[])
        mlflow_runs.client(uri).log_artifacts(run_id, str(target), MODEL_PATH)
        if not registered_name:
            return None
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        version = mlflow.register_model(f"runs:/{run_id}/{MODEL_PATH}", registered_name)
    tag_model_versions(uri, run_id, {"run_id": run_id, **(tags or {})})
    return str(version.version)


def tag_model_versions(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    """Sets ``tags`` on every registered version that comes from ``run_id`` (e.g. test scores after an eval)."""
    client = mlflow_runs.client(uri)
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return
    for version in versions:
        for key, value in tags.items():
            if value is not None:
                client.set_model_version_tag(version.name, version.version, key, str(value))


def registered_name(experiment: str) -> str:
    """The registered model of an experiment's trackers."""
    return f"{experiment}-tracker"
