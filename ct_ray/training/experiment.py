"""The experiment config of ``ct-ray train``: one typed dataclass per YAML section.

Every section checks its own values, so ``load_config(ExperimentConfig, path, overrides)`` rejects an impossible
experiment (with the key's name) before any cluster work starts.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ct_ray.compress import FixedSchedule, ProgressiveSchedule, StageDivision
from ct_ray.compress.losses import LossWeights
from ct_ray.config import ConfigError, load_config
from ct_ray.data.augment import AugmentConfig
from ct_ray.data.samples import JitterConfig
from ct_ray.data.stream import StreamConfig
from ct_ray.fileio import Location, fetch
from ct_ray.models import TEACHERS, OneStreamTracker, TrackerConfig, load_checkpoint


class RunKind(enum.Enum):
    """What a training run trains: a teacher, or a student by CompressTracker or one of the paper's baselines."""

    TEACHER = "teacher"
    COMPRESSTRACKER = "compresstracker"
    STUDENT_ONLY = "student-only"
    DISTILLATION = "distillation"


class ScheduleKind(enum.Enum):
    PROGRESSIVE = "progressive"
    FIXED = "fixed"


class LrSchedule(enum.Enum):
    STEP = "step"
    COSINE = "cosine"


class LowPPlans(enum.Enum):
    ONE_STAGE = "one-stage"
    BERNOULLI = "bernoulli"


class DataSource(enum.Enum):
    SHARDS = "shards"
    STREAM = "stream"


class PlacementStrategy(enum.Enum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


def _positive(section: str, **values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value}")


@dataclass
class TeacherSection:
    """The teacher to compress: a registered loader kind (ct-ray, ostrack, vit) and its file. ``bootstrap`` names a
    teacher-training config that ``ct-ray train`` runs first when ``path`` does not exist yet. For a teacher run,
    ``path`` (optional) initialises the tracker (e.g. a MAE ViT with kind vit).

    ``train_mode`` reproduces the public code: the frozen teacher runs in train mode, its head's BatchNorm on batch
    statistics and drop-path at ``drop_path_rate`` (the reference's 0.1) in its blocks, so its targets are noisy;
    the default is eval mode (deterministic targets)."""

    kind: str = "ct-ray"
    path: str | None = None
    num_heads: int | None = None
    train_mode: bool = False
    drop_path_rate: float = 0.1
    mlflow_run_id: str | None = None
    bootstrap: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TEACHERS:
            raise ValueError(f"teacher.kind {self.kind!r} is not one of {sorted(TEACHERS)}")
        if self.kind == "ct-ray" and self.num_heads is not None:
            raise ValueError("teacher.num_heads: a ct-ray checkpoint records its heads; set it only for kind "
                             "ostrack or vit")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"teacher.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def load(self) -> tuple[OneStreamTracker, dict]:
        """The teacher tracker and its checkpoint metadata (the one place a config's teacher is opened)."""
        if self.path is None:
            raise ConfigError("teacher.path is not set")
        return load_checkpoint(fetch(self.path), self.kind, self.num_heads)

    def exists(self) -> bool:
        """Whether the teacher file is there (a local file, or an object in the store)."""
        return self.path is not None and Location.of(self.path).is_file()


@dataclass
class StudentSection:
    """Stage division and student shape: ``stages`` (teacher blocks per stage, e.g. [2, 4, 4, 2]) or a uniform
    division into ``num_stages`` (default 4); ``blocks_per_stage`` (k_i, one number or one per stage); width and heads
    (None: the teacher's)."""

    num_stages: int | None = None
    stages: list[int] | None = None
    blocks_per_stage: int | list[int] = 1
    embed_dim: int | None = None
    num_heads: int | None = None
    drop_path_rate: float | None = None

    def __post_init__(self) -> None:
        _positive("student", num_stages=self.num_stages, embed_dim=self.embed_dim, num_heads=self.num_heads)
        if self.stages is not None and self.num_stages is not None and len(self.stages) != self.num_stages:
            raise ValueError(f"student.stages has {len(self.stages)} entries but student.num_stages is "
                             f"{self.num_stages}")
        if isinstance(self.blocks_per_stage, list) and len(self.blocks_per_stage) != self.stage_count:
            raise ValueError(f"student.blocks_per_stage has {len(self.blocks_per_stage)} entries for "
                             f"{self.stage_count} stages")
        blocks = self.blocks_per_stage if isinstance(self.blocks_per_stage, list) else [self.blocks_per_stage]
        if any(b < 1 for b in blocks):
            raise ValueError(f"student.blocks_per_stage must be >= 1, got {self.blocks_per_stage}")

    @property
    def stage_count(self) -> int:
        """Number of stages (student depth when k_i = 1): len(stages), else num_stages, else 4."""
        if self.stages is not None:
            return len(self.stages)
        return self.num_stages or 4

    def division(self, teacher_depth: int) -> StageDivision:
        if self.stages is not None:
            return StageDivision.explicit(self.stages, self.blocks_per_stage, teacher_depth=teacher_depth)
        uniform = StageDivision.uniform(teacher_depth, self.stage_count)
        return StageDivision.explicit(uniform.teacher_stages, self.blocks_per_stage, teacher_depth=teacher_depth)


@dataclass
class ScheduleSection:
    """The replacement probability per epoch: the paper's progressive schedule, or a fixed p. Both end with
    ``final_fraction`` of the epochs at p = 1 (the student alone, the paper's fine-tune). ``low_p_plans``: below
    p = 0.5 the reference code replaces exactly one stage per step (``one-stage``); ``bernoulli`` draws every stage
    as above 0.5."""

    kind: ScheduleKind = ScheduleKind.PROGRESSIVE
    initial_p: float = 0.5
    warmup_fraction: float = 0.1
    final_fraction: float = 0.1
    p: float = 0.5
    low_p_plans: LowPPlans = LowPPlans.ONE_STAGE

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> ProgressiveSchedule | FixedSchedule:
        if self.kind is ScheduleKind.FIXED:
            return FixedSchedule(self.p, self.final_fraction)
        return ProgressiveSchedule(self.initial_p, self.warmup_fraction, self.final_fraction)


@dataclass
class SynthSection:
    """The synthetic benchmark a run generates when it is missing (smoke runs, studies): its sequences hold the
    validation / test split; with ``data.source: shards`` its training split also gives the shards
    (``pairs_per_epoch`` x ``shard_epochs`` pairs, ``pairs_per_shard`` per file)."""

    sequences: int = 12
    frames: int = 40
    seed: int = 0
    preset: str = "standard"
    height: int = 240
    width: int = 320
    test_fraction: float = 0.25
    pairs_per_epoch: int = 256
    shard_epochs: int = 1
    pairs_per_shard: int = 128


@dataclass
class DataSection:
    """Where training samples come from, validation sequences, batching.

    ``source``: ``shards`` (built pair shards at ``shards``, a folder or a store URI) or ``stream`` (new synthetic
    sequences rendered in the data tasks, ``stream``). Either way the search window (``jitter``), the crop and the
    augmentation are drawn when a row is read, from (run seed, epoch, pair index). ``pairs_per_epoch``: the epoch
    size (required for the stream; for shards, None takes the manifest's). ``shuffle_files`` permutes the shard files
    on every pass, seeded by ``run.seed``; ``shuffle_buffer`` rows are shuffled within an epoch. ``sample_tasks``:
    the Ray tasks that draw one worker's samples at a time (more only compete with training for the CPUs once
    the data keeps up: ``data_wait_fraction`` in MLflow tells)."""

    source: DataSource = DataSource.SHARDS
    shards: str = "data/shards"
    stream: StreamConfig = field(default_factory=StreamConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    val_dataset: str | None = "synthetic:data/synthetic"
    val_split: str | None = "test"
    val_max_sequences: int | None = None
    batch_size: int = 32
    pairs_per_epoch: int | None = None
    shuffle_buffer: int = 256
    shuffle_files: bool = True
    sample_tasks: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synth: SynthSection | None = None

    def __post_init__(self) -> None:
        _positive("data", batch_size=self.batch_size, pairs_per_epoch=self.pairs_per_epoch,
                  val_max_sequences=self.val_max_sequences, sample_tasks=self.sample_tasks)
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.source is DataSource.STREAM and self.pairs_per_epoch is None:
            raise ValueError("data.pairs_per_epoch is required when data.source is stream (an endless stream has no "
                             "size of its own)")


@dataclass
class OptimSection:
    """AdamW with a backbone lr multiplier (the paper: one group at 4e-4 x 0.1, head included), grad-norm clipping,
    bf16 autocast on GPU, and the learning-rate schedule: ``step`` (the paper's: x ``lr_drop_factor`` from
    ``lr_drop_epoch`` on) or ``cosine`` (to 0 at the last step), after a linear warm-up over ``warmup_epochs``
    (0: none). The schedule advances every optimisation step."""

    lr: float = 4e-4
    backbone_lr_multiplier: float = 0.1
    head_lr_multiplier: float = 0.1
    weight_decay: float = 1e-4
    lr_schedule: LrSchedule = LrSchedule.STEP
    lr_drop_epoch: int | None = None
    lr_drop_factor: float = 0.1
    warmup_epochs: float = 0.0
    grad_clip: float = 0.1
    bf16: bool = True

    def __post_init__(self) -> None:
        _positive("optim", lr=self.lr, backbone_lr_multiplier=self.backbone_lr_multiplier,
                  head_lr_multiplier=self.head_lr_multiplier, lr_drop_epoch=self.lr_drop_epoch,
                  lr_drop_factor=self.lr_drop_factor)
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_epochs < 0:
            raise ValueError("optim.weight_decay, optim.grad_clip and optim.warmup_epochs must be >= 0")
        if self.lr_schedule is LrSchedule.COSINE and self.lr_drop_epoch is not None:
            raise ValueError("optim.lr_drop_epoch belongs to the step schedule; optim.lr_schedule is cosine")


@dataclass
class ScalingSection:
    """Ray Train workers: how many, GPU or not, resources each, and their placement."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    placement_strategy: PlacementStrategy = PlacementStrategy.PACK

    def __post_init__(self) -> None:
        _positive("scaling", num_workers=self.num_workers, cpus_per_worker=self.cpus_per_worker,
                  gpus_per_worker=self.gpus_per_worker)


@dataclass
class RunSection:
    """Epochs, seeds, checkpoints, validation and failure handling; ``storage_path`` is a folder or a pyarrow
    filesystem URI (e.g. s3://bucket/runs)."""

    name: str = "ct-ray"
    storage_path: str = "runs"
    epochs: int = 10
    seed: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    validate_every: int = 1
    max_failures: int = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        _positive("run", epochs=self.epochs, checkpoint_every=self.checkpoint_every,
                  keep_checkpoints=self.keep_checkpoints, validate_every=self.validate_every)
        if self.max_failures < -1:
            raise ValueError("run.max_failures must be >= -1 (-1: retry forever)")
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty name without '/', got {self.name!r}")


@dataclass
class MlflowSection:
    """Tracking store (None: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory)."""

    tracking_uri: str | None = None
    experiment: str = "ct-ray"
    enabled: bool = True


@dataclass
class ExperimentConfig:
    kind: RunKind = RunKind.COMPRESSTRACKER
    model: TrackerConfig = field(default_factory=TrackerConfig)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    losses: LossWeights = field(default_factory=LossWeights)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)
    mlflow: MlflowSection = field(default_factory=MlflowSection)

    def __post_init__(self) -> None:
        if self.is_teacher_run:
            if self.losses.guidance or self.losses.mimicking:
                raise ValueError("losses.guidance and losses.mimicking must be 0 when kind is teacher "
                                 "(a teacher learns from the ground truth alone)")
        elif self.teacher.path is None:
            raise ValueError(f"teacher.path is required when kind is {self.kind.value}")
        if self.kind is RunKind.STUDENT_ONLY and (self.losses.guidance or self.losses.mimicking):
            raise ValueError("losses.guidance and losses.mimicking must be 0 for the student-only baseline")
        if self.kind is RunKind.DISTILLATION and not (self.losses.guidance or self.losses.mimicking):
            raise ValueError("distillation needs losses.guidance or losses.mimicking > 0")
        if self.optim.warmup_epochs >= self.run.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.optim.warmup_epochs:g}) must be less than run.epochs "
                             f"({self.run.epochs})")
        if self.optim.lr_drop_epoch is not None and self.optim.lr_drop_epoch > self.run.epochs:
            raise ValueError(f"optim.lr_drop_epoch ({self.optim.lr_drop_epoch}) is after the last epoch "
                             f"({self.run.epochs})")

    @property
    def is_teacher_run(self) -> bool:
        """A teacher run trains a tracker on the ground truth alone; every other kind trains a student."""
        return self.kind is RunKind.TEACHER

    @property
    def uses_replacement(self) -> bool:
        """Replacement training (CompressTracker): student stages stand in for teacher stages by a drawn plan."""
        return self.kind is RunKind.COMPRESSTRACKER

    def with_paths(self, mapping: Callable[[str], str]) -> "ExperimentConfig":
        """The config with every local path (teacher and its bootstrap config, shards, validation dataset root,
        run storage) passed through ``mapping``; URIs (``s3://...``) and unset paths are kept as they are."""

        def apply(path: str | None) -> str | None:
            return path if path is None or "://" in path else mapping(path)

        val = self.data.val_dataset
        if val:
            kind, sep, root = val.partition(":")
            val = f"{kind}{sep}{apply(root)}" if sep else val
        return replace(
            self,
            teacher=replace(self.teacher, path=apply(self.teacher.path), bootstrap=apply(self.teacher.bootstrap)),
            data=replace(self.data, shards=apply(self.data.shards), val_dataset=val),
            run=replace(self.run, storage_path=apply(self.run.storage_path)),
        )

    def absolute(self) -> "ExperimentConfig":
        """Every local path made absolute: Ray workers run in other working directories."""
        return self.with_paths(lambda path: str(Path(path).expanduser().resolve()))


def teacher_depth(config: ExperimentConfig) -> int:
    """The teacher's block count, read without building the training module (from its file, or from the
    bootstrap config when the file is still to be trained)."""
    path = config.teacher.path
    if path and config.teacher.exists():
        return len(config.teacher.load()[0].blocks)
    if config.teacher.bootstrap:
        return load_config(ExperimentConfig, config.teacher.bootstrap).model.depth
    raise ConfigError(f"teacher.path: {path} does not exist (train a teacher first, or name its config in "
                      "teacher.bootstrap)")


def check_experiment(config: ExperimentConfig) -> StageDivision | None:
    """Checks what the config alone cannot: the stage division against the teacher's depth."""
    if config.is_teacher_run:
        return None
    try:
        return config.student.division(teacher_depth(config))
    except ValueError as exc:
        raise ConfigError(f"student: {exc}") from exc
