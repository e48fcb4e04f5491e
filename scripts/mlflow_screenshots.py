"""Screenshots of a study in the MLflow UI, taken in headless Chromium: what a researcher sees.

Starts ``mlflow ui`` on 127.0.0.1 over the study's store, finds the study's run (tag ``kind=study``, the newest one
unless ``--study`` names it), and writes PNGs into ``--out``: the experiment's runs, the study run (its description,
unfolded, is the results table), its success plot among its artifacts, the comparison of its trackers' runs, and one
training run. Chromium is driven over its DevTools pipe, so the pages are clicked (the description's "Show more",
the assistant side panel's close button) before each screenshot. Chromium comes from
Debian's packages (``apt-get install chromium``).

    python scripts/mlflow_screenshots.py --store sqlite:///mlflow.db --out shots/   # the quickstart's store
"""
from __future__ import annotations

import argparse
import base64
import contextlib
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


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
    ended by NUL on file descriptors 3 and 4), so a page can be clicked before its screenshot. Standard library
    only."""

    def __init__(self, binary: str, profile: Path, size: tuple[int, int] = (1920, 1200)) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def descriptors() -> None:  # in the child: Chromium reads commands on fd 3, writes replies on fd 4
            reads, writes = os.dup(to_browser), os.dup(from_browser)  # neither may be 3 or 4 before the dup2
            reads, writes = os.dup2(reads, 100), os.dup2(writes, 101)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "about:blank"],
            close_fds=False, preexec_fn=descriptors, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next, self.last_text = b"", 0, ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raise TimeoutError(f"{method}: no reply from Chromium in {timeout:.0f} s")

    def evaluate(self, script: str):
        return self.call("Runtime.evaluate", session=True, expression=script, returnByValue=True,
                         awaitPromise=True).get("result", {}).get("value")

    def wait_for(self, script: str, timeout: float = 60) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(script):
                return True
            time.sleep(0.5)
        return False

    def shoot(self, url: str, path: Path, actions: str = "", shows: str = "") -> Path:
        """Opens ``url``, waits until the page's text contains ``shows`` and no "loading" (the UI fetches runs and
        metrics after the document is complete), runs ``actions`` (JavaScript), and writes a PNG of the viewport."""
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")
        self.wait_for(f"document.body.innerText.includes({json.dumps(shows)}) && "
                      "!/loading/i.test(document.body.innerText)", timeout=90)
        time.sleep(2)
        if actions:
            self.evaluate(actions)
            time.sleep(2)
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        self.last_text = self.evaluate("document.body.innerText") or ""
        return path

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError):
                os.close(fd)


# JavaScript run on each page before its screenshot: close MLflow 3.17's assistant side panel, which covers a
# third of the page; on the study run, unfold the description (the results table) with its "Show more".
CLOSE_ASSISTANT = """
(() => {
  const close = document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (close) close.click();
  return !!close;
})()"""
SHOW_DESCRIPTION = """
(() => {
  const more = [...document.querySelectorAll('button, a, span')].find(e => e.textContent.trim() === 'Show more');
  if (more) more.click();
  return !!more;
})()"""


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


def screenshots(store: str, out: Path, study: str | None = None, only: list[str] | None = None,
                texts: dict[str, str] | None = None) -> list[Path]:
    """The PNGs of the study run's pages (``only``: a subset of their names); ``texts`` receives each page's
    visible text by name, as it was when its screenshot was taken."""
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
                 "study_plots.png": f"{base}/experiments/{experiment}/runs/{parent}/artifacts/plots/success.png"
                                    f"?{view}",
                 "compare_arms.png": compare.replace(" ", ""),
                 "training_run.png": f"{base}/experiments/{experiment}/runs/{children[-1]}/model-metrics?{view}"}
        actions = {"study_run.png": CLOSE_ASSISTANT + ";" + SHOW_DESCRIPTION}
        session = Browser(browser, out / ".chromium")
        try:
            shows = {"experiment_runs.png": "matching run", "study_run.png": "About this run",
                     "study_plots.png": "success.png", "compare_arms.png": "Run details",
                     "training_run.png": "Model metrics"}
            paths = []
            for name, url in pages.items():
                if not only or name in only:
                    paths.append(session.shoot(url, out / name, actions.get(name, CLOSE_ASSISTANT), shows[name]))
                    if texts is not None:
                        texts[name] = session.last_text
            return paths
        finally:
            session.close()
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
