"""Datasets by name: ``create_dataset("synthetic", num_images=64)``, ``list_datasets()``."""
from __future__ import annotations

from typing import Any, List

from salbench.datasets.base import Batch, LocalizationDataset, collate
from salbench.registry import Registry

DATASETS = Registry("dataset")

for _name, _target in {
    "synthetic": "salbench.datasets.synthetic:SyntheticShapes",
}.items():
    DATASETS.register_lazy(_name, _target)


def list_datasets(pattern: str = "*") -> List[str]:
    """Registered dataset names matching the glob ``pattern``."""
    return DATASETS.list(pattern)


def create_dataset(name: str, **options: Any) -> LocalizationDataset:
    """Build dataset ``name``; ``None`` options take the dataset's default."""
    return DATASETS.create(name, **options)


__all__ = ["Batch", "LocalizationDataset", "collate", "DATASETS", "create_dataset", "list_datasets"]
