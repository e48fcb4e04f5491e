"""``ct-ray tune``: a Ray Tune search whose trials are training runs of one teacher, with ASHA early stopping.

Each trial is a small driver function (0.01 CPU) that runs ``ct_ray.orchestration.train_launcher.train`` for its values; its
workers reserve ``tune.cpus_per_worker`` CPUs. Trials report to Tune only when they validated (the ASHA metric is the
validation AUC). The search has a parent MLflow run; every trial's training run is nested under it. After the search
the student of every trial is timed (tracking-loop FPS on this machine), and the parent run receives the
speed-accuracy Pareto table and chart and the best config per student depth, ready for ``ct-ray train``.
"""
from __future__ import annotations

import contextlib

import csv
import json
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ct_ray.errors import MissingFileError, UserError
from ct_ray.fileio import Location
from ct_ray.orchestration import console, mlflow_runs
from ct_ray.config import flatten, to_dict
from ct_ray.models import load_tracker
from ct_ray.training.search_space import (
    SearchConfig,
    grid_points,
    parse_space,
    total_trials,
    trial_concurrency,
    trial_config,
)

log = logging.getLogger("ct_ray.search")
SPEC_KEY = "__ct_ray_search__"


class ValidatedReport(TuneReportCallback):
    """Forwards a training report to Tune only when it carries the search metric (a validation epoch)."""

    def __init__(self, metric: str) -> None:
        super().__init__()
        self._metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and self._metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _trial(trial_values: dict[str, Any]) -> None:
    from ct_ray.config import from_dict
    from ct_ray.orchestration.train_launcher import train

    spec = trial_values[SPEC_KEY]
    os.chdir(spec["cwd"])  # Tune starts trials in their own folders; the configs' relative paths are the driver's
    search = from_dict(SearchConfig, spec["search"])
    values = {k: v for k, v in trial_values.items() if k != SPEC_KEY}
    config = trial_config(search, values)
    trial_id = tune.get_context().get_trial_id()
    config = replace(config,
                     run=replace(config.run, name=f"trial-{trial_id}", storage_path=spec["trials_path"]),
                     scaling=replace(config.scaling, cpus_per_worker=search.tune.cpus_per_worker),
                     mlflow=replace(config.mlflow, tracking_uri=spec["mlflow_uri"] or config.mlflow.tracking_uri,
                                    experiment=search.mlflow.experiment, enabled=spec["mlflow_uri"] is not None))
    train(config, callbacks=[ValidatedReport(search.tune.metric)], parent_run_id=spec["parent_run_id"])


def _param_space(search: SearchConfig, spec: dict) -> dict[str, Any]:
    dimensions = parse_space(search.search)
    points = grid_points(dimensions)
    space: dict[str, Any] = {SPEC_KEY: spec}
    grid_keys = sorted({k for p in points for k in p})
    if grid_keys:
        space["__grid__"] = tune.grid_search(points)
    for dimension in dimensions:
        if dimension.distribution == "uniform":
            space[dimension.key] = tune.uniform(*dimension.bounds)
        elif dimension.distribution == "loguniform":
            space[dimension.key] = tune.loguniform(*dimension.bounds)
    return space


def _flatten_grid(trial_values: dict[str, Any]) -> dict[str, Any]:
    grid = trial_values.pop("__grid__", {}) or {}
    return {**trial_values, **grid}


def _grid_trial(trial_values: dict[str, Any]) -> None:
    _trial(_flatten_grid(dict(trial_values)))


@dataclass
class TrialSummary:
    trial_id: str
    values: dict[str, Any]
    depth: int
    division: list[int]
    auc: float | None
    fps: float | None
    tracker: str | None
    pareto: bool = False
    error: str | None = None


class SearchFailedError(UserError, RuntimeError):
    """Every trial of a search failed: nothing was trained, so there is no table to show."""


def _error_line(error: BaseException | None) -> str | None:
    """The last line of a trial's error (Ray wraps the cause in its traceback), or None when it finished."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _tracker_of(trials: Location, trial_id: str) -> Location | None:
    folder = trials.child(f"trial-{trial_id}")
    final = folder.child("final_tracker.pt")
    if final.is_file():
        return final
    checkpoints = sorted(entry for entry in (e.name for e in folder.list()) if entry.startswith("checkpoint_"))
    return folder.child(checkpoints[-1], "tracker.pt") if checkpoints else None


def pareto_front(summaries: list[TrialSummary]) -> None:
    """Marks the trials no other trial beats in both AUC and FPS."""
    scored = [s for s in summaries if s.auc is not None and s.fps is not None]
    for s in scored:
        s.pareto = not any(o is not s and o.auc >= s.auc and o.fps >= s.fps and (o.auc > s.auc or o.fps > s.fps)
                           for o in scored)


def summarise(results, search: SearchConfig, trials: Location, profile: bool = True,
              use_gpu: bool = False) -> list[TrialSummary]:
    """One summary per trial: its values, depth, division, best validation AUC and tracking FPS. The FPS is
    measured one trial at a time on the device kind the trials trained on (a GPU task when they used GPUs)."""
    from ct_ray.orchestration.study import measure_speed

    summaries = []
    with tempfile.TemporaryDirectory(prefix="ct-ray-pareto-") as folder:
        for result in results:
            if result.config is None:
                continue
            values = _flatten_grid({k: v for k, v in result.config.items() if k != SPEC_KEY})
            trial_id = result.metrics.get("trial_id") if result.metrics else None
            trial_id = trial_id or Path(result.path).name.split("_")[-1]
            frame = result.metrics_dataframe
            auc = None
            if frame is not None and search.tune.metric in frame:
                column = frame[search.tune.metric].dropna()
                if len(column):
                    auc = float(column.max() if search.tune.mode == "max" else column.min())
            tracker = _tracker_of(trials, trial_id)
            fps, depth, division = None, 0, []
            error = _error_line(result.error)
            if tracker is not None and error is None:
                local = tracker.download(Path(folder) / f"{trial_id}.pt")
                model, meta = load_tracker(local)
                depth, division = len(model.blocks), list(meta.get("teacher_stages", []))
                if profile:
                    fps = 1000.0 / measure_speed(str(local), use_gpu, iterations=search.tune.profile_iterations,
                                                 warmup=3)
            summaries.append(TrialSummary(trial_id, values, depth, division, auc, fps,
                                          tracker.uri if tracker and error is None else None, error=error))
    pareto_front(summaries)
    return sorted(summaries, key=lambda s: (s.depth, -(s.auc or -1)))


def write_report(summaries: list[TrialSummary], search: SearchConfig, folder: Path) -> dict[str, Path]:
    """Pareto table (CSV), chart (PNG) and the best config per depth (YAML) into ``folder``."""
    from ct_ray.evaluation.plots import speed_accuracy_plot

    folder.mkdir(parents=True, exist_ok=True)
    files = {"table": folder / "pareto.csv"}
    keys = sorted({k for s in summaries for k in s.values})
    with files["table"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "depth", "division", *keys, "val_auc", "tracking_fps", "pareto"])
        for s in summaries:
            writer.writerow([s.trial_id, s.depth, json.dumps(s.division), *(json.dumps(s.values.get(k)) for k in keys),
                             "" if s.auc is None else f"{s.auc:.2f}", "" if s.fps is None else f"{s.fps:.1f}",
                             int(s.pareto)])
    points = {f"{s.trial_id} (d{s.depth}){' *' if s.pareto else ''}": (s.fps, s.auc)
              for s in summaries if s.auc is not None and s.fps is not None}
    if points:
        files["chart"] = speed_accuracy_plot(points, folder / "pareto.png",
                                             title="Speed against accuracy (* Pareto front)")
    finished = [s for s in summaries if s.auc is not None and s.error is None]
    for depth in sorted({s.depth for s in finished}):
        best = max((s for s in finished if s.depth == depth), key=lambda s: s.auc)
        config = trial_config(search, best.values)
        config = replace(config, run=replace(config.run, name=f"{search.tune.name}-best-depth{depth}"))
        path = folder / f"best_depth{depth}.yaml"
        path.write_text(f"# Best trial of depth {depth} in search {search.tune.name}: {best.trial_id}, "
                        f"validation AUC {best.auc:.2f}\n" + yaml.safe_dump(to_dict(config), sort_keys=False))
        files[f"best_depth{depth}"] = path
    return files


def format_table(summaries: list[TrialSummary]) -> str:
    """The Pareto table as text; a failed trial shows FAILED and its error under the table."""
    lines = [f"{'trial':<12}{'depth':>6}  {'division':<16}{'val AUC':>9}{'FPS':>9}  pareto"]
    for s in summaries:
        auc = "" if s.auc is None else f"{s.auc:.2f}"
        fps = "" if s.fps is None else f"{s.fps:.1f}"
        mark = "FAILED" if s.error else ("*" if s.pareto else "")
        lines.append(f"{s.trial_id:<12}{s.depth:>6}  {json.dumps(s.division):<16}{auc:>9}{fps:>9}  {mark}")
    failed = [s for s in summaries if s.error]
    if failed:
        lines.append(f"{len(failed)} of {len(summaries)} trials failed:")
        lines.extend(f"  {s.trial_id} {json.dumps(s.values, sort_keys=True)}: {s.error}" for s in failed)
    return "\n".join(lines)


def cluster_capacity() -> dict[str, float]:
    """The most the cluster can hold: the autoscaler's maximum when it has one, else what is there now."""
    import ray

    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001  (no autoscaler config: a fixed or local cluster)
        most = None
    return {k: float(v) for k, v in (most or ray.cluster_resources()).items()}


def run_search(search: SearchConfig, resume: bool = False, ray_address: str | None = None,
               progress: bool = True, tune_callbacks: list | None = None) -> tuple[list[TrialSummary], dict[str, Any]]:
    """Runs (or with ``resume`` continues) the search; returns the trial summaries and the report's files."""
    from ct_ray.orchestration.cluster import init_ray
    from ct_ray.orchestration.train_launcher import bootstrap_teacher, prepare_data

    root = Location.of(search.tune.storage_path)
    search_dir = root.child(search.tune.name).mkdirs()
    trials = search_dir.child("trials")
    uri = mlflow_runs.resolve_tracking_uri(search.mlflow.tracking_uri) if search.mlflow.enabled else None
    if uri:
        mlflow_runs.check_reachable(uri)
    base = trial_config(search, {}).absolute()
    console.log_to(Path(search_dir.path) / "ray.log" if search_dir.is_local
                   else Path.home() / ".cache" / "ct-ray" / "logs" / f"{search.tune.name}.log")
    init_ray(ray_address)
    concurrency = trial_concurrency(base, search.tune, cluster_capacity())
    parent = None
    if uri:
        parent = mlflow_runs.TrackedRun.open(
            uri, search_dir.child("ct_ray_search.json"), search.mlflow.experiment, search.tune.name,
            flatten({"search": search.search, "tune": to_dict(search.tune)}),
            {"kind": "search", "base_config": search.base, "trials": total_trials(search),
             "concurrent_trials": concurrency, **mlflow_runs.environment_tags()})
    # Shared inputs are made once here, not by concurrent trials: a missing teacher, missing synthetic data.
    bootstrap_teacher(base)
    prepare_data(base)
    spec = {"search": to_dict(search), "trials_path": trials.uri, "cwd": str(Path.cwd()), "mlflow_uri": uri,
            "parent_run_id": parent.run_id if parent else None, "base_storage": base.run.storage_path}
    function = tune.with_resources(_grid_trial, {"cpu": 0.01})
    storage = {"storage_filesystem": None if root.is_local else root.fs}
    if resume and tune.Tuner.can_restore(search_dir.path, **storage):
        tuner = tune.Tuner.restore(search_dir.path, trainable=function, resume_unfinished=True,
                                   resume_errored=True, **storage)
    else:
        if resume:
            raise MissingFileError(f"--resume: no search to continue at {search_dir}")
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=search.tune.grace_period,
                                  reduction_factor=search.tune.reduction_factor,
                                  max_t=max(1, base.run.epochs // base.run.validate_every + 1))
        tuner = tune.Tuner(
            function,
            param_space=_param_space(search, spec),
            tune_config=tune.TuneConfig(metric=search.tune.metric, mode=search.tune.mode, scheduler=scheduler,
                                        num_samples=search.tune.num_samples, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=search.tune.name, storage_path=root.path, callbacks=tune_callbacks,
                                      verbose=1 if progress and console.verbose() else 0, **storage),
        )
    with parent if parent is not None else contextlib.nullcontext():  # FINISHED, or FAILED on any error
        grid = tuner.fit()
        summaries = summarise(grid, search, trials, use_gpu=base.scaling.use_gpu)
        failed = [s for s in summaries if s.error is not None]
        if summaries and len(failed) == len(summaries):  # the parent MLflow run closes as FAILED
            raise SearchFailedError(
                f"search {search.tune.name}: every trial failed ({len(failed)} of {len(summaries)}); the first "
                f"(trial {failed[0].trial_id}): {failed[0].error}. Each trial's error is in its folder under "
                f"{search_dir.uri}; Ray's output is in {console.log_path()}")
        with tempfile.TemporaryDirectory(prefix="ct-ray-report-") as folder:
            files = write_report(summaries, search, Path(folder))
            report = search_dir.child("report")
            for path in files.values():
                report.child(path.name).upload(path)
                if parent is not None:
                    mlflow_runs.log_artifact(uri, parent.run_id, path, "search")
            files = {name: report.child(path.name).uri for name, path in files.items()}
        if parent is not None:
            _close_nested_runs(uri, parent.run_id)
    return summaries, files


def _close_nested_runs(uri: str, parent: str) -> None:
    """Trials that ASHA stopped never closed their MLflow runs: mark them KILLED."""
    client = mlflow_runs.client(uri)
    experiment_id = client.get_run(parent).info.experiment_id
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")

