"""What a person sees: ct-ray's own progress on the console, Ray's output in a log file.

By default a command prints its phases, a progress bar per training run (epoch and step, loss, replacement
probability, last validation AUC, ETA), one per evaluation and per shard build, then its results. Everything Ray
says (the workers' output, Ray Train's logs, warnings) goes to a log file under the run, study or
search folder instead: its path is printed when Ray starts and again, with its last lines, when the command fails.
``--verbose`` shows Ray's output live as well.

Ray forwards the workers' output to the driver through ``ray._private.worker.global_worker_stdstream_dispatcher``;
ct-ray replaces Ray's console handler there with one that writes to the log file (when that hook is missing, a
newer Ray, the output stays in Ray's own session logs under /tmp/ray).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

_state: dict[str, Any] = {"verbose": False, "path": None, "handle": None, "attached": False}


def configure(verbose: bool = False) -> None:
    """Called once per command: whether Ray's output is shown live too."""
    _state["verbose"] = verbose


def verbose() -> bool:
    return bool(_state["verbose"])


def log_path() -> Path | None:
    return _state["path"]


def ray_attached() -> bool:
    """Whether Ray started in this command (its output goes to the log file)."""
    return bool(_state["attached"])


def log_to(path: str | Path) -> Path:
    """Sends Ray's output (and Python warnings) to ``path`` from now on; returns it. The first call of a command
    wins, so a study's runs all write to the study's log."""
    if _state["path"] is not None:
        return _state["path"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _state.update(path=path, handle=open(path, "a", buffering=1))
    route_loggers()
    logging.captureWarnings(True)
    return path


def _is_console(stream: Any) -> bool:
    """stdout / stderr, or MLflow's stream that writes to whatever ``sys.stderr`` is at the time."""
    return stream in (sys.stderr, sys.stdout) or type(stream).__name__ == "MlflowLoggingStream"


def route_loggers() -> None:
    """Ray's, MLflow's and Python's warnings loggers into the log file (and off the console unless verbose); again
    after Ray is imported and started, which set their loggers up anew."""
    if _state["handle"] is None:
        return
    handler = logging.StreamHandler(_state["handle"])
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "py.warnings", "mlflow", "alembic", "urllib3"):
        logger = logging.getLogger(name)
        if not verbose():
            for existing in list(logger.handlers):
                if isinstance(existing, logging.StreamHandler) and _is_console(getattr(existing, "stream", None)):
                    logger.removeHandler(existing)
            logger.propagate = False
        if not any(getattr(h, "stream", None) is _state["handle"] for h in logger.handlers):
            logger.addHandler(handler)


def write(text: str) -> None:
    handle = _state["handle"]
    if handle is not None:
        handle.write(text if text.endswith("\n") else text + "\n")


def attach_ray() -> None:
    """After ``ray.init``: the workers' output to the log file (and to the console only with ``--verbose``), and
    Ray's own loggers, which ``ray.init`` sets up anew, to the file too."""
    if _state["handle"] is None or _state["attached"]:
        return
    _state["attached"] = True
    route_loggers()
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def to_file(data: dict) -> None:
        prefix = f"({data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')}) "
        for line in data.get("lines", []):
            write(prefix + line)

    if not verbose():
        dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ct_ray_log_file", to_file)


@contextlib.contextmanager
def quiet():
    """Third-party chatter (MLflow's model logging and registry messages, their download bars) to the log file
    instead of the console, unless ``--verbose``; without a log file, unchanged."""
    handle = _state["handle"]
    if handle is None or verbose():
        yield
        return
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    route_loggers()
    try:
        with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def tail(lines: int = 20) -> list[str]:
    """The last lines of the log file (for a failure)."""
    path = _state["path"]
    if path is None or not Path(path).is_file():
        return []
    with open(path, errors="replace") as handle:
        return [line.rstrip("\n") for line in deque(handle, maxlen=lines)]


def say(message: str) -> None:
    """One line of ct-ray's own progress on the console (above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


class TrainingProgress:
    """A progress bar for one training run, fed by rank 0 through a small actor (``ProgressBoard``): the driver
    polls it while ``trainer.fit()`` runs."""

    def __init__(self, label: str, epochs: int, steps_per_epoch: int, enabled: bool = True) -> None:
        import ray

        self.board = ProgressBoard.remote()
        self.total = epochs * steps_per_epoch
        self.epochs = epochs
        self.label, self.enabled = label, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ct-ray-progress", daemon=True)
        self._ray = ray

    def __enter__(self) -> "TrainingProgress":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from tqdm import tqdm

        bar = None
        try:
            while True:
                stopping = self._stop.wait(1.0)
                try:
                    state = self._ray.get(self.board.get.remote(), timeout=5)
                except Exception:  # noqa: BLE001  (the board may be gone when the run ends)
                    state = {}
                if state:
                    if bar is None:
                        bar = tqdm(total=self.total, initial=state.get("step", 0), desc=self.label, unit="step",
                                   dynamic_ncols=True, file=sys.stdout, leave=True)
                    bar.n = min(self.total, state.get("step", 0))
                    postfix = f"epoch {state.get('epoch', 0)}/{self.epochs}"
                    if state.get("loss") is not None:
                        postfix += f", loss {state['loss']:.3f}"
                    if state.get("p") is not None and state.get("p") < 1:
                        postfix += f", p {state['p']:.2f}"
                    if state.get("val_auc") is not None:
                        postfix += f", val AUC {state['val_auc']:.1f}"
                    bar.set_postfix_str(postfix, refresh=False)
                    bar.refresh()
                if stopping:
                    break
        finally:
            if bar is not None:
                bar.close()


def _board_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        """The latest progress of a training run (rank 0 writes, the driver reads)."""

        def __init__(self) -> None:
            self.state: dict[str, Any] = {}
            self.updated = time.time()

        def update(self, state: dict[str, Any]) -> None:
            self.state.update(state)
            self.updated = time.time()

        def get(self) -> dict[str, Any]:
            return dict(self.state)

    return ProgressBoard


class _LazyBoard:
    """``ProgressBoard.remote()`` without importing Ray when this module is imported."""

    _cls = None

    def remote(self, *args, **kwargs):
        if _LazyBoard._cls is None:
            _LazyBoard._cls = _board_class()
        return _LazyBoard._cls.remote(*args, **kwargs)


ProgressBoard = _LazyBoard()
