"""Tests of ct_ray.compress.losses against values worked out by hand or by straightforward reference loops."""
from __future__ import annotations

import math

import pytest
import torch

from ct_ray.compress.losses import (
    LOSS_TERMS,
    LossInputs,
    LossWeights,
    NonFiniteLossError,
    TrackingLoss,
    check_finite,
    focal_loss,
    gaussian_heatmap,
    giou_loss,
    guidance_loss,
    l1_box_loss,
    mimicking_loss,
    register_loss_term,
)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------- GIoU / L1
def test_giou_identical_boxes_zero_loss():
    box = t([[0.1, 0.2, 0.5, 0.6]])
    loss, iou = giou_loss(box, box.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert iou.tolist() == pytest.approx([1.0])


def test_giou_disjoint_and_overlapping_boxes():
    # Disjoint: A = [0,0,.1,.1], B = [.2,0,.3,.1]: IoU 0, union .02, hull [0,0,.3,.1] area .03,
    # GIoU = 0 - (.03 - .02) / .03 = -1/3, loss 4/3.
    # Overlap: A = [0,0,.2,.2], B = [.1,.1,.3,.3]: inter .01, union .07, IoU 1/7, hull area .09,
    # GIoU = 1/7 - .02/.09 = 1/7 - 2/9.
    pred = t([[0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.2, 0.2]])
    target = t([[0.2, 0.0, 0.3, 0.1], [0.1, 0.1, 0.3, 0.3]])
    loss, iou = giou_loss(pred, target)
    giou_overlap = 1 / 7 - 2 / 9
    assert iou.tolist() == pytest.approx([0.0, 1 / 7])
    assert loss.item() == pytest.approx(((1 + 1 / 3) + (1 - giou_overlap)) / 2)


def test_giou_degenerate_prediction_is_finite():
    pred = torch.tensor([[0.6, 0.6, 0.4, 0.4], [0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    target = torch.tensor([[0.4, 0.4, 0.6, 0.6], [0.4, 0.4, 0.6, 0.6]])
    loss, iou = giou_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert iou.tolist() == [0.0, 0.0]


def test_l1_value():
    pred = t([[0.0, 0.0, 1.0, 1.0]])
    target = t([[0.1, -0.2, 1.0, 1.3]])
    assert l1_box_loss(pred, target).item() == pytest.approx((0.1 + 0.2 + 0.0 + 0.3) / 4)


# ------------------------------------------------------------------------------------------------------------ heatmap
def reference_radius(w: float, h: float, overlap: float = 0.7) -> float:
    b1 = h + w
    c1 = w * h * (1 - overlap) / (1 + overlap)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - overlap) * w * h
    r2 = (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2
    a3 = 4 * overlap
    b3 = -2 * overlap * (h + w)
    c3 = (overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def reference_heatmap(boxes: list[list[float]], size: int) -> torch.Tensor:
    out = torch.zeros(len(boxes), 1, size, size, dtype=torch.float64)
    for b, (cx, cy, w, h) in enumerate(boxes):
        x = min(max(round(cx * size), 0), size - 1)
        y = min(max(round(cy * size), 0), size - 1)
        r = max(int(reference_radius(w * size, h * size)), 0)
        sigma = (2 * r + 1) / 6
        for row in range(size):
            for col in range(size):
                dx, dy = col - x, row - y
                if abs(dx) <= r and abs(dy) <= r:
                    out[b, 0, row, col] = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
    return out


def test_radius_worked_example():
    # w = h = 4 cells: r1 = (8 + sqrt(64 - 4*16*.3/1.7)) / 2 = 7.63, r2 = (16 + sqrt(256 - 16*4.8)) / 2 = 14.69,
    # r3 = (-11.2 + sqrt(125.44 + 4*2.8*4.8)) / 2 = (-11.2 + 13.387) / 2 = 1.093 -> r = 1.
    assert reference_radius(4.0, 4.0) == pytest.approx((-11.2 + math.sqrt(179.2)) / 2)
    assert int(reference_radius(4.0, 4.0)) == 1


def test_heatmap_known_box():
    # Centre (0.5, 0.5) -> cell (8, 8) of 16; size 0.25 -> 4 cells -> r = 1, sigma = 3/6 = 0.5, so a neighbour gets
    # exp(-1 / (2 * 0.25)) = exp(-2), a diagonal exp(-4), and cells two away 0.
    hm = gaussian_heatmap(torch.tensor([[0.5, 0.5, 0.25, 0.25]]), 16)
    assert hm.shape == (1, 1, 16, 16) and hm.dtype == torch.float32
    assert hm[0, 0, 8, 8].item() == 1.0
    assert (hm == 1).sum().item() == 1
    assert hm[0, 0, 8, 9].item() == pytest.approx(math.exp(-2))
    assert hm[0, 0, 7, 8].item() == pytest.approx(math.exp(-2))
    assert hm[0, 0, 9, 9].item() == pytest.approx(math.exp(-4))
    assert hm[0, 0, 8, 10].item() == 0.0
    assert (hm > 0).sum().item() == 9


def test_heatmap_matches_reference_loop():
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(12, 2, generator=gen) * 1.2 - 0.1  # some centres outside the crop
    sizes = torch.rand(12, 2, generator=gen) * 0.9 + 0.01
    boxes = torch.cat([centres, sizes], dim=1)
    boxes = torch.cat([boxes, torch.tensor([[1.3, -0.4, 0.3, 0.2], [0.5, 0.5, 1.0, 1.0]])])
    hm = gaussian_heatmap(boxes, 16)
    ref = reference_heatmap(boxes.double().tolist(), 16)
    torch.testing.assert_close(hm.double(), ref, rtol=1e-6, atol=1e-7)
    assert ((hm == 1).flatten(1).sum(1) == 1).all()  # exactly one positive cell per sample, also off-crop
    assert hm[-2, 0, 0, 15].item() == 1.0  # centre (1.3, -0.4) clamped to column 15, row 0


def test_heatmap_no_grad():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3]], requires_grad=True)
    assert not gaussian_heatmap(boxes, 16).requires_grad


# -------------------------------------------------------------------------------------------------------------- focal
def test_focal_loss_by_hand():
    p = torch.tensor([[[[0.8, 0.3], [0.1, 0.6]]]])
    y = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    pos = math.log(0.8) * 0.2**2
    neg = math.log(0.7) * 0.3**2 * 0.5**4 + math.log(0.9) * 0.1**2 + math.log(0.4) * 0.6**2
    assert focal_loss(p, y).item() == pytest.approx(-(pos + neg) / 1, rel=1e-6)
    # Two samples: sums over the batch, divided by the 2 positives.
    p2 = torch.cat([p, p])
    y2 = torch.cat([y, y])
    assert focal_loss(p2, y2).item() == pytest.approx(-(2 * pos + 2 * neg) / 2, rel=1e-6)
    # No positive: the negative part alone.
    y0 = torch.tensor([[[[0.5, 0.5], [0.0, 0.0]]]])
    neg0 = math.log(0.2) * 0.8**2 * 0.5**4 + math.log(0.7) * 0.3**2 * 0.5**4
    neg0 += math.log(0.9) * 0.1**2 + math.log(0.4) * 0.6**2
    assert focal_loss(p, y0).item() == pytest.approx(-neg0, rel=1e-6)


# ---------------------------------------------------------------------------------------------- guidance / mimicking
def test_guidance_is_weighted_giou_plus_l1():
    # pred cxcywh (.1,.1,.2,.2) -> xyxy [0,0,.2,.2]; teacher (.2,.2,.2,.2) -> [.1,.1,.3,.3] (the overlap case above).
    pred = t([[0.1, 0.1, 0.2, 0.2]])
    teacher = t([[0.2, 0.2, 0.2, 0.2]])
    giou = 1 - (1 / 7 - 2 / 9)
    l1 = 0.1
    assert guidance_loss(pred, teacher).item() == pytest.approx(2 * giou + 5 * l1)
    assert guidance_loss(pred, teacher, giou_weight=1.0, l1_weight=3.0).item() == pytest.approx(giou + 3 * l1)


def test_guidance_teacher_box_not_clamped():
    # Teacher box sticking out of the crop: xyxy [-.1,-.1,.1,.1]. Unclamped, L1 to pred [-.1,-.1,.1,.1] is 0.
    pred = t([[0.0, 0.0, 0.2, 0.2]])
    assert guidance_loss(pred, pred.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_mimicking_two_boundaries():
    # B=1, N=3 (1 template + 2 search tokens), D=2. Boundary 0: template MSE 4, search MSE 1 -> 2.5.
    # Boundary 1: template MSE 0, search MSE 9 -> 4.5. Mean 3.5.
    student = [torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)]
    teacher = [
        torch.tensor([[[2.0, 2.0], [1.0, -1.0], [1.0, 1.0]]]),
        torch.tensor([[[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0]]]),
    ]
    assert mimicking_loss(student, teacher, num_template_tokens=1).item() == pytest.approx(3.5)
    with pytest.raises(ValueError):
        mimicking_loss([], [], 1)


# ------------------------------------------------------------------------------------------------------ TrackingLoss
def make_inputs(*, grad: bool = True, step: int = 7) -> LossInputs:
    gen = torch.Generator().manual_seed(1)
    b, n, d = 3, 5, 4
    pred_boxes = torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.4, 0.6, 0.2, 0.2], [0.45, 0.5, 0.5, 0.4]])
    score_map = torch.rand(b, 1, 16, 16, generator=gen).clamp(1e-4, 1 - 1e-4)
    features = [torch.randn(b, n, d, generator=gen) for _ in range(2)]
    teacher_features = [torch.randn(b, n, d, generator=gen) for _ in range(2)]
    teacher_boxes = torch.tensor([[0.52, 0.5, 0.3, 0.25], [0.4, 0.55, 0.25, 0.2], [0.5, 0.5, 0.4, 0.4]])
    for x in [pred_boxes, score_map, teacher_boxes, *features, *teacher_features]:
        x.requires_grad_(grad)
    return LossInputs(
        pred={"pred_boxes": pred_boxes, "score_map": score_map},
        gt_boxes=torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.45, 0.55, 0.2, 0.3], [0.9, 0.5, 0.4, 0.4]]),
        teacher_boxes=teacher_boxes,
        features=features,
        teacher_features=teacher_features,
        num_template_tokens=2,
        step=step,
    )


def test_total_is_weighted_sum_of_terms():
    weights = LossWeights(giou=1.5, l1=4.0, focal=0.5, guidance=2.0, mimicking=0.3)
    out = TrackingLoss(weights)(make_inputs())
    assert set(out) == {"total", "giou", "l1", "focal", "guidance", "mimicking", "iou"}
    expected = 1.5 * out["giou"] + 4.0 * out["l1"] + 0.5 * out["focal"] + 2.0 * out["guidance"] + 0.3 * out["mimicking"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    for key in ("giou", "l1", "focal", "guidance", "mimicking"):
        assert out[key].item() > 0
    assert not out["iou"].requires_grad


def test_terms_match_functions_and_gt_clamped():
    inputs = make_inputs()
    out = TrackingLoss()(inputs)
    # GT of sample 3 is (0.7, 0.3, 1.1, 0.7) in xyxy, clamped to (0.7, 0.3, 1.0, 0.7).
    gt_xyxy = torch.tensor([[0.375, 0.375, 0.625, 0.625], [0.35, 0.4, 0.55, 0.7], [0.7, 0.3, 1.0, 0.7]])
    pred_xyxy = torch.tensor([[0.35, 0.4, 0.65, 0.6], [0.3, 0.5, 0.5, 0.7], [0.2, 0.3, 0.7, 0.7]])
    assert out["l1"].item() == pytest.approx((pred_xyxy - gt_xyxy).abs().mean().item(), rel=1e-6)
    # IoUs: sample 1 inter .25*.2 = .05, union .06 + .0625 - .05 = .0725; sample 2 inter .15*.2 = .03,
    # union .04 + .06 - .03 = .07; sample 3 touches the clamped GT only along an edge: 0.
    assert out["iou"].item() == pytest.approx((0.05 / 0.0725 + 0.03 / 0.07 + 0.0) / 3, rel=1e-5)
    guidance = guidance_loss(inputs.pred["pred_boxes"], inputs.teacher_boxes)
    assert out["guidance"].item() == pytest.approx(guidance.item(), rel=1e-6)
    mim = mimicking_loss(inputs.features, inputs.teacher_features, 2)
    assert out["mimicking"].item() == pytest.approx(mim.item(), rel=1e-6)


def test_zero_weights_skip_terms_and_teacher():
    loss = TrackingLoss(LossWeights(guidance=0.0, mimicking=0.0))
    assert not loss.needs_teacher
    inputs = make_inputs()
    inputs.teacher_boxes = None
    inputs.features, inputs.teacher_features = (), ()
    out = loss(inputs)
    assert out["guidance"].item() == 0.0 and out["mimicking"].item() == 0.0
    expected = 2 * out["giou"] + 5 * out["l1"] + out["focal"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert TrackingLoss().needs_teacher
    assert TrackingLoss(LossWeights(guidance=0.0)).needs_teacher


def test_missing_inputs_for_weighted_terms():
    inputs = make_inputs()
    inputs.teacher_boxes = None
    with pytest.raises(ValueError, match="teacher_boxes"):
        TrackingLoss()(inputs)
    inputs = make_inputs()
    inputs.features = ()
    with pytest.raises(ValueError, match="features"):
        TrackingLoss()(inputs)


def test_nan_prediction_raises_naming_key_and_step():
    inputs = make_inputs(grad=False, step=1234)
    inputs.pred["pred_boxes"][1, 2] = float("nan")
    with pytest.raises(NonFiniteLossError, match="pred_boxes") as info:
        TrackingLoss()(inputs)
    assert "1234" in str(info.value) and "score_map" not in str(info.value)
    with pytest.raises(NonFiniteLossError, match="'b'.*step 3"):
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, 3)
    check_finite({"a": torch.ones(2)}, 0)


def test_negative_or_nonfinite_weight_rejected():
    with pytest.raises(ValueError, match="focal"):
        LossWeights(focal=-1.0)
    with pytest.raises(ValueError, match="mimicking"):
        LossWeights(mimicking=float("nan"))
    with pytest.raises(ValueError, match="myterm"):
        LossWeights(extra={"myterm": float("inf")})


def test_registered_extra_term():
    name = "test_losses_mean_width"

    @register_loss_term(name)
    def mean_width(inputs: LossInputs) -> torch.Tensor:
        return inputs.pred["pred_boxes"][:, 2].mean()

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_loss_term(name)(mean_width)
        with pytest.raises(ValueError, match="reserved"):
            register_loss_term("focal")
        inputs = make_inputs()
        base = TrackingLoss()(inputs)
        out = TrackingLoss(LossWeights(extra={name: 3.0}))(inputs)
        width = (0.3 + 0.2 + 0.5) / 3
        assert out[name].item() == pytest.approx(width)
        assert out["total"].item() == pytest.approx(base["total"].item() + 3.0 * width, rel=1e-6)
        with pytest.raises(ValueError, match="not_a_registered_term"):
            TrackingLoss(LossWeights(extra={"not_a_registered_term": 1.0}))
    finally:
        LOSS_TERMS.pop(name, None)


def test_gradients_reach_pred_not_teacher():
    inputs = make_inputs()
    TrackingLoss()(inputs)["total"].backward()
    assert inputs.pred["pred_boxes"].grad is not None and inputs.pred["pred_boxes"].grad.abs().sum() > 0
    assert inputs.pred["score_map"].grad is not None and inputs.pred["score_map"].grad.abs().sum() > 0
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in inputs.features)
    assert inputs.teacher_boxes.grad is None
    assert all(f.grad is None for f in inputs.teacher_features)


def test_a_confident_head_gives_a_finite_focal_loss_under_bf16_autocast():
    """In bf16, 1 - 1e-4 rounds to 1.0 and log(1 - p) of a confident head is -inf; the head's sigmoid, clamp and
    decode run in float32 under autocast, so the loss stays finite."""
    from ct_ray.models import OneStreamTracker, TrackerConfig

    assert torch.tensor(1 - 1e-4, dtype=torch.bfloat16).item() == 1.0
    torch.manual_seed(0)
    model = OneStreamTracker(TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=32,
                                           search_size=64))
    with torch.no_grad():
        model.box_head.conv5_ctr.bias.fill_(30.0)  # every cell a near-certain target
    template, search = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(template, search)
        terms = TrackingLoss(LossWeights(guidance=0.0, mimicking=0.0))(LossInputs(
            pred=out, gt_boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2),
            num_template_tokens=model.num_template_tokens))
    assert out["score_map"].dtype == torch.float32 and out["pred_boxes"].dtype == torch.float32
    assert out["score_map"].max().item() == pytest.approx(1 - 1e-4)
    assert torch.isfinite(terms["focal"]) and torch.isfinite(terms["total"])
