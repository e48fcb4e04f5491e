
import numpy as np
import pytest
import torch

from ct_ray.crop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropWindow,
    crop,
    crop_around,
    crop_window,
    normalize_crops,
)

H, W = 120, 160
GRAY = 50
RED = (255, 0, 0)


def _scene(x: int, y: int, size: int) -> np.ndarray:
    image = np.full((H, W, 3), GRAY, dtype=np.uint8)
    image[y:y + size, x:x + size] = RED
    return image


def test_crop_window_hand_worked():
    # sqrt(30 * 40) * 2 = 69.28 -> side 70; centre (25, 40) -> x1 = round(25 - 35) = -10, y1 = round(40 - 35) = 5
    window = crop_window((10, 20, 30, 40), 2.0, 128)
    assert window == CropWindow(x1=-10, y1=5, side=70, output_size=128)
    assert window.scale == pytest.approx(128 / 70)
    # torch and numpy boxes give the same window
    assert crop_window(torch.tensor([10.0, 20.0, 30.0, 40.0]), 2.0, 128) == window
    assert crop_window(np.array([10, 20, 30, 40]), 2.0, 128) == window


def test_crop_window_uses_python_round_half_to_even():
    # side = ceil(3 * 2) = 6 exactly; cx - side / 2 = -1.5 -> -2 and 0.5 -> 0 (banker's rounding, as OSTrack)
    assert crop_window((0, 0, 3, 3), 2.0, 64) == CropWindow(-2, -2, 6, 64)
    assert crop_window((2, 2, 3, 3), 2.0, 64) == CropWindow(0, 0, 6, 64)
    assert crop_window((3, 3, 3, 3), 2.0, 64) == CropWindow(2, 2, 6, 64)  # 1.5 -> 2
    # search crop of a 20x20 box: side 80 exactly
    assert crop_window((60, 40, 20, 20), 4.0, 256) == CropWindow(30, 10, 80, 256)


@pytest.mark.parametrize("box", [
    (0, 0, 0, 10), (0, 0, 10, 0), (0, 0, -1, 5), (0, 0, 5, -2), (float("nan"), 0, 5, 5), (0, float("inf"), 5, 5),
    (0, 0, float("inf"), 5), (0, 0, 1e-200, 1e-200),
])
def test_invalid_boxes_raise(box):
    with pytest.raises(ValueError, match="box"):
        crop_window(box, 2.0, 128)
    with pytest.raises(ValueError):
        crop_around(np.zeros((H, W, 3), np.uint8), box, 2.0, 128)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        crop_window((0, 0, 1, 2, 3), 2.0, 128)
    with pytest.raises(ValueError):
        crop_window((0, 0, 5, 5), 0.0, 128)
    with pytest.raises(ValueError):
        crop_window((0, 0, 5, 5), 2.0, 0)
    window = CropWindow(0, 0, 10, 8)
    for bad in (np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.float32), np.zeros((H, W, 4), np.uint8)):
        with pytest.raises(ValueError):
            crop(bad, window)


def test_round_trip_many_boxes_including_border():
    rng = np.random.default_rng(0)
    n = 500
    w = rng.uniform(1, 200, n)
    h = rng.uniform(1, 200, n)
    # centres from well outside to well inside a 640x480 image (many near and past the border)
    cx = rng.uniform(-100, 740, n)
    cy = rng.uniform(-100, 580, n)
    boxes = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
    for i in range(n):
        factor, out = (2.0, 128) if i % 2 else (4.0, 256)
        window = crop_window(boxes[i], factor, out)
        in_crop = window.to_crop(boxes[i])
        # the box centre lands at the crop centre up to the rounding of x1, y1 (<= 0.5 source px)
        centre = in_crop[:2] + in_crop[2:] / 2
        assert np.all(np.abs(centre - out / 2) <= 0.5 * window.scale + 1e-9)
        assert np.allclose(in_crop[2:], boxes[i, 2:] * out / window.side)
        np.testing.assert_allclose(window.to_image(in_crop), boxes[i], rtol=0, atol=1e-4)
        # crop -> image -> crop on arbitrary crop-space boxes too (past the crop edges)
        crop_box = rng.uniform(-50, 300, 4)
        np.testing.assert_allclose(window.to_crop(window.to_image(crop_box)), crop_box, rtol=0, atol=1e-4)
    # batched numpy and torch forms agree with the per-box form
    window = crop_window(boxes[0], 4.0, 256)
    batched = window.to_crop(boxes)
    assert batched.shape == (n, 4) and batched.dtype == np.float64
    np.testing.assert_allclose(window.to_image(batched), boxes, rtol=0, atol=1e-4)
    as_torch = window.to_crop(torch.from_numpy(boxes))
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float64
    np.testing.assert_allclose(as_torch.numpy(), batched, rtol=0, atol=1e-9)
    back32 = window.to_image(window.to_crop(torch.from_numpy(boxes).float()))
    assert back32.dtype == torch.float32
    np.testing.assert_allclose(back32.double().numpy(), boxes, rtol=0, atol=1e-3)


def test_crop_lands_where_to_crop_says():
    image = _scene(60, 40, 20)  # red square [60, 80) x [40, 60)
    patch, window = crop_around(image, (60, 40, 20, 20), 4.0, 64)
    assert window == CropWindow(30, 10, 80, 64)
    assert patch.shape == (64, 64, 3) and patch.dtype == np.uint8
    x, y, w, h = window.to_crop(np.array([60.0, 40.0, 20.0, 20.0]))
    assert (x, y, w, h) == pytest.approx((24.0, 24.0, 16.0, 16.0))
    cx, cy = int(x + w / 2), int(y + h / 2)
    assert tuple(patch[cy, cx]) == RED
    # interior of the mapped square (one pixel away from its edges, where bilinear blends) is pure red
    assert np.all(patch[int(y) + 1:int(y + h) - 1, int(x) + 1:int(x + w) - 1] == RED)
    # and well outside it the background is untouched
    assert np.all(patch[:, :int(x) - 1] == GRAY)
    assert np.all(patch[int(y + h) + 1:, :] == GRAY)


def test_padding_is_exactly_zero_top_left():
    image = _scene(0, 0, 20)
    # side 80, x1 = y1 = round(10 - 40) = -30: 30 columns/rows of padding
    patch, window = crop_around(image, (0, 0, 20, 20), 4.0, 80)  # scale 1: no resampling
    assert window == CropWindow(-30, -30, 80, 80)
    assert np.all(patch[:30] == 0) and np.all(patch[:, :30] == 0)
    assert np.all(patch[30:50, 30:50] == RED)
    assert np.array_equal(patch[30:, 30:], image[:50, :50])
    # resized (scale 0.8): crop pixels whose bilinear taps are all in the padding (x < 24 here) are exactly 0
    patch64, window64 = crop_around(image, (0, 0, 20, 20), 4.0, 64)
    pad_end = int(window64.to_crop(np.array([0.0, 0.0, 1.0, 1.0]))[0])  # image x = 0 in crop px
    assert pad_end == 24
    assert np.all(patch64[:pad_end] == 0) and np.all(patch64[:, :pad_end] == 0)
    assert np.all(patch64[pad_end + 1:pad_end + 15, pad_end + 1:pad_end + 15] == RED)


def test_padding_exact_on_right_and_bottom():
    # OSTrack would drop the last image column/row here (x2_pad = x2 - W + 1); we keep it
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, size=(H, W, 3), dtype=np.uint8)  # no zeros in the image
    patch, window = crop_around(image, (140, 100, 20, 20), 2.0, 40)  # side 40 -> scale 1
    assert window == CropWindow(130, 90, 40, 40)
    assert np.array_equal(patch[:30, :30], image[90:120, 130:160])
    assert np.all(patch[30:] == 0) and np.all(patch[:, 30:] == 0)
    # fully inside: the crop at scale 1 is the exact sub-image (and a copy)
    patch, window = crop_around(image, (50, 40, 10, 10), 2.0, 20)
    assert window == CropWindow(45, 35, 20, 20)
    assert np.array_equal(patch, image[35:55, 45:65])
    patch[:] = 0
    assert image[35:55, 45:65].min() > 0
    # a channel-reversed view (non-packed pixels) works too
    patch = crop(image[..., ::-1], window)
    assert np.array_equal(patch, image[35:55, 45:65, ::-1])


@pytest.mark.parametrize("window", [
    CropWindow(200, 0, 50, 32), CropWindow(-60, 10, 50, 32), CropWindow(0, 120, 40, 16), CropWindow(-5, -40, 40, 16),
    CropWindow(W, H, 10, 8),
])
def test_window_entirely_outside_gives_zeros(window):
    image = np.full((H, W, 3), 255, np.uint8)
    patch = crop(image, window)
    assert patch.shape == (window.output_size, window.output_size, 3) and patch.dtype == np.uint8
    assert not patch.any()


def test_normalize_crops_hand_computation():
    crops = torch.zeros((2, 4, 5, 3), dtype=torch.uint8)
    crops[1, 2, 3] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = normalize_crops(crops)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert out[1, :, 2, 3].tolist() == pytest.approx(expected, abs=1e-5)
    zero = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert out[0, :, 0, 0].tolist() == pytest.approx(zero, abs=1e-5)
    # a single (H, W, 3) crop becomes a batch of one; matches the unfused formula everywhere
    rng = np.random.default_rng(2)
    single = torch.from_numpy(rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8))
    got = normalize_crops(single)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = (single.permute(2, 0, 1).unsqueeze(0).float() / 255.0 - mean) / std
    assert got.shape == (1, 3, 6, 7)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert normalize_crops(single, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError):
        normalize_crops(single.float())
    with pytest.raises(ValueError):
        normalize_crops(torch.zeros((2, 4, 4, 4), dtype=torch.uint8))
