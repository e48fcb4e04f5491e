"""Metrics and result files. Every expected value is worked out by hand in the comments beside it."""
import json

import numpy as np
import pytest

from ct_ray.data.sequences import Sequence
from ct_ray.evaluation import (
    ResultsFormatError,
    got10k_scores,
    iou_xywh,
    load_results_dir,
    prepare_predictions,
    read_results,
    result_complete,
    score_benchmark,
    score_sequence,
    trackingnet_scores,
    write_got10k_submission,
    write_results,
    write_trackingnet_submission,
)

BOX = [100.0, 100.0, 10.0, 10.0]      # a 10 x 10 box, centre (105, 105)
PERFECT_AUC = 20 / 21 * 100           # IoU 1 is > t for the 20 thresholds below 1.0, not for t = 1.0


def _seq(name, boxes, visible=None, dataset="lasot", **attributes):
    boxes = np.asarray(boxes, dtype=np.float64)
    if visible is None:
        visible = np.ones(len(boxes), dtype=bool)
    return Sequence(name=name, dataset=dataset, frames=[f"{i:08d}.jpg" for i in range(len(boxes))], boxes=boxes,
                    visible=visible, attributes=attributes)


def _shifted(box, dx=0.0, dy=0.0):
    return [box[0] + dx, box[1] + dy, box[2], box[3]]


# --------------------------------------------------------------------------------------------------------------------
# IoU and preparation
# --------------------------------------------------------------------------------------------------------------------

def test_iou_hand_cases():
    pred = np.array([[5, 0, 10, 10],     # overlap 5 x 10 = 50, union 100 + 100 - 50 = 150 -> 1/3
                     [10, 0, 10, 10],    # touching edges (x2 = x + w = 10): no overlap -> 0
                     [0, 0, 20, 10],     # 100 / 200 -> 0.5
                     [0, 0, 0, 0],       # empty box: union 100, intersection 0 -> 0
                     [np.nan, 0, 1, 1]])  # non-finite -> 0
    gt = np.array([[0, 0, 10, 10]] * 5, dtype=float)
    np.testing.assert_allclose(iou_xywh(pred, gt), [1 / 3, 0.0, 0.5, 0.0, 0.0])
    assert iou_xywh([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0] == 0.0    # union 0 -> 0


def test_prepare_predictions_fixes_empty_boxes_and_frame0():
    gt = np.array([BOX, BOX, BOX, BOX, BOX])
    pred = np.array([[0, 0, 50, 50],           # frame 0 -> GT (100, 100, 10, 10)
                     [1, 1, 0, 5],             # zero width -> previous (fixed) box = GT of frame 0
                     [3, 4, 20, 30],           # kept
                     [7, 7, 5, 0],             # zero height -> (3, 4, 20, 30)
                     [np.nan, 1, 2, 3],        # non-finite -> (3, 4, 20, 30)
                     [9, 9, 9, 9]])            # extra row: dropped
    out = prepare_predictions(pred, gt)
    np.testing.assert_array_equal(out, [BOX, BOX, [3, 4, 20, 30], [3, 4, 20, 30], [3, 4, 20, 30]])
    assert pred[0, 2] == 50                    # the input is not modified


def test_prepare_predictions_too_few_rows_names_the_sequence():
    with pytest.raises(ValueError, match="airplane-1.*2 predicted boxes for 3 frames"):
        prepare_predictions(np.zeros((2, 4)), np.ones((3, 4)), name="airplane-1")


# --------------------------------------------------------------------------------------------------------------------
# pytracking one-pass evaluation
# --------------------------------------------------------------------------------------------------------------------

def test_perfect_boxes():
    gt = np.array([[10, 20, 30, 40], [12, 22, 30, 41], [15, 21, 29, 40], [18, 25, 31, 38]], dtype=float)
    s = score_sequence(gt.copy(), gt, name="perfect")
    assert s.auc == pytest.approx(PERFECT_AUC)          # 95.238...
    assert s.auc == pytest.approx(95.238095238)
    assert s.precision == pytest.approx(100.0)
    assert s.norm_precision == pytest.approx(100.0)
    assert s.op50 == pytest.approx(100.0)
    assert s.op75 == pytest.approx(100.0)
    assert (s.num_frames, s.num_valid, s.num_scored) == (4, 4, 4)
    assert s.success_curve.shape == (21,) and s.precision_curve.shape == (51,)
    assert s.norm_precision_curve.shape == (51,)


def test_shifted_boxes_give_known_precision():
    # centre errors 0 (frame 0), 30, 30, 15, 15 px; the boxes are 10 wide, so every shifted frame has IoU 0
    gt = np.array([BOX] * 5)
    pred = np.array([BOX, _shifted(BOX, 30), _shifted(BOX, 30), _shifted(BOX, 15), _shifted(BOX, 15)])
    s = score_sequence(pred, gt)
    assert s.precision == pytest.approx(60.0)                  # 0, 15, 15 <= 20 -> 3 / 5
    assert s.precision_curve[14] == pytest.approx(0.2)         # only frame 0 <= 14 px
    assert s.precision_curve[15] == pytest.approx(0.6)         # 15 <= 15 counts
    assert s.precision_curve[30] == pytest.approx(1.0)
    # normalised errors 0, 3, 3, 1.5, 1.5 -> only frame 0 <= 0.2
    assert s.norm_precision == pytest.approx(20.0)
    # success: only frame 0 (IoU 1) for the 20 thresholds below 1 -> 20 * 0.2 / 21
    assert s.auc == pytest.approx(20 * 0.2 / 21 * 100)
    assert s.op50 == pytest.approx(20.0)


def test_iou_one_half_gives_known_auc():
    # GT (0, 0, 10, 10); prediction (0, 0, 20, 10) on frames 1-4: IoU = 100 / 200 = 0.5 exactly
    gt = np.array([[0, 0, 10, 10]] * 5, dtype=float)
    pred = np.array([[0, 0, 10, 10]] + [[0, 0, 20, 10]] * 4, dtype=float)
    s = score_sequence(pred, gt)
    # t = 0, 0.05, ..., 0.45 (10 thresholds): all 5 frames -> 1; t = 0.5, ..., 0.95 (10): only frame 0 (0.5 > 0.5 is
    # false) -> 1/5; t = 1.0: none. AUC = (10 * 1 + 10 * 0.2 + 0) / 21 = 12 / 21
    assert s.auc == pytest.approx(12 / 21 * 100)                # 57.142857...
    assert s.op50 == pytest.approx(20.0)
    assert s.op75 == pytest.approx(20.0)
    assert s.success_curve[9] == pytest.approx(1.0)             # t = 0.45
    # centres (5, 5) and (10, 5): 5 px -> precision 100; normalised 5 / 10 = 0.5 > 0.2 -> only frame 0
    assert s.precision == pytest.approx(100.0)
    assert s.norm_precision == pytest.approx(20.0)


def test_invisible_frame_is_a_miss_and_stays_in_the_denominator():
    gt = np.array([BOX] * 4)
    visible = np.array([True, True, False, True])    # LaSOT full_occlusion / out_of_view on frame 2
    s = score_sequence(gt.copy(), gt, visible)       # even a perfect box there is a miss
    assert s.auc == pytest.approx(20 * 0.75 / 21 * 100)    # 3 hits of 4 below t = 1
    assert s.precision == pytest.approx(75.0)
    assert s.norm_precision == pytest.approx(75.0)
    assert (s.num_frames, s.num_valid, s.num_scored) == (4, 3, 4)

    e = score_sequence(gt.copy(), gt, visible, exclude_invalid=True)   # 3 hits of 3
    assert e.auc == pytest.approx(PERFECT_AUC)
    assert e.precision == pytest.approx(100.0)
    assert e.norm_precision == pytest.approx(100.0)
    assert (e.num_frames, e.num_valid, e.num_scored) == (4, 3, 3)


def test_invalid_gt_frames_are_misses():
    # frame 1: unknown GT (NaN), frame 2: zero-width GT that is not visible -> misses for all three measures
    gt = np.array([BOX, [np.nan] * 4, [100, 100, 0, 10], BOX])
    visible = np.array([True, False, False, True])
    pred = np.array([BOX] * 4)
    s = score_sequence(pred, gt, visible)
    assert s.precision == pytest.approx(50.0)
    assert s.norm_precision == pytest.approx(50.0)
    assert s.auc == pytest.approx(20 * 0.5 / 21 * 100)
    # an unknown (NaN) GT row is a miss even if it is flagged visible: not the degenerate-box quirk
    s2 = score_sequence(pred, gt, np.array([True, True, False, True]))
    assert s2.norm_precision == pytest.approx(50.0)


def test_degenerate_visible_gt_counts_for_normalised_precision_only():
    # frame 2: GT (100, 100, 0, 10) has zero width but the dataset marks it visible
    gt = np.array([BOX, BOX, [100, 100, 0, 10], BOX])
    pred = np.array([BOX] * 4)
    s = score_sequence(pred, gt, np.ones(4, dtype=bool))
    assert s.precision == pytest.approx(75.0)                  # miss for precision
    assert s.auc == pytest.approx(20 * 0.75 / 21 * 100)        # miss for success
    assert s.norm_precision == pytest.approx(100.0)            # hit for normalised precision ...
    np.testing.assert_allclose(s.norm_precision_curve, 1.0)    # ... at every threshold, 0 included
    # marked not visible: a plain miss
    invisible = score_sequence(pred, gt, np.array([True, True, False, True]))
    assert invisible.norm_precision == pytest.approx(75.0)
    # excluded from the denominator: neither hit nor miss
    e = score_sequence(pred, gt, np.ones(4, dtype=bool), exclude_invalid=True)
    assert e.num_scored == 3
    assert e.norm_precision == pytest.approx(100.0) and e.precision == pytest.approx(100.0)


def test_zero_size_prediction_takes_previous_box_and_frame0_is_gt():
    gt = np.array([BOX] * 3)
    # frame 0 far off (forced to GT), frame 1 shifted 5 px (IoU 5*10 / 150 = 1/3), frame 2 empty -> frame 1's box
    pred = np.array([[0, 0, 3, 3], _shifted(BOX, 5), [100, 100, 0, 0]])
    s = score_sequence(pred, gt)
    # frame 0: IoU 1; frames 1 and 2: IoU 1/3 -> thresholds 0..0.3 (7 values): 1; 0.35..0.95 (13): 1/3; 1.0: 0
    assert s.auc == pytest.approx((7 * 1 + 13 / 3) / 21 * 100)
    assert s.precision == pytest.approx(100.0)                  # errors 0, 5, 5 px
    # had the empty box been scored as is (centre (100, 100), 7.07 px away, IoU 0), t = 0.05 would give 2/3
    assert s.success_curve[1] == pytest.approx(1.0)


def test_two_sequences_have_equal_weight():
    a = _seq("a", [BOX] * 2)
    b = _seq("b", [BOX] * 8)
    results = {"a": np.array([BOX] * 2),                                # perfect
               "b": np.array([BOX] + [_shifted(BOX, 300)] * 7)}         # only frame 0 hits
    bench = score_benchmark(results, [a, b])
    # per sequence below t = 1: a 1, b 1/8 -> mean 0.5625 (frame-weighted would be 3/10)
    assert bench.auc == pytest.approx(20 * 0.5625 / 21 * 100)         # 53.571...
    assert bench.precision == pytest.approx(56.25)
    assert bench.norm_precision == pytest.approx(56.25)
    assert bench.op50 == pytest.approx(56.25)
    assert bench.op75 == pytest.approx(56.25)
    assert [s.name for s in bench.sequences] == ["a", "b"]
    assert bench.sequences[1].precision == pytest.approx(12.5)
    d = json.loads(json.dumps(bench.to_dict()))
    assert d["overall"]["auc"] == pytest.approx(bench.auc)
    assert d["overall"]["num_sequences"] == 2
    assert len(d["overall"]["success_curve"]) == 21
    assert d["per_sequence"][0]["name"] == "a" and d["per_sequence"][1]["num_frames"] == 8


def test_benchmark_perfect_and_exclude_invalid():
    a = _seq("a", [BOX] * 4, visible=[True, True, False, True])
    bench = score_benchmark({"a": np.array([BOX] * 4)}, [a])
    assert bench.precision == pytest.approx(75.0)
    bench = score_benchmark({"a": np.array([BOX] * 4)}, [a], exclude_invalid=True)
    assert bench.auc == pytest.approx(PERFECT_AUC)
    assert bench.precision == pytest.approx(100.0)


def test_benchmark_missing_and_unknown_results_are_errors():
    a, b = _seq("a", [BOX] * 2), _seq("b", [BOX] * 2)
    with pytest.raises(ValueError, match="'b'"):
        score_benchmark({"a": np.array([BOX] * 2)}, [a, b])
    with pytest.raises(ValueError, match="'zebra-3'"):
        score_benchmark({"a": np.array([BOX] * 2), "zebra-3": np.array([BOX] * 2)}, [a])
    with pytest.raises(ValueError, match="'a'.*1 predicted boxes for 2 frames"):
        score_benchmark({"a": np.array([BOX])}, [a])


# --------------------------------------------------------------------------------------------------------------------
# GOT-10k and TrackingNet
# --------------------------------------------------------------------------------------------------------------------

def test_got10k_pools_ious_after_frame0_with_cover():
    g = [0, 0, 10, 10]
    a = _seq("a", [g] * 4, dataset="got10k", cover=[8, 8, 0, 8])
    b = _seq("b", [g] * 3, visible=[True, True, False], dataset="got10k")     # no cover: visibility decides
    results = {
        # frame 0 IoU 0 (excluded, not forced to GT), frame 1 IoU 1, frame 2 cover 0 (excluded), frame 3 60/100
        "a": np.array([[50, 50, 10, 10], g, [50, 50, 10, 10], [0, 0, 10, 6]], dtype=float),
        # frame 1 IoU 0; frame 2 not visible (excluded)
        "b": np.array([g, [20, 20, 10, 10], [50, 50, 10, 10]], dtype=float),
    }
    scores = got10k_scores(results, [a, b], curve=True)
    # pooled IoUs 1, 0.6, 0: AO = 1.6 / 3; SR50: 2 of 3; SR75: 1 of 3 (per-sequence averaging would give AO 40)
    assert scores["ao"] == pytest.approx(160 / 3)
    assert scores["sr50"] == pytest.approx(200 / 3)
    assert scores["sr75"] == pytest.approx(100 / 3)
    curve = scores["success_curve"]
    assert len(curve) == 101
    assert curve[0] == pytest.approx(2 / 3)       # IoU > 0
    assert curve[59] == pytest.approx(2 / 3)      # 0.6 > 0.59
    assert curve[60] == pytest.approx(1 / 3)      # 0.6 > 0.6 is false
    assert curve[100] == pytest.approx(0.0)


def test_trackingnet_trapezoid_areas():
    gt = [0, 0, 10, 10]
    seq = _seq("t", [gt] * 2, dataset="trackingnet")
    # frame 0 is forced to the GT; frame 1 (0, 0, 20, 10): IoU 0.5, centre error 5 px, normalised 0.5
    scores = trackingnet_scores({"t": np.array([[7, 7, 1, 1], [0, 0, 20, 10]], dtype=float)}, [seq])
    # success at t = 0, 0.05, ..., 1: 1 (x10), 0.5 (x10), 0 -> trapezoids 9 * 1 + 0.75 + 9 * 0.5 + 0.25 = 14.5, x 0.05
    assert scores["success_auc"] == pytest.approx(72.5)
    # precision at t = 0, 2.5, 5, ..., 50 px: 0.5, 0.5, then 1 -> (0.5 + 0.75 + 18) / 20
    assert scores["precision_auc"] == pytest.approx(96.25)
    # normalised at t = 0, 0.025, ..., 0.5: 0.5 (x20), 1 at 0.5 -> (19 * 0.5 + 0.75) / 20
    assert scores["norm_precision_auc"] == pytest.approx(51.25)

    perfect = trackingnet_scores({"t": np.array([gt, gt], dtype=float)}, [seq])
    # success 1 for the 20 thresholds below 1, 0 at 1: 19 full trapezoids + one half, / 20
    assert perfect["success_auc"] == pytest.approx(97.5)
    assert perfect["precision_auc"] == pytest.approx(100.0)
    assert perfect["norm_precision_auc"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------------------------------

def test_results_round_trip_as_truncated_integers(tmp_path):
    boxes = np.array([[10.9, -3.7, 20.5, 30.0], [0.2, -0.9, 5.99, 7.0]])
    path = write_results(tmp_path, "seq-1", boxes, times=[0.5, 0.25])
    assert path == tmp_path / "seq-1.txt"
    assert path.read_text() == "10\t-3\t20\t30\n0\t0\t5\t7\n"
    np.testing.assert_array_equal(read_results(path), [[10, -3, 20, 30], [0, 0, 5, 7]])
    times = [float(v) for v in (tmp_path / "seq-1_time.txt").read_text().split()]
    assert times == [0.5, 0.25]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq-1.txt", "seq-1_time.txt"]   # no temp files left


def test_read_results_accepts_tabs_commas_and_spaces(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("1\t2\t3\t4\n5,6,7,8\n9 10  11 12.5\n\n")
    np.testing.assert_array_equal(read_results(path), [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12.5]])


def test_read_results_rejects_bad_lines_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(ResultsFormatError, match=r"bad\.txt: line 2"):
        read_results(path)
    path.write_text("1\t2\t3\t4\n1\t2\t3\t4\n1\t2\tx\t4\n")
    with pytest.raises(ResultsFormatError, match=r"bad\.txt: line 3"):
        read_results(path)
    assert issubclass(ResultsFormatError, ValueError)


def test_read_results_too_few_lines(tmp_path):
    path = write_results(tmp_path, "short", np.ones((3, 4)))
    with pytest.raises(ResultsFormatError, match=r"short\.txt.*3 lines.*5"):
        read_results(path, expected_frames=5)
    assert read_results(path, expected_frames=2).shape == (3, 4)     # more lines are fine
    with pytest.raises(FileNotFoundError, match="nothing"):
        read_results(tmp_path / "nothing.txt")


def test_result_complete(tmp_path):
    assert not result_complete(tmp_path, "s", 3)                 # no file
    write_results(tmp_path, "s", np.ones((2, 4)))
    assert not result_complete(tmp_path, "s", 3)                 # too short
    write_results(tmp_path, "s", np.ones((3, 4)))
    assert result_complete(tmp_path, "s", 3)
    (tmp_path / "s.txt").write_text("1\t1\t1\n1\t1\t1\t1\n1\t1\t1\t1\n")
    assert not result_complete(tmp_path, "s", 3)                 # malformed


def test_load_results_dir(tmp_path):
    write_results(tmp_path, "a", np.ones((2, 4)))
    assert set(load_results_dir(tmp_path, ["a"])) == {"a"}
    with pytest.raises(FileNotFoundError, match="'b'"):
        load_results_dir(tmp_path, ["a", "b"])


def test_submission_layouts(tmp_path):
    boxes = np.array([[1.25, 2.5, 3.0, 4.75], [5.0, 6.0, 7.5, 8.0]])
    path = write_got10k_submission(tmp_path / "got", "GOT-10k_Test_000001", boxes, [0.01, 0.02])
    assert path == tmp_path / "got" / "GOT-10k_Test_000001" / "GOT-10k_Test_000001_001.txt"
    np.testing.assert_allclose(np.loadtxt(path, delimiter=","), boxes)          # floats kept
    times = np.loadtxt(tmp_path / "got" / "GOT-10k_Test_000001" / "GOT-10k_Test_000001_time.txt")
    np.testing.assert_allclose(times, [0.01, 0.02])
    path = write_trackingnet_submission(tmp_path / "tn", "abc_1", boxes)
    assert path == tmp_path / "tn" / "abc_1.txt"
    assert path.read_text().splitlines()[0].count(",") == 3
    np.testing.assert_allclose(np.loadtxt(path, delimiter=","), boxes)
