"""Datasets by name: ``create_dataset("synthetic", num_images=64)``, ``list_datasets()``."""
from __future__ import annotations

from salbench.datasets.base import Batch, LocalizationDataset, SkipSample, collate, is_skip
from salbench.harness.registry import Registry



def _check_dataset(name: str, entry: object) -> None:
    import inspect

    if not callable(entry) or (inspect.isclass(entry) and not issubclass(entry, LocalizationDataset)):
        raise TypeError(f"register_dataset({name!r}): {entry!r} is not a LocalizationDataset subclass (or a callable "
                        "returning one)")


DATASETS = Registry("dataset", package="salbench.datasets", check=_check_dataset)
register_dataset = DATASETS.register

list_datasets = DATASETS.list
create_dataset = DATASETS.create


__all__ = ["register_dataset", "Batch", "LocalizationDataset", "SkipSample", "collate", "is_skip", "DATASETS", "create_dataset", "list_datasets"]
