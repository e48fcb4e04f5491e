"""Crop-pair shards: Parquet files of stored pairs, their schema, their manifest, and one shard's build and checks.

A shard set lives in a folder or under a store URI (``s3://bucket/prefix``; ``ct_ray.fileio.Location``). A row holds
what sample-time sampling needs (``ct_ray.data.samples``): the template crop and the search frame's context crop as
JPEG, and the boxes in their pixels; the search window, the crop and the augmentation are drawn when a row is read,
so every pass over a shard gives new samples.

A shard build is a pure function of (sources, sampling config, seed, shard index): pair ``p`` is drawn with a
generator seeded by ``(seed, p)``, so a shard can be rebuilt identically, and an interrupted build resumes by keeping
the shards that are already complete and of the right schema (each is uploaded whole, or written to a temporary file
and renamed into place). ``_manifest.json`` records the plan, the crop settings and every shard's rows, size and
SHA-256, which are checked on resume and (size, rows, schema) when a run starts.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence as Seq

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ct_ray.data.pairs import PairRecord, PairSampler, PairSamplingConfig
from ct_ray.data.samples import encode_jpeg
from ct_ray.data.sequences import DatasetIndex
from ct_ray.errors import UserError
from ct_ray.fileio import Location, StorageError, file_sha256

MANIFEST = "_manifest.json"
BUILD_RECORD = "_build.json"
SHARD_FORMAT = "ct-ray-pairs/2"
OLD_FORMATS = {"ct-ray-pairs/1": "frozen search crops"}

PAIR_SCHEMA = pa.schema([
    ("pair_index", pa.int64()),
    ("template_jpeg", pa.binary()),
    ("context_jpeg", pa.binary()),
    ("template_box", pa.list_(pa.float32(), 4)),
    ("context_box", pa.list_(pa.float32(), 4)),
    ("search_visible", pa.bool_()),
    ("dataset", pa.string()),
    ("sequence", pa.string()),
    ("template_frame", pa.int32()),
    ("search_frame", pa.int32()),
])
READ_COLUMNS = ["pair_index", "template_jpeg", "context_jpeg", "context_box"]
ROW_GROUP_ROWS = 64  # a work item reads one row group (``ct_ray.data.sources.ITEM_ROWS``)


class ShardFormatError(UserError, ValueError):
    """A shard or manifest that does not match the pair format; the message names the file."""


@dataclass(frozen=True)
class SourceSpec:
    """One dataset to sample from: ``KIND:PATH``, its split and its sampling ratio."""

    spec: str
    split: str | None = None
    ratio: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        """``lasot:/data/LaSOT``, optionally ``@split`` (``@all``: every sequence) and ``*ratio``:
        ``got10k:/data/GOT-10k@train*2``."""
        body, ratio = text, 1.0
        if "*" in body:
            body, _, ratio_text = body.rpartition("*")
            try:
                ratio = float(ratio_text)
            except ValueError:
                raise ValueError(f"source {text!r}: ratio {ratio_text!r} is not a number") from None
        split = None
        if "@" in body:
            body, _, split = body.rpartition("@")
        if split == "all":  # every sequence, as --split all means for eval and score
            split = None
        return cls(body, split or None, ratio)


@dataclass(frozen=True)
class ShardPlan:
    """Everything that determines a shard set."""

    sources: tuple[SourceSpec, ...]
    pairs_per_epoch: int
    epochs: int
    pairs_per_shard: int
    seed: int
    sampling: PairSamplingConfig
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("shards: at least one --source is needed")
        for name in ("pairs_per_epoch", "epochs", "pairs_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"shards: {name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"shards: jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def total_pairs(self) -> int:
        return self.pairs_per_epoch * self.epochs

    @property
    def num_shards(self) -> int:
        return -(-self.total_pairs // self.pairs_per_shard)

    def shard_range(self, shard: int) -> range:
        start = shard * self.pairs_per_shard
        return range(start, min(start + self.pairs_per_shard, self.total_pairs))

    @staticmethod
    def shard_name(shard: int) -> str:
        return f"shard-{shard:05d}.parquet"

    def to_dict(self) -> dict:
        return {
            "format": SHARD_FORMAT,
            "sources": [{"spec": s.spec, "split": s.split, "ratio": s.ratio} for s in self.sources],
            "pairs_per_epoch": self.pairs_per_epoch,
            "epochs": self.epochs,
            "pairs_per_shard": self.pairs_per_shard,
            "seed": self.seed,
            "sampling": self.sampling.to_dict(),
            "jpeg_quality": self.jpeg_quality,
        }


def index_sources(plan: ShardPlan) -> tuple[list[DatasetIndex], list[dict]]:
    """Every source's dataset index (read once per build, then shared with the build tasks) and its counts; a source
    without a usable sequence is an error naming it."""
    from ct_ray.data.sequences import load_dataset
    from ct_ray.errors import InputError

    indices, counts = [], []
    for source in plan.sources:
        index = load_dataset(source.spec, split=source.split)
        if not index.sequences:
            raise InputError(f"source {source.spec}: no usable sequence ({len(index.skipped)} skipped)")
        indices.append(index)
        counts.append({"spec": source.spec, "split": source.split, "sequences": len(index.sequences),
                       "skipped": len(index.skipped)})
    return indices, counts


def pair_sampler(plan: ShardPlan, indices: Seq[DatasetIndex]) -> PairSampler:
    return PairSampler(indices, [s.ratio for s in plan.sources], plan.sampling)


def pairs_table(pairs: Iterable[tuple[int, PairRecord]], quality: int) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}
    for index, pair in pairs:
        columns["pair_index"].append(index)
        columns["template_jpeg"].append(encode_jpeg(pair.template, quality))
        columns["context_jpeg"].append(encode_jpeg(pair.context, quality))
        columns["template_box"].append([float(v) for v in pair.template_box])
        columns["context_box"].append([float(v) for v in pair.context_box])
        columns["search_visible"].append(pair.search_visible)
        columns["dataset"].append(pair.dataset)
        columns["sequence"].append(pair.sequence)
        columns["template_frame"].append(pair.template_frame)
        columns["search_frame"].append(pair.search_frame)
    return pa.table(columns, schema=PAIR_SCHEMA)


def _entry(name: str, rows: int, local: Path) -> dict:
    return {"file": name, "rows": rows, "bytes": local.stat().st_size, "sha256": file_sha256(local)}


def build_shard(plan: ShardPlan, shard: int, out: str | os.PathLike | Location, indices: Seq[DatasetIndex]
                ) -> tuple[dict, dict]:
    """Samples, crops and writes shard ``shard`` (atomically, to a folder or a store); returns its manifest entry
    and the frames skipped because their box lies outside the image (``{"sequence:frame": count}``)."""
    sampler = pair_sampler(plan, indices)
    pairs = ((p, sampler.sample(np.random.default_rng([plan.seed, p]))) for p in plan.shard_range(shard))
    table = pairs_table(pairs, plan.jpeg_quality)
    name = plan.shard_name(shard)
    with tempfile.TemporaryDirectory(prefix="ct-ray-shard-") as folder:
        local = Path(folder) / name
        pq.write_table(table, local, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        Location.of(out).child(name).upload(local)
        entry = _entry(name, table.num_rows, local)
    return entry, {f"{seq}:{frame}": count for (seq, frame), count in sampler.skipped.items()}


def _schema_problem(schema: pa.Schema) -> list[str]:
    return [f.name for f in PAIR_SCHEMA if schema.get_field_index(f.name) < 0
            or not schema.field(f.name).type.equals(f.type)]


def verify_shard(location: Location, rows: int | None = None, sha256: str | None = None,
                 size: int | None = None) -> dict:
    """A shard file's manifest entry after checking it: readable Parquet of the pair schema, with ``rows`` rows
    (and ``size`` bytes, and the SHA-256 ``sha256``, when given). Raises ``ShardFormatError`` naming the file."""
    if not location.is_file():
        raise ShardFormatError(f"{location}: shard file missing")
    actual_size = location.size()
    if size is not None and actual_size != size:
        raise ShardFormatError(f"{location}: {actual_size} bytes, the manifest says {size}")
    try:
        with location.open_input() as handle:
            metadata = pq.read_metadata(handle)
            schema = metadata.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardFormatError(f"{location}: not a readable Parquet file: {exc}") from None
    missing = _schema_problem(schema)
    if missing:
        raise ShardFormatError(f"{location}: wrong schema, columns missing or of another type: {missing}")
    if rows is not None and metadata.num_rows != rows:
        raise ShardFormatError(f"{location}: {metadata.num_rows} rows, expected {rows}")
    entry = {"file": location.name, "rows": int(metadata.num_rows), "bytes": actual_size}
    if sha256 is not None:
        with tempfile.TemporaryDirectory(prefix="ct-ray-verify-") as folder:
            local = location.download(Path(folder) / location.name) if not location.is_local else Path(location.path)
            digest = file_sha256(local)
        if digest != sha256:
            raise ShardFormatError(f"{location}: checksum {digest[:12]}... does not match the manifest's "
                                   f"{sha256[:12]}...")
        entry["sha256"] = digest
    return entry


def existing_shard_entry(plan: ShardPlan, shard: int, out: Location, recorded: dict | None) -> dict | None:
    """The manifest entry of a complete, well-formed shard already in ``out``, or None (absent, partial, of
    another schema or checksum: rebuild it). With a previous manifest entry its checksum is verified."""
    location = out.child(plan.shard_name(shard))
    if not location.is_file():
        return None
    try:
        entry = verify_shard(location, rows=len(plan.shard_range(shard)),
                             sha256=(recorded or {}).get("sha256"))
    except ShardFormatError:
        return None
    if "sha256" not in entry:
        with tempfile.TemporaryDirectory(prefix="ct-ray-verify-") as folder:
            local = location.download(Path(folder) / location.name) if not location.is_local else Path(location.path)
            entry["sha256"] = file_sha256(local)
    return entry


def prepare_output(plan: ShardPlan, out: str | os.PathLike | Location) -> Location:
    """Records the plan in the output folder. A folder holding shards of another plan is refused; a record left by
    a build that wrote no shard (a failed start) is replaced."""
    out = Location.of(out).mkdirs()
    record = out.child(BUILD_RECORD)
    wanted = plan.to_dict()
    if record.is_file():
        try:
            existing = json.loads(record.read_text())
        except json.JSONDecodeError:
            existing = {}
        plan_part = {k: v for k, v in existing.items() if k not in ("built", "skipped_frames")}
        has_shards = any(entry.name.endswith(".parquet") for entry in out.list())
        if plan_part != wanted and has_shards:
            raise ShardFormatError(f"{record}: this folder holds shards of another sampling plan; use a new --out "
                                   "folder or remove it")
        if plan_part == wanted:
            return out  # the same build resumes: keep what it recorded
    record.write_text(json.dumps(wanted, indent=2, sort_keys=True))
    return out


def write_manifest(plan: ShardPlan, out: str | os.PathLike | Location, entries: Seq[dict],
                   source_counts: Seq[dict], skipped: dict | None = None) -> dict:
    manifest = {
        **plan.to_dict(),
        "source_counts": list(source_counts),
        "total_rows": int(sum(e["rows"] for e in entries)),
        "skipped_frames": dict(sorted((skipped or {}).items())),
        "shards": sorted(entries, key=lambda e: e["file"]),
    }
    Location.of(out).child(MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(shards: str | os.PathLike | Location) -> dict:
    """The manifest of a shard set; an old format is refused with how to rebuild it."""
    path = Location.of(shards).child(MANIFEST)
    try:
        exists = path.is_file()
    except StorageError as exc:
        raise ShardFormatError(f"{path}: the shard store cannot be reached: {exc}") from None
    if not exists:
        raise ShardFormatError(f"{path}: no shard manifest (build shards with `ct-ray data shards`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardFormatError(f"{path}: malformed JSON: {exc}") from exc
    if manifest.get("format") in OLD_FORMATS:
        raise ShardFormatError(f"{path}: shards of the old format {manifest['format']} "
                               f"({OLD_FORMATS[manifest['format']]}): rebuild them into a new folder with "
                               "`ct-ray data shards` (same --source options; the search window is now drawn when a "
                               "row is read)")
    if manifest.get("format") != SHARD_FORMAT or not isinstance(manifest.get("shards"), list):
        raise ShardFormatError(f"{path}: not a {SHARD_FORMAT} manifest")
    return manifest


def shard_sampling(manifest: dict) -> PairSamplingConfig:
    return PairSamplingConfig.from_dict(manifest["sampling"])


def shard_files(shards: str | os.PathLike | Location, verify: bool = True) -> list[tuple[Location, int]]:
    """The manifest's shard files and their rows, each checked (size, rows, schema; no checksum) when ``verify``."""
    root = Location.of(shards)
    manifest = read_manifest(root)
    files = []
    for entry in manifest["shards"]:
        location = root.child(entry["file"])
        if verify:
            verify_shard(location, rows=entry["rows"], size=entry.get("bytes"))
        files.append((location, int(entry["rows"])))
    return files


def read_rows(location: Location, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of a shard file (the columns sampling needs), as numpy columns; only the row groups that
    hold them are read."""
    try:
        with location.open_input() as handle:
            parquet = pq.ParquetFile(handle)
            groups, first, offset = [], None, 0
            for index in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(index).num_rows
                if offset + rows > start and offset < stop:
                    groups.append(index)
                    first = offset if first is None else first
                offset += rows
            table = parquet.read_row_groups(groups, columns=READ_COLUMNS).slice(start - (first or 0), stop - start)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardFormatError(f"{location}: cannot read rows {start}:{stop}: {exc}") from None
    return {"pair_index": table.column("pair_index").to_numpy(),
            "template": np.array(table.column("template_jpeg").to_pylist(), dtype=object),
            "context": np.array(table.column("context_jpeg").to_pylist(), dtype=object),
            "context_box": np.array(table.column("context_box").to_pylist(), dtype=np.float64).reshape(-1, 4)}


def merge_skipped(counts: Iterable[dict]) -> dict:
    total: Counter = Counter()
    for count in counts:
        total.update(count)
    return dict(total)
