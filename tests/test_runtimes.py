"""The tracker's network on other runtimes: ONNX Runtime (fp32 and int8) tracks like PyTorch eager, profiles per
runtime, and every runtime that cannot run says so, naming it and how to install it, before a frame is tracked."""
import json
import sys

import numpy as np
import pytest
import torch

from ct_ray.evaluation.metrics import score_benchmark
from ct_ray.models import OneStreamTracker, TrackerConfig, save_tracker
from ct_ray.tracking import OnlineTracker, run_sequence
from ct_ray.tracking.runtimes import (
    RuntimeSpec,
    RuntimeUnavailableError,
    build_runtime,
    prepare_runtime,
)
from ct_ray.tracking.speed import _moving_target_frames, profile_tracker
from tests.test_evaluation_cli import NAMES, lasot_root, run_cli, sequences  # noqa: F401  (the LaSOT fixture)

CONFIG = TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=32, search_size=64)
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OneStreamTracker(CONFIG).eval()


def track(model, runtime, frames, box):
    return run_sequence(OnlineTracker(model, runtime=runtime), frames, box)[0]


def test_onnxruntime_tracks_like_pytorch_and_int8_stays_close(model, tmp_path):
    frames, boxes = _moving_target_frames(25, height=120, width=160)
    box = boxes[0]
    eager = track(model, None, frames, box)
    fp32 = track(model, build_runtime(model, "onnxruntime", cache=tmp_path), frames, box)
    int8 = track(model, build_runtime(model, RuntimeSpec("onnxruntime", int8=True), cache=tmp_path), frames, box)
    assert np.abs(fp32 - eager).max() < 0.05  # the same boxes to a twentieth of a pixel
    assert np.isfinite(int8).all() and int8.shape == eager.shape
    # The graphs are cached by the weights' digest: a second prepare reuses the files, another model gets its own.
    assert len(list(tmp_path.iterdir())) == 1
    other = OneStreamTracker(CONFIG)
    prepare_runtime(other, "onnxruntime", cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_eval_through_onnxruntime_scores_like_pytorch(tmp_path, lasot_root, model, ray_session, monkeypatch,
                                                      capsys):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "student.pt"
    save_tracker(checkpoint, model, {"kind": "student"})
    common = ["eval", "--checkpoint", checkpoint, "--dataset", f"lasot:{lasot_root}", "--no-mlflow", "--no-progress"]
    assert run_cli([*common, "--out", tmp_path / "torch"]) == 0
    assert run_cli([*common, "--out", tmp_path / "ort", "--runtime", "onnxruntime"]) == 0
    printed = capsys.readouterr().out
    assert "runtime onnxruntime-cpu" in printed
    seqs = sequences(lasot_root)
    from ct_ray.evaluation import read_results

    scores = {name: score_benchmark({s.name: read_results(tmp_path / name / f"{s.name}.txt", len(s)) for s in seqs},
                                    seqs).auc for name in ("torch", "ort")}
    assert abs(scores["torch"] - scores["ort"]) <= 0.1
    # A results folder of one runtime is not continued with another.
    assert run_cli([*common, "--out", tmp_path / "ort"]) == 2
    assert "tracked with runtime 'onnxruntime-cpu'" in capsys.readouterr().err
    # One --name for both runtimes: another runtime's folder carries its name, as its metrics do.
    assert run_cli([*common, "--name", "ct4", "--max-sequences", "1"]) == 0
    assert run_cli([*common, "--name", "ct4", "--max-sequences", "1", "--runtime", "onnxruntime"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["ct4", "ct4_onnxruntime-cpu"]


def test_profile_prints_every_runtime_and_one_json_line(tmp_path, model, capsys):
    checkpoint = tmp_path / "student.pt"
    save_tracker(checkpoint, model, {"kind": "student"})
    argv = ["profile", "--checkpoint", checkpoint, "--device", "cpu", "--iterations", "3", "--warmup", "1",
            "--threads", "1", "--runtime", "torch", "--runtime", "onnxruntime", "--json"]
    assert run_cli(argv) == 0
    profiles = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runtimes"]
    assert [p["runtime"] for p in profiles] == ["torch", "onnxruntime-cpu"]
    for profile in profiles:
        assert profile["network_ms"] > 0 and profile["tracking_step_ms"] > 0 and profile["forward_ms"] > 0
        assert profile["threads"] == 1 and profile["device"] == "cpu"
    assert "onnxruntime " in profiles[1]["libraries"]
    assert run_cli([*argv[:-1]]) == 0
    table = capsys.readouterr().out
    assert "onnxruntime-cpu" in table and "vs eager fwd" in table


def test_a_runtime_that_is_not_installed_names_the_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"onnxruntime.*pip install 'ct-ray\[export\]'"):
        prepare_runtime(model, "onnxruntime")


def test_a_provider_that_is_missing_is_named_before_tracking(model, tmp_path):
    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("TensorRT is installed here")
    prepared = prepare_runtime(model, RuntimeSpec("onnxruntime", "tensorrt"), cache=tmp_path)
    with pytest.raises(RuntimeUnavailableError, match="TensorrtExecutionProvider is not available.*onnxruntime-gpu"):
        prepared.open(model, "cpu")


def test_graphs_of_other_crop_sizes_are_refused(model, tmp_path, capsys):
    from ct_ray.tracking.export import export_tracking_graphs

    bigger = OneStreamTracker(TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=48,
                                            search_size=96))
    export_tracking_graphs(bigger, tmp_path / "graphs")
    prepared = prepare_runtime(model, "onnxruntime", graphs=tmp_path / "graphs")
    with pytest.raises(RuntimeUnavailableError, match=r"exported for template crops of \[1, 3, 48, 48\].*32x32"):
        prepared.open(model, "cpu")
    checkpoint = tmp_path / "student.pt"
    save_tracker(checkpoint, model, {"kind": "student"})
    # Through the CLI: one line, exit 2, before Ray starts or a frame is tracked.
    argv = ["eval", "--checkpoint", checkpoint, "--dataset", "lasot:/nonexistent", "--no-mlflow",
            "--runtime", "onnxruntime", "--graphs", tmp_path / "graphs"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "runtime 'onnxruntime'" in err and "Traceback" not in err


def test_runtime_options_are_checked():
    with pytest.raises(RuntimeUnavailableError, match="int8 .* needs --runtime onnxruntime"):
        RuntimeSpec("torch", int8=True)
    with pytest.raises(RuntimeUnavailableError, match="runtime 'tensorrt' is not one of"):
        RuntimeSpec("tensorrt")
    assert RuntimeSpec.parse("onnxruntime-cuda-int8") == RuntimeSpec("onnxruntime", "cuda", True)
    assert RuntimeSpec.parse("onnxruntime-cpu-int8").label == "onnxruntime-cpu-int8"


def test_profile_tracker_reports_the_runtime(model):
    profile = profile_tracker(model, "cpu", iterations=2, warmup=1, runtime="onnxruntime")
    assert profile.runtime == "onnxruntime-cpu" and profile.dtype == "float32"
    assert 0 < profile.network_ms and 0 < profile.tracking_step_ms
