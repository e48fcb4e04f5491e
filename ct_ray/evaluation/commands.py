"""What ``ct-ray eval``, ``score``, ``plot`` and ``compare`` do (``ct_ray.cli_eval`` wires them to the command line).

Everything here reuses the one implementation of each step: tracking in Ray tasks (``distributed``), result files
(``results``), scores (``metrics``, METHOD.md section 8), plots (``plots``), speed (``ct_ray.profile``) and MLflow
bookkeeping (``ct_ray.mlflow_utils``).

Timing. ``tracking_ms`` / ``tracking_fps`` are the median per-frame wall-clock time of the tracking loop (crop,
copy, forward, window, decode) read back from the ``<seq>_time.txt`` files, frame 0 (the initialisation) excluded,
pooled over all sequences. The sequences run in parallel Ray tasks with one thread each (``--threads-per-task``),
so this is the speed of one tracker on one core (or one GPU) while the others run beside it; a local Ray instance
started by ``ct-ray eval`` declares one CPU per core so that the tasks do not share cores. ``forward_ms`` /
``forward_fps`` (``--profile``) are network-only latencies measured alone after a warm-up (what papers report).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ct_ray import mlflow_utils
from ct_ray.data.sequences import Sequence
from ct_ray.evaluation.metrics import BenchmarkScore, got10k_scores, score_benchmark, trackingnet_scores
from ct_ray.evaluation.results import (
    load_results_dir,
    result_complete,
    time_path,
    write_got10k_submission,
    write_trackingnet_submission,
)
from ct_ray.fileio import atomic_write_text

__all__ = [
    "COMPARE_COLUMNS",
    "DEFAULT_SPLITS",
    "EvalOutcome",
    "ScoreReport",
    "compare_runs",
    "evaluate_checkpoint",
    "first_frame_only",
    "format_compare_table",
    "format_score_table",
    "load_checkpoint",
    "load_sequences",
    "metric_prefix",
    "plot_results",
    "read_times",
    "resolve_split",
    "score_results",
    "speed_accuracy_points",
    "timing_summary",
    "write_compare_csv",
    "write_per_sequence_csv",
]

# ``--split`` when none is given: the benchmark split of each dataset kind; ``None`` (every sequence) otherwise.
DEFAULT_SPLITS: dict[str, str | None] = {"lasot": "test", "synthetic": "test", "got10k": "test",
                                         "trackingnet": "test"}
EVAL_MANIFEST = "eval.json"
SCORES_FILE = "scores.json"
PER_SEQUENCE_FILE = "per_sequence.csv"
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./ ]")


# --------------------------------------------------------------------------------------------------------------------
# Sequences, times
# --------------------------------------------------------------------------------------------------------------------

def resolve_split(kind: str, split: str | None) -> str | None:
    """``--split``: ``None`` -> the dataset kind's default (``DEFAULT_SPLITS``), ``"all"`` -> every sequence."""
    if split is None:
        return DEFAULT_SPLITS.get(kind)
    return None if split == "all" else split


def load_sequences(spec: str, split: str | None = None, max_sequences: int | None = None
                   ) -> tuple[str, str | None, list[Sequence]]:
    """``(kind, split, sequences)`` of ``KIND:PATH`` (sorted by name; the first ``max_sequences`` when given)."""
    from ct_ray.data import load_dataset, parse_dataset_spec

    kind, _ = parse_dataset_spec(spec)
    split = resolve_split(kind, split)
    sequences = list(load_dataset(spec, split).sequences)
    if max_sequences is not None:
        if max_sequences < 1:
            raise ValueError(f"--max-sequences must be at least 1, got {max_sequences}")
        sequences = sequences[:max_sequences]
    if not sequences:
        raise ValueError(f"{spec} (split {split}): no sequences")
    return kind, split, sequences


def first_frame_only(sequences: Iterable[Sequence]) -> bool:
    """True when the split gives only frame 0's box (GOT-10k test, TrackingNet test): no local scores."""
    return any(bool(s.attributes.get("first_frame_only")) for s in sequences)


def read_times(path: str | Path) -> np.ndarray:
    """A ``<seq>_time.txt`` file (seconds per frame, one per line) as a float array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"time file not found: {path}")
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise ValueError(f"{path}: line {number}: not a number: {line!r}") from None
    return np.asarray(values, dtype=np.float64)


def _ms_fps(seconds: list[float] | np.ndarray) -> tuple[float | None, float | None]:
    if len(seconds) == 0:
        return None, None
    ms = float(statistics.median(seconds)) * 1000.0
    return ms, (1000.0 / ms if ms > 0 else None)


def timing_summary(results_dir: str | Path, names: Iterable[str]) -> dict[str, Any]:
    """Median per-frame time of the tracking loop, frame 0 excluded: ``{"tracking_ms", "tracking_fps",
    "frames", "per_sequence": {name: fps}}`` (None where no frame after the first was timed; a sequence without a
    time file is left out)."""
    pooled: list[float] = []
    per_sequence: dict[str, float | None] = {}
    for name in names:
        path = time_path(results_dir, name)
        if not path.is_file():
            per_sequence[name] = None
            continue
        times = read_times(path)[1:]
        per_sequence[name] = _ms_fps(times)[1]
        pooled.extend(times.tolist())
    ms, fps = _ms_fps(pooled)
    return {"tracking_ms": ms, "tracking_fps": fps, "frames": len(pooled), "per_sequence": per_sequence}


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ScoreReport:
    """The scores of one results folder: ``benchmark`` (pytracking definition) and, for GOT-10k / TrackingNet,
    that benchmark's own scores. ``to_dict`` is the JSON of ``ct-ray score --json`` and of ``scores.json``."""

    benchmark: BenchmarkScore
    kind: str
    split: str | None
    extra: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.benchmark.to_dict()
        out.update(self.extra)
        out["dataset_kind"] = self.kind
        out["split"] = self.split
        return out

    def metrics(self) -> dict[str, float]:
        """Flat scalar scores (percent): auc, precision, norm_precision, op50, op75 [, ao, sr50, sr75]
        [, success_auc, precision_auc, norm_precision_auc]."""
        out = dict(self.benchmark.scores())
        for values in self.extra.values():
            out.update(values)
        return out


def score_results(results_dir: str | Path, sequences: list[Sequence], kind: str, split: str | None = None,
                  exclude_invalid: bool = False) -> ScoreReport:
    """Reads ``<dir>/<seq>.txt`` of every sequence and scores them (``score_benchmark``; plus ``got10k_scores`` for
    GOT-10k and ``trackingnet_scores`` for TrackingNet). A malformed file raises ``ResultsFormatError`` naming the
    file and line; a split with first-frame-only ground truth a ``ValueError``."""
    if first_frame_only(sequences):
        raise ValueError(f"{kind} split {split!r} has ground truth for the first frame only: it cannot be scored "
                         "locally (submit the server layout: ct-ray eval --got10k-submission / "
                         "--trackingnet-submission)")
    results = load_results_dir(results_dir, [s.name for s in sequences], {s.name: len(s) for s in sequences})
    benchmark = score_benchmark(results, sequences, exclude_invalid=exclude_invalid)
    extra: dict[str, dict[str, float]] = {}
    if kind == "got10k":
        extra["got10k"] = got10k_scores(results, sequences)
    elif kind == "trackingnet":
        extra["trackingnet"] = trackingnet_scores(results, sequences)
    return ScoreReport(benchmark, kind, split, extra)


def format_score_table(report: ScoreReport) -> str:
    """Per-sequence rows and the overall row (percent)."""
    sequences = report.benchmark.sequences
    overall = f"overall ({len(sequences)} sequences)"
    width = max([len("sequence"), len(overall), *(len(str(s.name)) for s in sequences)])
    header = (f"{'sequence':<{width}}  {'frames':>6}  {'AUC':>6}  {'OP50':>6}  {'OP75':>6}  {'Prec':>6}  "
              f"{'NPrec':>6}")
    lines = [header, "-" * len(header)]

    def row(name: str, frames: str, s) -> str:
        return (f"{name:<{width}}  {frames:>6}  {s.auc:6.2f}  {s.op50:6.2f}  {s.op75:6.2f}  {s.precision:6.2f}  "
                f"{s.norm_precision:6.2f}")

    for s in sequences:
        lines.append(row(str(s.name), str(s.num_frames), s))
    lines.append("-" * len(header))
    lines.append(row(overall, str(sum(s.num_frames for s in sequences)), report.benchmark))
    if "got10k" in report.extra:
        g = report.extra["got10k"]
        lines.append(f"GOT-10k: AO {g['ao']:.2f}  SR0.5 {g['sr50']:.2f}  SR0.75 {g['sr75']:.2f}")
    if "trackingnet" in report.extra:
        t = report.extra["trackingnet"]
        lines.append(f"TrackingNet: success {t['success_auc']:.2f}  precision {t['precision_auc']:.2f}  "
                     f"normalised precision {t['norm_precision_auc']:.2f}")
    if report.benchmark.exclude_invalid:
        lines.append("(frames without a valid visible GT box excluded from the denominators)")
    return "\n".join(lines)


def write_per_sequence_csv(report: ScoreReport, path: str | Path,
                           fps: Mapping[str, float | None] | None = None) -> Path:
    """The per-sequence table as CSV (percent scores; ``tracking_fps`` when ``fps`` is given)."""
    columns = ["name", "auc", "precision", "norm_precision", "op50", "op75", "num_frames", "num_valid",
               "num_scored"]
    if fps is not None:
        columns.append("tracking_fps")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for s in report.benchmark.sequences:
        row = s.to_dict()
        if fps is not None:
            row["tracking_fps"] = fps.get(s.name)
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class EvalOutcome:
    results_dir: Path
    prefix: str
    sequences: int
    tracked: int
    report: ScoreReport | None
    timing: dict[str, Any]
    size: dict[str, Any]
    mlflow_run_id: str | None = None
    mlflow_run_created: bool = False
    artifacts: list[Path] = field(default_factory=list)


def metric_prefix(name: str | None, split: str | None, kind: str) -> str:
    """``--name``, else the split, else the dataset kind; characters MLflow refuses in a metric name become ``_``."""
    return _METRIC_NAME.sub("_", name or split or kind)


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _claim_results_dir(results_dir: Path, checkpoint: str | Path, spec: str, split: str | None) -> None:
    """Records which checkpoint the results in ``results_dir`` come from, and refuses to resume (skip complete
    sequences) from results of another checkpoint."""
    checksum = _sha256(checkpoint)
    manifest = results_dir / EVAL_MANIFEST
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            previous = {}
        if previous.get("checkpoint_sha256") not in (None, checksum):
            raise ValueError(f"{results_dir} holds results of another checkpoint ({previous.get('checkpoint')}); "
                             "pass another --out (or --name), or remove that folder")
    atomic_write_text(manifest, json.dumps({"checkpoint": str(Path(checkpoint).resolve()),
                                            "checkpoint_sha256": checksum, "dataset": spec, "split": split},
                                           indent=2) + "\n")


def load_checkpoint(path: str | Path, kind: str = "ct-ray", num_heads: int | None = None):
    """``(model, meta)``: ct-ray checkpoints keep their metadata; OSTrack / ViT files have none."""
    from ct_ray.models import load_teacher, load_tracker

    if kind == "ct-ray":
        return load_tracker(path)
    options = {"num_heads": num_heads} if num_heads else {}
    return load_teacher(kind, path, **options), {}


def _run_exists(uri: str, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        run = mlflow_utils.client(uri).get_run(run_id)
    except Exception:  # noqa: BLE001  (MLflow raises its own exception types for an unknown id)
        return False
    return run.info.lifecycle_stage == "active"


def _model_tags(model, meta: Mapping[str, Any]) -> dict[str, str]:
    tags = {"depth": str(len(model.blocks))}
    if meta.get("teacher_stages") is not None:
        tags["student_depth"] = str(len(model.blocks))
        tags["stage_division"] = json.dumps(list(meta["teacher_stages"]))
    return tags


def evaluate_checkpoint(checkpoint: str | Path, dataset: str, *, kind: str = "ct-ray", num_heads: int | None = None,
                        split: str | None = None, name: str | None = None, out: str | Path | None = None,
                        max_sequences: int | None = None, use_gpu: bool = False, got10k_submission: bool = False,
                        trackingnet_submission: bool = False, profile: bool = False, use_mlflow: bool = True,
                        mlflow_uri: str | None = None, experiment: str = "ct-ray", exclude_invalid: bool = False,
                        cpus_per_task: float = 1.0, threads_per_task: int = 1, progress: bool = True,
                        log=print) -> EvalOutcome:
    """``ct-ray eval``: track every sequence in its own Ray task (complete results are kept), write the submission
    layouts when asked, score (unless the split has first-frame-only ground truth), time, size, and log it all to
    MLflow: into the checkpoint's own run (meta ``mlflow_run_id``) when that run exists, else into a new run."""
    import ray

    from ct_ray.cluster import init_ray
    from ct_ray.evaluation.distributed import evaluate_sequences
    from ct_ray.evaluation.plots import benchmark_plots
    from ct_ray.models import count_parameters
    from ct_ray.profile import count_flops, profile_tracker

    uri = None
    if use_mlflow:
        uri = mlflow_utils.resolve_tracking_uri(mlflow_uri)
        mlflow_utils.check_reachable(uri)
    model, meta = load_checkpoint(checkpoint, kind, num_heads)
    model.eval()
    dataset_kind, split, sequences = load_sequences(dataset, split, max_sequences)
    prefix = metric_prefix(name, split, dataset_kind)
    label = name or f"{Path(checkpoint).stem}_{dataset_kind}_{split or 'all'}"
    results_dir = Path(out) if out is not None else Path("results") / label
    results_dir.mkdir(parents=True, exist_ok=True)
    _claim_results_dir(results_dir, checkpoint, dataset, split)

    # A local instance gets one logical CPU per core (not init_ray's default of two), so that the parallel tracking
    # tasks do not share cores and the tracking-loop times stay those of one tracker per core.
    init_ray(None, num_cpus=os.cpu_count() or 1)
    if use_gpu and not ray.cluster_resources().get("GPU", 0):
        raise ValueError("--gpu: the Ray cluster has no GPU")
    tracked = sum(1 for s in sequences if not result_complete(results_dir, s.name, len(s)))
    log(f"{len(sequences)} sequences of {dataset} (split {split}); {len(sequences) - tracked} already complete "
        f"in {results_dir}")
    boxes = evaluate_sequences(model, sequences, results_dir, use_gpu=use_gpu, cpus_per_task=cpus_per_task,
                               threads_per_task=threads_per_task, progress=progress,
                               description=f"tracking {label}")
    names = [s.name for s in sequences]
    timing = timing_summary(results_dir, names)

    artifacts: list[Path] = []
    if got10k_submission or trackingnet_submission:
        for sequence in sequences:
            if got10k_submission:
                write_got10k_submission(results_dir / "got10k_submission", sequence.name, boxes[sequence.name],
                                        read_times(time_path(results_dir, sequence.name))[:len(sequence)])
            if trackingnet_submission:
                write_trackingnet_submission(results_dir / "trackingnet_submission", sequence.name,
                                             boxes[sequence.name])
        for folder in ("got10k_submission", "trackingnet_submission"):
            if (results_dir / folder).is_dir():
                log(f"server layout: {results_dir / folder}")

    report = None
    scores_path = results_dir / SCORES_FILE
    if first_frame_only(sequences):
        log(f"{dataset_kind} split {split!r} has ground truth for the first frame only: not scored locally")
        atomic_write_text(scores_path, json.dumps({"dataset_kind": dataset_kind, "split": split,
                                                   "scored": False, "timing": timing}, indent=2) + "\n")
    else:
        report = score_results(results_dir, sequences, dataset_kind, split, exclude_invalid)
        atomic_write_text(scores_path, json.dumps({**report.to_dict(), "timing": timing}, indent=2) + "\n")
        artifacts.append(write_per_sequence_csv(report, results_dir / PER_SEQUENCE_FILE, timing["per_sequence"]))
        artifacts.extend(benchmark_plots({label: report.benchmark}, results_dir))
    artifacts.insert(0, scores_path)

    import torch

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    if profile:
        speed = profile_tracker(model, device)
        size = {"params": speed.params, "flops": speed.flops, "forward_ms": speed.forward_ms,
                "forward_fps": speed.forward_fps, "profile_device": speed.device}
    else:
        size = {"params": count_parameters(model), "flops": count_flops(model.cpu())}

    outcome = EvalOutcome(results_dir=results_dir, prefix=prefix, sequences=len(sequences), tracked=tracked,
                          report=report, timing=timing, size=size, artifacts=artifacts)
    if uri is not None:
        _log_to_mlflow(outcome, uri, experiment, checkpoint, meta, model, dataset, split, label)
    return outcome


def _log_to_mlflow(outcome: EvalOutcome, uri: str, experiment: str, checkpoint: str | Path,
                   meta: Mapping[str, Any], model, dataset: str, split: str | None, label: str) -> None:
    prefix = outcome.prefix
    run_id = meta.get("mlflow_run_id")
    created = not _run_exists(uri, run_id)
    if created:
        tags = {"kind": meta.get("kind") or "external", "source_checkpoint": str(Path(checkpoint).resolve()),
                **_model_tags(model, meta), **mlflow_utils.environment_tags()}
        if run_id:
            tags["checkpoint_run_id_missing"] = run_id  # the checkpoint names a run this store does not hold
        run_id = mlflow_utils.start_run(uri, experiment, label, params={}, tags=tags)
    metrics: dict[str, float] = {}
    if outcome.report is not None:
        metrics.update({f"{prefix}_{key}": value for key, value in outcome.report.metrics().items()})
    for key in ("tracking_ms", "tracking_fps"):
        if outcome.timing.get(key) is not None:
            metrics[key] = outcome.timing[key]
    for key in ("params", "flops", "forward_ms", "forward_fps"):
        if key in outcome.size:
            metrics[key] = float(outcome.size[key])
    failed = True
    try:
        mlflow_utils.log_metrics(uri, run_id, metrics, step=0)
        mlflow_utils.set_tags(uri, run_id, {f"eval.{prefix}.dataset": dataset, f"eval.{prefix}.split": str(split),
                                            f"eval.{prefix}.checkpoint": str(Path(checkpoint).resolve()),
                                            f"eval.{prefix}.results_dir": str(outcome.results_dir.resolve())})
        for path in outcome.artifacts:
            mlflow_utils.log_artifact(uri, run_id, path, f"eval/{prefix}")
        failed = False
    finally:
        if created:
            mlflow_utils.end_run(uri, run_id, failed=failed)
    outcome.mlflow_run_id, outcome.mlflow_run_created = run_id, created


# --------------------------------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------------------------------

def plot_results(results_dirs: list[str | Path], labels: list[str] | None, dataset: str, out: str | Path,
                 split: str | None = None, max_sequences: int | None = None,
                 exclude_invalid: bool = False) -> tuple[Path, Path]:
    """Success and precision plots (``<out>/success.png``, ``<out>/precision.png``) comparing result folders."""
    from ct_ray.evaluation.plots import benchmark_plots

    labels = list(labels or [])
    if labels and len(labels) != len(results_dirs):
        raise ValueError(f"{len(labels)} --label for {len(results_dirs)} --results: give one per folder or none")
    labels = labels or [Path(d).resolve().name for d in results_dirs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels} (pass --label)")
    kind, split, sequences = load_sequences(dataset, split, max_sequences)
    scores = {label: score_results(d, sequences, kind, split, exclude_invalid).benchmark
              for label, d in zip(labels, results_dirs)}
    return benchmark_plots(scores, out)


# --------------------------------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------------------------------

COMPARE_COLUMNS = ["run_name", "run_id", "kind", "student_depth", "stage_division", "auc", "auc_metric",
                   "precision", "precision_metric", "tracking_fps", "teacher_run_id", "speed_up", "auc_retention"]


def _first_metric(metrics: Mapping[str, float], names: list[str]) -> tuple[float | None, str]:
    for name in names:
        if name in metrics:
            return float(metrics[name]), name
    return None, ""


def _search_runs(uri: str, experiment_id: str) -> list:
    mlflow_client = mlflow_utils.client(uri)
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

    mlflow_client = mlflow_utils.client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} in {uri}")
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
