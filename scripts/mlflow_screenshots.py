"""Screenshots of a study in the MLflow UI, taken in headless Chromium: what a researcher sees.

Starts ``mlflow ui`` on 127.0.0.1 over the study's store, finds the study's run (tag ``kind=study``, the newest one
unless ``--study`` names it), and writes three PNGs into ``--out``: the study run (its description is the results
table, its artifacts the plots), the comparison of its trackers' runs, and one training run. Chromium comes from
Debian's packages (``apt-get install chromium``).

    python scripts/mlflow_screenshots.py --store sqlite:///outputs/quickstart-small/../../mlflow.db --out shots/
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM) if path), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: str, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port",
                                str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(1)
    stop(process)
    raise RuntimeError("the MLflow UI did not come up")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def shoot(browser: str, url: str, path: Path, size: str = "1920,1200") -> Path:
    """One screenshot of ``url`` after the page's scripts ran (a virtual time budget)."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={path.parent / '.chromium'}", f"--window-size={size}",
                    "--virtual-time-budget=15000", "--hide-scrollbars", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    return path


def study_runs(store: str, study: str | None) -> tuple[str, str, list[str]]:
    """(experiment id, study run id, its trackers' run ids)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    found = []
    for experiment in client.search_experiments():
        found += client.search_runs([experiment.experiment_id], "tags.kind = 'study'",
                                    order_by=["attributes.start_time DESC"])
    if study:
        found = [r for r in found if r.info.run_name == study or r.info.run_id == study]
    if not found:
        raise SystemExit(f"no study run in {store}")
    parent = found[0]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])
    return parent.info.experiment_id, parent.info.run_id, [r.info.run_id for r in children]


def screenshots(store: str, out: Path, study: str | None = None, only: list[str] | None = None) -> list[Path]:
    """The PNGs of the study run's pages (``only``: a subset of their names)."""
    browser = chromium()
    if browser is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    experiment, parent, children = study_runs(store, study)
    port = free_port()
    ui = start_ui(store, port)
    try:
        base = f"http://127.0.0.1:{port}/#"
        # A fresh browser opens MLflow 3's GenAI view whatever the experiment's kind; the query selects the
        # model-training view, as the "Model training" switch of the sidebar does.
        view = "workflowType=machine_learning"
        compare = (f"{base}/compare-runs?runs={json.dumps(children)}&experiments={json.dumps([experiment])}"
                   f"&{view}")
        pages = {"experiment_runs.png": f"{base}/experiments/{experiment}/runs?{view}",
                 "study_run.png": f"{base}/experiments/{experiment}/runs/{parent}?{view}",
                 "compare_arms.png": compare.replace(" ", ""),
                 "training_run.png": f"{base}/experiments/{experiment}/runs/{children[-1]}/model-metrics?{view}"}
        return [shoot(browser, url, out / name) for name, url in pages.items() if not only or name in only]
    finally:
        stop(ui)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="the study's MLflow store, e.g. sqlite:////path/mlflow.db")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument("--study", default=None, help="the study run's name or id (default: the newest study)")
    args = parser.parse_args()
    for path in screenshots(args.store, Path(args.out), args.study):
        print(path)


if __name__ == "__main__":
    main()
