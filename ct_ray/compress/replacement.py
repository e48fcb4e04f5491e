"""Replacement training (METHOD.md section 3): per step, student stages randomly stand in for teacher stages.

``PlanSampler`` draws a ``ReplacementPlan`` (one ``StageChoice`` per stage) from a generator seeded by
``(seed, step)``: the same plan on every data-parallel worker, and the same plans again after a resume.
``ReplacementModel`` runs the frozen teacher (under no_grad) and the mixed network for a given plan and returns
everything the losses need.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ct_ray.compress.division import StageDivision, freeze
from ct_ray.models.one_stream import OneStreamTracker


class StageChoice(enum.Enum):
    """Who runs a stage of the mixed network."""

    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True)
class ReplacementPlan:
    """One choice per stage, e.g. (STUDENT, TEACHER, TEACHER, STUDENT)."""

    choices: tuple[StageChoice, ...]

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices or not all(isinstance(c, StageChoice) for c in choices):
            raise ValueError(f"a replacement plan is a non-empty sequence of StageChoice, got {self.choices!r}")
        object.__setattr__(self, "choices", choices)

    @classmethod
    def from_bits(cls, bits: Iterable[int | bool]) -> "ReplacementPlan":
        """1 / True = student stage, 0 / False = teacher stage."""
        return cls(tuple(StageChoice.STUDENT if b else StageChoice.TEACHER for b in bits))

    @classmethod
    def all_student(cls, num_stages: int) -> "ReplacementPlan":
        return cls((StageChoice.STUDENT,) * num_stages)

    def __len__(self) -> int:
        return len(self.choices)

    def __iter__(self):
        return iter(self.choices)

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(int(c is StageChoice.STUDENT) for c in self.choices)

    @property
    def student_stages(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.choices) if c is StageChoice.STUDENT)

    def __str__(self) -> str:
        return "".join("S" if c is StageChoice.STUDENT else "T" for c in self.choices)


@dataclass(frozen=True)
class PlanSampler:
    """Draws b_i ~ Bernoulli(p) per stage; if no stage drew the student, one stage chosen uniformly does.

    Below ``single_stage_below`` (the reference code's 0.5; None: never) exactly one stage, chosen uniformly, is
    the student's. The generator is seeded with ``(seed, step)``, so the plan is a pure function of the step and
    every data-parallel worker draws the same one.
    """

    num_stages: int
    seed: int = 0
    single_stage_below: float | None = 0.5

    def sample(self, step: int, p: float) -> ReplacementPlan:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"replacement probability must be in [0, 1], got {p}")
        rng = np.random.default_rng([self.seed, step])
        if self.single_stage_below is not None and p < self.single_stage_below:
            bits = np.zeros(self.num_stages, dtype=bool)
            bits[rng.integers(self.num_stages)] = True
            return ReplacementPlan.from_bits(bits.tolist())
        bits = rng.random(self.num_stages) < p
        if not bits.any():
            bits[rng.integers(self.num_stages)] = True
        return ReplacementPlan.from_bits(bits.tolist())


@dataclass
class ReplacementOutput:
    """What one replacement-training forward gives the losses.

    ``mixed``: the mixed network's head outputs (``pred_boxes``, ``score_map``, ...). ``teacher``: the full
    teacher's head outputs, or None when not needed. ``features`` / ``teacher_features``: raw tokens (before the
    final norm) at every stage boundary, the mixed network's mapped to the teacher's width.
    """

    plan: ReplacementPlan
    mixed: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None = None
    features: list[torch.Tensor] = field(default_factory=list)
    teacher_features: list[torch.Tensor] = field(default_factory=list)


def _projections(count: int, width_in: int, width_out: int) -> nn.ModuleList:
    if width_in == width_out:
        return nn.ModuleList(nn.Identity() for _ in range(count))
    return nn.ModuleList(nn.Linear(width_in, width_out) for _ in range(count))


class ReplacementModel(nn.Module):
    """Teacher (frozen, borrowed without copying) + student + the width projections between them.

    The mixed network uses the student's embeddings, final norm and head, and for each stage either the student's
    blocks or the teacher's blocks of that stage. A student of another width meets teacher stages through learned
    linear maps: ``to_teacher[b]`` (student -> teacher width at boundary b, b = 0 after the embedding ... N after the
    last stage) and ``to_student[b - 1]`` (teacher -> student width at boundary b = 1 ... N). They are identities when
    the widths agree. Only student parameters and projections are trainable; gradients flow through borrowed teacher
    blocks into earlier student stages.

    The teacher stays in eval mode (deterministic targets) unless ``teacher_train_mode`` is set, which reproduces
    the public code (drop-path and batch statistics active in the teacher).
    """

    def __init__(self, teacher: OneStreamTracker, student: OneStreamTracker, division: StageDivision,
                 teacher_train_mode: bool = False) -> None:
        super().__init__()
        division.check_teacher(len(teacher.blocks))
        if len(student.blocks) != division.student_depth:
            raise ValueError(f"student has {len(student.blocks)} blocks, the division needs "
                             f"{division.student_depth} ({list(division.student_stages)})")
        for name in ("template_size", "search_size", "patch_size", "template_factor", "search_factor"):
            if getattr(teacher.config, name) != getattr(student.config, name):
                raise ValueError(f"teacher and student differ in {name}: {getattr(teacher.config, name)} vs "
                                 f"{getattr(student.config, name)}")
        self.teacher = freeze(teacher)
        self.student = student
        self.division = division
        self.teacher_train_mode = teacher_train_mode
        stages = division.num_stages
        self.to_teacher = _projections(stages + 1, student.config.embed_dim, teacher.config.embed_dim)
        self.to_student = _projections(stages, teacher.config.embed_dim, student.config.embed_dim)
        self._teacher_ranges = division.teacher_ranges()
        self._student_ranges = division.student_ranges()
        self._boundary_blocks = division.teacher_boundary_blocks()
        self.train(self.training)

    def train(self, mode: bool = True) -> "ReplacementModel":
        super().train(mode)
        if not self.teacher_train_mode:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def teacher_forward(self, template: torch.Tensor, search: torch.Tensor
                        ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The full teacher under no_grad: head outputs and the raw tokens at every stage boundary."""
        with torch.no_grad():
            tokens, features = self.teacher.forward_features(template, search, self._boundary_blocks)
            return self.teacher.forward_head(tokens), features

    def mixed_forward(self, template: torch.Tensor, search: torch.Tensor, plan: ReplacementPlan,
                      with_features: bool = True) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The mixed network for ``plan``; features at each stage boundary in the teacher's width."""
        if len(plan) != self.division.num_stages:
            raise ValueError(f"plan {plan} has {len(plan)} stages, the division has {self.division.num_stages}")
        tokens = self.student.embed(template, search)
        in_student_width = True
        features = []
        for stage, choice in enumerate(plan):
            if choice is StageChoice.STUDENT:
                if not in_student_width:
                    tokens = self.to_student[stage - 1](tokens)
                tokens = self.student.run_blocks(tokens, *self._student_ranges[stage])
                in_student_width = True
            else:
                if in_student_width:
                    tokens = self.to_teacher[stage](tokens)
                tokens = self.teacher.run_blocks(tokens, *self._teacher_ranges[stage])
                in_student_width = False
            if with_features:
                features.append(self.to_teacher[stage + 1](tokens) if in_student_width else tokens)
        if not in_student_width:
            tokens = self.to_student[-1](tokens)
        return self.student.forward_head(tokens), features

    def forward(self, template: torch.Tensor, search: torch.Tensor, plan: ReplacementPlan,
                need_teacher: bool = True, need_features: bool = True) -> ReplacementOutput:
        """One replacement-training forward. ``need_teacher=False`` skips the teacher (no guidance, no mimicking):
        with an all-student plan that is plain student training."""
        teacher_out, teacher_features = (None, [])
        if need_teacher:
            teacher_out, teacher_features = self.teacher_forward(template, search)
        mixed, features = self.mixed_forward(template, search, plan, with_features=need_features and need_teacher)
        return ReplacementOutput(plan, mixed, teacher_out, features, teacher_features if need_features else [])


def stage_parameter_names(division: StageDivision, stages: Sequence[int]) -> list[str]:
    """Prefixes of the student blocks that belong to ``stages`` (for tests and per-stage logging)."""
    names = []
    for stage in stages:
        start, stop = division.student_ranges()[stage]
        names.extend(f"blocks.{i}." for i in range(start, stop))
    return names
