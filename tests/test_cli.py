"""The ct-ray command line on small checkpoints."""
import json

import pytest
import torch

from ct_ray.cli import main
from ct_ray.models import OneStreamTracker, TrackerConfig, ct_ray_to_ostrack, save_tracker

CONFIG = TrackerConfig(embed_dim=32, depth=2, num_heads=2, head_channels=16, template_size=32, search_size=64)


def test_inspect_reads_the_architecture_of_an_ostrack_file(tmp_path, capsys):
    torch.manual_seed(0)
    model = OneStreamTracker(CONFIG)
    torch.save({"net": ct_ray_to_ostrack(model.state_dict())}, tmp_path / "ostrack.pth.tar")
    assert main(["inspect", "--checkpoint", str(tmp_path / "ostrack.pth.tar"), "--kind", "ostrack",
                 "--num-heads", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embed_dim"] == 32 and summary["depth"] == 2 and summary["search_size"] == 64
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["flops"] > 0


def test_profile_prints_latencies(tmp_path, capsys):
    save_tracker(tmp_path / "t.pt", OneStreamTracker(CONFIG))
    assert main(["profile", "--checkpoint", str(tmp_path / "t.pt"), "--iterations", "3", "--warmup", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["forward_ms"] > 0 and result["tracking_step_ms"] > 0
    assert result["tracking_fps"] == pytest.approx(1000 / result["tracking_step_ms"])
    assert result["device"] == "cpu" and result["torch_version"] == torch.__version__


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
