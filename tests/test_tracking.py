import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ct_ray.tracking import OnlineTracker, clip_box, hann2d
from ct_ray.tracking.online import run_sequence

H, W = 120, 160


def test_hann2d_explicit_values():
    # k = 1..4 over F + 1 = 5: 0.5 * (1 - cos(72 deg)) = (5 - sqrt5) / 8, 0.5 * (1 - cos(144 deg)) = (5 + sqrt5) / 8
    a, b = (5 - math.sqrt(5)) / 8, (5 + math.sqrt(5)) / 8
    assert (a, b) == pytest.approx((0.3454915, 0.9045085))
    expected = torch.tensor([[a * a, a * b, a * b, a * a],
                             [a * b, b * b, b * b, a * b],
                             [a * b, b * b, b * b, a * b],
                             [a * a, a * b, a * b, a * a]], dtype=torch.float64)
    window = hann2d(4, dtype=torch.float64)
    assert window.shape == (4, 4)
    torch.testing.assert_close(window, expected, rtol=0, atol=1e-12)
    assert window[0, 1].item() == pytest.approx(0.3125)  # (1 - c1)(1 - c2) / 4 = 1.25 / 4
    assert hann2d(4).dtype == torch.float32
    w16 = hann2d(16)
    assert w16.shape == (16, 16) and torch.all(w16 > 0) and torch.equal(w16, w16.T)
    assert w16.min().item() == pytest.approx((0.5 * (1 - math.cos(2 * math.pi / 17))) ** 2)


@pytest.mark.parametrize("box, expected", [
    ((10, 20, 30, 40), (10, 20, 30, 40)),          # inside: unchanged
    ((-5, -5, 30, 30), (0, 0, 25, 25)),            # past the top-left corner
    ((150, 115, 30, 30), (150, 110, 10, 10)),      # past the bottom-right: margin kept
    ((300, 50, 20, 20), (150, 50, 10, 20)),        # entirely right of the image
    ((-100, -100, 50, 50), (0, 0, 10, 10)),        # entirely above-left
    ((50, 50, 2, 3), (50, 50, 10, 10)),            # degenerate size -> margin
    ((155, 60, 2, 2), (150, 60, 10, 10)),
    ((0, 0, 160, 120), (0, 0, 160, 120)),
])
def test_clip_box_hand_cases(box, expected):
    out = clip_box(np.array(box, dtype=np.float64), H, W, margin=10)
    assert out.dtype == np.float64 and out.shape == (4,)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert clip_box(list(box), H, W, margin=0)[0] == pytest.approx(min(max(0, box[0]), W))


def _frames(n: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    frames = []
    for t in range(n):
        frame = rng.integers(0, 60, size=(H, W, 3), dtype=np.uint8)
        x, y = 30 + 8 * t, 40 + 3 * t
        frame[y:y + 24, x:x + 24] = (230, 40, 40)
        frames.append(frame)
    return frames, np.array([30.0, 40.0, 24.0, 24.0])


def _tiny_model():
    from ct_ray.models import OneStreamTracker, TrackerConfig

    torch.manual_seed(0)
    return OneStreamTracker(TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=64,
                                          search_size=128))


def test_tracker_loop_tiny_model():
    model = _tiny_model().train()
    calls = {"embed_template": 0}
    embed_template = model.embed_template

    def counting_embed(template):
        calls["embed_template"] += 1
        assert template.shape == (1, 3, 64, 64) and template.dtype == torch.float32
        return embed_template(template)

    model.embed_template = counting_embed
    tracker = OnlineTracker(model)
    assert not model.training
    with pytest.raises(RuntimeError):
        tracker.track(np.zeros((H, W, 3), np.uint8))

    frames, init = _frames(8)
    boxes, seconds = run_sequence(tracker, frames, init)
    assert boxes.shape == (8, 4) and boxes.dtype == np.float64
    assert seconds.shape == (8,) and np.all(seconds > 0)
    np.testing.assert_array_equal(boxes[0], init)
    assert np.isfinite(boxes).all()
    for box in boxes[1:]:
        x, y, w, h = box
        assert x >= 0 and y >= 0 and w >= 10 and h >= 10
        assert x <= W - 10 and y <= H - 10 and x + w <= W + 1e-9 and y + h <= H + 1e-9
        np.testing.assert_array_equal(clip_box(box, H, W, 10), box)
    assert calls["embed_template"] == 1  # template embedded once per sequence
    np.testing.assert_array_equal(tracker.state, boxes[-1])

    for bad in (np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.float32), np.zeros((H, W, 4), np.uint8),
                [[0, 0, 0]], np.zeros((0, W, 3), np.uint8)):
        with pytest.raises(ValueError):
            tracker.track(bad)
        with pytest.raises(ValueError):
            tracker.initialize(bad, init)
    with pytest.raises(ValueError):
        tracker.initialize(frames[0], (0, 0, 0, 5))


class PeakModel(nn.Module):
    """Fake tracker: a score map with its highest raw value at a border cell (0, 0) and a lower peak at the
    interior cell (iy, ix) = (2, 5), which wins once the Hann window is applied; known offset and size there."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(template_size=64, search_size=128)
        self.feat_size = 8
        self.searches: list[torch.Tensor] = []
        self.tokens_seen: list[torch.Tensor] = []

    def embed_template(self, template):
        return template.mean(dim=(2, 3))

    def forward_with_template_tokens(self, template_tokens, search):
        self.tokens_seen.append(template_tokens)
        self.searches.append(search)
        assert not torch.is_grad_enabled()
        f = self.feat_size
        score = torch.zeros(1, 1, f, f)
        score[0, 0, 0, 0] = 1.0
        score[0, 0, 2, 5] = 0.9
        size = torch.full((1, 2, f, f), 0.05)
        offset = torch.zeros(1, 2, f, f)
        size[0, :, 2, 5] = torch.tensor([0.25, 0.2])
        offset[0, :, 2, 5] = torch.tensor([0.25, 0.75])
        return {"score_map": score, "size_map": size, "offset_map": offset, "pred_boxes": torch.zeros(1, 4)}


def test_track_decodes_and_maps_back_exactly():
    model = PeakModel()
    tracker = OnlineTracker(model)
    frames, _ = _frames(3)
    tracker.initialize(frames[0], (60, 40, 20, 20))

    # frame 1: window side = ceil(20 * 4) = 80, x1 = round(70 - 40) = 30, y1 = round(50 - 40) = 10, scale 1.6.
    # decoded (normalised) cx = (5 + 0.25) / 8, cy = (2 + 0.75) / 8, w = 0.25, h = 0.2
    # -> crop px: cx 84, cy 44, w 32, h 25.6 -> image: x = (84 - 16) / 1.6 + 30 = 72.5, y = (44 - 12.8) / 1.6 + 10
    box = tracker.track(frames[1])
    np.testing.assert_allclose(box, [72.5, 29.5, 20.0, 16.0], rtol=0, atol=1e-5)
    assert model.searches[-1].shape == (1, 3, 128, 128) and model.searches[-1].dtype == torch.float32

    # frame 2 around (72.5, 29.5, 20, 16): side = ceil(sqrt(320) * 4) = 72, centre (82.5, 37.5):
    # x1 = round(46.5) = 46 (half to even), y1 = round(1.5) = 2, crop px -> image px: * 72 / 128
    # cx = 84 * 0.5625 + 46 = 93.25, w = 18; cy = 44 * 0.5625 + 2 = 26.75, h = 14.4
    box = tracker.track(frames[2])
    np.testing.assert_allclose(box, [84.25, 19.55, 18.0, 14.4], rtol=0, atol=1e-5)
    # (OSTrack's map back around previous centre - side / 2 = 46.5 would give x = 84.75)
    assert tracker.last_window.x1 == 46 and tracker.last_window.y1 == 2 and tracker.last_window.side == 72

    # the cached template tokens are reused for every frame
    assert len(model.tokens_seen) == 2 and model.tokens_seen[0] is model.tokens_seen[1]


def test_track_clips_prediction_to_image():
    class CornerModel(PeakModel):
        def forward_with_template_tokens(self, template_tokens, search):
            out = super().forward_with_template_tokens(template_tokens, search)
            out["size_map"][0, :, 2, 5] = torch.tensor([2.0, 0.01])  # far too wide, far too thin
            return out

    tracker = OnlineTracker(CornerModel())
    frames, _ = _frames(2)
    tracker.initialize(frames[0], (60, 40, 20, 20))
    # unclipped: cx 72.5 + 10 = 82.5 (from frame 1 above), w = 256 / 1.6 = 160, h = 1.28 / 1.6 = 0.8
    # -> x1 = 2.5, x2 = 162.5 -> clipped to (2.5, 160); y1 = 37.5 - 0.4 = 37.1, h -> margin 10
    box = tracker.track(frames[1])
    np.testing.assert_allclose(box, [2.5, 37.1, 157.5, 10.0], rtol=0, atol=1e-5)
