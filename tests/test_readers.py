"""Dataset readers on tiny on-disk trees (real 32x24 JPEG / PNG frames)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import ct_ray.data.readers  # noqa: F401  (registers the readers)
from ct_ray.data.readers import (
    read_box_file,
    read_coco,
    read_flags,
    read_got10k,
    read_lasot,
    read_plain,
    read_trackingnet,
    read_uav123,
)
from ct_ray.data.sequences import DatasetFormatError, load_dataset

_JPEG = cv2.imencode(".jpg", np.full((24, 32, 3), 127, np.uint8))[1].tobytes()
_PNG = cv2.imencode(".png", np.full((24, 32, 3), 127, np.uint8))[1].tobytes()


def _images(directory: Path, names, data=_JPEG) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(data)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _boxes_text(boxes, sep=",") -> str:
    return "".join(sep.join(str(v) for v in box) + "\n" for box in boxes)


# ---------------------------------------------------------------------------------------------------- file helpers
def test_read_box_file_separators_and_trailing_blank_lines(tmp_path):
    path = _write(tmp_path / "gt.txt", "1,2,3,4\n5 6\t7,  8\n9.5\t10\t11\t12\n\n  \n")
    np.testing.assert_array_equal(read_box_file(path), [[1, 2, 3, 4], [5, 6, 7, 8], [9.5, 10, 11, 12]])


def test_read_box_file_errors_name_file_and_line(tmp_path):
    path = _write(tmp_path / "groundtruth.txt", "1,2,3,4\n1,2,3,4\nabc,1,2\n")
    with pytest.raises(DatasetFormatError, match=r"groundtruth\.txt line 3: expected 4 numbers, got 'abc,1,2'"):
        read_box_file(path)
    _write(path, "1,2,3,4\n1,2,x,4\n")
    with pytest.raises(DatasetFormatError, match=r"groundtruth\.txt line 2"):
        read_box_file(path)
    _write(path, "1,2,3,4\nNaN,NaN,NaN,NaN\n")
    with pytest.raises(DatasetFormatError, match=r"groundtruth\.txt line 2"):
        read_box_file(path)
    assert np.isnan(read_box_file(path, allow_nan=True)[1]).all()
    with pytest.raises(DatasetFormatError, match=r"not found: .*missing\.txt"):
        read_box_file(tmp_path / "missing.txt")


def test_read_flags_one_line_or_one_per_line(tmp_path):
    np.testing.assert_array_equal(read_flags(_write(tmp_path / "a.txt", "0,1,0,0\n  "), 4), [0, 1, 0, 0])
    np.testing.assert_array_equal(read_flags(_write(tmp_path / "b.label", "1\n0\n1\n")), [1, 0, 1])
    with pytest.raises(DatasetFormatError, match=r"c\.label line 2: expected 0/1 flag values"):
        read_flags(_write(tmp_path / "c.label", "0\n2\n0\n"))
    with pytest.raises(DatasetFormatError, match=r"a\.txt: expected 5 0/1 flag values .* got 4"):
        read_flags(tmp_path / "a.txt", 5)


def test_unknown_kind_is_rejected_listing_known_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset kind 'vot'.*'got10k'.*'lasot'.*'uav123'"):
        load_dataset(f"vot:{tmp_path}")


# ----------------------------------------------------------------------------------------------------------- LaSOT
def _lasot_sequence(root: Path, name: str, boxes, occlusion, out_of_view, nlp=None) -> None:
    directory = root / name.rsplit("-", 1)[0] / name
    _write(directory / "groundtruth.txt", _boxes_text(boxes))
    _write(directory / "full_occlusion.txt", ",".join(map(str, occlusion)) + "\n")
    _write(directory / "out_of_view.txt", ",".join(map(str, out_of_view)) + " \n\n")
    if nlp:
        _write(directory / "nlp.txt", nlp + "\n")
    _images(directory / "img", [f"{i:08d}.jpg" for i in range(1, len(boxes) + 1)])


@pytest.fixture
def lasot_root(tmp_path):
    root = tmp_path / "LaSOT"
    _lasot_sequence(root, "bird-2", [[1, 2, 3, 4], [2, 3, 4, 5]], [0, 0], [0, 0])
    _lasot_sequence(root, "airplane-1", [[1, 1, 10, 10], [2, 2, 10, 10], [3, 3, 10, 10], [0, 0, 0, 0]],
                    [0, 1, 0, 0], [0, 0, 1, 0], nlp="white airplane")
    _lasot_sequence(root, "airplane-10", [[5, 5, 8, 8]] * 3, [0, 0, 0], [0, 0, 0])
    _write(root / "training_set.txt", "airplane-10\nbird-2\n")
    _write(root / "testing_set.txt", "airplane-1\n\n")
    return root


def test_lasot_all_sequences(lasot_root):
    index = read_lasot(lasot_root)
    assert index.dataset == "lasot" and index.skipped == {}
    assert [s.name for s in index.sequences] == ["airplane-1", "airplane-10", "bird-2"]
    seq = index.sequences[0]
    assert seq.frames == [str(lasot_root / "airplane" / "airplane-1" / "img" / f"{i:08d}.jpg") for i in range(1, 5)]
    np.testing.assert_array_equal(seq.boxes, [[1, 1, 10, 10], [2, 2, 10, 10], [3, 3, 10, 10], [0, 0, 0, 0]])
    # frame 1 fully occluded, frame 2 out of view, frame 3 a zero-size box
    np.testing.assert_array_equal(seq.visible, [True, False, False, False])
    np.testing.assert_array_equal(seq.attributes["full_occlusion"], [0, 1, 0, 0])
    np.testing.assert_array_equal(seq.attributes["out_of_view"], [0, 0, 1, 0])
    assert seq.attributes["class"] == "airplane" and seq.attributes["nlp"] == "white airplane"
    assert seq.read_frame(0).shape == (24, 32, 3)


def test_lasot_splits_through_the_registry(lasot_root):
    test = load_dataset(f"lasot:{lasot_root}", split="test")
    assert [s.name for s in test.sequences] == ["airplane-1"]
    train = load_dataset(f"lasot:{lasot_root}", split="train")
    assert [s.name for s in train.sequences] == ["airplane-10", "bird-2"]
    synthetic = load_dataset(f"synthetic:{lasot_root}", split="train")
    assert synthetic.dataset == "synthetic" and synthetic.sequences[0].dataset == "synthetic"
    (lasot_root / "testing_set.txt").unlink()
    with pytest.raises(DatasetFormatError, match="testing_set.txt"):
        read_lasot(lasot_root, split="test")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        read_lasot(lasot_root, split="val")
    _write(lasot_root / "training_set.txt", "airplane-10\ncat-3\n")
    with pytest.raises(DatasetFormatError, match=r"training_set\.txt line 2: sequence 'cat-3' not found"):
        read_lasot(lasot_root, split="train")


def test_lasot_malformed_line_and_missing_frame(lasot_root):
    gt = lasot_root / "bird" / "bird-2" / "groundtruth.txt"
    _write(gt, "1,2,3,4\n1,2,3\n")
    with pytest.raises(DatasetFormatError, match=r"bird-2/groundtruth\.txt line 2: expected 4 numbers, got '1,2,3'"):
        read_lasot(lasot_root)
    _write(gt, "1,2,3,4\n1,2,3,4\n")
    missing = lasot_root / "airplane" / "airplane-10" / "img" / "00000002.jpg"
    missing.unlink()
    with pytest.raises(DatasetFormatError, match=r"sequence airplane-10: missing frame .*00000002\.jpg"):
        read_lasot(lasot_root)
    _write(lasot_root / "airplane" / "airplane-10" / "out_of_view.txt", "0,0\n")
    with pytest.raises(DatasetFormatError, match=r"airplane-10/out_of_view\.txt: expected 3"):
        read_lasot(lasot_root)


def test_lasot_sequence_without_valid_frame_is_skipped(lasot_root):
    _lasot_sequence(lasot_root, "cat-1", [[1, 1, 5, 5], [1, 1, 0, 5]], [1, 0], [0, 0])
    with pytest.warns(UserWarning, match=r"skipped 1 sequence.*cat-1"):
        index = read_lasot(lasot_root)
    assert "cat-1" not in [s.name for s in index.sequences] and len(index) == 3
    assert "no valid frame" in index.skipped["cat-1"]


# --------------------------------------------------------------------------------------------------------- GOT-10k
def _got_sequence(split_dir: Path, name: str, boxes, absence=None, cover=None, frames=None) -> None:
    directory = split_dir / name
    _write(directory / "groundtruth.txt", _boxes_text(boxes))
    if absence is not None:
        _write(directory / "absence.label", "".join(f"{a}\n" for a in absence))
        _write(directory / "cut_by_image.label", "".join("0\n" for _ in absence))
        _write(directory / "meta_info.ini", "[METAINFO]\nurl: https://example.org/x\nobject_class: zebra\n")
    if cover is not None:
        _write(directory / "cover.label", "".join(f"{c}\n" for c in cover))
    _images(directory, [f"{i:08d}.jpg" for i in range(1, (frames or len(boxes)) + 1)])


@pytest.fixture
def got_root(tmp_path):
    root = tmp_path / "GOT-10k"
    _got_sequence(root / "val", "GOT-10k_Val_000002", [[1, 2, 3, 4]] * 4, absence=[0, 1, 0, 0], cover=[8, 0, 0, 3])
    _got_sequence(root / "val", "GOT-10k_Val_000001", [[4, 3, 2, 1]] * 2, absence=[0, 0], cover=[1, 2])
    _write(root / "val" / "list.txt", "GOT-10k_Val_000001\nGOT-10k_Val_000002\n")
    _got_sequence(root / "test", "GOT-10k_Test_000001", [[5, 6, 7, 8]], frames=3)
    _write(root / "test" / "list.txt", "GOT-10k_Test_000001\n")
    for k in (1, 2, 3):
        _got_sequence(root / "train", f"GOT-10k_Train_00000{k}", [[1, 1, 2, 2]], absence=[0], cover=[8])
    _write(root / "train" / "list.txt", "GOT-10k_Train_000001\nGOT-10k_Train_000002\nGOT-10k_Train_000003\n")
    return root


def test_got10k_val_visibility_and_cover(got_root):
    index = read_got10k(got_root)  # None -> val
    assert [s.name for s in index.sequences] == ["GOT-10k_Val_000001", "GOT-10k_Val_000002"]
    seq = index.sequences[1]
    assert seq.frames[3] == str(got_root / "val" / "GOT-10k_Val_000002" / "00000004.jpg")
    np.testing.assert_array_equal(seq.boxes, [[1, 2, 3, 4]] * 4)
    # frame 1 absent; frame 2 cover 0
    np.testing.assert_array_equal(seq.visible, [True, False, False, True])
    np.testing.assert_array_equal(seq.attributes["cover"], [8, 0, 0, 3])
    assert seq.attributes["class"] == "zebra" and seq.attributes["meta"]["url"] == "https://example.org/x"
    assert seq.attributes["first_frame_only"] is False


def test_got10k_test_split_first_frame_only(got_root):
    (seq,) = load_dataset(f"got10k:{got_root}", split="test").sequences
    assert len(seq) == 3 and seq.attributes["first_frame_only"] is True
    np.testing.assert_array_equal(seq.boxes[0], [5, 6, 7, 8])
    assert np.isnan(seq.boxes[1:]).all()
    np.testing.assert_array_equal(seq.visible, [True, False, False])


def test_got10k_train_without_vot_overlap(got_root):
    assert len(read_got10k(got_root, split="train")) == 3
    with pytest.raises(DatasetFormatError, match="got10k_vot_exclude.txt"):
        read_got10k(got_root, split="train-novot")
    _write(got_root / "got10k_vot_exclude.txt", "GOT-10k_Train_000002\n")
    index = read_got10k(got_root, split="train-novot")
    assert [s.name for s in index.sequences] == ["GOT-10k_Train_000001", "GOT-10k_Train_000003"]
    assert len(read_got10k(got_root, split="train", exclude=["GOT-10k_Train_000001"])) == 2


def test_got10k_errors(got_root):
    seq_dir = got_root / "val" / "GOT-10k_Val_000002"
    _write(seq_dir / "cover.label", "8\n0\n9\n3\n")
    with pytest.raises(DatasetFormatError, match=r"cover\.label line 3"):
        read_got10k(got_root, split="val")
    _write(seq_dir / "cover.label", "8\n0\n0\n3\n")
    (seq_dir / "00000003.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"GOT-10k_Val_000002: missing frame .*00000003\.jpg"):
        read_got10k(got_root, split="val")
    (seq_dir / "absence.label").unlink()
    with pytest.raises(DatasetFormatError, match="absence.label"):
        read_got10k(got_root, split="val")


# ----------------------------------------------------------------------------------------------------- TrackingNet
def _tn_sequence(root: Path, chunk: str, name: str, boxes, frames=None) -> None:
    _write(root / chunk / "anno" / f"{name}.txt", _boxes_text(boxes))
    _images(root / chunk / "frames" / name, [f"{i}.jpg" for i in range(frames or len(boxes))])


def test_trackingnet_numeric_frame_order_chunks_and_test(tmp_path):
    root = tmp_path / "TrackingNet"
    boxes = [[i, i, 5, 5] for i in range(11)]
    boxes[4] = [1, 1, 0, 5]
    _tn_sequence(root, "TRAIN_0", "b_seq", boxes)
    _tn_sequence(root, "TRAIN_1", "a_seq", [[1, 1, 2, 2]] * 2)
    _tn_sequence(root, "TEST", "t_seq", [[3, 3, 3, 3]], frames=12)
    index = read_trackingnet(root)  # None -> all TRAIN_i
    assert [s.name for s in index.sequences] == ["a_seq", "b_seq"]
    seq = index.sequences[1]
    assert [Path(f).name for f in seq.frames] == [f"{i}.jpg" for i in range(11)]  # 0,1,...,10 (not 0,1,10,2)
    np.testing.assert_array_equal(seq.boxes, boxes)
    assert seq.attributes["chunk"] == "TRAIN_0" and not seq.visible[4] and seq.visible.sum() == 10
    assert [s.name for s in read_trackingnet(root, split="TRAIN_1").sequences] == ["a_seq"]
    (test,) = read_trackingnet(root, split="test").sequences
    assert len(test) == 12 and test.attributes["first_frame_only"] and np.isnan(test.boxes[1:]).all()
    assert test.visible.tolist() == [True] + [False] * 11
    with pytest.raises(DatasetFormatError, match="TRAIN_7"):
        read_trackingnet(root, split="TRAIN_7")
    (root / "TRAIN_0" / "frames" / "b_seq" / "10.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"b_seq: missing frame .*10\.jpg"):
        read_trackingnet(root)


# ------------------------------------------------------------------------------------------------------------ COCO
def _coco(root: Path) -> Path:
    data = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "width": 32, "height": 24},
                   {"id": 9, "file_name": "000000000009.jpg", "width": 32, "height": 24}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 100, "image_id": 7, "category_id": 1, "bbox": [1.5, 2, 10, 12], "iscrowd": 0},
            {"id": 101, "image_id": 7, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 1},
            {"id": 102, "image_id": 9, "category_id": 3, "bbox": [3, 4, 5, 6], "iscrowd": 0},
            {"id": 103, "image_id": 9, "category_id": 1, "bbox": [3, 4, 0.5, 6], "iscrowd": 0},
        ],
    }
    _images(root / "train2017", ["000000000007.jpg", "000000000009.jpg"])
    return _write(root / "annotations" / "instances_train2017.json", json.dumps(data))


def test_coco_one_frame_sequences(tmp_path):
    _coco(tmp_path)
    with pytest.warns(UserWarning, match="9_103"):
        index = read_coco(tmp_path)
    assert [s.name for s in index.sequences] == ["7_100", "9_102"]  # crowd 101 excluded, tiny 103 skipped
    assert list(index.skipped) == ["9_103"]
    seq = index.sequences[0]
    assert seq.frames == [str(tmp_path / "train2017" / "000000000007.jpg")]
    np.testing.assert_array_equal(seq.boxes, [[1.5, 2, 10, 12]])
    assert seq.visible.tolist() == [True] and seq.attributes["category"] == "person"
    assert index.sequences[1].attributes["category"] == "car"


def test_coco_errors(tmp_path):
    ann = _coco(tmp_path)
    (tmp_path / "train2017" / "000000000009.jpg").unlink()
    with pytest.raises(DatasetFormatError, match=r"sequence 9_102: missing frame .*000000000009\.jpg"):
        read_coco(tmp_path)
    ann.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetFormatError, match=r"instances_train2017\.json line 2: malformed JSON"):
        read_coco(tmp_path, split="train")
    with pytest.raises(DatasetFormatError, match="instances_val2017.json"):
        read_coco(tmp_path, split="val")


# ----------------------------------------------------------------------------------------------------------- plain
def test_plain_natural_order_separators_and_visible(tmp_path):
    seq_dir = tmp_path / "my_video"
    _images(seq_dir / "img", ["frame1.png", "frame2.png", "frame10.png"], _PNG)
    _write(seq_dir / "groundtruth.txt", "1 2 3 4\n5\t6\t7\t8\n9,10,11,12\n")
    _write(seq_dir / "visible.txt", "1,0,1\n")
    _images(tmp_path / "other" / "img", ["a.jpg"])
    _write(tmp_path / "other" / "groundtruth.txt", "NaN,NaN,NaN,NaN\n")
    with pytest.warns(UserWarning, match="other"):
        index = load_dataset(f"plain:{tmp_path}")
    (seq,) = index.sequences
    assert [Path(f).name for f in seq.frames] == ["frame1.png", "frame2.png", "frame10.png"]
    np.testing.assert_array_equal(seq.boxes, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    assert seq.visible.tolist() == [True, False, True]
    assert set(index.skipped) == {"other"}
    (seq_dir / "img" / "frame2.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"my_video: .* has 2 frames but .*groundtruth\.txt has 3"):
        read_plain(tmp_path)


# ---------------------------------------------------------------------------------------------------------- UAV123
_CONFIG = """function seqs=configSeqs
seqUAV123={struct('name','bird1_1','path','D:\\data_seq\\UAV123\\bird1\\','startFrame',1,'endFrame',3,'nz',6,'ext','jpg','init_rect',[0,0,0,0]),...
% struct('name','ignored','path','D:\\x\\','startFrame',1,'endFrame',2,'nz',6,'ext','jpg','init_rect',[0,0,0,0]),...
struct('name','bird1_2','path','D:\\data_seq\\UAV123\\bird1\\','startFrame',6,'endFrame',9,'nz',6,'ext','jpg','init_rect',[0,0,0,0]),...
};
seqUAV20L={struct('name','bird1','path','D:\\data_seq\\UAV20L\\bird1\\','startFrame',1,'endFrame',10,'nz',6,'ext','jpg','init_rect',[0,0,0,0])};
"""


@pytest.fixture
def uav_root(tmp_path):
    root = tmp_path / "UAV123"
    _images(root / "data_seq" / "UAV123" / "bird1", [f"{i:06d}.jpg" for i in range(1, 11)])
    _images(root / "data_seq" / "UAV123" / "car1", [f"{i:06d}.jpg" for i in range(1, 4)])
    _write(root / "anno" / "UAV123" / "bird1_1.txt", "1,1,4,4\n2,2,4,4\n3,3,4,4\n")
    _write(root / "anno" / "UAV123" / "bird1_2.txt", "6,6,4,4\nNaN,NaN,NaN,NaN\n8,8,4,4\n9,9,4,4\n")
    _write(root / "anno" / "UAV123" / "car1.txt", "1,1,2,2\n1,1,2,2\n1,1,2,2\n")
    _write(root / "configSeqs.m", _CONFIG)
    return root


def test_uav123_ranges_from_config_and_nan_rows(uav_root):
    index = load_dataset(f"uav123:{uav_root}")
    assert [s.name for s in index.sequences] == ["bird1_1", "bird1_2", "car1"]
    sub = index.sequences[1]
    assert sub.frames == [str(uav_root / "data_seq" / "UAV123" / "bird1" / f"{i:06d}.jpg") for i in (6, 7, 8, 9)]
    assert sub.visible.tolist() == [True, False, True, True]
    assert np.isnan(sub.boxes[1]).all() and sub.boxes[3].tolist() == [9, 9, 4, 4]
    assert (sub.attributes["folder"], sub.attributes["start_frame"], sub.attributes["end_frame"]) == ("bird1", 6, 9)
    car = index.sequences[2]  # no config entry: its own folder, frames 1..N
    assert [Path(f).name for f in car.frames] == ["000001.jpg", "000002.jpg", "000003.jpg"]


def test_uav123_errors(uav_root):
    _write(uav_root / "anno" / "UAV123" / "bird1_2.txt", "6,6,4,4\n")
    with pytest.raises(DatasetFormatError, match=r"bird1_2\.txt: 1 box lines, but .*configSeqs\.m line 4"):
        read_uav123(uav_root)
    (uav_root / "configSeqs.m").unlink()
    with pytest.raises(DatasetFormatError, match=r"bird1_1 .*configSeqs\.m"):
        read_uav123(uav_root)
    with pytest.raises(ValueError, match="unknown split"):
        read_uav123(uav_root, split="test")
