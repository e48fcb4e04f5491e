"""`ct-ray demo`: the tracked box drawn on every frame of a sequence, written as a video."""
import cv2
import numpy as np
import torch

from ct_ray.cli import main
from ct_ray.models import OneStreamTracker, save_tracker
from helpers import TINY_TRACKER, write_lasot_tree


def test_demo_writes_one_annotated_frame_per_input_frame(tmp_path, capsys):
    root = write_lasot_tree(tmp_path / "lasot", sequences=1, frames=6)
    torch.manual_seed(0)
    save_tracker(tmp_path / "t.pt", OneStreamTracker(TINY_TRACKER))
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--checkpoint", str(tmp_path / "t.pt"), "--sequence", str(root / "square" / "square-1"),
                 "--out", str(out)]) == 0
    assert "wrote 6 frames" in capsys.readouterr().out
    capture = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 6 and frames[0].shape == (96, 128, 3)
    # Frame 0 shows the first GT box (x 21, y 31, 24 x 18) as the prediction: its green edge is drawn.
    edge = frames[0][31, 24:40].astype(int)
    assert (edge[:, 1] > 150).mean() > 0.8 and (edge[:, 2] < 120).mean() > 0.8
    assert not list(tmp_path.glob(".*tmp*"))
    assert main(["demo", "--checkpoint", str(tmp_path / "t.pt"), "--video", str(out), "--out",
                 str(tmp_path / "again.mp4")]) == 2
    assert "--init-box" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(tmp_path / "t.pt"), "--video", str(out), "--init-box", "20,30,24,18",
                 "--out", str(tmp_path / "again.mp4")]) == 0
    assert np.isfinite(cv2.VideoCapture(str(tmp_path / "again.mp4")).get(cv2.CAP_PROP_FRAME_COUNT))
