"""MLflow bookkeeping shared by training, evaluation, tuning and studies: store resolution, reachability, runs, tags.

One MLflow run per piece of work (a training run, a study, a search): ``TrackedRun`` creates it once and records its
id beside the work; running the work again reopens that run instead of starting a second one. Rank 0 of a training
run logs its per-epoch metrics into the run by id, and the id also travels in every checkpoint.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from ct_ray.errors import UserError
from ct_ray.fileio import Location

PARAM_VALUE_LIMIT = 6000


class MlflowUnavailableError(UserError, ConnectionError):
    """The tracking store cannot be reached; raised before any training starts."""


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute, so Ray
    workers whose working directory differs reach the same store)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            relative = uri[len("sqlite:///"):]
            return f"sqlite:///{Path(relative).resolve()}"
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fails fast, with a message that says so, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise MlflowUnavailableError(f"MLflow tracking server {uri} answered {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise MlflowUnavailableError(f"MLflow tracking server {uri} cannot be reached: {exc}. Start it (e.g. "
                                         "`mlflow server --host 127.0.0.1 --port 5000`) or set mlflow.tracking_uri "
                                         "/ MLFLOW_TRACKING_URI to a reachable store") from None
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise MlflowUnavailableError(f"MLflow store {uri}: folder {folder} does not exist or is not writable")


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


EXPERIMENT_TAGS = {
    # The UI opens a model-development experiment on its runs (not on the GenAI overview of traces and prompts)...
    "mlflow.experimentKind": "custom_model_development",
    # ... and ranks them by the test AUC that `ct-ray eval` and the studies log.
    "mlflow.experiment.primaryMetric.name": "test_auc",
    "mlflow.experiment.primaryMetric.greaterIsBetter": "True",
}


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (tagged as a model-development experiment; for a local store, artifacts
    in ``mlartifacts/`` beside its SQLite file, else in ``./mlartifacts``) when missing."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
        elif not uri.startswith(("http://", "https://", "databricks")):
            location = (Path.cwd() / "mlartifacts" / name).resolve().as_uri()
        try:
            mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except mlflow.exceptions.MlflowException:
            if mlflow_client.get_experiment_by_name(name) is None:
                raise
        experiment = mlflow_client.get_experiment_by_name(name)
    missing = {k: v for k, v in EXPERIMENT_TAGS.items() if experiment.tags.get(k) is None}
    for key, value in missing.items():
        mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _chunks(items: list, size: int = 100) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def start_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
              parent_run_id: str | None = None) -> str:
    mlflow_client = client(uri)
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = with_retries(lambda: mlflow_client.create_run(experiment_id(uri, experiment), run_name=run_name,
                                                        tags=all_tags), f"creating run {run_name}")
    param_list = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in params.items()]
    for chunk in _chunks(param_list):
        with_retries(lambda: mlflow_client.log_batch(run.info.run_id, params=chunk), "logging params")
    return run.info.run_id


# Every call below is retried through a short outage of the tracking server (``with_retries``).
def reopen_run(uri: str, run_id: str) -> None:
    """Marks a run RUNNING again (a resumed training run continues its MLflow run)."""
    with_retries(lambda: client(uri).update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING)),
                 f"reopening run {run_id}")


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    import time

    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for chunk in _chunks(values, 500):
        with_retries(lambda: client(uri).log_batch(run_id, metrics=chunk), f"logging metrics of run {run_id}")


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    batch = [RunTag(k, str(v)) for k, v in tags.items()]
    with_retries(lambda: client(uri).log_batch(run_id, tags=batch), f"tagging run {run_id}")


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    with_retries(lambda: client(uri).log_artifact(run_id, str(path), artifact_path), f"logging {Path(path).name}")


def end_run(uri: str, run_id: str, failed: bool = False) -> None:
    with_retries(lambda: client(uri).set_terminated(run_id, "FAILED" if failed else "FINISHED"),
                 f"ending run {run_id}")


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the ct-ray checkout in use (or ``CT_RAY_GIT_COMMIT``, e.g. for jobs whose upload has no .git)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() if out.returncode == 0 else ""
    return commit or os.environ.get("CT_RAY_GIT_COMMIT", "unknown")


KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
"""Environment variables that choose the CPU kernels PyTorch runs (and so the floating-point results)."""


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (Linux), else what ``platform`` knows."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def kernels_tags() -> dict[str, str]:
    """The digest of this process's floating-point kernels on its torch threads (``ct_ray.models.kernels``): two
    runs with equal digests compute the same bits from the same seed and data."""
    import torch

    from ct_ray.models.kernels import kernels_digest

    return {"kernels_sha256": kernels_digest(), "kernels_threads": str(torch.get_num_threads())}


def environment_tags() -> dict[str, str]:
    """Git commit, package versions and hardware (the CPU and the vector instructions PyTorch's kernels use, which
    decide the floating-point results), so that a result can be reproduced and a difference traced."""
    import torch

    tags = {"git_commit": git_commit(), "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": str(os.cpu_count()), "cpu_model": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    tags.update({f"env.{name}": os.environ[name] for name in KERNEL_VARIABLES if os.environ.get(name)})
    for package in ("torch", "timm", "ray", "mlflow", "numpy", "opencv-python-headless", "ct-ray"):
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


def run_exists(uri: str, run_id: str | None) -> bool:
    """Whether the store holds the (not deleted) run ``run_id``."""
    if not run_id:
        return False
    try:
        run = client(uri).get_run(run_id)
    except Exception:  # noqa: BLE001  (MLflow raises its own exception types for an unknown id)
        return False
    return run.info.lifecycle_stage == "active"


def read_record(location: str | os.PathLike | Location) -> dict:
    """A run record (JSON) at a local path or URI; ``{}`` when it is missing or unreadable."""
    record = Location.of(location)
    if not record.is_file():
        return {}
    try:
        data = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class TrackedRun:
    """The one MLflow run of a piece of work, tied to a record file beside that work.

    ``TrackedRun.open(...)`` reopens the run named in the record (status RUNNING again) when this store still
    holds it, else creates one with the given params and tags; either way the record
    (``{"mlflow_run_id", "mlflow_uri", ...}``) is written atomically. Used as a context manager the run ends
    FINISHED, or FAILED when the block raises (Ctrl-C included).
    """

    def __init__(self, uri: str, run_id: str, record: Location, created: bool) -> None:
        self.uri, self.run_id, self.record, self.created = uri, run_id, record, created

    @classmethod
    def open(cls, uri: str, record: str | os.PathLike | Location, experiment: str, name: str,
             params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
             parent_run_id: str | None = None, extra: Mapping[str, Any] | None = None) -> "TrackedRun":
        location = Location.of(record)
        previous = read_record(location)
        run_id = previous.get("mlflow_run_id") if previous.get("mlflow_uri") in (None, uri) else None
        created = not run_exists(uri, run_id)
        if created:
            run_id = start_run(uri, experiment, name, params or {}, tags or {}, parent_run_id=parent_run_id)
        else:
            reopen_run(uri, run_id)
        location.write_text(json.dumps({**previous, **(extra or {}), "mlflow_run_id": run_id, "mlflow_uri": uri},
                                       indent=2) + "\n")
        return cls(uri, run_id, location, created)

    def describe(self, markdown: str) -> None:
        """The run's description in the UI (``mlflow.note.content``, rendered as Markdown)."""
        set_tags(self.uri, self.run_id, {"mlflow.note.content": markdown})

    def finish(self) -> None:
        end_run(self.uri, self.run_id)

    def fail(self) -> None:
        end_run(self.uri, self.run_id, failed=True)

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.fail()


def _transient(exc: BaseException) -> bool:
    """A connection or server error (worth retrying), not a refused request (a bad value, a missing run)."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "error_code", "") or ""
    return code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "") or "Max retries" in str(exc) \
        or "Connection" in str(exc)


def with_retries(call, what: str, attempts: int = 8, wait: float = 2.0, max_wait: float = 30.0):
    """``call()``, retried with a growing wait while the tracking server does not answer (a short outage must not
    fail the work); the last failure is raised as ``MlflowUnavailableError`` naming ``what``."""
    import time

    for attempt in range(attempts):
        try:
            return call()
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            if not _transient(exc):
                raise
            if attempt == attempts - 1:
                raise MlflowUnavailableError(f"MLflow: {what} failed after {attempts} tries: {exc}") from None
            time.sleep(min(max_wait, wait * 2 ** attempt))


class MetricBuffer:
    """A run's metrics, sent by a background thread: the training loop never waits on MLflow, and during an outage
    the metrics are kept and sent once the server answers again; ``close`` waits (up to ``timeout``) until every
    metric arrived. No metric is dropped and an outage never fails a worker."""

    def __init__(self, uri: str, run_id: str, retry_wait: float = 2.0) -> None:
        import queue
        import threading

        self.uri, self.run_id, self.retry_wait = uri, run_id, retry_wait
        self._queue: "queue.Queue" = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.failures = 0
        self._thread = threading.Thread(target=self._send_forever, name="ct-ray-mlflow", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        with self._lock:
            self._pending += 1
        self._queue.put(batch)

    def _send_forever(self) -> None:
        import time

        while True:
            batch = self._queue.get()
            if batch is None:
                return
            while True:
                try:
                    for chunk in _chunks(batch, 500):
                        client(self.uri).log_batch(self.run_id, metrics=chunk)
                    break
                except Exception:  # noqa: BLE001  (any transport error: keep the batch and try again)
                    self.failures += 1
                    time.sleep(self.retry_wait)
            with self._lock:
                self._pending -= 1

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def flush(self, timeout: float) -> int:
        """Waits until every metric logged so far is sent (or ``timeout`` passes); returns the batches still unsent.
        Called before a checkpoint, so that a worker killed after it has lost no metric of the epochs it covers."""
        import time

        deadline = time.time() + timeout
        while self.pending and time.time() < deadline:
            time.sleep(0.05)
        return self.pending

    def close(self, timeout: float = 600.0) -> int:
        """Waits until every metric is sent (or ``timeout`` passes); returns how many batches are still unsent."""
        left = self.flush(timeout)
        if not left:
            self._queue.put(None)
        return left
