"""Stage division (METHOD.md section 2): the teacher's blocks split into consecutive stages, one student stage each,
and the student built from the teacher."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from ct_ray.models.one_stream import BlockLayer, OneStreamTracker
from timm.models.vision_transformer import Block


def _positive_ints(values: Sequence[int], what: str) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{what} is empty")
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must hold positive integers, got {list(values)}")
    return values


def _ends(sizes: Sequence[int]) -> list[int]:
    ends, total = [], 0
    for size in sizes:
        total += size
        ends.append(total)
    return ends


@dataclass(frozen=True)
class StageDivision:
    """How the teacher's blocks form stages (``teacher_stages``, blocks per stage, in order) and how many student
    blocks replace each stage (``student_stages``, the k_i)."""

    teacher_stages: tuple[int, ...]
    student_stages: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "teacher_stages", _positive_ints(self.teacher_stages, "teacher stage sizes"))
        object.__setattr__(self, "student_stages", _positive_ints(self.student_stages, "student blocks per stage"))
        if len(self.teacher_stages) != len(self.student_stages):
            raise ValueError(f"{len(self.teacher_stages)} teacher stages but {len(self.student_stages)} student "
                             "stages: there is one student stage per teacher stage")
        deeper = [i for i, (t, s) in enumerate(zip(self.teacher_stages, self.student_stages)) if s > t]
        if deeper:
            raise ValueError(f"student stages {deeper} have more blocks than the teacher stages they replace "
                             f"(teacher {list(self.teacher_stages)}, student {list(self.student_stages)})")

    @classmethod
    def uniform(cls, teacher_depth: int, num_stages: int, blocks_per_stage: int = 1) -> "StageDivision":
        """``teacher_depth / num_stages`` blocks per stage, e.g. 12 -> 4 stages of 3."""
        if num_stages < 1 or teacher_depth % num_stages:
            raise ValueError(f"a uniform division needs the teacher depth ({teacher_depth}) to be a multiple of "
                             f"the number of stages ({num_stages}); give an explicit division instead")
        return cls((teacher_depth // num_stages,) * num_stages, (blocks_per_stage,) * num_stages)

    @classmethod
    def explicit(cls, teacher_stages: Sequence[int], blocks_per_stage: int | Sequence[int] = 1,
                 teacher_depth: int | None = None) -> "StageDivision":
        """Explicit stage sizes such as ``[2, 4, 4, 2]``; checked against ``teacher_depth`` when given."""
        teacher_stages = tuple(teacher_stages)
        if isinstance(blocks_per_stage, int):
            blocks_per_stage = (blocks_per_stage,) * len(teacher_stages)
        division = cls(teacher_stages, tuple(blocks_per_stage))
        if teacher_depth is not None:
            division.check_teacher(teacher_depth)
        return division

    def check_teacher(self, teacher_depth: int) -> None:
        """Rejects a division that does not cover the teacher's blocks exactly once."""
        if sum(self.teacher_stages) != teacher_depth:
            raise ValueError(f"stage division {list(self.teacher_stages)} covers {sum(self.teacher_stages)} "
                             f"blocks, but the teacher has {teacher_depth}: every teacher block must belong to "
                             "exactly one stage")

    @property
    def num_stages(self) -> int:
        return len(self.teacher_stages)

    @property
    def student_depth(self) -> int:
        return sum(self.student_stages)

    def teacher_ranges(self) -> list[tuple[int, int]]:
        """(start, stop) block indices of each teacher stage."""
        ends = _ends(self.teacher_stages)
        return [(end - size, end) for end, size in zip(ends, self.teacher_stages)]

    def student_ranges(self) -> list[tuple[int, int]]:
        ends = _ends(self.student_stages)
        return [(end - size, end) for end, size in zip(ends, self.student_stages)]

    def teacher_boundary_blocks(self) -> list[int]:
        """The last teacher block of each stage: where stage outputs are compared (12 -> 4: 2, 5, 8, 11)."""
        return [end - 1 for end in _ends(self.teacher_stages)]

    def student_init_blocks(self) -> list[int]:
        """The teacher block each student block starts from: the last k_i blocks of teacher stage i."""
        sources = []
        for (start, stop), k in zip(self.teacher_ranges(), self.student_stages):
            sources.extend(range(stop - k, stop))
        return sources


def build_student(teacher: OneStreamTracker, division: StageDivision, embed_dim: int | None = None,
                  num_heads: int | None = None, mlp_ratio: float | None = None, head_channels: int | None = None,
                  drop_path_rate: float | None = None, block_layer: BlockLayer = Block) -> OneStreamTracker:
    """A student with one stage per teacher stage, initialised from the teacher (METHOD.md section 2).

    Student block j of stage i starts as a copy of the matching block among the last k_i teacher blocks of stage i;
    patch embedding, position embeddings, final norm and head start as copies of the teacher's. Tensors whose
    shapes differ (a student of another width or layer type) keep their fresh initialisation.
    """
    division.check_teacher(len(teacher.blocks))
    config = replace(
        teacher.config,
        depth=division.student_depth,
        embed_dim=embed_dim or teacher.config.embed_dim,
        num_heads=num_heads or (teacher.config.num_heads if embed_dim in (None, teacher.config.embed_dim)
                                else max(1, embed_dim // 64)),
        mlp_ratio=mlp_ratio or teacher.config.mlp_ratio,
        head_channels=head_channels or teacher.config.head_channels,
        drop_path_rate=teacher.config.drop_path_rate if drop_path_rate is None else drop_path_rate,
    )
    student = OneStreamTracker(config, block_layer=block_layer)
    teacher_state = teacher.state_dict()
    sources = division.student_init_blocks()
    state = student.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            source = key
            if key.startswith("blocks."):
                _, index, rest = key.split(".", 2)
                source = f"blocks.{sources[int(index)]}.{rest}"
            if source in teacher_state and teacher_state[source].shape == value.shape:
                value.copy_(teacher_state[source])
    return student


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
