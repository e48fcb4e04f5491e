"""Pair sampling, crop-pair shards, sample-time geometry and augmentation, the synthetic stream and the Ray Data
pipeline, on a small LaSOT-format tree the test writes."""
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ct_ray.data.augment import AugmentConfig, augment_pair
from ct_ray.data.batching import EpochBatches
from ct_ray.data.pairs import PairSamplingConfig, make_pair, sample_frame_ids
from ct_ray.data.samples import JitterConfig, encode_jpeg, jitter_box, sample_pairs
from ct_ray.data.sequences import Sequence, load_dataset
from ct_ray.data.shards import (
    PAIR_SCHEMA,
    ShardFormatError,
    ShardPlan,
    SourceSpec,
    build_shard,
    read_manifest,
    shard_files,
    verify_shard,
    write_manifest,
)
from ct_ray.data.sources import ITEM_ROWS, ShardSource, StreamSource, spare_rows
from ct_ray.data.stream import StreamConfig, stream_pairs
from ct_ray.fileio import Location

from helpers import SAMPLING, write_lasot_tree

NO_AUGMENT = AugmentConfig(enabled=False)


def sequence_with(valid_frames, length=30):
    boxes = np.tile([[10.0, 10.0, 20.0, 20.0]], (length, 1))
    visible = np.zeros(length, bool)
    visible[list(valid_frames)] = True
    return Sequence("s", "test", [f"{i}.jpg" for i in range(length)], boxes, visible)


def test_frame_pairs_are_visible_causal_and_within_the_gap():
    sequence = sequence_with(range(0, 30, 2))
    rng = np.random.default_rng(0)
    config = PairSamplingConfig(max_gap=5)
    gaps = []
    for _ in range(500):
        template, search = sample_frame_ids(sequence, rng, config)
        assert sequence.visible[template] and sequence.visible[search]
        assert search > template
        gaps.append(search - template)
    # Gaps stay within max_gap unless the template was the last visible frame: then the gap widens by 5 per try.
    gaps = np.array(gaps)
    assert set(gaps[gaps <= 5]) == {2, 4}
    assert np.mean(gaps > 5) < 0.15 and gaps.max() <= 20
    # Visible frames 20 apart: the gap widens by 5 per failed try until a search frame is found.
    sparse = sequence_with([0, 20])
    assert sample_frame_ids(sparse, rng, config) == (0, 20)
    assert sample_frame_ids(sequence_with([3]), rng, config) is None
    single = Sequence("img", "coco", ["a.jpg"], [[1, 2, 3, 4]], [True])
    assert sample_frame_ids(single, rng, config) == (0, 0)


def test_search_jitter_statistics_and_its_clip():
    rng = np.random.default_rng(1)
    box = np.array([100.0, 50.0, 40.0, 10.0])
    jittered = np.array([jitter_box(box, rng, 3.0, 0.25) for _ in range(20000)])
    log_scale = np.log(jittered[:, 2:] / box[2:])
    assert log_scale.mean(axis=0) == pytest.approx([0, 0], abs=0.01)
    assert log_scale.std(axis=0) == pytest.approx([0.25, 0.25], abs=0.01)
    centre_shift = jittered[:, :2] + jittered[:, 2:] / 2 - (box[:2] + box[2:] / 2)
    limit = np.sqrt(jittered[:, 2] * jittered[:, 3]) * 1.5
    assert (np.abs(centre_shift) <= limit[:, None] + 1e-9).all()
    assert np.abs(centre_shift).max() > 0.9 * limit.max() * 0.5
    assert (jitter_box(box, rng, 0.0, 0.0) == box).all()
    clipped = np.array([jitter_box(box, rng, 3.0, 0.25, max_scale_change=1.65) for _ in range(5000)])
    scale = clipped[:, 2:] / box[2:]
    assert scale.max() == pytest.approx(1.65) and scale.min() == pytest.approx(1 / 1.65)


def test_context_factor_must_hold_the_jitter():
    assert JitterConfig().required_context_factor(4.0) == pytest.approx(7 * 1.65)
    with pytest.raises(ValueError, match=r"context_factor 8 is too small.*center_jitter 3.*= 11\.55"):
        PairSamplingConfig(context_factor=8.0)
    PairSamplingConfig(context_factor=8.0, jitter=JitterConfig(center_jitter=0.5, max_scale_change=1.5))
    assert PairSamplingConfig(search_size=256, search_factor=4.0, context_factor=12.0).context_size == 768


def test_make_pair_maps_boxes_into_the_template_and_context(tmp_path):
    root = write_lasot_tree(tmp_path / "lasot", sequences=1)
    sequence = load_dataset(f"lasot:{root}").sequences[0]
    pair = make_pair(sequence, 2, 5, SAMPLING)
    assert pair.template.shape == (32, 32, 3) and pair.context.shape == (SAMPLING.context_size,) * 2 + (3,)
    # Template: no jitter, factor 2 around a 24x18 box -> side ceil(sqrt(432) * 2) = 42, box centred.
    side = int(np.ceil(np.sqrt(24 * 18) * 2))
    assert pair.template_box[2] == pytest.approx(24 * 32 / side)
    cx = pair.template_box[0] + pair.template_box[2] / 2
    assert abs(cx - 16) <= 0.5 * 32 / side + 1e-9
    # The red square sits where the context box says, in the middle of the context crop.
    x, y, w, h = pair.context_box
    centre = pair.context[int(y + h / 2), int(x + w / 2)]
    assert centre[0] > 150 and centre[2] < 100
    assert abs(x + w / 2 - SAMPLING.context_size / 2) < 2


def _rows(count=4, size=(32, SAMPLING.context_size)):
    template = np.zeros((size[0], size[0], 3), np.uint8)
    template[:, :8] = 200
    context = np.zeros((size[1], size[1], 3), np.uint8)
    c = size[1] // 2
    context[c - 8:c + 8, c - 10:c + 10] = 200
    return {"pair_index": np.arange(count),
            "template": np.array([encode_jpeg(template, 100)] * count, dtype=object),
            "context": np.array([encode_jpeg(context, 100)] * count, dtype=object),
            "context_box": np.tile([[c - 10, c - 8, 20, 16]], (count, 1)).astype(np.float64)}


def test_sample_time_window_is_fresh_every_epoch_and_repeats_for_one():
    rows = _rows(6)
    first, dropped = sample_pairs(rows, seed=0, epoch=1, template_size=32, search_size=64, search_factor=4.0)
    again, _ = sample_pairs(rows, seed=0, epoch=1, template_size=32, search_size=64, search_factor=4.0)
    second, _ = sample_pairs(rows, seed=0, epoch=2, template_size=32, search_size=64, search_factor=4.0)
    assert not dropped and first["search"].shape == (6, 64, 64, 3) and first["template"].shape == (6, 32, 32, 3)
    assert np.array_equal(first["search"], again["search"]) and np.array_equal(first["search_box"], again["search_box"])
    for i in range(6):  # every pair: other search pixels and another box in the next epoch
        assert not np.array_equal(first["search"][i], second["search"][i])
        assert not np.allclose(first["search_box"][i], second["search_box"][i])
    # The same row in one epoch differs between pair indices (each has its own generator).
    assert not np.allclose(first["search_box"][0], first["search_box"][1])
    # Without augmentation the box is the unflipped target: centred within the jitter's reach, inside the crop.
    plain, _ = sample_pairs(rows, seed=0, epoch=1, template_size=32, search_size=64, search_factor=4.0,
                            augment=NO_AUGMENT)
    boxes = plain["search_box"]
    assert ((boxes[:, :2] > 0.1) & (boxes[:, :2] < 0.9)).all() and (boxes[:, 2:] > 0.05).all()
    resized, _ = sample_pairs(rows, seed=0, epoch=1, template_size=48, search_size=96, search_factor=4.0)
    assert resized["template"].shape == (6, 48, 48, 3) and resized["search"].shape == (6, 96, 96, 3)


def test_sampling_drops_and_counts_bad_rows():
    rows = _rows(5)
    rows["template"][1] = b"not a jpeg"
    rows["context_box"][2] = [np.nan, 1, 2, 3]
    rows["context_box"][3] = [5, 5, 0, 4]
    rows["context_box"][4] = [-5000, 5, 10, 10]
    out, dropped = sample_pairs(rows, seed=0, epoch=1, template_size=32, search_size=64, search_factor=4.0,
                                augment=NO_AUGMENT)
    assert dropped == Counter(corrupt_jpeg=1, invalid_box=2, box_outside_crop=1)
    assert out["pair_index"].tolist() == [0] and out["template"].dtype == np.uint8


def test_flips_follow_the_reference_pipeline():
    template = np.zeros((32, 32, 3), np.uint8)
    template[:, :8] = 200
    search = np.zeros((64, 64, 3), np.uint8)
    search[10:26, 4:24] = 200
    box = np.array([4.0, 10.0, 20.0, 16.0])
    joint = AugmentConfig(brightness=0.0, grayscale_probability=0.0, flip_probability=1.0, crop_flip_probability=0.0)
    z, x, b = augment_pair(template, search, box, np.random.default_rng(0), joint)
    assert b == pytest.approx([64 - 4 - 20, 10, 20, 16])
    assert z[16, -4, 0] > 150 and z[16, 3, 0] < 50 and x[18, 64 - 14, 0] > 150
    search_only = AugmentConfig(brightness=0.0, grayscale_probability=0.0, flip_probability=0.0,
                                crop_flip_probability=1.0)
    z, x, b = augment_pair(template, search, box, np.random.default_rng(0), search_only)
    # Both crops flip, each on its own draw: both came out flipped here (p = 1), the box follows the search crop.
    assert b == pytest.approx([40, 10, 20, 16]) and z[16, -4, 0] > 150 and x[18, 64 - 14, 0] > 150
    # Independent per-crop flips: over many draws the template and search flip together only half the time.
    half = AugmentConfig(brightness=0.0, grayscale_probability=0.0, flip_probability=0.0)
    same = 0
    for seed in range(400):
        z, x, _ = augment_pair(template, search, box, np.random.default_rng(seed), half)
        same += int((z[16, -4, 0] > 150) == (x[18, 64 - 14, 0] > 150))
    assert 0.4 < same / 400 < 0.6


def test_epoch_batches_are_exact_pass_over_spare_rows_and_refuse_a_short_epoch():
    def stream(epochs, rows, drop=0):
        for epoch in epochs:
            for start in range(0, rows - drop, 10):
                count = min(10, rows - drop - start)
                yield {"pair_index": np.arange(start, start + count), "epoch": np.full(count, epoch)}

    batches = EpochBatches(stream([1, 2, 3], 40), batch_size=8, steps=4, shuffle_buffer=16, seed=0, rank=0)
    seen = {e: [b["pair_index"] for b in batches.epoch(e)] for e in (1, 2, 3)}
    for epoch, epoch_batches in seen.items():
        assert len(epoch_batches) == 4 and all(len(b) == 8 for b in epoch_batches)
        indices = np.concatenate(epoch_batches)
        assert len(set(indices.tolist())) == 32 and indices.max() < 40
    again = EpochBatches(stream([1, 2, 3], 40), batch_size=8, steps=4, shuffle_buffer=16, seed=0, rank=0)
    list(again.epoch(1))
    assert all(np.array_equal(a, b["pair_index"]) for a, b in zip(seen[2], again.epoch(2)))
    resumed = EpochBatches(stream([2, 3], 40), batch_size=8, steps=4, shuffle_buffer=16, seed=0, rank=0)
    assert all(np.array_equal(a, b["pair_index"]) for a, b in zip(seen[2], resumed.epoch(2)))
    short = EpochBatches(stream([1], 40, drop=20), batch_size=8, steps=4, shuffle_buffer=8, seed=0, rank=0)
    with pytest.raises(RuntimeError, match="ran short after 2 of 4 steps"):
        list(short.epoch(1))


def test_shard_source_plans_epochs_as_a_pure_function():
    files = tuple((f"/shards/shard-{i:05d}.parquet", 100) for i in range(5))
    source = ShardSource(files, SAMPLING, seed=3)

    def rows_of(items):
        return [(i["file"], r) for i in items for r in range(i["start"], i["stop"])]

    epoch1 = [rows_of(source.items(1, rank, 2, 96)) for rank in (0, 1)]
    assert all(len(r) == 96 + spare_rows(96) for r in epoch1)
    assert not set(epoch1[0][:96]) & set(epoch1[1][:96])  # the ranks' own rows do not overlap
    assert source.items(3, 1, 2, 96) == ShardSource(files, SAMPLING, seed=3).items(3, 1, 2, 96)
    assert all(i["stop"] - i["start"] <= ITEM_ROWS and (i["stop"] - 1) // ITEM_ROWS == i["start"] // ITEM_ROWS
               for i in source.items(2, 0, 2, 96))
    # Passes: 500 rows, 192 per epoch; epoch 3 wraps into the second pass, which takes the files in another order.
    orders = [[f for f, _ in dict.fromkeys((i["file"], 0) for i in source.items(e, 0, 1, 250))] for e in (1, 3)]
    assert orders[0] != orders[1]
    ordered = ShardSource(files, SAMPLING, seed=3, shuffle_files=False)
    assert [i["file"] for i in ordered.items(1, 0, 1, 100)][0] == files[0][0]


def test_stream_draws_new_visible_pairs_every_epoch():
    config = StreamConfig(preset="easy", height=96, width=128, frames=20, frames_per_sequence=4,
                          pairs_per_sequence=6)
    sampling = PairSamplingConfig(template_size=32, search_size=64)
    rows = stream_pairs(config, sampling, seed=0, epoch=1, rank=0, chunk=0, first_index=12)
    again = stream_pairs(config, sampling, seed=0, epoch=1, rank=0, chunk=0, first_index=12)
    other = stream_pairs(config, sampling, seed=0, epoch=2, rank=0, chunk=0, first_index=12)
    assert rows["pair_index"].tolist() == list(range(12, 18)) and rows["template"].shape == (6, 32, 32, 3)
    assert rows["context"].shape == (6, sampling.context_size, sampling.context_size, 3)
    assert np.array_equal(rows["context"], again["context"]) and not np.array_equal(rows["context"], other["context"])
    # Each context box is the target, centred in its context crop.
    centres = rows["context_box"][:, :2] + rows["context_box"][:, 2:] / 2
    assert np.abs(centres - sampling.context_size / 2).max() < 2
    source = StreamSource(config, sampling, seed=0)
    items = source.items(1, 0, 1, 32)
    assert len(items) == -(-(32 + spare_rows(32)) // 6) and items[1]["first_index"] == 6
    samples, dropped = sample_pairs(source.load(items[0]), 0, 1, 32, 64, 4.0)
    assert len(samples["pair_index"]) == 6 and not dropped


def test_stream_sequences_written_whole_or_cut_to_the_test_length(tmp_path):
    """The scenes a run trained on, written for scoring: whole, or their first frames (the same scene and truth)."""
    from ct_ray.data.stream import write_stream_sequences

    config = StreamConfig(preset="easy", height=96, width=128, frames=12, frames_per_sequence=4,
                          pairs_per_sequence=6)
    whole = write_stream_sequences(tmp_path / "whole", config, seed=0, count=2)
    cut = write_stream_sequences(tmp_path / "cut", config, seed=0, count=2, frames=5)
    for root, frames in ((whole, 12), (cut, 5)):
        names = (root / "testing_set.txt").read_text().split()
        assert len(names) == 2
        for name in names:
            folder = root / name.rsplit("-", 1)[0] / name
            assert len(list((folder / "img").glob("*.jpg"))) == frames
            assert len((folder / "groundtruth.txt").read_text().splitlines()) == frames
            assert len((folder / "full_occlusion.txt").read_text().strip().split(",")) == frames
    for name in (whole / "testing_set.txt").read_text().split():
        rel = Path(name.rsplit("-", 1)[0]) / name
        assert (cut / rel / "groundtruth.txt").read_text().splitlines() == \
            (whole / rel / "groundtruth.txt").read_text().splitlines()[:5]
        assert (cut / rel / "img" / "00000003.jpg").read_bytes() == (whole / rel / "img" / "00000003.jpg").read_bytes()


@pytest.fixture(scope="module")
def lasot_root(tmp_path_factory):
    return write_lasot_tree(tmp_path_factory.mktemp("lasot"), hidden={"square-2": (3, 4)})


def make_plan(root, pairs=10, epochs=2, per_shard=6, split="train"):
    return ShardPlan(sources=(SourceSpec(f"lasot:{root}", split),), pairs_per_epoch=pairs, epochs=epochs,
                     pairs_per_shard=per_shard, seed=3, sampling=SAMPLING)


def test_shard_round_trip_resume_and_bad_files(ray_session, lasot_root, tmp_path):
    from ct_ray.data.shards import pair_sampler
    from ct_ray.orchestration.data_pipeline import build_shards

    plan = make_plan(lasot_root)
    out = tmp_path / "shards"
    # A failed build (an unknown split) leaves nothing that refuses the corrected command.
    with pytest.raises(ValueError, match="split"):
        build_shards(make_plan(lasot_root, split="nosuchsplit"), out, progress=False)
    manifest = build_shards(plan, out, progress=False)
    assert manifest["total_rows"] == 20 and len(manifest["shards"]) == 4
    assert [s["rows"] for s in manifest["shards"]] == [6, 6, 6, 2]
    assert manifest["sampling"]["context_size"] == SAMPLING.context_size
    table = pa.concat_tables([pq.read_table(f.path) for f, _ in shard_files(out)])
    assert table.schema.equals(PAIR_SCHEMA)
    assert sorted(table.column("pair_index").to_pylist()) == list(range(20))
    # Each row is the pair a fresh sampler draws for that index (boxes exact to 1e-4 px).
    sampler = pair_sampler(plan, [load_dataset(f"lasot:{lasot_root}", "train")])
    for row in table.slice(0, 5).to_pylist():
        pair = sampler.sample(np.random.default_rng([plan.seed, row["pair_index"]]))
        assert np.allclose(row["context_box"], pair.context_box, atol=1e-4)
        assert np.allclose(row["template_box"], pair.template_box, atol=1e-4)
        assert (row["sequence"], row["search_frame"]) == (pair.sequence, pair.search_frame)
        assert not (row["sequence"] == "square-2" and row["search_frame"] in (3, 4))
    # Interrupted build: one shard lost, one replaced by a Parquet file of another schema, a temp file left; the
    # rerun rebuilds exactly those, and the rest keep their files.
    checksums = {s["file"]: s["sha256"] for s in manifest["shards"]}
    (out / "shard-00002.parquet").unlink()
    pq.write_table(pa.table({"x": list(range(6))}), out / "shard-00001.parquet")
    (out / ".shard-00003.parquet.tmp").write_bytes(b"partial")
    stamp = (out / "shard-00000.parquet").stat().st_mtime_ns
    again = build_shards(plan, out, progress=False)
    assert {s["file"]: s["sha256"] for s in again["shards"]} == checksums
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == stamp
    with pytest.raises(ShardFormatError, match="another sampling plan"):
        build_shards(make_plan(lasot_root, pairs=12), out, progress=False)
    # A file changed after the build: size and checksum no longer match the manifest.
    data = (out / "shard-00003.parquet").read_bytes()
    (out / "shard-00003.parquet").write_bytes(data + b"x")
    with pytest.raises(ShardFormatError, match=r"shard-00003\.parquet: \d+ bytes, the manifest says"):
        shard_files(out)


def test_worker_pipeline_is_fresh_per_epoch_repeatable_and_counts_a_corrupt_row(ray_session, lasot_root, tmp_path):
    import ray

    from ct_ray.orchestration.data_pipeline import DropCounter, SampleSettings, SampleStream

    plan = make_plan(lasot_root, pairs=8, epochs=1, per_shard=4)
    out = tmp_path / "shards"
    entries = [build_shard(plan, shard, out, [load_dataset(f"lasot:{lasot_root}", "train")])[0] for shard in (0, 1)]
    corrupt = pq.read_table(out / plan.shard_name(1)).to_pylist()
    corrupt[2]["context_jpeg"] = b"\xff\xd8 broken"
    pq.write_table(pa.Table.from_pylist(corrupt, schema=PAIR_SCHEMA), out / plan.shard_name(1))
    entries[1] = {**entries[1], "bytes": (out / plan.shard_name(1)).stat().st_size}
    write_manifest(plan, out, entries, [])
    source = ShardSource(tuple((loc.uri, rows) for loc, rows in shard_files(out)), SAMPLING, seed=0,
                         shuffle_files=False)
    settings = SampleSettings(seed=0, template_size=32, search_size=64, search_factor=4.0, jitter=JitterConfig(),
                              augment=AugmentConfig())
    counter = DropCounter.remote()

    def epochs(first, last):
        stream = SampleStream(source, settings, first, last, rank=0, world=1, rows=8, counter=counter)
        rows = [{key: block[key][i] for key in block} for block in stream for i in range(len(block["pair_index"]))]
        return {e: [r for r in rows if int(r["epoch"]) == e] for e in range(first, last + 1)}

    run, rerun, resumed = epochs(1, 2), epochs(1, 2), epochs(2, 2)
    for epoch in (1, 2):
        assert [r["pair_index"] for r in run[epoch]] == [r["pair_index"] for r in rerun[epoch]]
        assert all(np.array_equal(a["search"], b["search"]) for a, b in zip(run[epoch], rerun[epoch]))
    assert all(np.array_equal(a["search"], b["search"]) for a, b in zip(run[2], resumed[2]))
    by_index = [{r["pair_index"]: r for r in run[e]} for e in (1, 2)]
    shared = set(by_index[0]) & set(by_index[1])
    assert len(shared) >= 6 and all(not np.array_equal(by_index[0][i]["search"], by_index[1][i]["search"])
                                   for i in shared)
    assert corrupt[2]["pair_index"] not in by_index[0]
    assert ray.get(counter.counts.remote()).get("corrupt_jpeg", 0) >= 1
    sample = run[1][0]
    assert sample["search"].shape == (64, 64, 3) and sample["template"].shape == (32, 32, 3)


def test_worker_stream_draws_ahead_across_epochs_in_the_same_order(ray_session, tmp_path):
    """The background thread keeps drawing while the worker reads nothing (the end of an epoch), up to its row
    budget; the rows and their order are those of one task at a time with nothing drawn ahead; a failed item is
    raised at the worker's next read."""
    from ct_ray.orchestration.data_pipeline import SampleSettings, SampleStream

    config = StreamConfig(preset="easy", height=96, width=128, frames=12, frames_per_sequence=4, pairs_per_sequence=4)
    source = StreamSource(config, PairSamplingConfig(template_size=32, search_size=64), seed=0)
    settings = SampleSettings(seed=0, template_size=32, search_size=64, search_factor=4.0, jitter=JitterConfig(),
                              augment=AugmentConfig())

    def blocks(stream):
        return [(int(b["epoch"][0]), b["pair_index"].tolist(), b["search"]) for b in stream]

    plain = blocks(SampleStream(source, settings, 1, 2, rank=0, world=1, rows=8, tasks=1, ahead_rows=0))
    ahead = SampleStream(source, settings, 1, 2, rank=0, world=1, rows=8, tasks=3, ahead_rows=12)
    deadline = time.monotonic() + 60
    while ahead.ready_rows() <= 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert 8 < ahead.ready_rows() <= 12  # items of up to 4 rows drawn before the first read, within the budget
    first = next(ahead)
    drawn = [(int(first["epoch"][0]), first["pair_index"].tolist(), first["search"])] + blocks(ahead)
    assert all(sum(len(b[1]) for b in plain if b[0] == epoch) >= 8 for epoch in (1, 2))
    assert [b[:2] for b in drawn] == [b[:2] for b in plain] and [b[0] for b in plain] == sorted(b[0] for b in plain)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(drawn, plain))

    missing = ShardSource(((str(tmp_path / "gone.parquet"), 8),), SAMPLING, seed=0, shuffle_files=False)
    broken = SampleStream(missing, settings, 1, 1, rank=0, world=1, rows=4, tasks=1, ahead_rows=4)
    with pytest.raises(Exception, match="gone.parquet"):
        next(broken)
    broken.close()


def test_wrong_schema_old_format_and_broken_manifest_name_the_file(lasot_root, tmp_path):
    plan = make_plan(lasot_root, pairs=4, epochs=1, per_shard=4)
    out = tmp_path / "shards"
    entry, _ = build_shard(plan, 0, out, [load_dataset(f"lasot:{lasot_root}", "train")])
    write_manifest(plan, out, [entry], [])
    table = pq.read_table(out / entry["file"]).drop_columns(["context_box"])
    pq.write_table(table, out / entry["file"])
    with pytest.raises(ShardFormatError, match=r"shard-00000\.parquet: wrong schema.*context_box"):
        verify_shard(Location.of(out).child(entry["file"]))
    manifest = read_manifest(out)
    (out / "_manifest.json").write_text(json.dumps({**manifest, "format": "ct-ray-pairs/1"}))
    with pytest.raises(ShardFormatError, match=r"old format ct-ray-pairs/1.*rebuild them"):
        read_manifest(out)
    (out / "_manifest.json").write_text("{broken")
    with pytest.raises(ShardFormatError, match="_manifest.json: malformed JSON"):
        read_manifest(out)
