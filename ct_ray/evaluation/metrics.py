"""The one metrics module of ct-ray: one-pass evaluation (OPE) of tracker results (docs/METHOD.md, section 8).

Plain numpy. Boxes are image ``xywh`` in pixels (``ct_ray.boxes``): top-left corner and size, ``x2 = x + w``.

Three definitions live here, and their numbers are only comparable within one definition:

- ``score_sequence`` / ``score_benchmark``: the pytracking analysis that OSTrack (and the CompressTracker paper)
  reports on LaSOT, UAV123, TNL2K, ...: success AUC over 21 IoU thresholds, precision at 20 px, normalised precision
  at 0.2, OP50 / OP75, every curve averaged over sequences with equal weight.
- ``got10k_scores``: the GOT-10k definition (AO, SR50, SR75 over IoUs pooled over all scored frames).
- ``trackingnet_scores``: the TrackingNet definition (trapezoid areas under 21-point curves).

All reported scores are percentages (x 100); curves are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ct_ray.boxes import is_valid_xywh, xywh_to_cxcywh, xywh_to_xyxy

__all__ = [
    "SUCCESS_THRESHOLDS",
    "PRECISION_THRESHOLDS",
    "NORM_PRECISION_THRESHOLDS",
    "GOT10K_THRESHOLDS",
    "TRACKINGNET_SUCCESS_THRESHOLDS",
    "TRACKINGNET_PRECISION_THRESHOLDS",
    "TRACKINGNET_NORM_PRECISION_THRESHOLDS",
    "iou_xywh",
    "center_error",
    "normalized_center_error",
    "prepare_predictions",
    "SequenceScore",
    "BenchmarkScore",
    "score_sequence",
    "score_benchmark",
    "got10k_scores",
    "trackingnet_scores",
]

# pytracking / OSTrack analysis grids. Written as integer ratios so that 0.5, 0.75 and 0.2 are the exact doubles.
SUCCESS_THRESHOLDS = np.arange(21, dtype=np.float64) / 20.0            # 0, 0.05, ..., 1.0 (IoU > t)
PRECISION_THRESHOLDS = np.arange(51, dtype=np.float64)                 # 0, 1, ..., 50 px (error <= t)
NORM_PRECISION_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0    # 0, 0.01, ..., 0.5 (error <= t)
_OP50 = 10      # SUCCESS_THRESHOLDS[10] == 0.5
_OP75 = 15      # SUCCESS_THRESHOLDS[15] == 0.75
_PREC20 = 20    # PRECISION_THRESHOLDS[20] == 20 px
_NPREC02 = 20   # NORM_PRECISION_THRESHOLDS[20] == 0.2

# GOT-10k toolkit: 101 IoU thresholds 0, 0.01, ..., 1.0 (IoU > t).
GOT10K_THRESHOLDS = np.arange(101, dtype=np.float64) / 100.0

# TrackingNet devkit: 21 evenly spaced points on each axis, areas by the trapezoid rule.
TRACKINGNET_SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)
TRACKINGNET_PRECISION_THRESHOLDS = np.linspace(0.0, 50.0, 21)
TRACKINGNET_NORM_PRECISION_THRESHOLDS = np.linspace(0.0, 0.5, 21)


# --------------------------------------------------------------------------------------------------------------------
# Per-frame measures
# --------------------------------------------------------------------------------------------------------------------

def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array.reshape(1, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what} must be an (N, 4) array of xywh boxes, got shape {array.shape}")
    return array


def iou_xywh(pred: Any, gt: Any) -> np.ndarray:
    """Continuous IoU of matching rows of two ``(N, 4)`` xywh box arrays -> ``(N,)``.

    ``x2 = x + w`` (no "+1 pixel" convention). The result is 0 where the boxes do not overlap, where the union is not
    positive and where either box has a non-finite value; it is clipped to ``[0, 1]``.
    """
    p = _as_boxes(pred, "pred")
    g = _as_boxes(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    pc, gc = xywh_to_xyxy(p), xywh_to_xyxy(g)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        inter_w = np.clip(np.minimum(pc[:, 2], gc[:, 2]) - np.maximum(pc[:, 0], gc[:, 0]), 0.0, None)
        inter_h = np.clip(np.minimum(pc[:, 3], gc[:, 3]) - np.maximum(pc[:, 1], gc[:, 1]), 0.0, None)
        inter = inter_w * inter_h
        area_p = np.clip(p[:, 2], 0.0, None) * np.clip(p[:, 3], 0.0, None)
        area_g = np.clip(g[:, 2], 0.0, None) * np.clip(g[:, 3], 0.0, None)
        union = area_p + area_g - inter
        ok = np.isfinite(inter) & np.isfinite(union) & (union > 0)
        iou = np.where(ok, inter / np.where(ok, union, 1.0), 0.0)
    return np.clip(iou, 0.0, 1.0)


def center_error(pred: Any, gt: Any) -> np.ndarray:
    """Euclidean distance in pixels between the box centres ``(x + w/2, y + h/2)`` -> ``(N,)`` (NaN if undefined)."""
    p = xywh_to_cxcywh(_as_boxes(pred, "pred"))
    g = xywh_to_cxcywh(_as_boxes(gt, "gt"))
    with np.errstate(invalid="ignore", over="ignore"):
        return np.hypot(p[:, 0] - g[:, 0], p[:, 1] - g[:, 1])


def normalized_center_error(pred: Any, gt: Any) -> np.ndarray:
    """Centre distance with dx, dy divided by the GT width and height -> ``(N,)``; NaN / inf where the GT is
    degenerate (the scorers replace those frames, see ``score_sequence``)."""
    p = xywh_to_cxcywh(_as_boxes(pred, "pred"))
    g = xywh_to_cxcywh(_as_boxes(gt, "gt"))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.hypot((p[:, 0] - g[:, 0]) / g[:, 2], (p[:, 1] - g[:, 1]) / g[:, 3])


# --------------------------------------------------------------------------------------------------------------------
# Preparation of a sequence's predictions
# --------------------------------------------------------------------------------------------------------------------

def _label(name: str | None) -> str:
    return f"sequence {name!r}" if name is not None else "sequence"


def _fit_length(pred: Any, gt: np.ndarray, name: str | None) -> np.ndarray:
    p = _as_boxes(pred, f"predictions of {_label(name)}")
    if p.shape[0] < gt.shape[0]:
        raise ValueError(f"{_label(name)}: {p.shape[0]} predicted boxes for {gt.shape[0]} frames (too few)")
    return p[:gt.shape[0]].copy()


def prepare_predictions(pred: Any, gt: Any, name: str | None = None) -> np.ndarray:
    """A sequence's predictions as METHOD.md section 8 scores them -> a new ``(len(gt), 4)`` float array.

    - rows beyond the length of ``gt`` are dropped; fewer rows than ``gt`` is a ``ValueError`` naming ``name``;
    - frame 0 is set to the GT box (so frame 0 counts, as a hit);
    - then, frame by frame from frame 1, a predicted box that is not usable (zero or negative width or height, or a
      non-finite value) takes the previous frame's box, which is already fixed (so a run of empty boxes keeps the
      last usable one, or the GT of frame 0).

    (pytracking fixes the empty boxes before it overwrites frame 0 with the GT; both orders agree whenever the
    tracker's frame-0 output is its initial box, and METHOD.md states the order used here.)
    """
    g = _as_boxes(gt, f"ground truth of {_label(name)}")
    p = _fit_length(pred, g, name)
    if len(p) == 0:
        return p
    p[0] = g[0]
    usable = is_valid_xywh(p)
    for i in range(1, len(p)):
        if not usable[i]:
            p[i] = p[i - 1]
    return p


# --------------------------------------------------------------------------------------------------------------------
# pytracking / OSTrack one-pass evaluation
# --------------------------------------------------------------------------------------------------------------------

class _Scores:
    """The scalar scores (percent) derived from the three curves; shared by sequence and benchmark scores."""

    success_curve: np.ndarray
    precision_curve: np.ndarray
    norm_precision_curve: np.ndarray

    @property
    def auc(self) -> float:
        """Mean of the 21 values of the success curve x 100."""
        return float(np.mean(self.success_curve) * 100.0)

    @property
    def op50(self) -> float:
        return float(self.success_curve[_OP50] * 100.0)

    @property
    def op75(self) -> float:
        return float(self.success_curve[_OP75] * 100.0)

    @property
    def precision(self) -> float:
        """Precision at 20 px x 100."""
        return float(self.precision_curve[_PREC20] * 100.0)

    @property
    def norm_precision(self) -> float:
        """Normalised precision at 0.2 x 100."""
        return float(self.norm_precision_curve[_NPREC02] * 100.0)

    def scores(self) -> dict[str, float]:
        return {"auc": self.auc, "precision": self.precision, "norm_precision": self.norm_precision,
                "op50": self.op50, "op75": self.op75}


@dataclass(eq=False)
class SequenceScore(_Scores):
    """Scores of one sequence (pytracking definition).

    ``success_curve`` (21,) is the share of frames with IoU > t for t in ``SUCCESS_THRESHOLDS``; ``precision_curve``
    (51,) the share with centre error <= t px for t in ``PRECISION_THRESHOLDS``; ``norm_precision_curve`` (51,) the
    share with normalised centre error <= t for t in ``NORM_PRECISION_THRESHOLDS``. The scalar properties are
    percentages: ``auc`` = mean(success_curve) x 100, ``precision`` at 20 px, ``norm_precision`` at 0.2, ``op50`` /
    ``op75`` the success curve at 0.5 / 0.75. ``num_frames`` is the sequence length, ``num_valid`` the frames with
    a valid GT box that is visible, ``num_scored`` the denominator (``num_frames``, or ``num_valid`` with
    ``exclude_invalid``).
    """

    name: str | None
    success_curve: np.ndarray
    precision_curve: np.ndarray
    norm_precision_curve: np.ndarray
    num_frames: int
    num_valid: int
    num_scored: int

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.scores(), "num_frames": int(self.num_frames),
                               "num_valid": int(self.num_valid), "num_scored": int(self.num_scored)}
        if curves:
            out["success_curve"] = self.success_curve.tolist()
            out["precision_curve"] = self.precision_curve.tolist()
            out["norm_precision_curve"] = self.norm_precision_curve.tolist()
        return out


def _frame_masks(gt: np.ndarray, visible: Any, name: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visible flags, valid GT, degenerate-but-finite GT) for every frame."""
    n = gt.shape[0]
    if visible is None:
        vis = np.ones(n, dtype=bool)
    else:
        vis = np.asarray(visible, dtype=bool).reshape(-1)
        if vis.shape[0] != n:
            raise ValueError(f"{_label(name)}: {vis.shape[0]} visibility flags for {n} frames")
    valid_gt = is_valid_xywh(gt)
    degenerate = np.isfinite(gt).all(axis=1) & ~valid_gt
    return vis, valid_gt, degenerate


def score_sequence(pred: Any, gt: Any, visible: Any = None, exclude_invalid: bool = False,
                   name: str | None = None) -> SequenceScore:
    """Scores one sequence as the pytracking analysis does by default (METHOD.md section 8).

    ``pred`` and ``gt`` are ``(N, 4)`` xywh boxes (``pred`` may have more rows); ``visible`` the dataset's
    visibility flags (None: every frame visible). The predictions go through ``prepare_predictions`` first.

    - A frame is *scored* when its GT box is valid (finite, w > 0 and h > 0) and it is visible. Every other frame
      is a miss for success, precision and normalised precision and stays in the denominator, which is the full
      length of the sequence. With ``exclude_invalid=True`` those frames are dropped from the denominator (and from
      the numerators) instead.
    - Quirk kept for comparability with pytracking (default ``exclude_invalid=False`` only): a frame whose GT box is
      finite but degenerate (w <= 0 or h <= 0) and that the dataset marks **visible** counts as a **hit for
      normalised precision** (at every threshold, 0 included) and as a miss for success and precision. (pytracking
      gives such a frame the normalised error -1, which is <= every threshold, and only overrides it with +inf for
      frames that are not visible.) A NaN GT row (unknown ground truth) is not "degenerate": it is a miss for all
      three measures whatever its visibility flag.
    """
    g = _as_boxes(gt, f"ground truth of {_label(name)}")
    p = prepare_predictions(pred, g, name=name)
    n = g.shape[0]
    vis, valid_gt, degenerate = _frame_masks(g, visible, name)
    scored = valid_gt & vis
    num_valid = int(scored.sum())

    iou = iou_xywh(p, g)
    err = center_error(p, g)
    nerr = normalized_center_error(p, g)
    iou[~scored] = -1.0           # > no threshold (0 included)
    err[~scored] = np.inf         # <= no threshold
    nerr[~scored] = np.inf
    quirk = degenerate & vis
    if not exclude_invalid:
        nerr[quirk] = -1.0        # <= every threshold: the pytracking quirk
        denominator = n
    else:
        denominator = num_valid
        iou, err, nerr = iou[scored], err[scored], nerr[scored]
    if denominator == 0:
        raise ValueError(f"{_label(name)}: no frame to score ({n} frames, {num_valid} with a valid visible GT box)")

    success = (iou[:, None] > SUCCESS_THRESHOLDS[None, :]).sum(axis=0) / denominator
    precision = (err[:, None] <= PRECISION_THRESHOLDS[None, :]).sum(axis=0) / denominator
    norm_precision = (nerr[:, None] <= NORM_PRECISION_THRESHOLDS[None, :]).sum(axis=0) / denominator
    return SequenceScore(name=name, success_curve=success, precision_curve=precision,
                         norm_precision_curve=norm_precision, num_frames=n, num_valid=num_valid,
                         num_scored=int(denominator))


@dataclass(eq=False)
class BenchmarkScore(_Scores):
    """Scores over a set of sequences (pytracking definition), each sequence with equal weight.

    The curves are the means of the per-sequence curves; ``auc`` = mean of the 21 values of the averaged success
    curve x 100 (perfect boxes give 20/21 x 100 = 95.24, since no IoU is > 1.0); ``op50`` / ``op75`` the averaged
    curve at 0.5 / 0.75 x 100; ``precision`` at 20 px x 100; ``norm_precision`` at 0.2 x 100. ``sequences`` keeps
    the per-sequence scores in the order scored.
    """

    success_curve: np.ndarray
    precision_curve: np.ndarray
    norm_precision_curve: np.ndarray
    sequences: list[SequenceScore] = field(default_factory=list)
    exclude_invalid: bool = False

    @property
    def num_sequences(self) -> int:
        return len(self.sequences)

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready: ``{"overall": {auc, precision, norm_precision, op50, op75, num_sequences, exclude_invalid
        [, the three curves and their thresholds]}, "per_sequence": [{name, auc, precision, norm_precision, op50,
        op75, num_frames, num_valid, num_scored}, ...]}``."""
        overall: dict[str, Any] = self.scores()
        overall["num_sequences"] = self.num_sequences
        overall["exclude_invalid"] = bool(self.exclude_invalid)
        if curves:
            overall["success_thresholds"] = SUCCESS_THRESHOLDS.tolist()
            overall["success_curve"] = self.success_curve.tolist()
            overall["precision_thresholds"] = PRECISION_THRESHOLDS.tolist()
            overall["precision_curve"] = self.precision_curve.tolist()
            overall["norm_precision_thresholds"] = NORM_PRECISION_THRESHOLDS.tolist()
            overall["norm_precision_curve"] = self.norm_precision_curve.tolist()
        return {"overall": overall, "per_sequence": [s.to_dict() for s in self.sequences]}


def _match(results: Mapping[str, Any], sequences: Iterable[Any]) -> list[tuple[Any, Any]]:
    """Pairs every sequence with its result; errors name missing, unknown and duplicated sequences."""
    seqs = list(sequences)
    if not seqs:
        raise ValueError("no sequences to score")
    names = [s.name for s in seqs]
    seen = set(names)
    if len(seen) != len(names):
        dups = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate sequence names: {dups[:10]}")
    missing = [n for n in names if n not in results]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(f"no result for {len(missing)} sequence(s): {missing[:10]}{more}")
    unknown = sorted(set(results) - seen)
    if unknown:
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise ValueError(f"results for {len(unknown)} unknown sequence(s): {unknown[:10]}{more}")
    return [(s, results[s.name]) for s in seqs]


def score_benchmark(results: Mapping[str, Any], sequences: Iterable[Any],
                    exclude_invalid: bool = False) -> BenchmarkScore:
    """Scores ``results`` (sequence name -> predicted ``(N, 4)`` xywh boxes) on ``sequences`` (``Sequence``
    objects: ``name``, ``boxes``, ``visible``) with ``score_sequence`` and averages the curves with equal weight.

    Every sequence needs a result and every result a sequence (``ValueError`` naming them otherwise).
    """
    scores = [score_sequence(pred, seq.boxes, seq.visible, exclude_invalid=exclude_invalid, name=seq.name)
              for seq, pred in _match(results, sequences)]
    return BenchmarkScore(
        success_curve=np.mean([s.success_curve for s in scores], axis=0),
        precision_curve=np.mean([s.precision_curve for s in scores], axis=0),
        norm_precision_curve=np.mean([s.norm_precision_curve for s in scores], axis=0),
        sequences=scores,
        exclude_invalid=exclude_invalid,
    )


# --------------------------------------------------------------------------------------------------------------------
# GOT-10k
# --------------------------------------------------------------------------------------------------------------------

def got10k_scores(results: Mapping[str, Any], sequences: Iterable[Any], curve: bool = False) -> dict[str, Any]:
    """AO, SR50 and SR75 as METHOD.md section 8 defines them for GOT-10k, in percent.

    Per sequence: frame 0 is excluded (no prediction is forced to the GT, and no empty box is replaced: the
    predictions are scored as given, rows beyond the sequence length dropped, too few rows a ``ValueError``); of the
    other frames only those with cover > 0 are kept: ``sequence.attributes["cover"]`` (the GOT-10k ``cover.label``
    values, one per frame) when present, else ``sequence.visible``; frames whose GT box is not valid are dropped too
    (they have no defined IoU). A non-finite or empty predicted box has IoU 0.

    The IoUs of the kept frames of **all** sequences are then pooled (so a longer sequence weighs more): ``ao`` =
    mean IoU x 100, ``sr50`` / ``sr75`` = share of pooled IoUs > 0.5 / > 0.75 (strictly) x 100. With ``curve=True``
    the result also holds ``success_curve``: share of pooled IoUs > t for the 101 thresholds ``GOT10K_THRESHOLDS``
    (0, 0.01, ..., 1). (The toolkit also clips boxes to the image and averages repeated runs; neither is done here.)
    """
    pooled: list[np.ndarray] = []
    for seq, pred in _match(results, sequences):
        g = _as_boxes(seq.boxes, f"ground truth of {_label(seq.name)}")
        p = _fit_length(pred, g, seq.name)
        cover = seq.attributes.get("cover") if getattr(seq, "attributes", None) else None
        keep = (np.asarray(cover, dtype=np.float64).reshape(-1) > 0) if cover is not None \
            else np.asarray(seq.visible, dtype=bool).reshape(-1)
        if keep.shape[0] != g.shape[0]:
            raise ValueError(f"{_label(seq.name)}: {keep.shape[0]} cover/visibility values for {g.shape[0]} frames")
        keep = keep.copy()
        keep[:1] = False
        keep &= is_valid_xywh(g)
        pooled.append(iou_xywh(p[keep], g[keep]))
    ious = np.concatenate(pooled)
    if ious.size == 0:
        raise ValueError("GOT-10k scores: no frame with cover > 0 and a valid GT box after frame 0")
    out: dict[str, Any] = {
        "ao": float(np.mean(ious) * 100.0),
        "sr50": float(np.mean(ious > 0.5) * 100.0),
        "sr75": float(np.mean(ious > 0.75) * 100.0),
    }
    if curve:
        out["success_curve"] = (ious[:, None] > GOT10K_THRESHOLDS[None, :]).mean(axis=0).tolist()
    return out


# --------------------------------------------------------------------------------------------------------------------
# TrackingNet
# --------------------------------------------------------------------------------------------------------------------

def _trapezoid_mean(values: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid area under ``values`` over ``x``, divided by the width of ``x`` (a fraction in [0, 1])."""
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(x)) / 2.0)
    return area / float(x[-1] - x[0])


def trackingnet_scores(results: Mapping[str, Any], sequences: Iterable[Any]) -> dict[str, float]:
    """Success, precision and normalised precision as TrackingNet defines them: trapezoid areas, in percent.

    Per sequence: rows beyond the sequence length dropped (too few rows a ``ValueError``), frame 0 set to the GT, no
    empty-box replacement; every frame is in the denominator, and frames whose GT box is invalid or that are not
    visible are misses for all three curves. The curves are averaged over sequences with equal weight, each sampled
    at 21 evenly spaced thresholds: IoU > t for t in 0, 0.05, ..., 1 (``TRACKINGNET_SUCCESS_THRESHOLDS``); centre
    error <= t for t in 0, 2.5, ..., 50 px (``TRACKINGNET_PRECISION_THRESHOLDS``); normalised centre error <= t for
    t in 0, 0.025, ..., 0.5 (``TRACKINGNET_NORM_PRECISION_THRESHOLDS``). Each score is the trapezoid area under its
    curve divided by the threshold range (what the TrackingNet devkit gets by integrating every curve over a
    0..1 axis) x 100. Perfect boxes give success 97.5 (the IoU 1 is not > 1 at the last threshold), precision 100 and
    normalised precision 100. (The devkit also rounds all boxes to integers; that is not done here.)
    """
    succ, prec, nprec = [], [], []
    for seq, pred in _match(results, sequences):
        g = _as_boxes(seq.boxes, f"ground truth of {_label(seq.name)}")
        p = _fit_length(pred, g, seq.name)
        if len(g) == 0:
            raise ValueError(f"{_label(seq.name)}: no frames")
        p[0] = g[0]
        vis, valid_gt, _ = _frame_masks(g, seq.visible, seq.name)
        scored = valid_gt & vis
        iou = np.where(scored, iou_xywh(p, g), -1.0)
        err = np.where(scored, center_error(p, g), np.inf)
        nerr = np.where(scored, normalized_center_error(p, g), np.inf)
        succ.append((iou[:, None] > TRACKINGNET_SUCCESS_THRESHOLDS[None, :]).mean(axis=0))
        prec.append((err[:, None] <= TRACKINGNET_PRECISION_THRESHOLDS[None, :]).mean(axis=0))
        nprec.append((nerr[:, None] <= TRACKINGNET_NORM_PRECISION_THRESHOLDS[None, :]).mean(axis=0))
    return {
        "success_auc": _trapezoid_mean(np.mean(succ, axis=0), TRACKINGNET_SUCCESS_THRESHOLDS) * 100.0,
        "precision_auc": _trapezoid_mean(np.mean(prec, axis=0), TRACKINGNET_PRECISION_THRESHOLDS) * 100.0,
        "norm_precision_auc": _trapezoid_mean(np.mean(nprec, axis=0),
                                              TRACKINGNET_NORM_PRECISION_THRESHOLDS) * 100.0,
    }
