"""Crop-pair shards: Parquet files of template/search pairs, their schema, their manifest, and one shard's build.

A shard build is a pure function of (sources, sampling config, seed, shard index): pair ``p`` is drawn with a
generator seeded by ``(seed, p)``, so a shard can be rebuilt identically, and an interrupted build resumes by skipping
shards that are already complete (each is written to a temporary file and renamed into place).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence as Seq

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ct_ray.data.pairs import PairRecord, PairSampler, PairSamplingConfig
from ct_ray.data.sequences import DatasetIndex, load_dataset
from ct_ray.fileio import atomic_path, atomic_write_text

MANIFEST = "_manifest.json"
BUILD_RECORD = "_build.json"
SHARD_FORMAT = "ct-ray-pairs/1"

PAIR_SCHEMA = pa.schema([
    ("pair_index", pa.int64()),
    ("epoch", pa.int32()),
    ("template_jpeg", pa.binary()),
    ("search_jpeg", pa.binary()),
    ("template_box", pa.list_(pa.float32(), 4)),
    ("search_box", pa.list_(pa.float32(), 4)),
    ("search_visible", pa.bool_()),
    ("dataset", pa.string()),
    ("sequence", pa.string()),
    ("template_frame", pa.int32()),
    ("search_frame", pa.int32()),
])


class ShardFormatError(ValueError):
    """A shard or manifest that does not match the pair format; the message names the file."""


@dataclass(frozen=True)
class SourceSpec:
    """One dataset to sample from: ``KIND:PATH``, its split and its sampling ratio."""

    spec: str
    split: str | None = None
    ratio: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        """``lasot:/data/LaSOT``, optionally ``@split`` and ``*ratio``: ``got10k:/data/GOT-10k@train*2``."""
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


@lru_cache(maxsize=16)
def _cached_index(spec: str, split: str | None) -> DatasetIndex:
    return load_dataset(spec, split=split)


def pair_sampler(plan: ShardPlan) -> PairSampler:
    datasets = [_cached_index(s.spec, s.split) for s in plan.sources]
    return PairSampler(datasets, [s.ratio for s in plan.sources], plan.sampling)


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def pairs_table(pairs: Iterable[tuple[int, PairRecord]], plan: ShardPlan) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}
    for index, pair in pairs:
        columns["pair_index"].append(index)
        columns["epoch"].append(index // plan.pairs_per_epoch)
        columns["template_jpeg"].append(encode_jpeg(pair.template, plan.jpeg_quality))
        columns["search_jpeg"].append(encode_jpeg(pair.search, plan.jpeg_quality))
        columns["template_box"].append([float(v) for v in pair.template_box])
        columns["search_box"].append([float(v) for v in pair.search_box])
        columns["search_visible"].append(pair.search_visible)
        columns["dataset"].append(pair.dataset)
        columns["sequence"].append(pair.sequence)
        columns["template_frame"].append(pair.template_frame)
        columns["search_frame"].append(pair.search_frame)
    return pa.table(columns, schema=PAIR_SCHEMA)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_shard(plan: ShardPlan, shard: int, out_dir: str | os.PathLike) -> dict:
    """Samples, crops and writes shard ``shard`` atomically; returns its manifest entry."""
    sampler = pair_sampler(plan)
    pairs = ((p, sampler.sample(np.random.default_rng([plan.seed, p]))) for p in plan.shard_range(shard))
    table = pairs_table(pairs, plan)
    path = Path(out_dir) / plan.shard_name(shard)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"file": path.name, "rows": table.num_rows, "sha256": file_sha256(path)}


def existing_shard_entry(plan: ShardPlan, shard: int, out_dir: str | os.PathLike) -> dict | None:
    """The manifest entry of a complete shard already on disk, or None (absent or unreadable: rebuild it)."""
    path = Path(out_dir) / plan.shard_name(shard)
    if not path.is_file():
        return None
    try:
        rows = pq.read_metadata(path).num_rows
    except (pa.ArrowInvalid, OSError):
        return None
    if rows != len(plan.shard_range(shard)):
        return None
    return {"file": path.name, "rows": rows, "sha256": file_sha256(path)}


def prepare_output(plan: ShardPlan, out_dir: str | os.PathLike) -> None:
    """Records the plan in the output folder; a folder holding shards of another plan is refused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = out / BUILD_RECORD
    wanted = plan.to_dict()
    if record.exists():
        existing = json.loads(record.read_text())
        if existing != wanted:
            raise ShardFormatError(f"{record}: this folder holds shards of another sampling plan; use a new --out "
                                   "folder or remove it")
    else:
        atomic_write_text(record, json.dumps(wanted, indent=2, sort_keys=True))


def write_manifest(plan: ShardPlan, out_dir: str | os.PathLike, entries: Seq[dict],
                   source_counts: Seq[dict]) -> dict:
    manifest = {
        **plan.to_dict(),
        "source_counts": list(source_counts),
        "total_rows": int(sum(e["rows"] for e in entries)),
        "shards": sorted(entries, key=lambda e: e["file"]),
    }
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardFormatError(f"{path}: no shard manifest (build shards with `ct-ray data shards`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardFormatError(f"{path}: malformed JSON: {exc}") from exc
    if manifest.get("format") != SHARD_FORMAT or not isinstance(manifest.get("shards"), list):
        raise ShardFormatError(f"{path}: not a {SHARD_FORMAT} manifest")
    return manifest


def shard_files(shard_dir: str | os.PathLike, check_schema: bool = True) -> list[str]:
    """The manifest's shard files, each checked to exist and to carry the pair schema (metadata only)."""
    manifest = read_manifest(shard_dir)
    files = []
    for entry in manifest["shards"]:
        path = Path(shard_dir) / entry["file"]
        if not path.is_file():
            raise ShardFormatError(f"{path}: listed in the manifest but missing")
        if check_schema:
            try:
                schema = pq.read_schema(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ShardFormatError(f"{path}: not a readable Parquet file: {exc}") from exc
            missing = [f.name for f in PAIR_SCHEMA if schema.get_field_index(f.name) < 0
                       or not schema.field(f.name).type.equals(f.type)]
            if missing:
                raise ShardFormatError(f"{path}: wrong schema, columns missing or of another type: {missing}")
        files.append(str(path))
    return files
