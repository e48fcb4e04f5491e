"""Small on-disk fixtures the tests write: a LaSOT-format tree with a moving red square, a tiny tracker, and a
training workspace (that tree, shards of its training split and a tiny random teacher)."""
from pathlib import Path

import cv2
import numpy as np
import torch

from ct_ray.data.pairs import PairSamplingConfig
from ct_ray.models import OneStreamTracker, TrackerConfig, save_tracker

SAMPLING = PairSamplingConfig(template_size=32, search_size=64, max_gap=5)
TINY_TRACKER = TrackerConfig(embed_dim=32, depth=4, num_heads=2, head_channels=16, template_size=32, search_size=64)


def write_lasot_tree(root: Path, sequences: int = 3, frames: int = 10, hidden: dict | None = None) -> Path:
    """LaSOT layout: <class>/<class>-<k>/img/%08d.jpg with a red square moving right; `hidden` frames flagged."""
    hidden = hidden or {}
    names = []
    for k in range(1, sequences + 1):
        name = f"square-{k}"
        seq = root / "square" / name
        (seq / "img").mkdir(parents=True)
        lines, occluded = [], []
        for f in range(frames):
            image = np.full((96, 128, 3), 60, np.uint8)
            x, y = 20 + 4 * f + k, 30 + k
            cv2.rectangle(image, (x, y), (x + 23, y + 17), (0, 0, 255), -1)
            cv2.imwrite(str(seq / "img" / f"{f + 1:08d}.jpg"), image)
            lines.append(f"{x},{y},24,18")
            occluded.append("1" if f in hidden.get(name, ()) else "0")
        (seq / "groundtruth.txt").write_text("\n".join(lines) + "\n")
        (seq / "full_occlusion.txt").write_text(",".join(occluded))
        (seq / "out_of_view.txt").write_text(",".join("0" * frames))
        names.append(name)
    (root / "training_set.txt").write_text("\n".join(names) + "\n")
    (root / "testing_set.txt").write_text(names[0] + "\n")
    return root


def write_training_workspace(root: Path, pairs_per_epoch: int, epochs: int, teacher_meta: dict | None = None) -> Path:
    """``root/lasot`` (3 sequences of 10 frames), ``root/shards`` (``epochs`` x ``pairs_per_epoch`` pairs of the
    training split, 16 per shard) and ``root/teacher.pt`` (a seeded random :data:`TINY_TRACKER`). Needs Ray."""
    from ct_ray.orchestration.data_pipeline import build_shards
    from ct_ray.data.shards import ShardPlan, SourceSpec

    lasot = write_lasot_tree(root / "lasot", sequences=3, frames=10)
    plan = ShardPlan(sources=(SourceSpec(f"lasot:{lasot}", "train"),), pairs_per_epoch=pairs_per_epoch,
                     epochs=epochs, pairs_per_shard=16, seed=0, sampling=SAMPLING)
    build_shards(plan, root / "shards", progress=False)
    torch.manual_seed(0)
    save_tracker(root / "teacher.pt", OneStreamTracker(TINY_TRACKER), teacher_meta)
    return root
