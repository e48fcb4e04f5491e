"""ct-ray eval / score / plot / compare / export on a tiny LaSOT-format tree and a tiny random tracker."""
import argparse
import csv
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from ct_ray.orchestration import mlflow_runs
from ct_ray.cli import build_parser, run
from ct_ray.data import load_dataset
from ct_ray.evaluation import read_results, score_benchmark, write_results
from ct_ray.models import OneStreamTracker, TrackerConfig, save_tracker

CONFIG = TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=32, search_size=64)
NAMES = ("square-1", "square-2")
FRAMES = 6


def run_cli(argv):
    """A command through the ct-ray parser and its error boundary."""
    return run(build_parser().parse_args([str(a) for a in argv]))


def gt_box(sequence: int, frame: int) -> tuple[int, int, int, int]:
    return (6 + 5 * frame + 3 * sequence, 8 + 3 * frame, 14, 12)


@pytest.fixture(scope="module")
def lasot_root(tmp_path_factory):
    """LaSOT layout: root/square/square-<k>/{img/%08d.jpg, groundtruth.txt, full_occlusion.txt, out_of_view.txt}."""
    root = tmp_path_factory.mktemp("lasot")
    colours = [(40, 40, 220), (40, 200, 40)]
    for k, name in enumerate(NAMES):
        directory = root / "square" / name
        (directory / "img").mkdir(parents=True)
        boxes = [gt_box(k, i) for i in range(FRAMES)]
        for i, (x, y, w, h) in enumerate(boxes):
            image = np.full((48, 64, 3), 90, dtype=np.uint8)
            image[y:y + h, x:x + w] = colours[k]
            assert cv2.imwrite(str(directory / "img" / f"{i + 1:08d}.jpg"), image)
        (directory / "groundtruth.txt").write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in boxes))
        (directory / "full_occlusion.txt").write_text(",".join("0" * FRAMES) + "\n")
        (directory / "out_of_view.txt").write_text(",".join("0" * FRAMES) + "\n")
    (root / "testing_set.txt").write_text("\n".join(NAMES) + "\n")
    return root


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "student.pt"
    save_tracker(path, OneStreamTracker(CONFIG), {"kind": "student"})
    return path


def sequences(root):
    return load_dataset(f"lasot:{root}", "test").sequences


def test_eval_writes_results_scores_and_keeps_complete_sequences(tmp_path, lasot_root, checkpoint, ray_session,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results" / "tiny"
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", f"lasot:{lasot_root}", "--out", out, "--no-mlflow",
            "--no-progress", "--got10k-submission", "--trackingnet-submission"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "2 tracked, 0 kept" in printed
    for name in NAMES:
        lines = (out / f"{name}.txt").read_text().splitlines()
        assert len(lines) == FRAMES
        assert all(len(line.split("\t")) == 4 and all(v.lstrip("-").isdigit() for v in line.split("\t"))
                   for line in lines)
        assert lines[0].split("\t") == [str(v) for v in gt_box(NAMES.index(name), 0)]
        assert len((out / f"{name}_time.txt").read_text().splitlines()) == FRAMES
        assert len((out / "got10k_submission" / name / f"{name}_001.txt").read_text().splitlines()) == FRAMES
        assert len((out / "trackingnet_submission" / f"{name}.txt").read_text().splitlines()) == FRAMES

    # scores.json and `ct-ray score --json` are score_benchmark on the result files
    seqs = sequences(lasot_root)
    expected = score_benchmark({s.name: read_results(out / f"{s.name}.txt") for s in seqs}, seqs).to_dict()
    saved = json.loads((out / "scores.json").read_text())
    assert run_cli(["score", "--results", out, "--dataset", f"lasot:{lasot_root}", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    for report in (saved, scored):
        assert report["overall"] == expected["overall"]
        assert report["per_sequence"] == expected["per_sequence"]
    assert 0.0 <= scored["overall"]["auc"] <= 100.0 and scored["overall"]["num_sequences"] == 2

    # tracking speed: median per-frame time over both sequences, frame 0 excluded
    times = np.concatenate([np.loadtxt(out / f"{n}_time.txt")[1:] for n in NAMES])
    assert saved["timing"]["tracking_ms"] == pytest.approx(np.median(times) * 1000, rel=1e-6)
    assert saved["timing"]["tracking_fps"] == pytest.approx(1000 / saved["timing"]["tracking_ms"])
    assert (out / "per_sequence.csv").is_file() and (out / "success.png").is_file()

    # a re-run keeps both complete sequences: nothing is tracked or rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.txt")}
    assert run_cli(argv) == 0
    assert "0 tracked, 2 kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.txt")} == mtimes

    # results of another checkpoint are never taken for this one's
    other = tmp_path / "other.pt"
    save_tracker(other, OneStreamTracker(CONFIG))
    assert run_cli(["eval", "--checkpoint", other, "--dataset", f"lasot:{lasot_root}", "--out", out,
                    "--no-mlflow", "--no-progress"]) == 2
    assert "another checkpoint" in capsys.readouterr().err


def test_sequences_grouped_into_tasks_track_as_they_would_alone(lasot_root, checkpoint, ray_session, monkeypatch):
    """A task tracks several sequences with one model and runtime: the boxes are those of one task per sequence."""
    from ct_ray.models import load_tracker
    from ct_ray.orchestration import distributed_eval

    assert distributed_eval.sequences_per_task(300, 4) == 8  # the quickstart: 300 test sequences, 4 slots
    assert distributed_eval.sequences_per_task(40, 4) == 2 and distributed_eval.sequences_per_task(3, 16) == 1
    assert distributed_eval.sequences_per_task(10_000, 0) == distributed_eval.MAX_SEQUENCES_PER_TASK

    class Frames(list):  # a sequence as far as grouping goes: its name and its length in frames
        name = ""
    lengths = [20] * 9 + [2500, 300, 300, 20]
    groups = distributed_eval.task_groups([Frames([0] * n) for n in lengths], 8)
    assert [[len(s) for s in g] for g in groups] == [[20] * 8, [20], [2500], [300], [300, 20]]
    model, _ = load_tracker(checkpoint)
    seqs = sequences(lasot_root)
    by_size = {}
    for size in (1, 2):
        monkeypatch.setattr(distributed_eval, "sequences_per_task", lambda count, slots, size=size: size)
        by_size[size] = distributed_eval.evaluate_sequences(model, seqs, progress=False)
    assert list(by_size[1]) == list(by_size[2]) == [s.name for s in seqs]
    for name in by_size[1]:
        assert by_size[1][name].shape == (FRAMES, 4)
        np.testing.assert_array_equal(by_size[1][name], by_size[2][name])


def test_eval_logs_into_the_checkpoints_run_or_a_new_one(tmp_path, lasot_root, ray_session, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow_runs.client(uri)
    train_run = mlflow_runs.start_run(uri, "train", "student-run", {}, {"kind": "student"})
    mlflow_runs.end_run(uri, train_run)
    torch.manual_seed(0)
    model = OneStreamTracker(CONFIG)
    save_tracker(tmp_path / "own.pt", model, {"kind": "student", "mlflow_run_id": train_run,
                                              "teacher_stages": [[0, 1], [2, 3]], "student_stages": [[0], [1]]})
    save_tracker(tmp_path / "foreign.pt", model, {})

    common = ["--dataset", f"lasot:{lasot_root}", "--mlflow-uri", uri, "--no-progress"]
    assert run_cli(["eval", "--checkpoint", tmp_path / "own.pt", "--out", tmp_path / "r1", *common]) == 0
    run = client.get_run(train_run)
    scores = json.loads((tmp_path / "r1" / "scores.json").read_text())
    for key in ("auc", "precision", "norm_precision", "op50", "op75"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(scores["overall"][key])
    assert run.data.metrics["tracking_fps"] == pytest.approx(scores["timing"]["tracking_fps"])
    assert run.data.metrics["params"] == sum(p.numel() for p in model.parameters())
    assert run.data.metrics["flops"] > 0
    assert run.info.status == "FINISHED"
    artifacts = {os.path.basename(a.path) for a in client.list_artifacts(train_run, "eval/test")}
    assert {"per_sequence.csv", "scores.json", "success.png", "precision.png"} <= artifacts
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1  # no new run

    # a checkpoint without a run of its own: a new run in --experiment, tagged with its kind and source
    assert run_cli(["eval", "--checkpoint", tmp_path / "foreign.pt", "--out", tmp_path / "r2", "--name", "lasot",
                    "--experiment", "evals", *common]) == 0
    runs = client.search_runs([client.get_experiment_by_name("evals").experiment_id])
    assert len(runs) == 1
    new = runs[0]
    assert new.data.tags["kind"] == "external"
    assert new.data.tags["source_checkpoint"] == str((tmp_path / "foreign.pt").resolve())
    assert new.data.metrics["lasot_auc"] == pytest.approx(
        json.loads((tmp_path / "r2" / "scores.json").read_text())["overall"]["auc"])
    local = client.download_artifacts(new.info.run_id, "eval/lasot/per_sequence.csv", str(tmp_path))
    with open(local) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == list(NAMES)
    assert "MLflow" in capsys.readouterr().out


def test_score_reports_the_bad_file_and_line(tmp_path, lasot_root, capsys):
    seqs = sequences(lasot_root)
    for s in seqs:
        write_results(tmp_path, s.name, s.boxes)
    bad = tmp_path / f"{NAMES[1]}.txt"
    lines = bad.read_text().splitlines()
    lines[2] = "10\t12\tabc\t4"
    bad.write_text("\n".join(lines) + "\n")
    assert run_cli(["score", "--results", tmp_path, "--dataset", f"lasot:{lasot_root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ct-ray score: error: ")
    assert str(bad) in err and "line 3" in err

    lines[2] = "10\t12\t4"
    bad.write_text("\n".join(lines) + "\n")
    assert run_cli(["score", "--results", tmp_path, "--dataset", f"lasot:{lasot_root}"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_score_of_perfect_boxes(tmp_path, lasot_root, capsys):
    for s in sequences(lasot_root):
        write_results(tmp_path, s.name, s.boxes)
    assert run_cli(["score", "--results", tmp_path, "--dataset", f"lasot:{lasot_root}", "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert overall["auc"] == pytest.approx(2000 / 21)  # no IoU is > 1.0: 20 of 21 thresholds
    assert overall["precision"] == 100.0 and overall["op75"] == 100.0


def test_plot_writes_success_and_precision_pngs(tmp_path, lasot_root, capsys):
    for folder, shift in (("a", 0), ("b", 4)):
        for s in sequences(lasot_root):
            write_results(tmp_path / folder, s.name, s.boxes + [shift, shift, 0, 0])
    assert run_cli(["plot", "--results", tmp_path / "a", "--results", tmp_path / "b", "--label", "exact",
                    "--label", "shifted", "--dataset", f"lasot:{lasot_root}", "--out", tmp_path / "plots"]) == 0
    for name in ("success.png", "precision.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_compare_speed_up_and_retention(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    teacher = mlflow_runs.start_run(uri, "exp", "teacher", {}, {"kind": "teacher"})
    mlflow_runs.log_metrics(uri, teacher, {"tracking_fps": 10.0, "test_auc": 60.0, "test_precision": 62.0}, 0)
    student = mlflow_runs.start_run(uri, "exp", "student-4", {}, {"kind": "student", "teacher_run_id": teacher,
                                                                   "student_depth": "4",
                                                                   "stage_division": "[[0, 2], [3, 5]]"})
    mlflow_runs.log_metrics(uri, student, {"tracking_fps": 25.0, "test_auc": 57.0, "val_auc": 40.0}, 0)
    trained = mlflow_runs.start_run(uri, "exp", "student-val", {}, {"kind": "student", "teacher_run_id": "none"})
    mlflow_runs.log_metrics(uri, trained, {"val_auc": 30.0}, 0)
    mlflow_runs.log_metrics(uri, trained, {"val_auc": 33.0}, 1)

    assert run_cli(["compare", "--experiment", "exp", "--mlflow-uri", uri, "--csv", tmp_path / "table.csv",
                    "--plot", tmp_path / "speed.png"]) == 0
    printed = capsys.readouterr().out
    assert "student-4" in printed and "teacher" in printed
    with open(tmp_path / "table.csv") as handle:
        rows = {r["run_name"]: r for r in csv.DictReader(handle)}
    assert float(rows["student-4"]["speed_up"]) == pytest.approx(2.5)
    assert float(rows["student-4"]["auc_retention"]) == pytest.approx(95.0)
    assert float(rows["student-4"]["auc"]) == 57.0 and rows["student-4"]["auc_metric"] == "test_auc"
    assert rows["student-4"]["student_depth"] == "4" and rows["student-4"]["stage_division"] == "[[0, 2], [3, 5]]"
    assert rows["teacher"]["speed_up"] == "" and rows["teacher"]["auc_retention"] == ""
    assert float(rows["student-val"]["auc"]) == 33.0 and rows["student-val"]["auc_metric"] == "val_auc"
    assert (tmp_path / "speed.png").read_bytes().startswith(b"\x89PNG")

    assert run_cli(["compare", "--experiment", "missing", "--mlflow-uri", uri]) == 2
    assert "no MLflow experiment named 'missing'" in capsys.readouterr().err


def test_export_without_onnx_names_the_extra(tmp_path, checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    assert run_cli(["export", "--checkpoint", checkpoint, "--onnx", tmp_path / "t.onnx"]) == 2
    assert "install the export extra: pip install 'ct-ray[export]'" in capsys.readouterr().err


def test_export_onnx_round_trip(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "student.onnx"
    assert run_cli(["export", "--checkpoint", checkpoint, "--onnx", path, "--opset", "17"]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "max abs difference" in printed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["template", "search"]
    assert [o.name for o in session.get_outputs()] == ["pred_boxes", "score_map", "size_map", "offset_map"]
    assert session.get_inputs()[1].shape == [1, 3, 64, 64]


def test_wired_into_ct_ray_cli():
    import ct_ray.cli

    parser = ct_ray.cli.build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "score" not in choices:
        pytest.skip("ct_ray.cli does not call cli_eval.add_commands yet")
    assert {"eval", "score", "plot", "compare", "export"} <= set(choices)


def test_got10k_test_split_is_tracked_not_scored(tmp_path, checkpoint, ray_session, capsys):
    """GOT-10k test gives frame 0's box only: eval writes the server layout and no scores; score refuses."""
    root = tmp_path / "got10k"
    for k, name in enumerate(("GOT-10k_Test_000001", "GOT-10k_Test_000002")):
        directory = root / "test" / name
        directory.mkdir(parents=True)
        for i in range(FRAMES):
            x, y, w, h = gt_box(k, i)
            image = np.full((48, 64, 3), 90, dtype=np.uint8)
            image[y:y + h, x:x + w] = (200, 60, 60)
            assert cv2.imwrite(str(directory / f"{i + 1:08d}.jpg"), image)
        (directory / "groundtruth.txt").write_text("{},{},{},{}\n".format(*gt_box(k, 0)))
    out = tmp_path / "res"
    assert run_cli(["eval", "--checkpoint", checkpoint, "--dataset", f"got10k:{root}", "--out", out,
                    "--got10k-submission", "--no-mlflow", "--no-progress"]) == 0
    assert "first frame only" in capsys.readouterr().out
    saved = json.loads((out / "scores.json").read_text())
    assert saved["scored"] is False and saved["timing"]["frames"] == 2 * (FRAMES - 1)
    boxes = np.loadtxt(out / "got10k_submission" / "GOT-10k_Test_000001" / "GOT-10k_Test_000001_001.txt",
                       delimiter=",")
    assert boxes.shape == (FRAMES, 4) and tuple(boxes[0]) == gt_box(0, 0)
    assert len((out / "got10k_submission" / "GOT-10k_Test_000001" / "GOT-10k_Test_000001_time.txt")
               .read_text().splitlines()) == FRAMES
    assert run_cli(["score", "--results", out, "--dataset", f"got10k:{root}"]) == 2
    assert "first frame only" in capsys.readouterr().err
