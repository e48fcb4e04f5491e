"""Datasets: the ``Sequence`` interface, readers of real formats and of the synthetic benchmark, crop pairs.

Importing this package registers the readers (``lasot``, ``synthetic``, ``got10k``, ``trackingnet``, ``coco``,
``plain``, ``uav123``), so ``load_dataset("KIND:PATH")`` finds them. The Ray side (shard builds, the sample
stream) is ``ct_ray.orchestration.data_pipeline``; everything else here is plain numpy / OpenCV.
"""
from ct_ray.data import readers  # noqa: F401  (registers the readers)
from ct_ray.data.sequences import (
    DATASETS,
    DatasetFormatError,
    DatasetIndex,
    FrameReadError,
    Sequence,
    load_dataset,
    parse_dataset_spec,
    read_frame,
    register_dataset,
)

__all__ = [
    "DATASETS", "DatasetFormatError", "DatasetIndex", "FrameReadError", "Sequence", "load_dataset",
    "parse_dataset_spec", "read_frame", "register_dataset",
]
