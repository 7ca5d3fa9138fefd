"""Datasets by name: ``create_dataset("synthetic", num_images=64)``, ``list_datasets()``."""
from __future__ import annotations

from typing import Any, List

from salbench.datasets.base import Batch, LocalizationDataset, SkipSample, collate, is_skip
from salbench.harness.registry import Registry

DATASETS = Registry("dataset")

for _name, _target in {
    "synthetic": "salbench.datasets.synthetic:SyntheticShapes",
    "imagenet_val": "salbench.datasets.imagenet:ImageNetVal",
    "cub": "salbench.datasets.cub:CUB200",
    "voc2007": "salbench.datasets.voc:VOCDetection",
    "wsol": "salbench.datasets.wsol:WSOLMetadata",
    "coco": "salbench.datasets.coco:COCOInstances",
    "folder": "salbench.datasets.folder:ImageFolderBoxes",
    "samples": "salbench.datasets.samples:SamplePhotos",
    "grid": "salbench.datasets.grid:GridPointingGame",
}.items():
    DATASETS.register_lazy(_name, _target)


def list_datasets(pattern: str = "*") -> List[str]:
    """Registered dataset names matching the glob ``pattern``."""
    return DATASETS.list(pattern)


def create_dataset(name: str, **options: Any) -> LocalizationDataset:
    """Build dataset ``name``; ``None`` options take the dataset's default."""
    return DATASETS.create(name, **options)


__all__ = ["Batch", "LocalizationDataset", "SkipSample", "collate", "is_skip", "DATASETS", "create_dataset", "list_datasets"]
