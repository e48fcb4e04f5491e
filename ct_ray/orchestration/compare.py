"""``ct-ray compare``: an MLflow experiment as one table, each student against its teacher (``teacher_run_id``)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

from ct_ray.errors import InputError
from ct_ray.fileio import atomic_write_text
from ct_ray.orchestration import mlflow_runs

COMPARE_COLUMNS = ["run_name", "run_id", "kind", "student_depth", "stage_division", "auc", "auc_metric",
                   "precision", "precision_metric", "tracking_fps", "teacher_run_id", "speed_up", "auc_retention"]


def _first_metric(metrics: Mapping[str, float], names: list[str]) -> tuple[float | None, str]:
    for name in names:
        if name in metrics:
            return float(metrics[name]), name
    return None, ""


def _search_runs(uri: str, experiment_id: str) -> list:
    mlflow_client = mlflow_runs.client(uri)
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([experiment_id], max_results=1000, page_token=token,
                                         order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def compare_runs(uri: str, experiment: str, prefix: str = "test") -> list[dict[str, Any]]:
    """One row per run of ``experiment`` (oldest first), columns ``COMPARE_COLUMNS``:

    - ``auc`` / ``precision``: ``<prefix>_auc`` / ``<prefix>_precision`` (``ct-ray eval``) when the run has it, else
      the latest ``val_auc`` / ``val_precision`` (training's validation); ``auc_metric`` / ``precision_metric`` name
      the metric used.
    - ``tracking_fps``: ``ct-ray eval``'s median tracking-loop FPS.
    - ``speed_up`` = tracking_fps / the teacher's tracking_fps; ``auc_retention`` = AUC / the teacher's AUC x 100,
      both AUCs from the same metric (``<prefix>_auc`` when both runs have it, else ``val_auc``). The teacher is the
      run named by the tag ``teacher_run_id`` (looked up in any experiment); blank when it or a metric is missing.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_runs.client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"no MLflow experiment named {experiment!r} in {uri}")
    runs = _search_runs(uri, found.experiment_id)
    by_id = {run.info.run_id: run for run in runs}
    auc_names, precision_names = [f"{prefix}_auc", "val_auc"], [f"{prefix}_precision", "val_precision"]
    rows = []
    for run in runs:
        metrics, tags = run.data.metrics, run.data.tags
        auc, auc_metric = _first_metric(metrics, auc_names)
        precision, precision_metric = _first_metric(metrics, precision_names)
        fps = metrics.get("tracking_fps")
        teacher_id = tags.get("teacher_run_id", "")
        teacher = by_id.get(teacher_id)
        if teacher is None and teacher_id and teacher_id != "none":
            try:
                teacher = mlflow_client.get_run(teacher_id)
            except MlflowException:
                teacher = None
        speed_up = retention = None
        if teacher is not None:
            teacher_fps = teacher.data.metrics.get("tracking_fps")
            if fps is not None and teacher_fps:
                speed_up = fps / teacher_fps
            common = next((n for n in auc_names if n in metrics and n in teacher.data.metrics), None)
            if common is not None and teacher.data.metrics[common]:
                retention = metrics[common] / teacher.data.metrics[common] * 100.0
        rows.append({"run_name": run.info.run_name or "", "run_id": run.info.run_id, "kind": tags.get("kind", ""),
                     "student_depth": tags.get("student_depth", ""), "stage_division": tags.get("stage_division", ""),
                     "auc": auc, "auc_metric": auc_metric, "precision": precision,
                     "precision_metric": precision_metric, "tracking_fps": fps, "teacher_run_id": teacher_id,
                     "speed_up": speed_up, "auc_retention": retention})
    return rows


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


_DIGITS = {"auc": 2, "precision": 2, "tracking_fps": 2, "speed_up": 3, "auc_retention": 2}


def write_compare_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k), _DIGITS.get(k, 4)) for k in COMPARE_COLUMNS})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def format_compare_table(rows: list[dict[str, Any]]) -> str:
    columns = [("run", "run_name"), ("kind", "kind"), ("depth", "student_depth"), ("division", "stage_division"),
               ("AUC", "auc"), ("from", "auc_metric"), ("Prec", "precision"), ("FPS", "tracking_fps"),
               ("speed-up", "speed_up"), ("AUC kept %", "auc_retention")]
    cells = [[_cell(row.get(key), _DIGITS.get(key, 4)) for _, key in columns] for row in rows]
    widths = [max([len(title), *(len(c[i]) for c in cells)]) for i, (title, _) in enumerate(columns)]
    numeric = {"auc", "precision", "tracking_fps", "speed_up", "auc_retention", "student_depth"}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if key in numeric else v.ljust(w)
                         for v, w, (_, key) in zip(values, widths, columns)).rstrip()

    out = [line([title for title, _ in columns]), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out.extend(line(c) for c in cells)
    return "\n".join(out)


def speed_accuracy_points(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """``{label: (fps, auc)}`` of the runs that have both (labels made unique with the run id's start)."""
    points: dict[str, tuple[float, float]] = {}
    for row in rows:
        if row["tracking_fps"] is None or row["auc"] is None:
            continue
        label = row["run_name"] or row["run_id"][:8]
        if label in points:
            label = f"{label} ({row['run_id'][:6]})"
        points[label] = (row["tracking_fps"], row["auc"])
    return points
