"""``ct-ray eval``: one typed request, run as a short pipeline of named steps.

``evaluate_checkpoint(EvalRequest(...))`` loads the tracker, tracks every sequence in its own Ray task (complete
results already in the folder are kept), writes the server layouts when asked, scores (unless the split has
first-frame-only ground truth), measures size and speed, and logs it all to MLflow: into the checkpoint's own run
(meta ``mlflow_run_id``) when that run exists, else into a new run.

Timing. ``tracking_ms`` / ``tracking_fps`` are the median per-frame wall-clock time of the tracking loop (crop,
copy, forward, window, decode) read back from the ``<seq>_time.txt`` files, frame 0 (the initialisation) excluded,
pooled over all sequences. The sequences run in parallel Ray tasks with one thread each (``threads_per_task``),
so this is the speed of one tracker on one core (or one GPU) while the others run beside it; a local Ray instance
started by ``ct-ray eval`` declares one CPU per core so that the tasks do not share cores. ``forward_ms`` /
``forward_fps`` (``profile``) are network-only latencies measured alone after a warm-up (what papers report).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ct_ray.data.checks import box_report
from ct_ray.data.sequences import Sequence
from ct_ray.evaluation.reports import (
    PER_SEQUENCE_FILE,
    SCORES_FILE,
    ScoreReport,
    claim_results_dir,
    first_frame_only,
    load_sequences,
    metric_prefix,
    read_times,
    score_results,
    timing_summary,
    write_per_sequence_csv,
)
from ct_ray.evaluation.results import (
    result_complete,
    time_path,
    write_got10k_submission,
    write_trackingnet_submission,
)
from ct_ray.errors import InputError
from ct_ray.fileio import atomic_write_text
from ct_ray.models import TEACHERS, OneStreamTracker, load_checkpoint
from ct_ray.orchestration import console, mlflow_runs
from ct_ray.tracking.runtimes import PreparedRuntime, RuntimeSpec, prepare_runtime


@dataclass
class EvalRequest:
    """What one ``ct-ray eval`` does; checked like every config (``ct_ray.config.from_dict``)."""

    checkpoint: str
    dataset: str
    kind: str = "ct-ray"
    num_heads: int | None = None
    split: str | None = None
    name: str | None = None
    out: str | None = None
    max_sequences: int | None = None
    exclude_invalid: bool = False
    use_gpu: bool = False
    cpus_per_task: float = 1.0
    threads_per_task: int = 1
    got10k_submission: bool = False
    trackingnet_submission: bool = False
    profile: bool = False
    mlflow: bool = True
    mlflow_uri: str | None = None
    experiment: str = "ct-ray"
    progress: bool = True
    runtime: str = "torch"
    provider: str = "cpu"
    int8: bool = False
    graphs: str | None = None
    address: str | None = None  # a Ray cluster to attach to (else RAY_ADDRESS, else a local instance)

    def __post_init__(self) -> None:
        self.runtime_spec  # checks runtime / provider / int8
        if self.kind not in TEACHERS:
            raise ValueError(f"kind {self.kind!r} is not one of {sorted(TEACHERS)}")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"max_sequences must be at least 1, got {self.max_sequences}")
        if self.cpus_per_task <= 0 or self.threads_per_task < 1:
            raise ValueError("cpus_per_task must be > 0 and threads_per_task >= 1")


    @property
    def runtime_spec(self) -> RuntimeSpec:
        return RuntimeSpec(self.runtime, self.provider, self.int8)


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
    runtime: str = "torch"


@dataclass
class _Evaluation:
    """What the steps share: the request, the tracker and the sequences, and what each step adds."""

    request: EvalRequest
    model: OneStreamTracker
    meta: dict[str, Any]
    dataset_kind: str
    split: str | None
    sequences: list[Sequence]
    prefix: str
    label: str
    results_dir: Path
    runtime: PreparedRuntime
    boxes: dict = field(default_factory=dict)
    outcome: EvalOutcome | None = None


def _open(request: EvalRequest, log: Callable[[str], None]) -> _Evaluation:
    """Loads the tracker and the sequences, prepares the runtime (an ONNX Runtime that cannot load fails here, before
    any sequence is tracked) and claims the results folder (refused if it holds another tracker's or runtime's)."""
    model, meta = load_checkpoint(request.checkpoint, request.kind, request.num_heads)
    model.eval()
    spec = request.runtime_spec
    runtime = prepare_runtime(model, spec, graphs=request.graphs)
    if spec.name == "onnxruntime" and not request.use_gpu:
        runtime.open(model, "cpu", 1)  # the provider and the graphs' crop sizes, checked on the driver
    dataset_kind, split, sequences = load_sequences(request.dataset, request.split, request.max_sequences)
    for line in box_report(sequences).lines():
        log(f"warning: {line} (they count as misses)")
    suffix = "" if spec.name == "torch" else f"_{spec.label}"
    label = (request.name or f"{Path(request.checkpoint).stem}_{dataset_kind}_{split or 'all'}") + suffix
    results_dir = Path(request.out) if request.out is not None else Path("results") / label
    claim_results_dir(results_dir, request.checkpoint, request.dataset, split, spec.label)
    prefix = metric_prefix(request.name, split, dataset_kind)
    if spec.name != "torch":  # scores through another runtime never overwrite PyTorch's
        prefix = f"{prefix}_{spec.metric_label}"
    return _Evaluation(request, model, meta, dataset_kind, split, sequences, prefix, label, results_dir, runtime)


def _track(job: _Evaluation, log: Callable[[str], None]) -> int:
    """Tracks the sequences whose results are not complete yet, in parallel Ray tasks; returns how many."""
    import ray

    from ct_ray.orchestration.cluster import init_ray
    from ct_ray.orchestration.distributed_eval import evaluate_sequences

    request = job.request
    console.log_to(job.results_dir / "ray.log")
    # A local instance gets one logical CPU per core (not init_ray's default of two), so that the parallel tracking
    # tasks do not share cores and the tracking-loop times stay those of one tracker per core.
    init_ray(request.address, num_cpus=os.cpu_count() or 1)
    if request.use_gpu and not ray.cluster_resources().get("GPU", 0):
        raise InputError("--gpu: the Ray cluster has no GPU")
    tracked = sum(1 for s in job.sequences if not result_complete(job.results_dir, s.name, len(s)))
    log(f"{len(job.sequences)} sequences of {request.dataset} (split {job.split}, runtime {job.runtime.spec.label}); "
        f"{len(job.sequences) - tracked} already complete in {job.results_dir}")
    job.boxes = evaluate_sequences(job.model, job.sequences, job.results_dir, use_gpu=request.use_gpu,
                                   cpus_per_task=request.cpus_per_task, threads_per_task=request.threads_per_task,
                                   progress=request.progress, description=f"tracking {job.label}",
                                   runtime=job.runtime)
    return tracked


def _write_submissions(job: _Evaluation, log: Callable[[str], None]) -> None:
    request, folder = job.request, job.results_dir
    for sequence in job.sequences:
        if request.got10k_submission:
            write_got10k_submission(folder / "got10k_submission", sequence.name, job.boxes[sequence.name],
                                    read_times(time_path(folder, sequence.name))[:len(sequence)])
        if request.trackingnet_submission:
            write_trackingnet_submission(folder / "trackingnet_submission", sequence.name, job.boxes[sequence.name])
    for name in ("got10k_submission", "trackingnet_submission"):
        if (folder / name).is_dir():
            log(f"server layout: {folder / name}")


def _score(job: _Evaluation, timing: dict[str, Any], log: Callable[[str], None]
           ) -> tuple[ScoreReport | None, list[Path]]:
    """Scores the folder (``scores.json``, the per-sequence CSV, success and precision plots) when the split can be
    scored locally."""
    from ct_ray.evaluation.plots import benchmark_plots

    scores_path = job.results_dir / SCORES_FILE
    if first_frame_only(job.sequences):
        log(f"{job.dataset_kind} split {job.split!r} has ground truth for the first frame only: not scored locally")
        atomic_write_text(scores_path, json.dumps({"dataset_kind": job.dataset_kind, "split": job.split,
                                                   "scored": False, "timing": timing}, indent=2) + "\n")
        return None, [scores_path]
    report = score_results(job.results_dir, job.sequences, job.dataset_kind, job.split, job.request.exclude_invalid)
    atomic_write_text(scores_path, json.dumps({**report.to_dict(), "timing": timing}, indent=2) + "\n")
    artifacts = [scores_path, write_per_sequence_csv(report, job.results_dir / PER_SEQUENCE_FILE,
                                                     timing["per_sequence"])]
    artifacts.extend(benchmark_plots({job.label: report.benchmark}, job.results_dir))
    return report, artifacts


def _size(job: _Evaluation) -> dict[str, Any]:
    """Parameters and FLOPs; with ``profile`` also the network-only latency on the evaluation's device."""
    import torch

    from ct_ray.models import count_parameters
    from ct_ray.tracking.speed import count_flops, profile_tracker

    if job.request.profile:
        device = "cuda" if job.request.use_gpu and torch.cuda.is_available() else "cpu"
        speed = profile_tracker(job.model, device, runtime=job.runtime)
        return {"params": speed.params, "flops": speed.flops, "forward_ms": speed.forward_ms,
                "forward_fps": speed.forward_fps, "network_ms": speed.network_ms, "profile_device": speed.device}
    return {"params": count_parameters(job.model), "flops": count_flops(job.model.cpu())}


def _model_tags(model, meta: Mapping[str, Any]) -> dict[str, str]:
    tags = {"depth": str(len(model.blocks))}
    if meta.get("teacher_stages") is not None:
        tags["student_depth"] = str(len(model.blocks))
        tags["stage_division"] = json.dumps(list(meta["teacher_stages"]))
    return tags


def _log_to_mlflow(job: _Evaluation, uri: str) -> None:
    """Scores, timing and size into the checkpoint's own run when this store holds it, else into a new run."""
    outcome, request, prefix = job.outcome, job.request, job.outcome.prefix
    checkpoint = str(Path(request.checkpoint).resolve())
    run_id = job.meta.get("mlflow_run_id")
    created = not mlflow_runs.run_exists(uri, run_id)
    if created:
        tags = {"kind": job.meta.get("kind") or "external", "source_checkpoint": checkpoint,
                **_model_tags(job.model, job.meta), **mlflow_runs.environment_tags()}
        if run_id:
            tags["checkpoint_run_id_missing"] = run_id  # the checkpoint names a run this store does not hold
        run_id = mlflow_runs.start_run(uri, request.experiment, job.label, params={}, tags=tags)
    metrics: dict[str, float] = {}
    if outcome.report is not None:
        metrics.update({f"{prefix}_{key}": value for key, value in outcome.report.metrics().items()})
    # Speed on another runtime than PyTorch eager is named after it (onnxruntime_cpu_tracking_fps, ...).
    runtime = "" if job.runtime.spec.name == "torch" else f"{job.runtime.spec.metric_label}_"
    for key in ("tracking_ms", "tracking_fps"):
        if outcome.timing.get(key) is not None:
            metrics[f"{runtime}{key}"] = outcome.timing[key]
    for key in ("params", "flops"):
        if key in outcome.size:
            metrics[key] = float(outcome.size[key])
    for key in ("forward_ms", "forward_fps", "network_ms"):
        if key in outcome.size:
            metrics[f"{runtime}{key}" if key == "network_ms" else key] = float(outcome.size[key])
    failed = True
    try:
        mlflow_runs.log_metrics(uri, run_id, metrics, step=0)
        mlflow_runs.set_tags(uri, run_id, {f"eval.{prefix}.dataset": request.dataset,
                                           f"eval.{prefix}.split": str(job.split),
                                           f"eval.{prefix}.checkpoint": checkpoint,
                                           f"eval.{prefix}.runtime": job.runtime.spec.label,
                                           f"eval.{prefix}.results_dir": str(outcome.results_dir.resolve())})
        for path in outcome.artifacts:
            mlflow_runs.log_artifact(uri, run_id, path, f"eval/{prefix}")
        if not created:  # the checkpoint's own run: its registered tracker gets the scores too
            from ct_ray.orchestration.mlflow_model import tag_model_versions

            tag_model_versions(uri, run_id, {k: v for k, v in metrics.items()
                                             if k.startswith(prefix) or "tracking" in k})
        failed = False
    finally:
        if created:
            mlflow_runs.end_run(uri, run_id, failed=failed)
    outcome.mlflow_run_id, outcome.mlflow_run_created = run_id, created


def evaluate_checkpoint(request: EvalRequest, log: Callable[[str], None] = print) -> EvalOutcome:
    """Runs ``request``: open, track, server layouts, score, size, MLflow (see the module docstring)."""
    uri = None
    if request.mlflow:
        uri = mlflow_runs.resolve_tracking_uri(request.mlflow_uri)
        mlflow_runs.check_reachable(uri)
    job = _open(request, log)
    tracked = _track(job, log)
    if request.got10k_submission or request.trackingnet_submission:
        _write_submissions(job, log)
    timing = timing_summary(job.results_dir, [s.name for s in job.sequences])
    report, artifacts = _score(job, timing, log)
    job.outcome = EvalOutcome(results_dir=job.results_dir, prefix=job.prefix, sequences=len(job.sequences),
                              tracked=tracked, report=report, timing=timing, size=_size(job), artifacts=artifacts,
                              runtime=job.runtime.spec.label)
    if uri is not None:
        _log_to_mlflow(job, uri)
    return job.outcome
