"""One replacement-training loss evaluation: the forward for a plan, then every loss term."""
from __future__ import annotations

import torch
from torch import nn

from ct_ray.compress.replacement import ReplacementModel, ReplacementOutput, ReplacementPlan
from ct_ray.compress.losses import LossInputs, TrackingLoss
from ct_ray.models.one_stream import unwrap


def replacement_losses(model: nn.Module, loss: TrackingLoss, template: torch.Tensor, search: torch.Tensor,
                       gt_boxes: torch.Tensor, plan: ReplacementPlan, step: int
                       ) -> tuple[dict[str, torch.Tensor], ReplacementOutput]:
    """Loss terms of one step. ``model`` is a ``ReplacementModel``, possibly wrapped (DDP); the teacher runs only
    when guidance or mimicking has a weight, and boundary features are kept only when mimicking does."""
    core: ReplacementModel = unwrap(model)
    out = model(template, search, plan, need_teacher=loss.needs_teacher, need_features=loss.weights.mimicking > 0)
    terms = loss(LossInputs(
        pred=out.mixed,
        gt_boxes=gt_boxes,
        teacher_boxes=out.teacher["pred_boxes"] if out.teacher is not None else None,
        features=out.features,
        teacher_features=out.teacher_features,
        num_template_tokens=core.student.num_template_tokens,
        step=step,
    ))
    return terms, out
