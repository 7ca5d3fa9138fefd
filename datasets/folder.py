"""A generic image folder with a CSV of boxes::

    root/<any/relative/path>.jpg
    boxes.csv   # header: image,label,x0,y0,x1,y1[,difficult][,box_label][,mask]
                # one row per box (several rows per image); a row with empty x0..y1 is an
                # image without boxes; label: class index or class name; coordinates are
                # inclusive original pixels; mask: optional mask image path (relative to root)

Class names come from ``class_names`` (a text file, one name a line) or, when labels are names,
from their sorted set. Image order: first appearance in the CSV.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root

REQUIRED = ("image", "label", "x0", "y0", "x1", "y1")


@register_dataset("folder")
class ImageFolderBoxes(ImageRecordDataset):
    """Images under ``root`` annotated by ``csv_file`` (absolute, or relative to ``root``)."""

    def __init__(
        self,
        root: Optional[str] = None,
        csv_file: str = "boxes.csv",
        class_names: Optional[str] = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        self.root = dataset_root(root, "folder", "the image folder")
        table = Path(csv_file).expanduser()
        self.csv_path = table = table if table.is_absolute() else self.root / table
        if not table.is_file():
            raise FileNotFoundError(f"box table not found: {table} (see docs/datasets.md)")
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{table}: missing column(s) {', '.join(missing)}; header must hold {','.join(REQUIRED)}")
            rows = list(reader)
        self.rows: Dict[str, List[Dict[str, str]]] = {}
        for row in rows:
            self.rows.setdefault(row["image"].strip(), []).append(row)
        self.ids = list(self.rows)
        if class_names:
            names_file = Path(class_names).expanduser()
            self.class_names_path = names_file = names_file if names_file.is_absolute() else self.root / names_file
            self.class_names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        else:
            labels = {r["label"].strip() for r in rows}
            if all(v.lstrip("-").isdigit() for v in labels):
                self.class_names = [str(i) for i in range(max((int(v) for v in labels), default=-1) + 1)]
            else:
                self.class_names = sorted(v for v in labels if not v.lstrip("-").isdigit())
        self._index = {name: i for i, name in enumerate(self.class_names)}

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def _label(self, value: str, image: str) -> int:
        value = value.strip()
        if value in self._index:
            return self._index[value]
        if value.lstrip("-").isdigit() and 0 <= int(value) < len(self.class_names):
            return int(value)
        raise SkipSample(f"corrupt annotation: {image}: unknown label {value!r}")

    def record(self, index: int) -> Record:
        image = self.ids[index]
        rows = self.rows[image]
        label = self._label(rows[0]["label"], image)
        boxed = [r for r in rows if any((r[k] or "").strip() for k in REQUIRED[2:])]
        try:
            boxes = np.array([[float(r[k]) for k in REQUIRED[2:]] for r in boxed], np.float32).reshape(-1, 4)
        except (TypeError, ValueError) as error:
            raise SkipSample(f"corrupt annotation: {image}: {error}") from None
        box_labels = np.array([self._label(r.get("box_label") or r["label"], image) for r in boxed], np.int64)
        difficult = np.array([(r.get("difficult") or "0").strip().lower() in ("1", "true", "yes") for r in boxed], bool)
        masks = sorted({(r.get("mask") or "").strip() for r in rows} - {""})
        return Record(
            image_id=image,
            path=self.root / image,
            label=label,
            boxes=boxes,
            box_labels=box_labels,
            difficult=difficult,
            mask=[self.root / m for m in masks] or None,
        )
