"""Storage on any filesystem: a shard set built to an S3-compatible server on 127.0.0.1 (SeaweedFS), resumed there,
previewed and trained from, with the run's checkpoints and trackers in the store as well."""
import numpy as np
import pytest
import torch

from ct_ray.cli import main
from ct_ray.data.shards import read_manifest
from ct_ray.fileio import Location, StorageError
from ct_ray.models import OneStreamTracker, load_tracker, save_tracker
from helpers import TINY_TRACKER, write_lasot_tree


def test_shards_built_to_and_trained_from_s3(ray_session, s3_server, tmp_path, capsys):
    lasot = write_lasot_tree(tmp_path / "lasot", sequences=3, frames=10)
    shards = s3_server.uri("ctray/shards")
    build = ["data", "shards", "--source", f"lasot:{lasot}@train", "--pairs-per-epoch", "32", "--pairs-per-shard",
             "16", "--template-size", "32", "--search-size", "64", "--max-gap", "5", "--out", shards]
    assert main(build) == 0
    assert "32 pairs in 2 shards" in capsys.readouterr().out
    manifest = read_manifest(shards)
    names = sorted(entry.name for entry in Location.of(shards).list())
    assert names == ["_build.json", "_manifest.json", "shard-00000.parquet", "shard-00001.parquet"]
    assert all(entry["bytes"] > 0 and len(entry["sha256"]) == 64 for entry in manifest["shards"])
    # Run again: both shards are verified in the store (rows, schema, checksum) and kept.
    assert main(build) == 0
    assert read_manifest(shards)["shards"] == manifest["shards"]

    assert main(["data", "preview", "--shards", shards, "--count", "4", "--out", str(tmp_path / "preview")]) == 0
    arrays = np.load(tmp_path / "preview.npz")
    assert arrays["search"].shape == (4, 64, 64, 3) and arrays["template"].shape == (4, 32, 32, 3)
    assert ((arrays["search_box"] > 0) & (arrays["search_box"] < 1)).all()
    assert (tmp_path / "preview.png").stat().st_size > 1000

    torch.manual_seed(0)
    save_tracker(tmp_path / "teacher.pt", OneStreamTracker(TINY_TRACKER))
    runs = s3_server.uri("ctray/runs")
    (tmp_path / "run.yaml").write_text("kind: compresstracker\nstudent: {num_stages: 2}\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml"), f"teacher.path={tmp_path / 'teacher.pt'}",
                 f"data.shards={shards}", f"data.val_dataset=lasot:{lasot}", "data.val_split=test",
                 "data.batch_size=8", "run.epochs=2", "run.validate_every=2", f"run.storage_path={runs}",
                 "run.name=s3run", "mlflow.enabled=false"]) == 0
    printed = capsys.readouterr().out
    run = Location.of(runs).child("s3run")
    final = run.child("final_tracker.pt")
    assert final.is_file() and f"final tracker {final.uri}" in printed
    student, meta = load_tracker(final.download(tmp_path / "final.pt"))
    assert len(student.blocks) == 2 and meta["epoch"] == 2
    assert any(entry.name.startswith("checkpoint_") for entry in run.list())
    assert {"ct_ray_config.yaml", "ct_ray_run.json", "best_tracker.pt"} <= {entry.name for entry in run.list()}


def test_unreachable_store_and_missing_shards_are_clear_errors(s3_server, tmp_path, capsys):
    closed = "s3://ctray/none?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match="cannot be reached"):
        Location.of(closed).is_file()
    assert main(["data", "preview", "--shards", s3_server.uri("ctray/empty", create_bucket=True), "--out",
                 str(tmp_path / "p")]) == 2
    assert "no shard manifest" in capsys.readouterr().err


def test_each_rank_reads_its_own_copy_of_an_s3_checkpoint(s3_server, tmp_path):
    """A restore copies the checkpoint's one file into a folder its process owns. (Ray's ``as_directory`` shares one
    download folder per checkpoint among a machine's ranks, and a rank downloading again rewrote the file another
    rank was reading: an empty train_state.pt on a resumed two-worker run.)"""
    from concurrent.futures import ThreadPoolExecutor

    import ray.train

    from ct_ray.models.checkpoints import CheckpointError
    from ct_ray.orchestration.train_worker import copy_checkpoint_file

    payload = np.random.default_rng(0).bytes(3 << 20)
    folder = Location.of(s3_server.uri("ctray/checkpoints/checkpoint_0001", create_bucket=True))
    folder.child("train_state.pt").write_bytes(payload)
    checkpoint = ray.train.Checkpoint(folder.path, filesystem=folder.fs)
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda rank: copy_checkpoint_file(checkpoint, "train_state.pt",
                                                                 tmp_path / f"rank{rank}" / "train_state.pt"),
                               range(4)))
    assert len(set(copies)) == 4 and all(copy.read_bytes() == payload for copy in copies)
    with pytest.raises(CheckpointError, match="the checkpoint has no missing.pt"):
        copy_checkpoint_file(checkpoint, "missing.pt", tmp_path / "missing.pt")
    assert not (tmp_path / "missing.pt").exists()
