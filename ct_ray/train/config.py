"""The experiment config of ``ct-ray train``: one typed dataclass per YAML section.

Every section checks its own values, so ``load_config(ExperimentConfig, path, overrides)`` rejects an impossible
experiment (with the key's name) before any cluster work starts.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ct_ray.compress import FixedSchedule, ProgressiveSchedule, StageDivision
from ct_ray.data.augment import AugmentConfig
from ct_ray.losses import LossWeights
from ct_ray.models import TEACHERS, TrackerConfig


class RunKind(enum.Enum):
    """What a training run trains: a teacher, or a student by CompressTracker or one of the paper's baselines."""

    TEACHER = "teacher"
    COMPRESSTRACKER = "compresstracker"
    STUDENT_ONLY = "student-only"
    DISTILLATION = "distillation"


class ScheduleKind(enum.Enum):
    PROGRESSIVE = "progressive"
    FIXED = "fixed"


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
    ``path`` (optional) initialises the tracker (e.g. a MAE ViT with kind vit)."""

    kind: str = "ct-ray"
    path: str | None = None
    num_heads: int | None = None
    train_mode: bool = False
    mlflow_run_id: str | None = None
    bootstrap: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TEACHERS:
            raise ValueError(f"teacher.kind {self.kind!r} is not one of {sorted(TEACHERS)}")


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
    """The replacement probability per epoch: the paper's progressive schedule, or a fixed p."""

    kind: ScheduleKind = ScheduleKind.PROGRESSIVE
    initial_p: float = 0.5
    warmup_fraction: float = 0.1
    final_fraction: float = 0.1
    p: float = 0.5

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> ProgressiveSchedule | FixedSchedule:
        if self.kind is ScheduleKind.FIXED:
            return FixedSchedule(self.p)
        return ProgressiveSchedule(self.initial_p, self.warmup_fraction, self.final_fraction)


@dataclass
class SynthSection:
    """Data the run generates when its folders are missing (smoke and quickstart runs)."""

    sequences: int = 12
    frames: int = 40
    seed: int = 0
    preset: str = "standard"
    height: int = 240
    width: int = 320
    pairs_per_epoch: int = 256
    shard_epochs: int = 1
    pairs_per_shard: int = 128


@dataclass
class DataSection:
    """Training shards, validation sequences and batching. ``pairs_per_epoch`` None: the shards' own.

    ``shuffle_files`` permutes the shard files on every pass, seeded by ``run.seed``; ``preserve_order`` hands rows
    to training in that order rather than in the order the parallel decode tasks finish, so that two runs of one
    config see the same batches (at some cost in throughput when decoding is the bottleneck)."""

    shards: str = "data/shards"
    val_dataset: str | None = "synthetic:data/synthetic"
    val_split: str | None = "test"
    val_max_sequences: int | None = None
    batch_size: int = 32
    pairs_per_epoch: int | None = None
    shuffle_buffer: int = 256
    shuffle_files: bool = True
    preserve_order: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synth: SynthSection | None = None

    def __post_init__(self) -> None:
        _positive("data", batch_size=self.batch_size, pairs_per_epoch=self.pairs_per_epoch,
                  val_max_sequences=self.val_max_sequences)
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


@dataclass
class OptimSection:
    """AdamW with a backbone lr multiplier (the paper: one group at 4e-4 x 0.1, head included), step decay,
    grad-norm clipping, bf16 autocast on GPU."""

    lr: float = 4e-4
    backbone_lr_multiplier: float = 0.1
    head_lr_multiplier: float = 0.1
    weight_decay: float = 1e-4
    lr_drop_epoch: int | None = None
    lr_drop_factor: float = 0.1
    grad_clip: float = 0.1
    bf16: bool = True

    def __post_init__(self) -> None:
        _positive("optim", lr=self.lr, backbone_lr_multiplier=self.backbone_lr_multiplier,
                  head_lr_multiplier=self.head_lr_multiplier, lr_drop_epoch=self.lr_drop_epoch,
                  lr_drop_factor=self.lr_drop_factor)
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("optim.weight_decay and optim.grad_clip must be >= 0")


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
        if self.kind is RunKind.TEACHER:
            if self.losses.guidance or self.losses.mimicking:
                raise ValueError("losses.guidance and losses.mimicking must be 0 when kind is teacher "
                                 "(a teacher learns from the ground truth alone)")
        elif self.teacher.path is None:
            raise ValueError(f"teacher.path is required when kind is {self.kind.value}")
        if self.kind is RunKind.STUDENT_ONLY and (self.losses.guidance or self.losses.mimicking):
            raise ValueError("losses.guidance and losses.mimicking must be 0 for the student-only baseline")
        if self.kind is RunKind.DISTILLATION and not (self.losses.guidance or self.losses.mimicking):
            raise ValueError("distillation needs losses.guidance or losses.mimicking > 0")
        if self.optim.lr_drop_epoch is not None and self.optim.lr_drop_epoch > self.run.epochs:
            raise ValueError(f"optim.lr_drop_epoch ({self.optim.lr_drop_epoch}) is after the last epoch "
                             f"({self.run.epochs})")

    @property
    def uses_replacement(self) -> bool:
        return self.kind is RunKind.COMPRESSTRACKER
