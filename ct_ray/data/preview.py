"""``ct-ray data preview``: the samples a training worker receives, as a picture and as arrays (plain Python).

The preview runs the training pipeline's own steps in this process: the work items of rank 0 for the epoch
(``ct_ray.data.sources``), their rows, ``sample_pairs`` (window, crop, augmentation) and the epoch's shuffle buffer
(``EpochBatches``), so ``PREFIX.npz`` holds exactly the first ``count`` samples rank 0 trains on in that epoch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ct_ray.data.augment import AugmentConfig
from ct_ray.data.batching import EpochBatches
from ct_ray.data.samples import JitterConfig, sample_pairs
from ct_ray.data.shards import read_manifest, shard_files, shard_sampling
from ct_ray.data.sources import ShardSource
from ct_ray.errors import InputError
from ct_ray.fileio import atomic_path


def _samples(source, epoch: int, batch_size: int, steps: int, shuffle_buffer: int, seed: int, template_size: int,
             search_size: int, search_factor: float, jitter: JitterConfig, augment: AugmentConfig
             ) -> dict[str, np.ndarray]:
    rows = steps * batch_size

    def stream():
        for item in source.items(epoch, 0, 1, rows):
            out, _ = sample_pairs(source.load(item), seed, epoch, template_size, search_size, search_factor, jitter,
                                  augment)
            out["epoch"] = np.full(len(out["pair_index"]), epoch, dtype=np.int64)
            yield out

    batches = list(EpochBatches(stream(), batch_size, steps, shuffle_buffer, seed, 0).epoch(epoch))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0] if k != "epoch"}


def _grid(samples: dict[str, np.ndarray], count: int) -> np.ndarray:
    template, search = samples["template"][:count], samples["search"][:count]
    side = search.shape[1]
    tiles = []
    for z, x, box in zip(template, search, samples["search_box"][:count]):
        canvas = np.zeros((side, side * 2, 3), np.uint8)
        canvas[:, :side] = cv2.resize(np.ascontiguousarray(z), (side, side), interpolation=cv2.INTER_NEAREST)
        shown = np.ascontiguousarray(x).copy()
        cx, cy, w, h = (float(v) * side for v in box)
        cv2.rectangle(shown, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), (0, 255, 0), 1)
        canvas[:, side:] = shown
        cv2.line(canvas, (side, 0), (side, side - 1), (255, 255, 255), 1)
        tiles.append(canvas)
    columns = max(1, min(4, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * (side + 4), columns * (2 * side + 4), 3), 40, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (side + 4):r * (side + 4) + side, c * (2 * side + 4):c * (2 * side + 4) + 2 * side] = tile
    return grid


def preview_samples(out: str | Path, epoch: int = 1, count: int = 16, shards: str | None = None,
                    config: str | None = None, seed: int | None = None, overrides: Sequence[str] = ()) -> dict:
    """Writes ``out.png`` (template | search with its box, per sample) and ``out.npz`` (``template``, ``search``,
    ``search_box``, ``pair_index``) for the first ``count`` samples of rank 0 in ``epoch``."""
    if epoch < 1 or count < 1:
        raise InputError(f"--epoch must be >= 1 and --count >= 1, got {epoch} and {count}")
    if config is not None:
        from ct_ray.config import load_config
        from ct_ray.training.experiment import ExperimentConfig
        from ct_ray.training.inputs import epoch_size, model_crops, steps_per_epoch, training_source

        experiment = load_config(ExperimentConfig, config, overrides).absolute()
        if seed is not None:
            from dataclasses import replace

            experiment = replace(experiment, run=replace(experiment.run, seed=seed))
        model = model_crops(experiment)
        source = training_source(experiment, model)
        batch = experiment.data.batch_size
        steps = max(1, min(steps_per_epoch(experiment, epoch_size(experiment)), math.ceil(count / batch)))
        samples = _samples(source, epoch, batch, steps, experiment.data.shuffle_buffer, experiment.run.seed,
                           model.template_size, model.search_size, model.search_factor, experiment.data.jitter,
                           experiment.data.augment)
        described = f"{experiment.data.source.value} source of {config}"
    else:
        manifest = read_manifest(shards)
        sampling = shard_sampling(manifest)
        run_seed = 0 if seed is None else seed
        files = tuple((location.uri, rows) for location, rows in shard_files(shards))
        source = ShardSource(files, sampling, run_seed)
        samples = _samples(source, epoch, count, 1, 256, run_seed, sampling.template_size, sampling.search_size,
                           sampling.search_factor, sampling.jitter, AugmentConfig())
        described = f"shards {shards}"
    count = min(count, len(samples["pair_index"]))
    out = Path(out)
    png, npz = out.with_name(out.name + ".png"), out.with_name(out.name + ".npz")
    with atomic_path(png) as tmp:
        ok, data = cv2.imencode(".png", cv2.cvtColor(_grid(samples, count), cv2.COLOR_RGB2BGR))
        tmp.write_bytes(data.tobytes())
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{k: v[:count] for k, v in samples.items()})
    return {"png": str(png), "npz": str(npz), "count": count, "source": described}
