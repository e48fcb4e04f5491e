"""``ct-ray quickstart`` and ``ct-ray ablations``: whole studies on the synthetic benchmark, from data to one table.

A study trains (or reuses) a teacher, trains a set of *arms* (CompressTracker, the paper's baselines, ablations of
CompressTracker), each for one or more seeds, evaluates every tracker on the held-out test sequences of the
benchmark and prints one table: AUC, precision, normalised precision, tracking FPS, speed-up and AUC retention
against the teacher, FLOPs ratio, and each arm's AUC difference to the first arm (CompressTracker), paired over seeds
and test sequences, with a 95% bootstrap interval over the sequences (``paired_difference``).

The design (presets, arms, ablations) is ``ct_ray.studies.design``; the statistics and tables are plain numpy in
``ct_ray.studies.paired_stats`` and ``ct_ray.studies.tables``. This module is the driver.

Every run is an ordinary ``ct-ray train`` run (Ray Train, MLflow) nested under one MLflow parent run per study;
every evaluation an ordinary ``ct-ray eval`` (its scores land in the run of the checkpoint, prefix ``test``). Trackers
are the *final* checkpoints: validation during training scores the test sequences for monitoring only, so choosing
the "best" checkpoint by it would select on the test set. A study run again in the same folder reuses finished
runs and evaluations and continues an interrupted training run.

Speed is measured apart from the evaluation, which tracks several sequences at once (in parallel Ray tasks) and may
reuse results timed under other load: after the evaluations, every tracker's whole tracking step (crop, forward,
decode, map back; batch 1) is timed in a Ray task of one CPU (one thread) or one GPU, the trackers in turn over
three rounds, each keeping its fastest round (``measure_speeds``; each round is the measurement of ``ct-ray profile
--threads 1``), so the FPS and speed-up columns of one table come from the same conditions.

A study ends with its own wall clock by phase (``duration_line``: Ray and MLflow start, the teacher with its data,
the student runs, the evaluations, the speed timing), printed, in the JSON (``wall_seconds``, ``reused_runs``), the
Markdown and the study's MLflow run (``wall_minutes_*``): the presets' time budgets are claims about that figure plus
the set-up, and a run on any machine states its own.

``evaluation.heldout_sequences`` (``--heldout-sequences N``) scores the same trackers on N further sequences that
the study generates like its benchmark but from another seed (``data/heldout-N``; no run trained or validated on
them), so that a comparison rests on more than the benchmark's few test sequences. Their results go to
``results-heldout-N/`` and the study's files and MLflow run get the suffix ``_heldout-N``.

Each study records the fingerprints of its data (``data_fingerprint``: SHA-256 of the sequences it scores on and of
a probe of its teacher's training samples) in its JSON and as tags of its MLflow run; against a preset's reference it
says whether they are the reference runs' bytes, so that a difference can be traced to the data or to training.
"""
from __future__ import annotations

import contextlib

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ct_ray.config import ConfigError, flatten, from_dict, read_yaml, to_dict
from ct_ray.errors import UserError
from ct_ray.fileio import atomic_write_text
from ct_ray.orchestration import console, mlflow_runs
from ct_ray.studies.design import TEACHER_FILE, Arm, StudyPreset, rebase
from ct_ray.studies.paired_stats import Row, TrackerResult, gap_to, summarise
from ct_ray.studies.reference import (PresetReference, ReferenceCheck, check_against, data_line, format_checks,
                                     kernels_line)
from ct_ray.studies.tables import format_markdown, format_table, gap_note, row_metrics, train_gap_note
from ct_ray.training.experiment import ExperimentConfig, RunKind, check_experiment


# ------------------------------------------------------------------------------------------------------------ study
@dataclass
class StudyOutcome:
    out: Path
    rows: list[Row]
    results: list[TrackerResult]
    table: str
    files: dict[str, Path]
    mlflow_uri: str | None
    mlflow_run_id: str | None
    notes: list[str] = dataclasses.field(default_factory=list)
    reference: list[str] = dataclasses.field(default_factory=list)  # the check against the preset's reference
    durations: dict[str, float] = dataclasses.field(default_factory=dict)  # wall-clock seconds by phase, "total"
    duration_line: str = ""


TIMED_PHASES = ("start", "teacher", "students", "evaluation", "speed")
"""A study's phases on the wall clock: Ray and MLflow up, the teacher (its benchmark generated on first use), the
student runs, the evaluations (with the held-out sequences' generation and the teacher's training sequences), the
timing of the tracking steps (with ``evaluation.deploy_runtime``, also the scoring and timing through that runtime).
``total`` ends there: writing the outputs and the MLflow plots afterwards take seconds."""


class _Laps:
    """Wall-clock seconds of a study's phases (``TIMED_PHASES``), taken as each one ends."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = now - self.last
        self.last = now

    def durations(self) -> dict[str, float]:
        return {**self.seconds, "total": time.monotonic() - self.started}


def duration_line(durations: dict[str, float], reused: Sequence[str], students: int) -> str:
    """How long a study took on this machine, by phase (minutes): what the presets' time budgets and the README's
    timings are measured as, so that a run on another machine states its own. ``reused``: the runs a rerun took
    from its folder (their training time is not in the figures)."""
    minutes = {phase: seconds / 60 for phase, seconds in durations.items()}
    reused_students = sum(name != "teacher" for name in reused)
    teacher = "reused" if "teacher" in reused else "with its data"
    runs = f"{students} student run{'s' if students != 1 else ''}"
    if reused_students:
        runs += f" ({reused_students} reused)"
    return (f"wall clock: {minutes['total']:.1f} min here without the set-up (start {minutes.get('start', 0):.1f}, "
            f"teacher {minutes.get('teacher', 0):.1f} {teacher}, {runs} {minutes.get('students', 0):.1f}, "
            f"evaluation {minutes.get('evaluation', 0):.1f}, speed timing {minutes.get('speed', 0):.1f})")


TRAIN_SEQUENCES = 20
"""Training sequences the teacher is scored on, beside the test sequences, to measure its train - test gap."""


def training_sequences(teacher: ExperimentConfig, out: Path) -> ScoringSet:
    """Sequences the teacher trained on: the stream's first sequences of epoch 1, cut to the length of the
    benchmark's test sequences (``data.synth.frames``) so that the train and test AUCs are over sequences of one
    length (longer sequences score lower); or the first of the benchmark's training split when it trained on shards
    of it."""
    from ct_ray.training.experiment import DataSource

    if teacher.data.source is DataSource.STREAM:
        from ct_ray.data.stream import write_stream_sequences

        frames = teacher.data.synth.frames if teacher.data.synth is not None else None
        suffix = f"-{frames}f" if frames else ""
        root = write_stream_sequences(out / "data" / f"train-sequences{suffix}", teacher.data.stream,
                                      teacher.run.seed, TRAIN_SEQUENCES, frames=frames)
        return ScoringSet(f"synthetic:{root}", "test", out / f"results-train{suffix}", "train")
    return ScoringSet(teacher.data.val_dataset, "train", out / "results-train", "train")


_REUSE_IGNORED = ("scaling.", "mlflow.")


def check_reusable(config: ExperimentConfig, run_dir: Path) -> None:
    """Refuses to reuse or continue the run in ``run_dir`` if it was made with another config than ``config``
    (hardware and MLflow settings aside), naming the keys that differ: a study folder holds one study."""
    from ct_ray.orchestration.train_launcher import CONFIG_FILE

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    stored = flatten(to_dict(from_dict(ExperimentConfig, read_yaml(path))))
    current = flatten(to_dict(config))
    differ = sorted(key for key in set(stored) | set(current)
                    if not key.startswith(_REUSE_IGNORED) and stored.get(key) != current.get(key))
    if differ:
        shown = ", ".join(f"{k} ({stored.get(k)!r} there, {current.get(k)!r} now)" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise ConfigError(f"{run_dir} was trained with another config: {shown}{more}. A study folder holds one "
                          "study: pass another --out, or remove that run")


def _train(config: ExperimentConfig, parent: str | None, ray_address: str | None, say: Callable[[str], None]
           ) -> tuple[str, float | None]:
    """Trains ``config`` unless its final tracker is already there; returns (final tracker, training seconds)."""
    from ct_ray.orchestration.train_launcher import FINAL_TRACKER, train

    final = Path(config.run.storage_path) / config.run.name / FINAL_TRACKER
    if final.is_file():
        say(f"  {config.run.name}: finished earlier, reusing {final}")
        return str(final), None
    say(f"  training {config.run.name} ({config.kind.value}, {config.run.epochs} epochs)")
    start = time.monotonic()
    outcome = train(config, ray_address=ray_address, parent_run_id=parent)
    seconds = time.monotonic() - start
    say(f"  {config.run.name}: done in {seconds / 60:.1f} min")
    return outcome.final_tracker, seconds


@dataclass(frozen=True)
class ScoringSet:
    """Where a study scores its trackers: a dataset and split, the results folder and the MLflow metric prefix."""

    dataset: str
    split: str
    results: Path
    prefix: str


def scoring_set(preset: StudyPreset, out: Path) -> ScoringSet:
    """The study's test set (see the module docstring); generates the held-out sequences if they are missing."""
    evaluation, benchmark = preset.evaluation, rebase(preset.teacher, out).data.val_dataset
    count = evaluation.heldout_sequences
    if not count:
        return ScoringSet(benchmark, evaluation.split, out / "results", "test")
    from ct_ray.data.synth import generate_benchmark

    synth = preset.teacher.data.synth
    root = out / "data" / f"heldout-{count}"
    generate_benchmark(root, sequences=count, frames=synth.frames, seed=synth.seed + 1, preset=synth.preset,
                       frame_size=(synth.height, synth.width), test_fraction=0.0, progress=True)
    return ScoringSet(f"synthetic:{root}", "all", out / f"results-heldout-{count}", f"heldout_{count}")


def _worker_kernels(config: ExperimentConfig) -> dict[str, str]:
    """``kernels_tags`` where ``config``'s training workers run: a Ray task with a CPU worker's CPUs (Ray gives it
    as many threads); none for GPU workers."""
    import ray

    if config.scaling.use_gpu:
        return {}
    return ray.get(ray.remote(num_cpus=config.scaling.cpus_per_worker)(mlflow_runs.kernels_tags).remote())


def data_fingerprint(teacher: ExperimentConfig, tests: ScoringSet) -> dict[str, str]:
    """SHA-256 digests of the study's data (``ct_ray.data.fingerprint``): the sequences it scores on (when they are
    a synthetic benchmark, rendered on this machine; a real dataset's files are what they are), and a probe of its
    teacher's training samples drawn with seed 0 whatever the teacher's seed, so that the runs of every seed (and
    the preset's reference runs) share one probe."""
    from ct_ray.data import load_dataset
    from ct_ray.data.fingerprint import sequences_digest
    from ct_ray.evaluation.reports import resolve_split
    from ct_ray.training.inputs import training_samples_probe

    samples = training_samples_probe(teacher)
    kind = tests.dataset.partition(":")[0]
    if kind != "synthetic":
        return {"training_samples": samples}
    key = "test_sequences" if tests.prefix == "test" else f"{tests.prefix}_sequences"
    sequences = sequences_digest(load_dataset(tests.dataset, resolve_split(kind, tests.split)))
    return {key: sequences, "training_samples": samples}


def study_fingerprint(teacher: ExperimentConfig, tests: ScoringSet, say: Callable[[str], None]) -> dict[str, str]:
    """``data_fingerprint``, or none (said) when the data cannot be read any more (shards removed since the teacher
    trained, storage out of reach): the fingerprint documents a study, it must not fail one at its end."""
    try:
        return data_fingerprint(teacher, tests)
    except (UserError, OSError, ValueError) as exc:
        say(f"  no data fingerprint: {exc}")
        return {}


def _evaluate(label: str, seed: int | None, run_name: str, checkpoint: str, tests: ScoringSet,
              preset: StudyPreset, uri: str | None, experiment: str, say: Callable[[str], None],
              train_s: float | None, max_sequences: int | None = None, runtime: str = "torch") -> TrackerResult:
    from ct_ray.orchestration.evaluate import EvalRequest, evaluate_checkpoint
    from ct_ray.tracking.runtimes import RuntimeSpec

    evaluation = preset.evaluation
    spec = RuntimeSpec.parse(runtime)
    folder = run_name if spec.name == "torch" else f"{run_name}_{spec.label}"
    request = EvalRequest(checkpoint=checkpoint, dataset=tests.dataset, split=tests.split, name=tests.prefix,
                          out=str(tests.results / folder),
                          max_sequences=max_sequences or evaluation.max_sequences,
                          use_gpu=evaluation.use_gpu, mlflow=uri is not None, mlflow_uri=uri, experiment=experiment,
                          cpus_per_task=evaluation.cpus_per_task, progress=False, runtime=spec.name,
                          provider=spec.provider, int8=spec.int8)
    outcome = evaluate_checkpoint(request, log=lambda _: None)
    scores = outcome.report.metrics()
    result = TrackerResult(label=label, seed=seed, run_name=run_name, checkpoint=checkpoint,
                           depth=_depth(checkpoint), auc=scores["auc"], precision=scores["precision"],
                           norm_precision=scores["norm_precision"], tracking_ms=outcome.timing["tracking_ms"],
                           flops=int(outcome.size["flops"]), params=int(outcome.size["params"]),
                           mlflow_run_id=outcome.mlflow_run_id, train_s=train_s,
                           sequence_auc={s.name: s.auc for s in outcome.report.benchmark.sequences},
                           success_curve=outcome.report.benchmark.success_curve.tolist(),
                           precision_curve=outcome.report.benchmark.precision_curve.tolist())
    say(f"  {run_name}: {tests.prefix} AUC {result.auc:.1f}, precision {result.precision:.1f}"
        f"{'' if spec.name == 'torch' else f' ({spec.label})'}")
    return result


def measure_speed(checkpoint: str, use_gpu: bool = False, iterations: int = 100, warmup: int = 10,
                  runtime: str = "torch") -> float:
    """Median milliseconds of one whole tracking step of ``checkpoint`` (see :func:`measure_speeds`)."""
    return measure_speeds([checkpoint], use_gpu, rounds=1, iterations=iterations, warmup=warmup, runtime=runtime)[0]


def measure_speeds(checkpoints: list[str], use_gpu: bool = False, rounds: int = 3, iterations: int = 50,
                   warmup: int = 10, runtime: str = "torch") -> list[float]:
    """Milliseconds of one whole tracking step at batch 1 through ``runtime`` for each checkpoint, in one Ray task
    of one CPU (one thread) or one GPU. The trackers are timed in turn, ``rounds`` times over, and each keeps the
    lowest of its per-round medians: a burst of other load on the machine then slows one round of every tracker
    rather than all of one tracker's, which on a shared 2-core machine moved single timings by up to 1.6x."""
    import ray

    def task(paths: list[str], gpu: bool) -> list[float]:
        import torch

        from ct_ray.models import load_tracker
        from ct_ray.tracking.speed import profile_tracker

        torch.set_num_threads(1)
        device = "cuda" if gpu else "cpu"
        best = [float("inf")] * len(paths)
        for _ in range(rounds):
            for index, path in enumerate(paths):
                model = load_tracker(path)[0]
                step = profile_tracker(model, device, iterations=iterations, warmup=warmup,
                                       runtime=runtime).tracking_step_ms
                best[index] = min(best[index], step)
        return best

    remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(task)
    return [float(ms) for ms in ray.get(remote.remote([str(c) for c in checkpoints], use_gpu))]


def _depth(checkpoint: str) -> int:
    from ct_ray.models import load_tracker

    return len(load_tracker(checkpoint)[0].blocks)


def run_study(preset: StudyPreset, out: str | Path, arms: list[Arm], seeds: Sequence[int], *, name: str,
              ray_address: str | None = None, say: Callable[[str], None] = print,
              reference: PresetReference | None = None) -> StudyOutcome:
    """Teacher (trained once, reused), every arm for every seed, every tracker evaluated on the study's test set
    (``scoring_set``); writes ``<name><suffix>.json`` and ``.md`` into ``out`` and logs them to the study's MLflow
    run. With a ``reference`` (the preset's reference quickstarts), the teacher and the three quickstart arms are
    also checked against its prediction intervals (``ct_ray.studies.reference``)."""
    from ct_ray.orchestration.cluster import init_ray

    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    laps = _Laps()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.log_to(out / "ray.log")
    teacher_config = rebase(preset.teacher, out)
    teacher_path = out / TEACHER_FILE
    study_teacher = {"kind": "ct-ray", "path": TEACHER_FILE, "bootstrap": None}
    configs = [(arm, seed, rebase(replace(arm.for_seed(seed), teacher=replace(arm.config.teacher, **study_teacher)),
                                  out))
               for arm in arms for seed in seeds]
    for _, _, config in configs:
        try:
            config.student.division(teacher_config.model.depth)
        except ValueError as exc:
            raise ConfigError(f"{config.run.name}: student: {exc}") from exc
    for config in [teacher_config, *[config for _, _, config in configs]]:
        check_reusable(config, Path(config.run.storage_path) / config.run.name)
    if preset.evaluation.deploy_runtime:  # before any work: the deployed runtime must be installed
        from ct_ray.tracking.runtimes import RuntimeSpec, RuntimeUnavailableError, check_installed

        try:
            check_installed(RuntimeSpec.parse(preset.evaluation.deploy_runtime))
        except RuntimeUnavailableError as exc:
            raise RuntimeUnavailableError(f"evaluation.deploy_runtime: {exc} (or --set "
                                          "evaluation.deploy_runtime=null)") from None
    experiment = preset.compresstracker.mlflow.experiment
    uri = mlflow_runs.resolve_tracking_uri(preset.compresstracker.mlflow.tracking_uri) \
        if preset.compresstracker.mlflow.enabled else None
    if uri:
        mlflow_runs.check_reachable(uri)
    init_ray(ray_address)
    if preset.evaluation.heldout_sequences:
        name = f"{name}_heldout-{preset.evaluation.heldout_sequences}"
    parent = None
    environment = {**mlflow_runs.environment_tags(), **_worker_kernels(teacher_config)}
    if uri:
        params = {"preset": preset.name, "out": str(out), "seeds": list(seeds), "arms": [a.label for a in arms],
                  "heldout_sequences": preset.evaluation.heldout_sequences}
        parent = mlflow_runs.TrackedRun.open(uri, out / f"{name}_run.json", experiment, name, params,
                                             {"kind": "study", **environment})
    parent_id = parent.run_id if parent else None
    laps.lap("start")
    reused: list[str] = []
    with parent if parent is not None else contextlib.nullcontext():  # FINISHED, or FAILED on any error
        say(f"[1/3] teacher: {teacher_config.model.depth} blocks, width {teacher_config.model.embed_dim}, "
            f"{teacher_config.run.epochs} epochs (data generated on first use)")
        if teacher_path.is_file():
            from ct_ray.orchestration.train_launcher import prepare_data

            say(f"  reusing {teacher_path}")
            # A teacher copied into a new study folder: the students need the benchmark (and shards) it was
            # trained with, which only the teacher's run would otherwise generate.
            prepare_data(teacher_config)
            teacher_ckpt, teacher_s = str(teacher_path), None
        else:
            teacher_ckpt, teacher_s = _train(teacher_config, parent_id, ray_address, say)
            tmp = teacher_path.with_suffix(".pt.tmp")
            shutil.copyfile(teacher_ckpt, tmp)
            tmp.replace(teacher_path)
        if teacher_s is None:  # teacher.pt, or its run finished earlier
            reused.append("teacher")
        laps.lap("teacher")
        for _, _, config in configs:
            check_experiment(config)
        say(f"[2/3] students: {len(arms)} arm(s) x {len(seeds)} seed(s), {preset.compresstracker.run.epochs} "
            "epochs each")
        trained = [(arm, seed, config, *_train(config, parent_id, ray_address, say))
                   for arm, seed, config in configs]
        reused += [config.run.name for _, _, config, _, seconds in trained if seconds is None]
        laps.lap("students")
        tests = scoring_set(preset, out)
        say(f"[3/3] evaluation on the {tests.split} sequences of {tests.dataset}")
        fingerprint = study_fingerprint(teacher_config, tests, say)
        if uri and fingerprint:
            mlflow_runs.set_tags(uri, parent_id, {f"data.{k}_sha256": v for k, v in fingerprint.items()})
        teacher = _evaluate("teacher", None, teacher_config.run.name, str(teacher_path), tests, preset,
                            uri, experiment, say, teacher_s)
        seen = training_sequences(teacher_config, out)
        on_train = _evaluate("teacher", None, teacher_config.run.name, str(teacher_path), seen, preset, uri,
                             experiment, say, None, max_sequences=TRAIN_SEQUENCES)
        if uri and teacher.mlflow_run_id:
            mlflow_runs.log_metrics(uri, teacher.mlflow_run_id, {f"{tests.prefix}_train_gap": on_train.auc - teacher.auc},
                                    step=0)
        per_arm: dict[str, list[TrackerResult]] = {}
        for arm, seed, config, checkpoint, seconds in trained:
            per_arm.setdefault(arm.label, []).append(
                _evaluate(arm.label, seed, config.run.name, checkpoint, tests, preset, uri, experiment,
                          say, seconds))
        results = [teacher, *[r for rs in per_arm.values() for r in rs]]
        laps.lap("evaluation")
        say(f"  timing the tracking step of {len(results)} trackers, in turn, 3 rounds")
        timings = measure_speeds([r.checkpoint for r in results], preset.evaluation.use_gpu)
        for result, milliseconds in zip(results, timings):
            result.tracking_ms = milliseconds
            if uri and result.mlflow_run_id:
                mlflow_runs.log_metrics(uri, result.mlflow_run_id, {"tracking_step_ms": result.tracking_ms,
                                                                    "tracking_step_fps": 1000.0 / result.tracking_ms},
                                        step=0)
        deploy = preset.evaluation.deploy_runtime
        if deploy and per_arm:
            first = next(iter(per_arm.values()))
            say(f"  {first[0].label} through {deploy}: scores and tracking step")
            for result in first:
                through = _evaluate(result.label, result.seed, result.run_name, result.checkpoint, tests, preset,
                                    uri, experiment, say, None, runtime=deploy)
                result.deployed = {"runtime": deploy, "auc": through.auc,
                                   "tracking_ms": measure_speed(result.checkpoint, preset.evaluation.use_gpu,
                                                                runtime=deploy)}
        laps.lap("speed")
        durations = laps.durations()
        timing = duration_line(durations, reused, len(configs))
        rows = summarise(teacher, per_arm)
        alone = [arms for label, arms in per_arm.items() if arms and arms[0].label == "student only"]
        scored_on = "held-out" if preset.evaluation.heldout_sequences else "test"
        notes = [note for note in (gap_note(gap_to(alone[0], teacher), scored_on=scored_on) if alone else None,
                                   train_gap_note(on_train.auc, teacher.auc, len(on_train.sequence_auc), scored_on))
                 if note]
        checks = _reference_checks(reference, arms, teacher, per_arm) if reference else []
        lines = format_checks(reference, checks) if checks else []
        same_data = data_line(reference, fingerprint) if checks else None
        if same_data:
            lines.append(same_data)
        same_kernels = kernels_line(reference, environment.get("kernels_sha256")) if checks else None
        if same_kernels:
            lines.append(same_kernels)
        if reference and not checks:
            say("  no reference check: it needs the CompressTracker, student-only and distillation arms")
        table = format_table(rows) + "".join(f"\n{note}" for note in notes)
        files = _write_outputs(out, name, preset, rows, results, notes, checks, lines, durations, reused, timing,
                               fingerprint, environment=environment)
        if parent is not None:
            for path in files.values():
                mlflow_runs.log_artifact(uri, parent_id, path)
            metrics = row_metrics(rows)
            if checks:
                metrics.update(reference_within=float(sum(c.within for c in checks)),
                               reference_quantities=float(len(checks)))
            metrics.update({f"wall_minutes_{phase}": seconds / 60 for phase, seconds in durations.items()})
            mlflow_runs.log_metrics(uri, parent_id, metrics, step=0)
            _describe_study(parent, experiment, name, rows, results, notes, out, lines, timing)
    return StudyOutcome(out=out, rows=rows, results=results, table=table, files=files, mlflow_uri=uri,
                        mlflow_run_id=parent_id, notes=notes, reference=lines, durations=durations,
                        duration_line=timing)


def _reference_checks(reference: PresetReference, arms: list[Arm], teacher: TrackerResult,
                      per_arm: dict[str, list[TrackerResult]]) -> list[ReferenceCheck]:
    """The study's AUCs (seed means) against the reference; none when an arm of the quickstart is missing."""
    kinds: dict[RunKind, str] = {}
    for arm in arms:  # the first arm of each kind: CompressTracker comes before its ablations
        kinds.setdefault(arm.config.kind, arm.label)
    means = {}
    for kind in (RunKind.COMPRESSTRACKER, RunKind.STUDENT_ONLY, RunKind.DISTILLATION):
        results = per_arm.get(kinds.get(kind, ""), [])
        if not results:
            return []
        means[kind] = float(np.mean([r.auc for r in results]))
    return check_against(reference, teacher.auc, means[RunKind.COMPRESSTRACKER], means[RunKind.STUDENT_ONLY],
                         means[RunKind.DISTILLATION])


def _code_block(lines: Sequence[str]) -> str:
    """The reference check under a Markdown table (its columns are aligned with spaces)."""
    return "\n\n```\n" + "\n".join(lines) + "\n```" if lines else ""


def _describe_study(parent: mlflow_runs.TrackedRun, experiment: str, name: str, rows: list[Row],
                    results: list[TrackerResult], notes: list[str], out: Path,
                    reference_lines: Sequence[str] = (), timing: str = "") -> None:
    """The study run's page: the table as its description with a link to every tracker's run, and the plots a reader
    looks at (success and precision of all trackers, AUC against FPS, the arms' training curves)."""
    from ct_ray.evaluation.plots import curve_plot, speed_accuracy_plot, training_curves_plot
    from ct_ray.evaluation.metrics import PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS

    experiment_id = mlflow_runs.experiment_id(parent.uri, experiment)
    links = [f"[{r.run_name}](#/experiments/{experiment_id}/runs/{r.mlflow_run_id})" for r in results
             if r.mlflow_run_id]
    parent.describe(f"## {name}\n\n{format_markdown(rows, notes)}{_code_block(reference_lines)}\n\n"
                    f"{timing}\n\nRuns: {', '.join(links)}\n")
    plots = out / "plots" / name
    by_arm: dict[str, list[TrackerResult]] = {}
    for result in results:
        by_arm.setdefault(result.label, []).append(result)

    def mean(curves: list[list[float]]) -> list[float]:
        return np.mean(np.asarray(curves), axis=0).tolist()

    success = {label: (SUCCESS_THRESHOLDS, mean([r.success_curve for r in rs]), float(np.mean([r.auc for r in rs])))
               for label, rs in by_arm.items() if all(r.success_curve for r in rs)}
    precision = {label: (PRECISION_THRESHOLDS, mean([r.precision_curve for r in rs]),
                         float(np.mean([r.precision for r in rs]))) for label, rs in by_arm.items()
                 if all(r.precision_curve for r in rs)}
    files = []
    if success:
        files.append(curve_plot(success, plots / "success.png", "Overlap threshold", "Overlap precision [%]",
                                f"Success: {name}", "AUC"))
        files.append(curve_plot(precision, plots / "precision.png", "Location error threshold [px]",
                                "Distance precision [%]", f"Precision: {name}", "P@20"))
    points = {f"{row.label} ({row.flops_ratio:.2f}x FLOPs)" if row.flops_ratio else row.label: (row.fps, row.auc[0])
              for row in rows}
    files.append(speed_accuracy_plot(points, plots / "auc_vs_fps.png", title=f"AUC against tracking FPS: {name}"))
    histories = {}
    client = mlflow_runs.client(parent.uri)
    for result in results:
        if result.mlflow_run_id:
            histories[result.run_name] = {
                metric: [(m.step, m.value) for m in client.get_metric_history(result.mlflow_run_id, metric)]
                for metric in ("loss_total", "val_auc")}
    if histories:
        files.append(training_curves_plot(histories, plots / "training_curves.png", title=f"Training: {name}"))
    for path in files:
        mlflow_runs.log_artifact(parent.uri, parent.run_id, path, "plots")


def _write_outputs(out: Path, name: str, preset: StudyPreset, rows: list[Row], results: list[TrackerResult],
                   notes: list[str], checks: Sequence[ReferenceCheck] = (), reference_lines: Sequence[str] = (),
                   durations: dict[str, float] | None = None, reused: Sequence[str] = (), timing: str = "",
                   fingerprint: dict[str, str] | None = None, *,
                   environment: dict[str, str]) -> dict[str, Path]:
    summary = {"study": name, "preset": preset.name, "preset_config": to_dict(preset),
               "rows": [r.to_dict() for r in rows], "trackers": [dataclasses.asdict(r) for r in results],
               "notes": notes, "reference_check": [c.to_dict() for c in checks],
               "wall_seconds": {k: round(v, 1) for k, v in (durations or {}).items()}, "reused_runs": list(reused),
               "environment": environment, "data_fingerprint": fingerprint or {}}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(md_path, format_markdown(rows, notes) + _code_block(reference_lines)
                      + (f"\n\n{timing}" if timing else "") + "\n")
    return {"json": json_path, "markdown": md_path}


