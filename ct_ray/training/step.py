"""One optimisation step for every kind of run (plain PyTorch; the Ray worker loop and the benchmarks share it).

- teacher: the tracker alone on the ground truth;
- compresstracker: a replacement plan drawn for the step, the mixed network, every loss term;
- student-only / distillation: the student alone (an all-student plan), with or without guidance and mimicking;
  the teacher runs only when a loss needs it.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ct_ray.compress import PlanSampler, ReplacementModel, ReplacementPlan, replacement_losses
from ct_ray.compress.losses import LossInputs, TrackingLoss
from ct_ray.models.one_stream import OneStreamTracker, unwrap
from ct_ray.training.experiment import RunKind


def parameter_groups(module: nn.Module, lr: float, backbone_multiplier: float, head_multiplier: float
                     ) -> list[dict]:
    """Trainable parameters split into backbone (embeddings, blocks, norm, projections) and head groups."""
    backbone, head = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (head if "box_head." in name else backbone).append(parameter)
    return [{"params": backbone, "lr": lr * backbone_multiplier, "name": "backbone"},
            {"params": head, "lr": lr * head_multiplier, "name": "head"}]


def lr_factor(schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
              drop_epoch: int | None = None, drop_factor: float = 0.1):
    """The learning-rate multiplier after ``step`` optimisation steps (``LambdaLR``): a linear warm-up over
    ``warmup_epochs``, then ``step`` (x ``drop_factor`` from epoch ``drop_epoch`` on; epochs from 1) or ``cosine``
    (1 -> 0 over the steps after the warm-up)."""
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if schedule == "cosine":
            progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            return scale * 0.5 * (1.0 + math.cos(math.pi * progress))
        epoch = step // steps_per_epoch + 1
        return scale * (drop_factor if drop_epoch is not None and epoch >= drop_epoch else 1.0)

    return factor


def restore_zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """After an optimizer state is loaded: every parameter the optimizer has stepped gets the zero gradient it had
    between steps, so a stage that the next plan does not draw keeps stepping with its momentum exactly as in an
    uninterrupted run (gradients are zeroed, not dropped: ``TrainStep``)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if optimizer.state.get(parameter) and parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)


def trained_tracker(module: nn.Module) -> OneStreamTracker:
    """The tracker a run produces: the student of a ReplacementModel, or the tracker itself."""
    core = unwrap(module)
    return core.student if isinstance(core, ReplacementModel) else core


class TrainStep:
    """Forward, losses, backward, grad-norm clip and optimizer step; returns the detached loss terms."""

    def __init__(self, module: nn.Module, kind: RunKind, loss: TrackingLoss, optimizer: torch.optim.Optimizer,
                 sampler: PlanSampler | None = None, grad_clip: float = 0.0,
                 autocast_dtype: torch.dtype | None = None) -> None:
        core = unwrap(module)
        if kind is not RunKind.TEACHER and not isinstance(core, ReplacementModel):
            raise TypeError(f"a {kind.value} run trains a ReplacementModel")
        if kind is RunKind.COMPRESSTRACKER and sampler is None:
            raise ValueError("replacement training needs a PlanSampler")
        self.module, self.kind, self.loss, self.optimizer = module, kind, loss, optimizer
        self.sampler, self.grad_clip, self.autocast_dtype = sampler, grad_clip, autocast_dtype
        self.num_stages = core.division.num_stages if isinstance(core, ReplacementModel) else 0
        self._parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def plan(self, step: int, p: float) -> ReplacementPlan | None:
        if self.kind is RunKind.TEACHER:
            return None
        if self.kind is RunKind.COMPRESSTRACKER:
            return self.sampler.sample(step, p)
        return ReplacementPlan.all_student(self.num_stages)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def losses(self, batch: dict[str, torch.Tensor], step: int, p: float
               ) -> tuple[dict[str, torch.Tensor], ReplacementPlan | None]:
        template, search, boxes = batch["template"], batch["search"], batch["search_box"]
        plan = self.plan(step, p)
        with self._autocast(search.device):
            if plan is None:
                pred = self.module(template, search)
                core = unwrap(self.module)
                terms = self.loss(LossInputs(pred=pred, gt_boxes=boxes, num_template_tokens=core.num_template_tokens,
                                             step=step))
            else:
                terms, _ = replacement_losses(self.module, self.loss, template, search, boxes, plan, step)
        return terms, plan

    def __call__(self, batch: dict[str, torch.Tensor], step: int, p: float
                 ) -> tuple[dict[str, torch.Tensor], ReplacementPlan | None]:
        terms, plan = self.losses(batch, step, p)
        # Zeroed, not dropped (as the reference code's torch 1.13 does): a student stage the plan did not draw keeps
        # a zero gradient, so AdamW still steps it with its momentum and weight decay (docs/METHOD.md section 3).
        self.optimizer.zero_grad(set_to_none=False)
        terms["total"].backward()
        if self.grad_clip > 0:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._parameters, self.grad_clip)
        self.optimizer.step()
        return {name: value.detach() for name, value in terms.items()}, plan
