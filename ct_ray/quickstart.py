"""``ct-ray quickstart`` and ``ct-ray ablations``: whole studies on the synthetic benchmark, from data to one table.

A study trains (or reuses) a teacher, trains a set of *arms* (CompressTracker, the paper's baselines, ablations of
CompressTracker), each for one or more seeds, evaluates every tracker on the held-out test sequences of the
benchmark and prints one table: AUC, precision, normalised precision, tracking FPS, speed-up and AUC retention
against the teacher, FLOPs ratio, and each arm's AUC difference to the first arm (CompressTracker), paired over seeds
and test sequences, with a 95% bootstrap interval over the sequences (``paired_difference``).

- A *preset* (``ct_ray/presets/<name>.yaml``, typed as ``StudyPreset``) holds the teacher run and the
  CompressTracker run; its paths are relative to the study folder (``--out``). The baselines (student alone;
  classic distillation) are derived from the CompressTracker run by ``baseline_arms``, so they share its
  budget (epochs, steps, batch, data, optimiser) by construction.
- An *ablation* (``experiments/ablations/*.yaml``, typed as ``AblationSpec``) is a label and ``key=value``
  overrides applied to the preset's CompressTracker run.

Every run is an ordinary ``ct-ray train`` run (Ray Train, MLflow) nested under one MLflow parent run per study;
every evaluation an ordinary ``ct-ray eval`` (its scores land in the run of the checkpoint, prefix ``test``). Trackers
are the *final* checkpoints: validation during training scores the test sequences for monitoring only, so choosing
the "best" checkpoint by it would select on the test set. A study run again in the same folder reuses finished
runs and evaluations and continues an interrupted training run.

Speed is measured apart from the evaluation, which tracks several sequences at once (one Ray task each) and may
reuse results timed under other load: after the evaluations, every tracker's whole tracking step (crop, forward,
decode, map back; batch 1) is timed one tracker at a time in a Ray task of one CPU (one thread) or one GPU
(``measure_speed``, the same measurement as ``ct-ray profile --threads 1``), so the FPS and speed-up columns of one
table come from the same conditions.

``evaluation.heldout_sequences`` (``--heldout-sequences N``) scores the same trackers on N further sequences that
the study generates like its benchmark but from another seed (``data/heldout-N``; no run trained or validated on
them), so that a comparison rests on more than the benchmark's few test sequences. Their results go to
``results-heldout-N/`` and the study's files and MLflow run get the suffix ``_heldout-N``.
"""
from __future__ import annotations

import enum
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ct_ray import mlflow_utils
from ct_ray.config import ConfigError, apply_overrides, flatten, from_dict, read_yaml, to_dict
from ct_ray.fileio import atomic_write_text
from ct_ray.train.config import ExperimentConfig, RunKind

log = logging.getLogger("ct_ray.quickstart")
TEACHER_FILE = "teacher.pt"


class Preset(enum.Enum):
    """The embedded quickstart presets: ``small`` (about 17 minutes on a 2-core CPU machine) and ``full`` (bigger
    teacher, data and budget; about 80 minutes there)."""

    SMALL = "small"
    FULL = "full"


@dataclass
class EvaluationSection:
    """Which sequences every tracker is scored on: the ``split`` of the study's benchmark or, with
    ``heldout_sequences`` > 0, that many further sequences generated like it from another seed."""

    split: str = "test"
    max_sequences: int | None = None
    heldout_sequences: int = 0
    cpus_per_task: float = 1.0
    use_gpu: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.heldout_sequences, bool) or not isinstance(self.heldout_sequences, int) \
                or self.heldout_sequences < 0:
            raise ValueError(f"heldout_sequences must be an integer >= 0, got {self.heldout_sequences!r}")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"max_sequences must be >= 1, got {self.max_sequences}")
        if self.cpus_per_task <= 0:
            raise ValueError(f"cpus_per_task must be > 0, got {self.cpus_per_task}")


@dataclass
class StudyPreset:
    """A teacher run and a CompressTracker run of it, with paths relative to the study folder."""

    name: str
    teacher: ExperimentConfig
    compresstracker: ExperimentConfig
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)

    def __post_init__(self) -> None:
        if self.teacher.kind is not RunKind.TEACHER:
            raise ValueError(f"teacher.kind must be teacher, got {self.teacher.kind.value}")
        if self.compresstracker.kind is not RunKind.COMPRESSTRACKER:
            raise ValueError(f"compresstracker.kind must be compresstracker, got {self.compresstracker.kind.value}")
        if self.teacher.data.synth is None:
            raise ValueError("teacher.data.synth is required: a study generates its synthetic benchmark")


@dataclass
class AblationSpec:
    """One ablation of CompressTracker: a table label and ``key=value`` overrides of the CompressTracker run."""

    label: str
    overrides: list[str]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.label.strip():
            raise ValueError("label must not be empty")
        if not self.overrides:
            raise ValueError("overrides must name at least one key=value change")


@dataclass(frozen=True)
class Arm:
    """One row of a study: a table label and the run config (seed 0; ``for_seed`` makes the others)."""

    label: str
    config: ExperimentConfig

    def for_seed(self, seed: int) -> ExperimentConfig:
        return replace(self.config, run=replace(self.config.run, seed=seed, name=f"{self.config.run.name}-s{seed}"))


def load_preset(preset: Preset | str | Path, overrides: Sequence[str] = ()) -> StudyPreset:
    """An embedded preset (``Preset`` or its name) or a preset YAML file, with ``section.key=value`` overrides
    (e.g. ``teacher.run.epochs=60``) applied before the checks."""
    if isinstance(preset, str) and preset in {p.value for p in Preset}:
        preset = Preset(preset)
    if isinstance(preset, Preset):
        with resources.as_file(resources.files("ct_ray.presets") / f"{preset.value}.yaml") as path:
            data = read_yaml(path)
    else:
        data = read_yaml(preset)
    return from_dict(StudyPreset, apply_overrides(data, overrides) if overrides else data)


def with_scaling(preset: StudyPreset, workers: int | None = None, gpu: bool = False) -> StudyPreset:
    """The preset on other hardware: ``workers`` Ray Train workers per run and, with ``gpu``, one GPU per worker and
    GPU evaluation. The budget (epochs, pairs per epoch, batch per worker) stays the preset's."""
    def scaled(config: ExperimentConfig) -> ExperimentConfig:
        scaling = replace(config.scaling, num_workers=workers or config.scaling.num_workers,
                          use_gpu=gpu or config.scaling.use_gpu)
        return replace(config, scaling=scaling)

    return replace(preset, teacher=scaled(preset.teacher), compresstracker=scaled(preset.compresstracker),
                   evaluation=replace(preset.evaluation, use_gpu=gpu or preset.evaluation.use_gpu))


def with_heldout(preset: StudyPreset, sequences: int | None) -> StudyPreset:
    """The preset scored on ``sequences`` generated held-out sequences (None: the preset's own setting)."""
    if sequences is None:
        return preset
    return replace(preset, evaluation=replace(preset.evaluation, heldout_sequences=sequences))


def load_ablation(path: str | Path) -> AblationSpec:
    return from_dict(AblationSpec, read_yaml(path))


def _rebase(path: str | None, out: Path) -> str | None:
    if path is None or "://" in path or Path(path).is_absolute():
        return path
    return str(out / path)


def rebase(config: ExperimentConfig, out: Path) -> ExperimentConfig:
    """The config with its relative paths (shards, benchmark, runs, teacher) placed inside the study folder."""
    val = config.data.val_dataset
    if val:
        kind, _, root = val.partition(":")
        val = f"{kind}:{_rebase(root, out)}"
    return replace(config,
                   teacher=replace(config.teacher, path=_rebase(config.teacher.path, out)),
                   data=replace(config.data, shards=_rebase(config.data.shards, out), val_dataset=val),
                   run=replace(config.run, storage_path=_rebase(config.run.storage_path, out)))


def _derived(config: ExperimentConfig, suffix: str, **changes: Any) -> ExperimentConfig:
    return replace(config, run=replace(config.run, name=f"{config.run.name}-{suffix}"), **changes)


def compresstracker_arm(preset: StudyPreset) -> Arm:
    depth = preset.compresstracker.student.stage_count
    return Arm(f"CompressTracker-{depth}", preset.compresstracker)


def baseline_arms(preset: StudyPreset) -> list[Arm]:
    """The paper's baselines on CompressTracker's budget: the student alone on the ground truth, and classic
    distillation (the student alone with prediction guidance and feature mimicking, no replacement)."""
    ct = preset.compresstracker
    student_only = _derived(ct, "student-only", kind=RunKind.STUDENT_ONLY,
                            losses=replace(ct.losses, guidance=0.0, mimicking=0.0))
    distillation = _derived(ct, "distillation", kind=RunKind.DISTILLATION)
    return [Arm("student only", student_only), Arm("distillation", distillation)]


def ablation_arm(preset: StudyPreset, spec: AblationSpec, slug: str) -> Arm:
    """CompressTracker with the ablation's overrides applied (checked like any config)."""
    data = apply_overrides(to_dict(preset.compresstracker), spec.overrides)
    config = from_dict(ExperimentConfig, data)
    if config.kind is not RunKind.COMPRESSTRACKER:
        raise ConfigError(f"ablation {spec.label!r}: an ablation changes CompressTracker, kind must stay "
                          "compresstracker")
    return Arm(spec.label, _derived(config, slug))


# ---------------------------------------------------------------------------------------------------------- results
@dataclass
class TrackerResult:
    """The test scores, speed and size of one trained tracker."""

    label: str
    seed: int | None
    run_name: str
    checkpoint: str
    depth: int
    auc: float
    precision: float
    norm_precision: float
    tracking_ms: float  # median whole tracking step at batch 1 (measure_speed)
    flops: int
    params: int
    mlflow_run_id: str | None
    train_s: float | None = None
    sequence_auc: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    """An arm's AUC minus the reference arm's: the mean over paired (seed, sequence) scores and a 95% interval."""

    mean: float
    low: float
    high: float
    sequences: int
    seeds: int


def paired_difference(reference: Sequence[TrackerResult], other: Sequence[TrackerResult], resamples: int = 10_000,
                      seed: int = 0) -> Difference | None:
    """``other``'s AUC minus ``reference``'s, paired by seed and by test sequence.

    Per sequence, the AUC differences of the seeds both arms ran are averaged; the estimate is the mean of these
    per-sequence differences (= the difference of the mean AUCs over those seeds). The interval is the 2.5 / 97.5
    percentile of that mean over ``resamples`` bootstrap resamples of the sequences (seeded), so it covers the
    sampling of test sequences and, through the per-sequence averages, part of the seed-to-seed spread. None when
    the arms share no seed or fewer than two scored sequences (no interval).
    """
    by_seed = {r.seed: r.sequence_auc for r in reference}
    pairs = [(by_seed[r.seed], r.sequence_auc) for r in other if r.seed in by_seed]
    if not pairs:
        return None
    names = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs)))
    if len(names) < 2:
        return None
    per_sequence = np.array([[b[n] - a[n] for n in names] for a, b in pairs]).mean(axis=0)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    low, high = np.percentile(per_sequence[draws].mean(axis=1), [2.5, 97.5])
    return Difference(float(per_sequence.mean()), float(low), float(high), len(names), len(pairs))


@dataclass
class Row:
    """One table row: an arm's results over its seeds (mean and sample standard deviation)."""

    label: str
    depth: int
    seeds: list[int | None]
    auc: tuple[float, float]
    precision: tuple[float, float]
    norm_precision: tuple[float, float]
    fps: float
    speed_up: float | None
    flops_ratio: float | None
    retention: tuple[float, float] | None
    delta: Difference | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "depth": self.depth, "seeds": self.seeds,
                "auc_mean": self.auc[0], "auc_std": self.auc[1],
                "precision_mean": self.precision[0], "precision_std": self.precision[1],
                "norm_precision_mean": self.norm_precision[0], "norm_precision_std": self.norm_precision[1],
                "fps": self.fps, "speed_up": self.speed_up, "flops_ratio": self.flops_ratio,
                "auc_retention_mean": self.retention[0] if self.retention else None,
                "auc_retention_std": self.retention[1] if self.retention else None,
                "auc_delta": self.delta.mean if self.delta else None,
                "auc_delta_low": self.delta.low if self.delta else None,
                "auc_delta_high": self.delta.high if self.delta else None}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(teacher: TrackerResult, arms: dict[str, list[TrackerResult]]) -> list[Row]:
    """The teacher's row, then one row per arm: scores as mean and spread over seeds, tracking FPS (median frame
    time averaged over seeds), speed-up (teacher frame time / the arm's), FLOPs ratio, AUC retention (the arm's
    AUC / the teacher's, per seed) and, from the second arm on, the paired AUC difference to the first arm."""
    reference = next(iter(arms.values()), [])

    def row(label: str, results: list[TrackerResult], is_teacher: bool) -> Row:
        ms = statistics.fmean(r.tracking_ms for r in results)
        return Row(label=label, depth=results[0].depth, seeds=[r.seed for r in results],
                   auc=_mean_std([r.auc for r in results]), precision=_mean_std([r.precision for r in results]),
                   norm_precision=_mean_std([r.norm_precision for r in results]), fps=1000.0 / ms,
                   speed_up=None if is_teacher else teacher.tracking_ms / ms,
                   flops_ratio=None if is_teacher else teacher.flops / results[0].flops,
                   retention=None if is_teacher or teacher.auc <= 0 else
                   _mean_std([100.0 * r.auc / teacher.auc for r in results]),
                   delta=None if is_teacher or results is reference else paired_difference(reference, results))

    return [row(f"teacher ({teacher.depth} blocks)", [teacher], True)] + [
        row(label, results, False) for label, results in arms.items()]


def _pm(value: tuple[float, float], seeds: int, digits: int = 1) -> str:
    return f"{value[0]:.{digits}f}" if seeds == 1 else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _delta(delta: Difference | None) -> str:
    return "-" if delta is None else f"{delta.mean:+.1f} [{delta.low:+.1f}, {delta.high:+.1f}]"


def table_cells(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; the last column is the paired AUC difference to the first arm with its 95% interval."""
    reference = rows[1].label if len(rows) > 1 else "the first arm"
    header = ["tracker", "blocks", "seeds", "AUC", "precision", "norm. precision", "FPS", "speed-up", "FLOPs ratio",
              "AUC retention %", f"AUC vs {reference} [95% CI]"]
    body = []
    for r in rows:
        n = len(r.seeds)
        body.append([r.label, str(r.depth), str(n), _pm(r.auc, n), _pm(r.precision, n), _pm(r.norm_precision, n),
                     f"{r.fps:.0f}", "-" if r.speed_up is None else f"{r.speed_up:.2f}x",
                     "-" if r.flops_ratio is None else f"{r.flops_ratio:.2f}x",
                     "-" if r.retention is None else _pm(r.retention, n), _delta(r.delta)])
    return header, body


def format_table(rows: list[Row]) -> str:
    """A plain-text table for the terminal."""
    header, body = table_cells(rows)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines)


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


def _read_record(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _parent_run(uri: str | None, out: Path, experiment: str, name: str, params: dict) -> str | None:
    """The study's MLflow parent run, created once per study folder and reopened when the study runs again."""
    if uri is None:
        return None
    record_path = out / f"{name}_run.json"
    record = _read_record(record_path)
    run_id = record.get("mlflow_run_id")
    if run_id and record.get("mlflow_uri") == uri:
        try:
            mlflow_utils.reopen_run(uri, run_id)
            return run_id
        except Exception:  # noqa: BLE001  (the run is gone from this store: start another)
            log.warning("study run %s not found in %s: starting a new one", run_id, uri)
    run_id = mlflow_utils.start_run(uri, experiment, name, params, {"kind": "study", **mlflow_utils.environment_tags()})
    atomic_write_text(record_path, json.dumps({"mlflow_run_id": run_id, "mlflow_uri": uri}, indent=2) + "\n")
    return run_id


_REUSE_IGNORED = ("scaling.", "mlflow.")


def check_reusable(config: ExperimentConfig, run_dir: Path) -> None:
    """Refuses to reuse or continue the run in ``run_dir`` if it was made with another config than ``config``
    (hardware and MLflow settings aside), naming the keys that differ: a study folder holds one study."""
    from ct_ray.train.launcher import CONFIG_FILE

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
    from ct_ray.train.launcher import train

    final = Path(config.run.storage_path) / config.run.name / "final_tracker.pt"
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


def _evaluate(label: str, seed: int | None, run_name: str, checkpoint: str, tests: ScoringSet,
              preset: StudyPreset, uri: str | None, experiment: str, say: Callable[[str], None],
              train_s: float | None) -> TrackerResult:
    from ct_ray.evaluation.commands import evaluate_checkpoint

    evaluation = preset.evaluation
    outcome = evaluate_checkpoint(checkpoint, tests.dataset, split=tests.split, name=tests.prefix,
                                  out=tests.results / run_name, max_sequences=evaluation.max_sequences,
                                  use_gpu=evaluation.use_gpu, use_mlflow=uri is not None, mlflow_uri=uri,
                                  experiment=experiment,
                                  cpus_per_task=evaluation.cpus_per_task, progress=False, log=lambda _: None)
    scores = outcome.report.metrics()
    result = TrackerResult(label=label, seed=seed, run_name=run_name, checkpoint=checkpoint,
                           depth=_depth(checkpoint), auc=scores["auc"], precision=scores["precision"],
                           norm_precision=scores["norm_precision"], tracking_ms=outcome.timing["tracking_ms"],
                           flops=int(outcome.size["flops"]), params=int(outcome.size["params"]),
                           mlflow_run_id=outcome.mlflow_run_id, train_s=train_s,
                           sequence_auc={s.name: s.auc for s in outcome.report.benchmark.sequences})
    say(f"  {run_name}: {tests.prefix} AUC {result.auc:.1f}, precision {result.precision:.1f}")
    return result


def measure_speed(checkpoint: str, use_gpu: bool = False, iterations: int = 100, warmup: int = 10) -> float:
    """Median milliseconds of one whole tracking step of ``checkpoint`` at batch 1, in a Ray task of one CPU (torch
    on one thread) or one GPU; the caller runs one at a time so that no two measurements share the machine."""
    import ray

    def task(path: str, gpu: bool) -> float:
        import torch

        from ct_ray.models import load_tracker
        from ct_ray.profile import profile_tracker

        torch.set_num_threads(1)
        model = load_tracker(path)[0]
        device = "cuda" if gpu else "cpu"
        return profile_tracker(model, device, iterations=iterations, warmup=warmup).tracking_step_ms

    remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(task)
    return float(ray.get(remote.remote(str(checkpoint), use_gpu)))


def _depth(checkpoint: str) -> int:
    from ct_ray.models import load_tracker

    return len(load_tracker(checkpoint)[0].blocks)


def run_study(preset: StudyPreset, out: str | Path, arms: list[Arm], seeds: Sequence[int], *, name: str,
              ray_address: str | None = None, say: Callable[[str], None] = print) -> StudyOutcome:
    """Teacher (trained once, reused), every arm for every seed, every tracker evaluated on the study's test set
    (``scoring_set``); writes ``<name><suffix>.json`` and ``.md`` into ``out`` and logs them to the study's MLflow
    run."""
    from ct_ray.cluster import init_ray
    from ct_ray.train.launcher import check_experiment

    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
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
    experiment = preset.compresstracker.mlflow.experiment
    uri = mlflow_utils.resolve_tracking_uri(preset.compresstracker.mlflow.tracking_uri) \
        if preset.compresstracker.mlflow.enabled else None
    if uri:
        mlflow_utils.check_reachable(uri)
    init_ray(ray_address)
    if preset.evaluation.heldout_sequences:
        name = f"{name}_heldout-{preset.evaluation.heldout_sequences}"
    parent = _parent_run(uri, out, experiment, name, {"preset": preset.name, "out": str(out), "seeds": list(seeds),
                                                      "arms": [a.label for a in arms],
                                                      "heldout_sequences": preset.evaluation.heldout_sequences})
    failed = True
    try:
        say(f"[1/3] teacher: {teacher_config.model.depth} blocks, width {teacher_config.model.embed_dim}, "
            f"{teacher_config.run.epochs} epochs (data generated on first use)")
        if teacher_path.is_file():
            say(f"  reusing {teacher_path}")
            teacher_ckpt, teacher_s = str(teacher_path), None
        else:
            teacher_ckpt, teacher_s = _train(teacher_config, parent, ray_address, say)
            tmp = teacher_path.with_suffix(".pt.tmp")
            shutil.copyfile(teacher_ckpt, tmp)
            tmp.replace(teacher_path)
        for _, _, config in configs:
            check_experiment(config)
        say(f"[2/3] students: {len(arms)} arm(s) x {len(seeds)} seed(s), {preset.compresstracker.run.epochs} "
            "epochs each")
        trained = [(arm, seed, config, *_train(config, parent, ray_address, say)) for arm, seed, config in configs]
        tests = scoring_set(preset, out)
        say(f"[3/3] evaluation on the {tests.split} sequences of {tests.dataset}")
        teacher = _evaluate("teacher", None, teacher_config.run.name, str(teacher_path), tests, preset,
                            uri, experiment, say, teacher_s)
        per_arm: dict[str, list[TrackerResult]] = {}
        for arm, seed, config, checkpoint, seconds in trained:
            per_arm.setdefault(arm.label, []).append(
                _evaluate(arm.label, seed, config.run.name, checkpoint, tests, preset, uri, experiment,
                          say, seconds))
        results = [teacher, *[r for rs in per_arm.values() for r in rs]]
        say(f"  timing the tracking step of {len(results)} trackers, one at a time")
        for result in results:
            result.tracking_ms = measure_speed(result.checkpoint, preset.evaluation.use_gpu)
            if uri and result.mlflow_run_id:
                mlflow_utils.log_metrics(uri, result.mlflow_run_id, {"tracking_step_ms": result.tracking_ms,
                                                                     "tracking_step_fps": 1000.0 / result.tracking_ms},
                                         step=0)
        rows = summarise(teacher, per_arm)
        table = format_table(rows)
        files = _write_outputs(out, name, preset, rows, results)
        if uri and parent:
            for path in files.values():
                mlflow_utils.log_artifact(uri, parent, path)
            mlflow_utils.log_metrics(uri, parent, _row_metrics(rows), step=0)
        failed = False
    finally:
        if uri and parent:
            mlflow_utils.end_run(uri, parent, failed=failed)
    return StudyOutcome(out=out, rows=rows, results=results, table=table, files=files, mlflow_uri=uri,
                        mlflow_run_id=parent)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def _row_metrics(rows: list[Row]) -> dict[str, float]:
    metrics = {}
    for row in rows:
        slug = _slug(row.label.split(" (")[0])
        metrics[f"{slug}_auc"] = row.auc[0]
        metrics[f"{slug}_fps"] = row.fps
        if row.retention is not None:
            metrics[f"{slug}_auc_retention"] = row.retention[0]
        if row.delta is not None:
            metrics[f"{slug}_auc_delta"] = row.delta.mean
    return metrics


def _write_outputs(out: Path, name: str, preset: StudyPreset, rows: list[Row], results: list[TrackerResult]
                   ) -> dict[str, Path]:
    import dataclasses

    summary = {"study": name, "preset": preset.name, "preset_config": to_dict(preset),
               "rows": [r.to_dict() for r in rows], "trackers": [dataclasses.asdict(r) for r in results],
               "environment": mlflow_utils.environment_tags()}
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(md_path, format_markdown(rows) + "\n")
    return {"json": json_path, "markdown": md_path}


def quickstart_arms(preset: StudyPreset) -> list[Arm]:
    return [compresstracker_arm(preset), *baseline_arms(preset)]


def ablation_arms(preset: StudyPreset, ablation_files: Sequence[str | Path], baselines: bool = True) -> list[Arm]:
    """CompressTracker as the reference, one arm per ablation file, and (``baselines``) the two baselines."""
    arms = [compresstracker_arm(preset)]
    for path in ablation_files:
        arms.append(ablation_arm(preset, load_ablation(path), _slug(Path(path).stem)))
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"ablations: two arms share a label ({labels})")
    return arms + (baseline_arms(preset) if baselines else [])


__all__ = ["AblationSpec", "Arm", "Difference", "Preset", "Row", "StudyOutcome", "StudyPreset", "ScoringSet",
           "TrackerResult", "ablation_arms", "baseline_arms", "check_reusable", "format_markdown", "format_table",
           "load_ablation", "load_preset", "measure_speed", "paired_difference", "quickstart_arms", "rebase",
           "run_study", "summarise", "scoring_set", "with_heldout", "with_scaling"]
