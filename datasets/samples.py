"""Real photos that ship inside scikit-image and matplotlib, with boxes annotated in this project
(``samples.json``, package data) and their ImageNet-1k classes: a real-photo dataset that needs no
download, for demos with a real pretrained model (e.g. ``efficientnet_lite0``).
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in torchvision's order (from its weights metadata)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def sample_annotations() -> List[Dict[str, Any]]:
    """The entries of ``samples.json``."""
    return json.loads(resources.files("salbench.datasets").joinpath("samples.json").read_text())["images"]


def source_folder(source: str) -> Path:
    """Where a package keeps its sample photos."""
    if source == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if source == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise ValueError(f"unknown sample source {source!r}")


@register_dataset("samples")
class SamplePhotos(ImageRecordDataset):
    """The annotated photos (``names``: a subset of their ids, None: all, in file order)."""

    def __init__(
        self,
        names: Optional[List[str]] = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        entries = sample_annotations()
        if names is not None:
            known = {e["image_id"] for e in entries}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"unknown sample photo(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
            entries = [e for e in entries if e["image_id"] in set(names)]
        self.entries = entries
        self.class_names = imagenet_class_names()

    def num_items(self) -> int:
        return len(self.entries)

    def image_id(self, index: int) -> str:
        return self.entries[index]["image_id"]

    def accepted(self, index: int) -> List[int]:
        """ImageNet classes that also describe item ``index``'s object."""
        return list(self.entries[index]["accepted"])

    def record(self, index: int) -> Record:
        entry = self.entries[index]
        try:
            folder = source_folder(entry["source"])
        except ImportError as error:
            raise SkipSample(f"missing image: {entry['file']} ({error})") from None
        return Record(
            image_id=entry["image_id"],
            path=folder / entry["file"],
            label=int(entry["label"]),
            boxes=np.array(entry["boxes"], np.float32),
        )
