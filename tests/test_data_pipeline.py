"""Pair sampling, crop-pair shards and the Ray Data pipeline, on a small LaSOT-format tree the test writes."""
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ct_ray.data.augment import AugmentConfig, decode_pairs
from ct_ray.data.pairs import PairSamplingConfig, jitter_box, make_pair, sample_frame_ids
from ct_ray.data.sequences import Sequence
from ct_ray.data.shards import (
    PAIR_SCHEMA,
    ShardFormatError,
    ShardPlan,
    SourceSpec,
    build_shard,
    encode_jpeg,
    read_manifest,
    shard_files,
)

from helpers import SAMPLING, write_lasot_tree


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


def test_search_jitter_statistics():
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


def test_make_pair_maps_boxes_into_the_crops(tmp_path):
    root = write_lasot_tree(tmp_path / "lasot", sequences=1)
    from ct_ray.data.sequences import load_dataset

    sequence = load_dataset(f"lasot:{root}").sequences[0]
    pair = make_pair(sequence, 2, 5, np.random.default_rng(0), SAMPLING)
    assert pair.template.shape == (32, 32, 3) and pair.search.shape == (64, 64, 3)
    # Template: no jitter, factor 2 around a 24x18 box -> side ceil(sqrt(432) * 2) = 42, box centred.
    side = int(np.ceil(np.sqrt(24 * 18) * 2))
    assert pair.template_box[2] == pytest.approx(24 * 32 / side)
    cx = pair.template_box[0] + pair.template_box[2] / 2
    assert abs(cx - 16) <= 0.5 * 32 / side + 1e-9
    # The red square sits where the search box says.
    x, y, w, h = pair.search_box
    centre = pair.search[int(y + h / 2), int(x + w / 2)]
    assert centre[0] > 150 and centre[2] < 100


def test_decode_drops_and_counts_bad_rows():
    good = encode_jpeg(np.full((32, 32, 3), 100, np.uint8), 95)
    search = encode_jpeg(np.full((64, 64, 3), 100, np.uint8), 95)
    batch = {
        "pair_index": np.arange(6),
        "template_jpeg": np.array([good, b"not a jpeg", good, good, good, good], dtype=object),
        "search_jpeg": np.array([search] * 6, dtype=object),
        "search_box": np.array([[10, 12, 20, 16], [10, 12, 20, 16], [np.nan, 1, 2, 3], [5, 5, 0, 4],
                                [70, 5, 10, 10], [-30, 5, 10, 10]], dtype=np.float32),
    }
    out, dropped = decode_pairs(batch, 32, 64, seed=0, augment=AugmentConfig(enabled=False))
    assert dropped == Counter(corrupt_jpeg=1, invalid_box=2, box_outside_crop=2)
    assert out["pair_index"].tolist() == [0]
    assert out["search_box"][0] == pytest.approx([20 / 64, 20 / 64, 20 / 64, 16 / 64])
    assert out["template"].shape == (1, 32, 32, 3) and out["template"].dtype == np.uint8


def test_flip_mirrors_crops_and_boxes_together():
    template = np.zeros((32, 32, 3), np.uint8)
    template[:, :8] = 200
    search = np.zeros((64, 64, 3), np.uint8)
    search[10:26, 4:24] = 200
    batch = {"pair_index": np.array([7]), "template_jpeg": np.array([encode_jpeg(template, 100)], dtype=object),
             "search_jpeg": np.array([encode_jpeg(search, 100)], dtype=object),
             "search_box": np.array([[4, 10, 20, 16]], dtype=np.float32)}
    flip_only = AugmentConfig(brightness=0.0, grayscale_probability=0.0, flip_probability=1.0)
    out, _ = decode_pairs(batch, 32, 64, seed=0, augment=flip_only)
    assert out["search_box"][0] == pytest.approx([(64 - 4 - 10) / 64, 18 / 64, 20 / 64, 16 / 64])
    assert out["template"][0, 16, -4, 0] > 150 and out["template"][0, 16, 3, 0] < 50
    assert out["search"][0, 18, 64 - 14, 0] > 150
    again, _ = decode_pairs(batch, 32, 64, seed=0, augment=AugmentConfig())
    twice, _ = decode_pairs(batch, 32, 64, seed=0, augment=AugmentConfig())
    assert np.array_equal(again["search"], twice["search"])


@pytest.fixture(scope="module")
def lasot_root(tmp_path_factory):
    return write_lasot_tree(tmp_path_factory.mktemp("lasot"), hidden={"square-2": (3, 4)})


def make_plan(root, pairs=10, epochs=2, per_shard=6):
    return ShardPlan(sources=(SourceSpec(f"lasot:{root}", "train"),), pairs_per_epoch=pairs, epochs=epochs,
                     pairs_per_shard=per_shard, seed=3, sampling=SAMPLING)


def test_shard_round_trip_and_resume(ray_session, lasot_root, tmp_path):
    from ct_ray.data.ray_data import build_shards

    plan = make_plan(lasot_root)
    out = tmp_path / "shards"
    manifest = build_shards(plan, out, progress=False)
    assert manifest["total_rows"] == 20 and len(manifest["shards"]) == 4
    assert [s["rows"] for s in manifest["shards"]] == [6, 6, 6, 2]
    table = pa.concat_tables([pq.read_table(f) for f in shard_files(out)])
    assert table.schema.equals(PAIR_SCHEMA)
    assert sorted(table.column("pair_index").to_pylist()) == list(range(20))
    assert table.column("epoch").to_pylist() == [p // 10 for p in table.column("pair_index").to_pylist()]
    # Each row is the pair a fresh sampler draws for that index (boxes exact to 1e-4 px).
    from ct_ray.data.shards import pair_sampler

    sampler = pair_sampler(plan)
    for row in table.slice(0, 5).to_pylist():
        pair = sampler.sample(np.random.default_rng([plan.seed, row["pair_index"]]))
        assert np.allclose(row["search_box"], pair.search_box, atol=1e-4)
        assert np.allclose(row["template_box"], pair.template_box, atol=1e-4)
        assert (row["sequence"], row["search_frame"]) == (pair.sequence, pair.search_frame)
        assert not (row["sequence"] == "square-2" and row["search_frame"] in (3, 4))
    # Interrupted build: one shard lost, one half-written temp file left; the rerun rebuilds only what is missing.
    checksums = {s["file"]: s["sha256"] for s in manifest["shards"]}
    (out / "shard-00002.parquet").unlink()
    (out / ".shard-00003.parquet.tmp").write_bytes(b"partial")
    stamp = (out / "shard-00000.parquet").stat().st_mtime_ns
    again = build_shards(plan, out, progress=False)
    assert {s["file"]: s["sha256"] for s in again["shards"]} == checksums
    assert (out / "shard-00000.parquet").stat().st_mtime_ns == stamp
    rows = pa.concat_tables([pq.read_table(f) for f in shard_files(out)]).column("pair_index").to_pylist()
    assert sorted(rows) == list(range(20))
    with pytest.raises(ShardFormatError, match="another sampling plan"):
        build_shards(make_plan(lasot_root, pairs=12), out, progress=False)


def test_pipeline_streams_decoded_batches_and_counts_a_corrupt_row(ray_session, lasot_root, tmp_path):
    import ray

    from ct_ray.data.ray_data import DropCounter, pair_dataset, torch_batches

    plan = make_plan(lasot_root, pairs=8, epochs=1, per_shard=4)
    out = tmp_path / "shards"
    build_shard(plan, 0, out)
    good = pq.read_table(out / plan.shard_name(0))
    entry1 = build_shard(plan, 1, out)
    corrupt = pq.read_table(out / plan.shard_name(1)).to_pylist()
    corrupt[2]["search_jpeg"] = b"\xff\xd8 broken"
    pq.write_table(pa.Table.from_pylist(corrupt, schema=PAIR_SCHEMA), out / plan.shard_name(1))
    from ct_ray.data.shards import write_manifest

    write_manifest(plan, out, [{"file": plan.shard_name(0), "rows": 4, "sha256": ""}, entry1], [])
    counter = DropCounter.remote()
    dataset = pair_dataset(out, seed=0, counter=counter)
    import torch

    batches = list(torch_batches(dataset.iterator(), batch_size=3, device=torch.device("cpu")))
    seen = torch.cat([b["pair_index"] for b in batches]).tolist()
    assert len(seen) == 6 and set(seen) <= set(range(8)) - {corrupt[2]["pair_index"]}
    assert batches[0]["search"].shape == (3, 3, 64, 64) and batches[0]["search"].dtype == torch.float32
    assert abs(float(batches[0]["search"].mean())) < 3
    assert ((batches[0]["search_box"] > -1) & (batches[0]["search_box"] < 2)).all()
    assert ray.get(counter.counts.remote()) == {"corrupt_jpeg": 1}
    assert good.num_rows == 4


def test_seeded_file_shuffle_repeats_across_runs_and_changes_every_pass(ray_session, lasot_root, tmp_path):
    """What makes two runs of one config see the same batches: the file order is drawn from the seed and the pass
    number, and with ``preserve_order`` the rows arrive in file order whatever order the decode tasks finish in."""
    from ct_ray.data.ray_data import build_shards, pair_dataset

    out = tmp_path / "shards"
    build_shards(make_plan(lasot_root, pairs=16, epochs=1, per_shard=2), out, progress=False)

    def passes(seed, count=2):
        dataset = pair_dataset(out, seed=seed, decode_batch_size=2)
        dataset.context.execution_options.preserve_order = True
        split = dataset.streaming_split(1, equal=True)[0]
        return [[int(row["pair_index"]) for row in split.iter_rows()] for _ in range(count)]

    first, again, other_seed = passes(0), passes(0), passes(1, count=1)
    assert first == again
    assert sorted(first[0]) == sorted(first[1]) == list(range(16))
    assert first[0] != first[1] and other_seed[0] != first[0]
    files_in_order = [[pair // 2 for pair in order[::2]] for order in first]
    assert all(sorted(files) == list(range(8)) for files in files_in_order)


def test_wrong_schema_names_the_file(lasot_root, tmp_path):
    plan = make_plan(lasot_root, pairs=4, epochs=1, per_shard=4)
    out = tmp_path / "shards"
    entry = build_shard(plan, 0, out)
    from ct_ray.data.shards import write_manifest

    write_manifest(plan, out, [entry], [])
    table = pq.read_table(out / entry["file"]).drop_columns(["search_box"])
    pq.write_table(table, out / entry["file"])
    with pytest.raises(ShardFormatError, match=r"shard-00000\.parquet: wrong schema.*search_box"):
        shard_files(out)
    (out / "_manifest.json").write_text("{broken")
    with pytest.raises(ShardFormatError, match="_manifest.json: malformed JSON"):
        read_manifest(out)
