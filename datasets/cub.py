"""CUB-200-2011 (Wah et al. 2011) in its released layout (``root`` = ``CUB_200_2011``)::

    root/images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
    root/images.txt              # "<image id> <relative path>"
    root/image_class_labels.txt  # "<image id> <class id, 1-based>"
    root/bounding_boxes.txt      # "<image id> <x> <y> <width> <height>" (floats, pixels)
    root/train_test_split.txt    # "<image id> <1: train, 0: test>"
    root/classes.txt             # "<class id> <class name>" (optional: names)
    segmentations/<class>/<name>.png   # optional (separate archive): soft masks -> mask > 127

The box ``x, y, w, h`` becomes the inclusive ``(x, y, x + w - 1, y + h - 1)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root

SPLITS = ("test", "train", "all")


def _table(path: Path) -> Dict[str, List[str]]:
    """A whitespace table keyed by its first column; a missing file is a FileNotFoundError."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB file not found: {path} (expected root = CUB_200_2011; see docs/datasets.md)")
    rows: Dict[str, List[str]] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            rows[fields[0]] = fields[1:]
    return rows


@register_dataset("cub")
class CUB200(ImageRecordDataset):
    """CUB-200-2011 ``split`` ("test" | "train" | "all"); labels 0..199 in class-id order.
    ``segmentations``: folder of the segmentation masks (absolute or relative to ``root``;
    None: ``root/segmentations`` or ``root/../segmentations`` when present, else no masks)."""

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "test",
        segmentations: Optional[str] = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        if split not in SPLITS:
            raise ValueError(f"unknown CUB split {split!r}; valid: {', '.join(SPLITS)}")
        self.root, self.split = dataset_root(root, "cub", "the CUB_200_2011 folder"), split
        self.paths = {k: " ".join(v) for k, v in _table(self.root / "images.txt").items()}
        self.labels = _table(self.root / "image_class_labels.txt")
        self.boxes = _table(self.root / "bounding_boxes.txt")
        is_train = _table(self.root / "train_test_split.txt")
        wanted = {"test": ["0"], "train": ["1"], "all": ["0", "1"]}[split]
        self.ids = sorted((k for k in self.paths if (is_train.get(k) or ["?"])[0] in wanted), key=int)
        classes_file = self.root / "classes.txt"
        if classes_file.is_file():
            classes = _table(classes_file)
            self.class_names = [" ".join(classes[k]).split(".", 1)[-1] for k in sorted(classes, key=int)]
        else:
            self.class_names = [str(i) for i in range(200)]
        candidates = [Path(segmentations).expanduser() if segmentations else None, self.root / "segmentations", self.root.parent / "segmentations"]
        if segmentations and not (self.root / segmentations).is_dir() and not Path(segmentations).expanduser().is_dir():
            raise FileNotFoundError(f"CUB segmentations folder not found: {segmentations}")
        if segmentations and (self.root / segmentations).is_dir():
            candidates[0] = self.root / segmentations
        self.segmentations = next((c for c in candidates if c is not None and c.is_dir()), None)

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.paths[self.ids[index]]

    def record(self, index: int) -> Record:
        key = self.ids[index]
        relative = self.paths[key]
        try:
            label = int(self.labels[key][0]) - 1
            x, y, w, h = (float(v) for v in self.boxes[key][:4])
        except (KeyError, IndexError, ValueError):
            raise SkipSample(f"corrupt annotation: CUB image {key} ({relative}) has no valid label or box") from None
        if not 0 <= label < len(self.class_names) or w <= 0 or h <= 0:
            raise SkipSample(f"corrupt annotation: CUB image {key} ({relative}): label {label + 1}, box {x, y, w, h}")
        mask = None
        if self.segmentations is not None:
            mask = self.segmentations / Path(relative).with_suffix(".png")
        return Record(
            image_id=relative,
            path=self.root / "images" / relative,
            label=label,
            boxes=np.array([[x, y, x + w - 1, y + h - 1]], np.float32),
            mask=mask,
        )
