"""Datasets by name: ``create_dataset("synthetic", num_images=64)``, ``list_datasets()``."""
from __future__ import annotations

from salbench.datasets.base import Batch, LocalizationDataset, SkipSample, collate, is_skip
from salbench.harness.registry import Registry

DATASETS = Registry("dataset", package="salbench.datasets")
register_dataset = DATASETS.register

list_datasets = DATASETS.list
create_dataset = DATASETS.create


__all__ = ["register_dataset", "Batch", "LocalizationDataset", "SkipSample", "collate", "is_skip", "DATASETS", "create_dataset", "list_datasets"]
