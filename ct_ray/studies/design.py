"""Study designs (plain Python): presets, arms and ablations of a CompressTracker study on the synthetic benchmark.

- A *preset* (``ct_ray/presets/<name>.yaml``, typed as ``StudyPreset``) holds the teacher run and the
  CompressTracker run; its paths are relative to the study folder (``--out``). The baselines (student alone;
  classic distillation) are derived from the CompressTracker run by ``baseline_arms``, so they share its
  budget (epochs, steps, batch, data, optimiser) by construction.
- An *ablation* (``experiments/ablations/*.yaml``, typed as ``AblationSpec``) is a label and ``key=value``
  overrides applied to the preset's CompressTracker run.

The driver that trains and scores them is ``ct_ray.orchestration.study``; the statistics and tables are
``ct_ray.studies.paired_stats`` and ``ct_ray.studies.tables``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ct_ray.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict
from ct_ray.training.experiment import ExperimentConfig, RunKind

TEACHER_FILE = "teacher.pt"


class Preset(enum.Enum):
    """The embedded quickstart presets: ``small`` (16-22 minutes on a 2-core CPU machine) and ``full`` (the same
    teacher, students on twice the budget; about 17 minutes there). Both YAML files say what they train."""

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
    deploy_runtime: str | None = None
    """With a runtime label (``onnxruntime``, ``onnxruntime-cpu-int8``, ``compile``): the first arm's trackers are
    also scored and timed through it, and the table gets its AUC and FPS columns."""

    def __post_init__(self) -> None:
        if self.deploy_runtime is not None:
            from ct_ray.tracking.runtimes import RuntimeSpec

            if RuntimeSpec.parse(self.deploy_runtime).name == "torch":
                raise ValueError("deploy_runtime: torch is what every tracker is scored on; name another runtime")
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


def rebase(config: ExperimentConfig, out: Path) -> ExperimentConfig:
    """The config with its relative paths (shards, benchmark, runs, teacher) placed inside the study folder."""
    return config.with_paths(lambda path: path if Path(path).is_absolute() else str(out / path))


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


def ablation_arm(preset: StudyPreset, spec: AblationSpec, suffix: str) -> Arm:
    """CompressTracker with the ablation's overrides applied (checked like any config)."""
    data = apply_overrides(to_dict(preset.compresstracker), spec.overrides)
    config = from_dict(ExperimentConfig, data)
    if config.kind is not RunKind.COMPRESSTRACKER:
        raise ConfigError(f"ablation {spec.label!r}: an ablation changes CompressTracker, kind must stay "
                          "compresstracker")
    return Arm(spec.label, _derived(config, suffix))


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")



def quickstart_arms(preset: StudyPreset) -> list[Arm]:
    return [compresstracker_arm(preset), *baseline_arms(preset)]


def ablation_arms(preset: StudyPreset, ablation_files: Sequence[str | Path], baselines: bool = True) -> list[Arm]:
    """CompressTracker as the reference, one arm per ablation file, and (``baselines``) the two baselines."""
    arms = [compresstracker_arm(preset)]
    for path in ablation_files:
        arms.append(ablation_arm(preset, load_ablation(path), slug(Path(path).stem)))
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"ablations: two arms share a label ({labels})")
    return arms + (baseline_arms(preset) if baselines else [])


