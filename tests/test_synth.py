"""The synthetic LaSOT-format benchmark: determinism, layout, annotation consistency, presets, parameter errors."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ct_ray.data import synth
from ct_ray.data.synth import (
    FULL_OCCLUSION_THRESHOLD,
    MIN_VISIBLE_SIDE,
    PRESETS,
    benchmark_sequence,
    generate_benchmark,
    render_sequence,
    sequence_plan,
)

H, W = 240, 320
SEQUENCES, FRAMES = 4, 12


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "a"
    info = generate_benchmark(root, SEQUENCES, FRAMES, seed=3, preset="standard")
    return root, info


# ------------------------------------------------------------------------------------------------------ determinism
def test_same_arguments_give_byte_identical_files_and_another_seed_other_frames(bench, tmp_path):
    root, info = bench
    again = generate_benchmark(tmp_path / "b", SEQUENCES, FRAMES, seed=3, preset="standard")
    assert again == info
    first, second = _tree(root), _tree(tmp_path / "b")
    assert sorted(first) == sorted(second) and len(first) == 3 + SEQUENCES * (FRAMES + 4)
    assert all(first[name] == second[name] for name in first)

    generate_benchmark(tmp_path / "c", SEQUENCES, FRAMES, seed=4, preset="standard")
    jpegs_a = {v for k, v in first.items() if k.endswith(".jpg")}
    jpegs_c = {v for k, v in _tree(tmp_path / "c").items() if k.endswith(".jpg")}
    assert len(jpegs_a) == SEQUENCES * FRAMES and not jpegs_a & jpegs_c


def test_render_sequence_is_deterministic_and_matches_the_written_files(bench):
    root, _ = bench
    frames, ann = render_sequence(7, "hard", 10, (H, W))
    frames2, ann2 = render_sequence(np.random.default_rng(7), "hard", 10, (H, W))
    assert len(frames) == 10 and frames[0].shape == (H, W, 3) and frames[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(frames, frames2))
    np.testing.assert_array_equal(ann.boxes, ann2.boxes)

    name, frames, ann = benchmark_sequence(3, 1, "standard", FRAMES, (H, W))
    directory = root / name.rsplit("-", 1)[0] / name
    gt = np.loadtxt(directory / "groundtruth.txt", delimiter=",", dtype=np.int64)
    np.testing.assert_array_equal(gt, ann.boxes)
    assert (directory / "nlp.txt").read_text() == ann.description + "\n"
    decoded = cv2.cvtColor(cv2.imread(str(directory / "img" / "00000005.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded.astype(int) - frames[4].astype(int)).mean() < 6  # JPEG q90 of the same image


# ----------------------------------------------------------------------------------------------------------- layout
def test_layout(bench):
    root, info = bench
    plan = sequence_plan(3, SEQUENCES)
    names = [name for name, _ in plan]
    assert len(set(names)) == SEQUENCES and all(name == f"{cls}-1" for name, cls in plan)  # one round of classes
    for name, cls in plan:
        directory = root / cls / name
        jpgs = sorted(p.name for p in (directory / "img").iterdir())
        assert jpgs == [f"{i:08d}.jpg" for i in range(1, FRAMES + 1)]
        assert cv2.imread(str(directory / "img" / jpgs[0])).shape == (H, W, 3)
        lines = (directory / "groundtruth.txt").read_text().splitlines()
        assert len(lines) == FRAMES
        assert all(len(line.split(",")) == 4 and all(v.isdigit() for v in line.split(",")) for line in lines)
        for flags in ("full_occlusion.txt", "out_of_view.txt"):
            text = (directory / flags).read_text()
            assert text.count("\n") == 1 and text.strip().split(",") and set(text.strip().split(",")) <= {"0", "1"}
            assert len(text.strip().split(",")) == FRAMES
        nlp = (directory / "nlp.txt").read_text().splitlines()
        assert len(nlp) == 1 and nlp[0].endswith(cls) and len(nlp[0].split()) == 3
    train = (root / "training_set.txt").read_text().split()
    test = (root / "testing_set.txt").read_text().split()
    assert sorted(train + test) == sorted(names) and len(test) == 1 and not set(train) & set(test)

    meta = json.loads((root / "benchmark.json").read_text())
    assert meta == info and meta["complete"] is True
    assert (meta["preset"], meta["seed"], meta["sequences"], meta["frames"], meta["frame_size"]) == (
        "standard", 3, SEQUENCES, FRAMES, [H, W])
    assert meta["version"] == synth.SYNTH_VERSION and meta["counts"]["frames"] == SEQUENCES * FRAMES
    occluded = sum(np.loadtxt(root / c / n / "full_occlusion.txt", delimiter=",").sum() for n, c in plan)
    assert meta["counts"]["full_occlusion"] == occluded
    assert not list(root.glob(".synth-tmp-*"))


def test_split_sizes(tmp_path):
    assert synth._split(0, 1, 0.25) == set()
    assert len(synth._split(0, 2, 0.0)) == 1 and len(synth._split(0, 2, 0.9)) == 1
    assert len(synth._split(0, 20, 0.25)) == 5 and synth._split(5, 20, 0.25) == synth._split(5, 20, 0.25)
    generate_benchmark(tmp_path / "one", 1, 2, seed=0, preset="hard", frame_size=(64, 80), progress=True)
    assert (tmp_path / "one" / "testing_set.txt").read_text() == ""
    assert len((tmp_path / "one" / "training_set.txt").read_text().split()) == 1


def test_the_project_reader_reads_it(bench):
    readers = pytest.importorskip("ct_ray.data.readers")
    root, _ = bench
    index = readers.read_synthetic(root)
    assert len(index) == SEQUENCES and index.skipped == {}
    test = readers.read_synthetic(root, split="test")
    name = test.sequences[0].name
    seq = next(s for s in index.sequences if s.name == name)
    _, _, ann = benchmark_sequence(3, [n for n, _ in sequence_plan(3, SEQUENCES)].index(name), "standard", FRAMES)
    np.testing.assert_array_equal(seq.visible, ann.visible)
    np.testing.assert_array_equal(seq.valid, ann.visible)


# ------------------------------------------------------------------------------------------ annotation consistency
@pytest.mark.parametrize("preset", ["standard", "hard"])
def test_annotation_is_consistent_with_the_drawn_masks(preset):
    partial = full = out = 0
    for seed in range(4):
        _, ann = render_sequence(seed, preset, 30, (H, W))
        vis = ann.visible
        assert vis[0] and ann.occluded_fraction[0] == 0 and ann.in_frame_fraction[0] == 1
        assert min(ann.boxes[0, 2:]) >= PRESETS[preset].target_size[0] * min(H, W) * 0.7
        x, y, w, h = ann.boxes[vis].T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= W).all() and (y + h <= H).all()
        assert (w >= MIN_VISIBLE_SIDE).all() and (h >= MIN_VISIBLE_SIDE).all()
        assert (ann.boxes[~vis] == 0).all()
        # full occlusion is exactly "at least 95 % of the in-image target pixels hidden by what is drawn over it"
        np.testing.assert_array_equal(ann.full_occlusion,
                                      ~ann.out_of_view & (ann.occluded_fraction >= FULL_OCCLUSION_THRESHOLD))
        # the visible box is the unclipped extent clipped to the image
        ex = ann.extent[vis]
        np.testing.assert_array_equal(ann.boxes[vis, 0], np.clip(ex[:, 0], 0, W))
        np.testing.assert_array_equal(ann.boxes[vis, 0] + w, np.clip(ex[:, 0] + ex[:, 2], 0, W))
        np.testing.assert_array_equal(ann.boxes[vis, 1] + h, np.clip(ex[:, 1] + ex[:, 3], 0, H))
        # a frame whose target lies wholly outside the image is out of view
        ex_x, ex_y, ex_w, ex_h = ann.extent.T
        outside = (ex_x + ex_w <= 0) | (ex_y + ex_h <= 0) | (ex_x >= W) | (ex_y >= H)
        assert ann.out_of_view[outside].all()
        aspect = ann.extent[:, 2] / ann.extent[:, 3]
        assert (aspect > 0.4).all() and (aspect < 2.5).all()
        partial += int(ann.partial_occlusion.sum())
        full += int(ann.full_occlusion.sum())
        out += int(ann.out_of_view.sum())
    assert partial > 0
    if preset == "hard":
        assert full > 0 and out > 0


def test_target_pixels_are_inside_the_box_in_an_easy_sequence():
    for seed in range(3):
        frames, ann = render_sequence(seed, "easy", 12, (H, W))
        empty, ann2 = render_sequence(seed, "easy", 12, (H, W), draw_target=False)
        np.testing.assert_array_equal(ann.boxes, ann2.boxes)
        for t in np.flatnonzero(ann.visible):
            x, y, w, h = ann.boxes[t]
            changed = np.abs(frames[t].astype(int) - empty[t].astype(int)).max(axis=2) > 0
            inside = changed[y:y + h, x:x + w]
            assert inside.mean() > 0.3 * (1 - ann.occluded_fraction[t])  # the target is drawn in its box
            # and nowhere else but its anti-aliased rim (one pixel around the box)
            outside = changed.copy()
            outside[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1] = False
            assert not outside.any()
            # its colour is there: the box holds pixels close to the target's colour
            rgb = np.array(ann.colour_rgb)
            patch = frames[t][y:y + h, x:x + w].reshape(-1, 3).astype(int)
            assert (np.abs(patch - rgb).max(axis=1) < 40).mean() > 0.1 or ann.texture in ("stripes", "checker",
                                                                                           "gradient", "dots")


# ------------------------------------------------------------------------------------------------------- presets
def _stats(preset: str) -> dict:
    absent, disp, size, occ, same = 0, [], [], 0, []
    for seed in range(6):
        _, ann = render_sequence(seed, preset, 30, (H, W))
        absent += int((~ann.visible).sum())
        occ += int((ann.occluded_fraction > 0).sum())
        disp.append(np.linalg.norm(np.diff(ann.centers, axis=0), axis=1).mean())
        size.append(np.sqrt(ann.extent[:, 2] * ann.extent[:, 3]).mean())
        same.append((ann.same_colour_in_frame.min(), ann))
    return {"absent": absent, "occluded": occ, "disp": float(np.mean(disp)), "size": float(np.mean(size)),
            "same": same}


def test_presets_differ_measurably():
    easy, standard, hard = _stats("easy"), _stats("standard"), _stats("hard")
    assert hard["absent"] > easy["absent"] + 20 and hard["occluded"] > easy["occluded"]
    assert hard["disp"] > 2.5 * easy["disp"] and standard["disp"] > easy["disp"]
    assert hard["size"] < 0.7 * easy["size"] and hard["size"] < standard["size"]
    assert 20 <= standard["size"] <= 60
    # standard: another object of the target's colour is in every frame; easy: never one
    assert all(minimum >= 1 for minimum, _ in standard["same"])
    assert all(minimum >= 2 for minimum, _ in hard["same"])
    for _, ann in easy["same"]:
        assert all(d["colour"] != ann.colour for d in ann.distractors)
    for _, ann in standard["same"]:
        same = [j for j, d in enumerate(ann.distractors) if d["colour"] == ann.colour]
        assert (ann.distractor_visible_pixels[:, same] > 0).any(axis=1).all()


# ------------------------------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize("kwargs, match", [
    ({"sequences": 0}, "sequences"),
    ({"frames": 1}, "frames"),
    ({"seed": -1}, "seed"),
    ({"preset": "nightmare"}, r"preset.*'easy', 'hard', 'standard'"),
    ({"frame_size": (32, 320)}, "frame_size"),
    ({"frame_size": (240,)}, "frame_size"),
    ({"test_fraction": 1.5}, "test_fraction"),
])
def test_bad_parameters_raise_naming_the_parameter(tmp_path, kwargs, match):
    args = {"out": tmp_path / "x", "sequences": 2, "frames": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_benchmark(**args)
    assert not (tmp_path / "x").exists()


def test_render_sequence_rejects_bad_parameters():
    with pytest.raises(ValueError, match="preset"):
        render_sequence(0, "nightmare", 5)
    with pytest.raises(ValueError, match="frames"):
        render_sequence(0, "easy", 1)
    with pytest.raises(ValueError, match="target_class"):
        render_sequence(0, "easy", 5, target_class="dragon")


def test_existing_output_with_other_parameters_is_rejected(bench, tmp_path):
    root, info = bench
    before = _tree(root)
    with pytest.raises(ValueError, match=r"different parameters.*seed"):
        generate_benchmark(root, SEQUENCES, FRAMES, seed=4, preset="standard")
    with pytest.raises(ValueError, match=r"different parameters.*preset"):
        generate_benchmark(root, SEQUENCES, FRAMES, seed=3, preset="hard")
    assert _tree(root) == before
    # the same parameters again: everything is skipped, nothing changes
    assert generate_benchmark(root, SEQUENCES, FRAMES, seed=3, preset="standard") == info
    assert _tree(root) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_benchmark(tmp_path / "other", 2, 3, seed=0)


def test_an_interrupted_run_leaves_whole_sequences_and_resumes(bench, tmp_path, monkeypatch):
    root, info = bench
    out = tmp_path / "r"
    real_render = synth._Renderer.render
    calls = {"n": 0}

    def failing_render(self, t):
        calls["n"] += 1
        if calls["n"] == 2 * FRAMES + 5:  # in the middle of the third sequence
            raise KeyboardInterrupt
        return real_render(self, t)

    monkeypatch.setattr(synth._Renderer, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(out, SEQUENCES, FRAMES, seed=3, preset="standard")
    plan = sequence_plan(3, SEQUENCES)
    present = [(out / cls / name).is_dir() for name, cls in plan]
    assert present == [True, True, False, False] and not list(out.glob(".synth-tmp-*"))
    assert json.loads((out / "benchmark.json").read_text())["complete"] is False
    monkeypatch.setattr(synth._Renderer, "render", real_render)
    (out / ".synth-tmp-star-1-killed" / "img").mkdir(parents=True)  # left by a killed process
    assert generate_benchmark(out, SEQUENCES, FRAMES, seed=3, preset="standard") == info
    assert _tree(out) == _tree(root) and not list(out.glob(".synth-tmp-*"))


def test_a_benchmark_of_test_sequences_only(tmp_path):
    info = generate_benchmark(tmp_path / "b", sequences=3, frames=3, seed=0, preset="easy", frame_size=(64, 64),
                              test_fraction=1.0)
    assert (info["train_sequences"], info["test_sequences"]) == (0, 3)
    assert (tmp_path / "b" / "training_set.txt").read_text() == ""
