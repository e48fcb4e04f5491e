"""Training losses of CompressTracker (METHOD.md sections 4 and 6).

Ground-truth supervision (GIoU + L1 on the decoded box, focal loss on the score map against a Gaussian heatmap),
prediction guidance (the teacher's box supervises the mixed network's box) and stage-wise feature mimicking (the
mixed network's tokens at every stage boundary regress the teacher's). :class:`TrackingLoss` combines them with
:class:`LossWeights` and returns every term separately for logging. Boxes follow :mod:`ct_ray.boxes`: the network
predicts ``cxcywh`` normalised to the search crop; the box losses work on ``xyxy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ct_ray.boxes import cxcywh_to_xyxy

GIOU_EPS = 1e-7
"""Floor of the union and enclosing areas in :func:`giou_loss`, so degenerate boxes never divide by zero."""

HEATMAP_MIN_OVERLAP = 0.7
"""CornerNet's minimum IoU between the GT box and a box whose corners move within the Gaussian radius."""

BUILTIN_TERMS = ("total", "giou", "l1", "focal", "guidance", "mimicking", "iou")
"""Keys of :class:`TrackingLoss`'s output that user-registered terms may not take."""


class NonFiniteLossError(FloatingPointError):
    """A network output or loss input holds NaN or inf; training cannot go on from this step."""


def check_finite(tensors: Mapping[str, Tensor], step: int | None) -> None:
    """Raises :class:`NonFiniteLossError` naming every key whose tensor holds NaN or inf, and the step.

    One reduction per tensor and a single device-to-host transfer for all of them, so it is cheap to run every step.
    """
    if not tensors:
        return
    keys = list(tensors)
    device = tensors[keys[0]].device
    flags = torch.stack([torch.isfinite(tensors[k].detach()).all().to(device) for k in keys]).cpu().tolist()
    bad = [k for k, ok in zip(keys, flags) if not ok]
    if bad:
        names = ", ".join(repr(k) for k in bad)
        raise NonFiniteLossError(f"non-finite values (NaN or inf) in {names} at step {step}")


def _at_least_fp32(t: Tensor) -> Tensor:
    """Half-precision tensors in float32 (losses are computed in at least single precision); others unchanged."""
    return t if t.dtype == torch.float64 else t.float()


def giou_loss(pred_xyxy: Tensor, target_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``1 - GIoU`` over the batch and the per-sample IoU (B,), for (B, 4) ``xyxy`` boxes.

    As in OSTrack, areas come from the corners as given, so a degenerate predicted box (x2 < x1 or y2 < y1) is not
    rejected: its intersection is 0 and its area may be negative. The union and the enclosing area are clamped to at
    least :data:`GIOU_EPS` so such boxes give finite losses (OSTrack instead catches the resulting error).
    """
    area_pred = (pred_xyxy[:, 2] - pred_xyxy[:, 0]) * (pred_xyxy[:, 3] - pred_xyxy[:, 1])
    area_target = (target_xyxy[:, 2] - target_xyxy[:, 0]) * (target_xyxy[:, 3] - target_xyxy[:, 1])
    inter_wh = (torch.min(pred_xyxy[:, 2:], target_xyxy[:, 2:]) - torch.max(pred_xyxy[:, :2], target_xyxy[:, :2]))
    inter_wh = inter_wh.clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = (area_pred + area_target - inter).clamp(min=GIOU_EPS)
    iou = inter / union
    hull_wh = (torch.max(pred_xyxy[:, 2:], target_xyxy[:, 2:]) - torch.min(pred_xyxy[:, :2], target_xyxy[:, :2]))
    hull_wh = hull_wh.clamp(min=0)
    hull = (hull_wh[:, 0] * hull_wh[:, 1]).clamp(min=GIOU_EPS)
    giou = iou - (hull - union) / hull
    return (1.0 - giou).mean(), iou


def l1_box_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all box coordinates (``F.l1_loss`` with mean reduction), on ``xyxy`` boxes."""
    return F.l1_loss(pred, target, reduction="mean")


def gaussian_radius(wh: Tensor, min_overlap: float = HEATMAP_MIN_OVERLAP) -> Tensor:
    """CornerNet's Gaussian radius for boxes of size ``wh`` (..., 2), as the CenterNet/OSTrack code computes it.

    Each of the three cases solves ``a r^2 - b r + c = 0``; like that code, the root is taken as ``(b + sqrt) / 2``
    (not divided by ``a``), and the smallest of the three is the radius. Returned unrounded.
    """
    width, height = wh[..., 0], wh[..., 1]
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 4 * 4 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.min(r1, torch.min(r2, r3))


@torch.no_grad()
def gaussian_heatmap(boxes_cxcywh: Tensor, feat_size: int) -> Tensor:
    """OSTrack's score-map target (B, 1, feat_size, feat_size) for (B, 4) ``cxcywh`` boxes normalised to the crop.

    The box is scaled to heatmap cells; the centre cell is the rounded centre (round half to even, as
    ``torch.round``), clamped to ``[0, feat_size - 1]`` so that every sample has exactly one positive cell (value 1)
    even when jitter puts the centre outside the crop (OSTrack would then draw nothing). The radius r is
    :func:`gaussian_radius` of the scaled (w, h) in float32 as OSTrack computes it, truncated to an int and at least
    0; cells with ``|dx| <= r`` and ``|dy| <= r`` get ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with
    ``sigma = (2r + 1) / 6``, evaluated in float64 like CenterNet's numpy code, values below float64 eps (times the
    peak 1) set to 0 as CenterNet does; all other cells are 0. Negative sizes count as 0. Vectorised over the batch.
    """
    if boxes_cxcywh.ndim != 2 or boxes_cxcywh.shape[-1] != 4:
        raise ValueError(f"boxes_cxcywh must have shape (B, 4), got {tuple(boxes_cxcywh.shape)}")
    if int(feat_size) != feat_size or feat_size < 1:
        raise ValueError(f"feat_size must be a positive int, got {feat_size!r}")
    feat_size = int(feat_size)
    out_dtype = boxes_cxcywh.dtype if boxes_cxcywh.is_floating_point() else torch.float32
    scaled = boxes_cxcywh.detach().float() * feat_size
    centre = scaled[:, :2].round().clamp(0, feat_size - 1).double()
    radius = gaussian_radius(scaled[:, 2:].clamp(min=0)).clamp(min=0).long().double()
    sigma = (2 * radius + 1) / 6
    denom = (2 * sigma * sigma)[:, None, None]
    cells = torch.arange(feat_size, device=boxes_cxcywh.device, dtype=torch.float64)
    dx = (cells[None, :] - centre[:, 0:1])[:, None, :]
    dy = (cells[None, :] - centre[:, 1:2])[:, :, None]
    value = torch.exp(-(dx * dx + dy * dy) / denom)
    r = radius[:, None, None]
    keep = (dx.abs() <= r) & (dy.abs() <= r) & (value >= torch.finfo(torch.float64).eps)
    heatmap = torch.where(keep, value, torch.zeros((), dtype=value.dtype, device=value.device))
    return heatmap.to(out_dtype).unsqueeze(1)


def focal_loss(score_map: Tensor, heatmap: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet focal loss between a score map (already sigmoid + clamped to [1e-4, 1 - 1e-4]) and its target.

    Positives are cells where the target equals 1: ``log(p) (1 - p)^alpha``; the other cells give
    ``log(1 - p) p^alpha (1 - y)^beta``. Both are summed over the whole batch and divided by the batch's number of
    positives; with no positive the loss is the negative part alone (the division is by ``max(num_pos, 1)``, which
    is the same thing and needs no host sync).
    """
    pred = _at_least_fp32(score_map)
    target = heatmap.to(pred.dtype)
    positive = target.eq(1).to(pred.dtype)
    negative = target.lt(1).to(pred.dtype)
    pos = (torch.log(pred) * (1 - pred).pow(alpha) * positive).sum()
    neg = (torch.log(1 - pred) * pred.pow(alpha) * (1 - target).pow(beta) * negative).sum()
    num_pos = positive.sum().clamp(min=1)
    return -(pos + neg) / num_pos


def guidance_loss(
    pred_cxcywh: Tensor, teacher_cxcywh: Tensor, giou_weight: float = 2.0, l1_weight: float = 5.0
) -> Tensor:
    """Prediction guidance: the teacher's decoded box supervises the predicted box, ``giou_w * GIoU + l1_w * L1``.

    The teacher box is detached and, unlike the GT box, not clamped to the crop (as in the paper's code).
    """
    pred_xyxy = cxcywh_to_xyxy(_at_least_fp32(pred_cxcywh))
    teacher_xyxy = cxcywh_to_xyxy(_at_least_fp32(teacher_cxcywh.detach()))
    giou, _ = giou_loss(pred_xyxy, teacher_xyxy)
    return giou_weight * giou + l1_weight * l1_box_loss(pred_xyxy, teacher_xyxy)


def mimicking_loss(features: Sequence[Tensor], teacher_features: Sequence[Tensor], num_template_tokens: int) -> Tensor:
    """Stage-wise feature mimicking: mean over stage boundaries of ``(MSE_search + MSE_template) / 2``.

    Tokens are (B, N, D) with the first ``num_template_tokens`` being template tokens. Averaging the two MSEs
    weighs the 64 template tokens like the 256 search tokens. Teacher features are detached.
    """
    if len(features) == 0 or len(teacher_features) == 0:
        raise ValueError("mimicking_loss needs at least one stage boundary, got an empty feature list")
    if len(features) != len(teacher_features):
        raise ValueError(f"{len(features)} student feature maps but {len(teacher_features)} teacher feature maps")
    terms = []
    for i, (student, teacher) in enumerate(zip(features, teacher_features)):
        if student.shape != teacher.shape or student.ndim != 3:
            raise ValueError(
                f"boundary {i}: features must be (B, N, D) of equal shape, got {tuple(student.shape)} "
                f"and {tuple(teacher.shape)}"
            )
        if not 0 < num_template_tokens < student.shape[1]:
            raise ValueError(
                f"num_template_tokens must lie in (0, {student.shape[1]}), got {num_template_tokens}"
            )
        student = _at_least_fp32(student)
        teacher = _at_least_fp32(teacher.detach()).to(student.dtype)
        n = num_template_tokens
        template = F.mse_loss(student[:, :n], teacher[:, :n])
        search = F.mse_loss(student[:, n:], teacher[:, n:])
        terms.append((search + template) / 2)
    return torch.stack(terms).mean()


@dataclass
class LossInputs:
    """Everything one training step's loss needs.

    ``pred`` holds at least ``pred_boxes`` (B, 4) ``cxcywh`` normalised and ``score_map`` (B, 1, H, W);
    ``gt_boxes`` (B, 4) ``cxcywh`` normalised to the search crop; ``teacher_boxes`` the teacher's decoded boxes
    (B, 4) ``cxcywh``; ``features`` the mixed network's tokens at each stage boundary (already in the teacher's
    width) and ``teacher_features`` the teacher's at the same boundaries; ``step`` for error messages.
    """

    pred: Mapping[str, Tensor]
    gt_boxes: Tensor
    teacher_boxes: Tensor | None = None
    features: Sequence[Tensor] = ()
    teacher_features: Sequence[Tensor] = ()
    num_template_tokens: int = 0
    step: int | None = None


LossTerm = Callable[[LossInputs], Tensor]

LOSS_TERMS: dict[str, LossTerm] = {}
"""User-added loss terms by name, each mapping :class:`LossInputs` to a scalar; weighted by ``LossWeights.extra``."""


def register_loss_term(name: str) -> Callable[[LossTerm], LossTerm]:
    """Decorator adding a loss term to :data:`LOSS_TERMS` under ``name``; duplicate or built-in names are rejected."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"loss term name must be a non-empty string, got {name!r}")
    if name in BUILTIN_TERMS:
        raise ValueError(f"loss term name {name!r} is reserved for a built-in term")
    if name in LOSS_TERMS:
        raise ValueError(f"loss term {name!r} is already registered")

    def decorator(fn: LossTerm) -> LossTerm:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = fn
        return fn

    return decorator


def _check_weight(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"loss weight {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"loss weight {name} must be finite and >= 0, got {value!r}")


@dataclass
class LossWeights:
    """Weights of the loss terms (paper: GIoU 2, L1 5, focal 1, guidance 1 with its own GIoU 2 and L1 5,
    mimicking 0.2); ``extra`` weighs registered user terms by name."""

    giou: float = 2.0
    l1: float = 5.0
    focal: float = 1.0
    guidance: float = 1.0
    guidance_giou: float = 2.0
    guidance_l1: float = 5.0
    mimicking: float = 0.2
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "extra":
                _check_weight(f.name, getattr(self, f.name))
        for name, value in self.extra.items():
            _check_weight(f"extra[{name!r}]", value)


class TrackingLoss:
    """The weighted CompressTracker loss; ``loss(inputs)`` returns a dict of every term and their weighted ``total``.

    Keys: ``total``, ``giou``, ``l1``, ``focal``, ``guidance``, ``mimicking``, ``iou`` (mean IoU with the GT,
    detached, for logging) and one per extra term. Guidance, mimicking and extra terms of weight 0 are not computed
    (their value is 0); a term with a positive weight whose inputs are missing raises ValueError. Every call first
    checks the network outputs in ``inputs.pred`` (and the GT and teacher boxes) for NaN/inf with
    :func:`check_finite`, so a diverged network stops with an error naming the tensor and the step.
    """

    def __init__(self, weights: LossWeights | None = None) -> None:
        self.weights = weights if weights is not None else LossWeights()
        unknown = sorted(set(self.weights.extra) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown extra loss terms {unknown}; registered: {sorted(LOSS_TERMS)}")
        self._extra = {name: LOSS_TERMS[name] for name in self.weights.extra}

    @property
    def needs_teacher(self) -> bool:
        """Whether a step needs the teacher's forward (its boxes for guidance or its features for mimicking)."""
        return self.weights.guidance > 0 or self.weights.mimicking > 0

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        w = self.weights
        pred = inputs.pred
        for key in ("pred_boxes", "score_map"):
            if key not in pred:
                raise ValueError(f"inputs.pred lacks {key!r}")
        checked = {k: v for k, v in pred.items() if isinstance(v, Tensor)}
        checked.setdefault("gt_boxes", inputs.gt_boxes)
        if inputs.teacher_boxes is not None:
            checked.setdefault("teacher_boxes", inputs.teacher_boxes)
        check_finite(checked, inputs.step)

        pred_boxes = _at_least_fp32(pred["pred_boxes"]).reshape(-1, 4)
        score_map = pred["score_map"]
        if pred_boxes.shape != inputs.gt_boxes.shape:
            raise ValueError(f"pred_boxes {tuple(pred_boxes.shape)} and gt_boxes {tuple(inputs.gt_boxes.shape)} differ")
        if score_map.ndim != 4 or score_map.shape[-1] != score_map.shape[-2]:
            raise ValueError(f"score_map must be (B, 1, S, S), got {tuple(score_map.shape)}")

        pred_xyxy = cxcywh_to_xyxy(pred_boxes)
        gt_xyxy = cxcywh_to_xyxy(_at_least_fp32(inputs.gt_boxes.detach())).to(pred_boxes.dtype).clamp(0.0, 1.0)
        giou, iou = giou_loss(pred_xyxy, gt_xyxy)
        l1 = l1_box_loss(pred_xyxy, gt_xyxy)
        heatmap = gaussian_heatmap(inputs.gt_boxes, score_map.shape[-1])
        focal = focal_loss(score_map, heatmap)
        zero = torch.zeros((), dtype=giou.dtype, device=giou.device)

        guidance = zero
        if w.guidance > 0:
            if inputs.teacher_boxes is None:
                raise ValueError("guidance weight is > 0 but inputs.teacher_boxes is None")
            guidance = guidance_loss(pred_boxes, inputs.teacher_boxes.reshape(-1, 4), w.guidance_giou, w.guidance_l1)

        mimicking = zero
        if w.mimicking > 0:
            if not inputs.features or not inputs.teacher_features:
                raise ValueError("mimicking weight is > 0 but inputs.features or inputs.teacher_features is empty")
            mimicking = mimicking_loss(inputs.features, inputs.teacher_features, inputs.num_template_tokens)

        total = w.giou * giou + w.l1 * l1 + w.focal * focal + w.guidance * guidance + w.mimicking * mimicking
        out = {"giou": giou, "l1": l1, "focal": focal, "guidance": guidance, "mimicking": mimicking}
        for name, fn in self._extra.items():
            weight = w.extra[name]
            value = zero
            if weight > 0:
                value = fn(inputs)
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise ValueError(f"extra loss term {name!r} must return a scalar tensor")
                value = value.reshape(())
                total = total + weight * value
            out[name] = value
        out["total"] = total
        out["iou"] = iou.detach().mean()
        return out
