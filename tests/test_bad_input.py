"""Bad input, as a table: every class of bad file, format, key, flag or store fed to the commands gives one clear
line naming it and exit code 2 (or a reported skip), before any Ray instance starts; internal bugs keep their
traceback, and Ctrl-C says what was kept. And every option of every command has a description."""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ct_ray.cli import build_parser, main, run
from ct_ray.models import OneStreamTracker, ct_ray_to_ostrack, save_tracker
from helpers import TINY_TRACKER, write_lasot_tree

REPO = Path(__file__).resolve().parents[1]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = OneStreamTracker(TINY_TRACKER)
    save_tracker(root / "good.pt", model)
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "text.pt").write_text("not a checkpoint")
    torch.save({"net": Evil()}, root / "evil.pt")
    torch.save({"net": ct_ray_to_ostrack(model.state_dict())}, root / "ostrack.pth")
    lasot = write_lasot_tree(root / "lasot", sequences=2, frames=6)
    outside = write_lasot_tree(root / "outside", sequences=2, frames=6)
    gt = outside / "square" / "square-1" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    lines[3] = "500,400,24,18"  # wholly outside the 128 x 96 frame
    gt.write_text("\n".join(lines) + "\n")
    results = root / "results"
    results.mkdir()
    (results / "square-1.txt").write_text("1,2,3,4\n" * 3)  # 3 lines for 6 frames
    (results / "square-2.txt").write_text("1,2,3,4\n" * 6)
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    for _ in range(3):
        writer.write(np.full((96, 128, 3), 80, np.uint8))
    writer.release()
    (root / "bad.yaml").write_text("kind: compresstracker\noptim: {lrr: 1}\n")
    (root / "novalidation.yaml").write_text(
        f"kind: compresstracker\nteacher: {{path: {root / 'good.pt'}}}\nstudent: {{num_stages: 2}}\n"
        f"data: {{source: stream, pairs_per_epoch: 16, val_dataset: 'synthetic:{root / 'nowhere'}'}}\n"
        "mlflow: {enabled: false}\n")
    (root / "noshards.yaml").write_text(f"kind: compresstracker\nteacher: {{path: {root / 'good.pt'}}}\n"
                                        f"student: {{num_stages: 2}}\ndata: {{shards: {root / 'none'}}}\n"
                                        "mlflow: {enabled: false}\n")
    return root


CASES = [
    ("missing checkpoint", ["inspect", "--checkpoint", "{root}/none.pt"], "checkpoint not found: .*none.pt"),
    ("empty checkpoint", ["inspect", "--checkpoint", "{root}/empty.pt"], r"empty.pt: not a readable checkpoint"),
    ("truncated checkpoint", ["inspect", "--checkpoint", "{root}/truncated.pt"],
     r"truncated.pt: not a readable checkpoint"),
    ("text as checkpoint", ["inspect", "--checkpoint", "{root}/text.pt"], r"text.pt: not a readable checkpoint"),
    ("pickled code", ["inspect", "--checkpoint", "{root}/evil.pt"], r"evil.pt: refused.*(posix|os)\.system"),
    ("wrong format", ["inspect", "--checkpoint", "{root}/ostrack.pth"], r"not a ct-ray tracker checkpoint"),
    ("unknown kind", ["inspect", "--checkpoint", "{root}/good.pt", "--kind", "nope"], "unknown teacher kind 'nope'"),
    ("heads for ct-ray", ["inspect", "--checkpoint", "{root}/good.pt", "--num-heads", "4"],
     "records its attention heads"),
    ("eval, truncated", ["eval", "--checkpoint", "{root}/truncated.pt", "--dataset", "lasot:{root}/lasot",
                         "--no-mlflow"], "not a readable checkpoint"),
    ("eval, unknown dataset kind", ["eval", "--checkpoint", "{root}/good.pt", "--dataset", "nope:/x",
                                    "--no-mlflow"], "unknown dataset kind 'nope'"),
    ("eval, missing dataset", ["eval", "--checkpoint", "{root}/good.pt", "--dataset", "lasot:{root}/absent",
                               "--no-mlflow"], "dataset root not found"),
    ("eval, bad split", ["eval", "--checkpoint", "{root}/good.pt", "--dataset", "lasot:{root}/lasot", "--split",
                         "val", "--no-mlflow"], "unknown split 'val'"),
    ("export, empty", ["export", "--checkpoint", "{root}/empty.pt", "--onnx", "{root}/x.onnx"],
     "not a readable checkpoint"),
    ("demo, truncated", ["demo", "--checkpoint", "{root}/truncated.pt", "--video", "{root}/clip.mp4", "--init-box",
                         "1,2,3,4", "--out", "{root}/d.mp4"], "not a readable checkpoint"),
    ("demo, box not a number", ["demo", "--checkpoint", "{root}/good.pt", "--video", "{root}/clip.mp4",
                                "--init-box", "1,2,a,4", "--out", "{root}/d.mp4"], r"--init-box: 'a' is not a number"),
    ("demo, three values", ["demo", "--checkpoint", "{root}/good.pt", "--video", "{root}/clip.mp4", "--init-box",
                            "1,2,3", "--out", "{root}/d.mp4"], r"--init-box must be x,y,w,h"),
    ("demo, zero size", ["demo", "--checkpoint", "{root}/good.pt", "--video", "{root}/clip.mp4", "--init-box",
                         "1,2,0,4", "--out", "{root}/d.mp4"], "positive width and height"),
    ("demo, box outside", ["demo", "--checkpoint", "{root}/good.pt", "--video", "{root}/clip.mp4", "--init-box",
                           "900,900,10,10", "--out", "{root}/d.mp4"], r"lies outside the first frame \(128 x 96"),
    ("demo, missing video", ["demo", "--checkpoint", "{root}/good.pt", "--video", "{root}/none.mp4", "--init-box",
                             "1,2,3,4", "--out", "{root}/d.mp4"], "cannot open video"),
    ("score, wrong line count", ["score", "--results", "{root}/results", "--dataset", "lasot:{root}/lasot",
                                 "--split", "all"], r"square-1.txt: .*3"),
    ("score, missing results", ["score", "--results", "{root}/none", "--dataset", "lasot:{root}/lasot"],
     "no result file|not found"),
    ("train, missing config", ["train", "--config", "{root}/none.yaml"], "config file not found"),
    ("train, unknown key", ["train", "--config", "{root}/bad.yaml"], r"optim\.lrr"),
    ("train, no config", ["train"], r"give --config FILE"),
    ("train, missing shards", ["train", "--config", "{root}/noshards.yaml"], "no shard manifest"),
    ("synth, zero sequences", ["data", "synth", "--out", "{root}/s", "--sequences", "0"], "sequences"),
    ("shards, unknown split", ["data", "shards", "--source", "lasot:{root}/lasot@nosuch", "--pairs-per-epoch", "4",
                               "--out", "{root}/sh"], "unknown split 'nosuch'"),
    ("shards, bad ratio", ["data", "shards", "--source", "lasot:{root}/lasot*x", "--pairs-per-epoch", "4",
                           "--out", "{root}/sh"], "ratio 'x' is not a number"),
    ("shards, context too small", ["data", "shards", "--source", "lasot:{root}/lasot", "--pairs-per-epoch", "4",
                                   "--context-factor", "6", "--out", "{root}/sh"], r"context_factor 6 is too small"),
    ("preview, no shards", ["data", "preview", "--shards", "{root}/none", "--out", "{root}/p"], "no shard manifest"),
    ("quickstart, unknown preset", ["quickstart", "--preset", "{root}/none.yaml"], "config file not found"),
    ("ablations, bad seeds", ["ablations", "--seeds", "0,a"], r"--seeds must be comma-separated integers"),
    ("tune, missing config", ["tune", "--config", "{root}/none.yaml"], "config file not found"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(files, capsys, name, argv, message):
    code = main([a.format(root=files) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ct-ray "), err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and "weights_only" not in err


def test_a_box_outside_its_frame_is_reported_and_never_reaches_a_shard(files, ray_session, capsys):
    out = files / "shards-outside"
    assert main(["data", "shards", "--source", f"lasot:{files / 'outside'}@all", "--pairs-per-epoch", "24",
                 "--template-size", "32", "--search-size", "64", "--max-gap", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "24 pairs in 1 shards" in printed and "outside its image (lasot:square-1:3" in printed
    manifest = json.loads((out / "_manifest.json").read_text())
    assert all(key.startswith("lasot:square-1:3") for key in manifest["skipped_frames"])
    import pyarrow.parquet as pq

    table = pq.read_table(out / "shard-00000.parquet").to_pylist()
    assert not any(r["sequence"] == "square-1" and 3 in (r["template_frame"], r["search_frame"]) for r in table)
    results = files / "results-outside"
    results.mkdir()
    for k in (1, 2):
        (results / f"square-{k}.txt").write_text("1,2,3,4\n" * 6)
    assert main(["score", "--results", str(results), "--dataset", f"lasot:{files / 'outside'}", "--split",
                 "all"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 ground-truth boxes lie wholly outside their frame: square-1 frame 4" in err


def test_bad_data_is_refused_before_ray_starts(files):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ct_ray.cli", "train", "--config", str(files / "noshards.yaml")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2 and "no shard manifest" in done.stderr
    assert "Ray" not in done.stderr and time.perf_counter() - start < 30
    done = subprocess.run([sys.executable, "-m", "ct_ray.cli", "train", "--config", str(files / "novalidation.yaml")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2 and f"data.val_dataset: no synthetic dataset at {files / 'nowhere'}" in done.stderr
    assert "Ray" not in done.stderr


def test_ctrl_c_says_what_was_kept_and_bugs_keep_their_traceback(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def buggy(args):
        raise KeyError("an internal bug")

    assert run(argparse.Namespace(command="train", func=interrupted)) == 130
    assert "interrupted. Finished work is kept" in capsys.readouterr().err
    with pytest.raises(KeyError, match="an internal bug"):
        run(argparse.Namespace(command="train", func=buggy))


def _options(parser: argparse.ArgumentParser, path: str = "ct-ray"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_of_every_command_has_a_description():
    missing = [f"{path}: {'/'.join(action.option_strings) or action.dest}"
               for path, action in _options(build_parser())
               if not action.help or action.help == argparse.SUPPRESS]
    assert not missing, missing
    helps = subprocess.run([sys.executable, "-m", "ct_ray.cli", "eval", "--help"], capture_output=True,
                           text=True, check=True).stdout
    assert "coco" in helps and "(default: ct-ray)" in helps
