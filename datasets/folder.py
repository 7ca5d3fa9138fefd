"""A generic image folder with a CSV of boxes::

    root/<any/relative/path>.jpg
    boxes.csv   # header: image,label,x0,y0,x1,y1[,difficult][,box_label][,mask]
                # one row per box (several rows per image); a row with empty x0..y1 is an
                # image without boxes; label: class index or class name; coordinates are
                # inclusive original pixels; mask: optional mask image path (relative to root)

The CSV is read as UTF-8, with or without a byte-order mark; another encoding is an error naming
the file. Image order: first appearance in the CSV.

Labels are matched to the model's classes explicitly (the job passes its model): a label that
is a class name of the model (``class_names`` on its bundle) is that class; an integer, also
written as a float (``2``, ``2.0``, as pandas writes integers next to a missing value), is that
class index. ``class_names`` (a text file, one name a line) replaces the model's names as the
vocabulary of the CSV (line i = class i; it must list as many classes as the model has).
Without a model (``create_dataset("folder", root=...)`` from Python) the names come from that
file, else the labels must be indices. A label that matches nothing is an error listing the
unmatched labels and the valid names; an empty or ``nan`` cell skips only its image (the reason
is recorded).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root, read_table

REQUIRED = ("image", "label", "x0", "y0", "x1", "y1")
MISSING_LABELS = ("", "nan", "none", "null", "na", "n/a")


class LabelMatcher:
    """Maps a label cell to a class index: a name of ``names``, or an integer index (``2`` or
    ``2.0``) below ``num_classes``. ``match`` returns the index, ``None`` for an empty cell, and
    raises ``KeyError`` for a label that matches nothing."""

    def __init__(self, names: Optional[List[str]], num_classes: Optional[int]):
        self.names, self.num_classes = names, num_classes
        self.index = {name: i for i, name in enumerate(names or [])}

    def match(self, value: Optional[str]) -> Optional[int]:
        text = (value or "").strip()
        if text.lower() in MISSING_LABELS:
            return None
        if text in self.index:
            return self.index[text]
        try:
            number = float(text)
        except ValueError:
            raise KeyError(text) from None
        if not math.isfinite(number) or number != int(number) or number < 0 or \
                (self.num_classes is not None and number >= self.num_classes):
            raise KeyError(text)
        return int(number)


@register_dataset("folder")
class ImageFolderBoxes(ImageRecordDataset):
    """Images under ``root`` annotated by ``csv_file`` (absolute, or relative to ``root``);
    ``class_names``: a text file of the CSV's class names (default: the model's); ``model``: the
    job's :class:`~salbench.models.bundle.ModelBundle` (the loop passes it)."""

    needs_model = True  # labels are matched to the model's class names or indices

    def __init__(
        self,
        root: Optional[str] = None,
        csv_file: str = "boxes.csv",
        class_names: Optional[str] = None,
        model: Any = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        self.root = dataset_root(root, "folder", "the image folder")
        table = Path(csv_file).expanduser()
        self.csv_path = table = table if table.is_absolute() else self.root / table
        if not table.is_file():
            raise FileNotFoundError(f"box table not found: {table} (see docs/datasets.md)")
        header, rows = read_table(table)
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{table}: missing column(s) {', '.join(missing)}; header must hold {','.join(REQUIRED)} "
                             f"(found {','.join(header) or 'no header'})")
        model_names = list(getattr(model, "class_names", None) or []) or None
        names = model_names
        if class_names:
            names_file = Path(class_names).expanduser()
            self.class_names_path = names_file = names_file if names_file.is_absolute() else self.root / names_file
            names = [line.strip() for line in names_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            if model_names is not None and len(names) != len(model_names):
                raise ValueError(f"{names_file} lists {len(names)} classes but the model has {len(model_names)}")
        self.labels = LabelMatcher(names, len(names) if names is not None else None)
        self.rows: Dict[str, List[Dict[str, str]]] = {}
        for row in rows:
            self.rows.setdefault((row.get("image") or "").strip(), []).append(row)
        self.ids = list(self.rows)
        unmatched = sorted({(row.get(key) or "").strip() for row in rows for key in ("label", "box_label")
                            if key in row and not self._matches(row.get(key))})
        if unmatched:
            valid = f"the class names ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''}) or " if names else ""
            raise ValueError(f"{table}: {len(unmatched)} label(s) match none of the model's classes: "
                             f"{', '.join(repr(u) for u in unmatched[:10])}; valid: {valid}integer indices 0.."
                             f"{(len(names) - 1) if names else 'K-1'}")
        if names is not None:
            self.class_names = list(names)
        else:
            indices = [self.labels.match(r.get("label")) for r in rows]
            self.class_names = [str(i) for i in range(max((i for i in indices if i is not None), default=-1) + 1)]

    def _matches(self, value: Optional[str]) -> bool:
        try:
            self.labels.match(value)
            return True
        except KeyError:
            return False

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def _label(self, value: Optional[str], image: str, column: str) -> int:
        label = self.labels.match(value)
        if label is None:
            raise SkipSample(f"missing label: {image}: empty {column} cell ({value!r})")
        return label

    def record(self, index: int) -> Record:
        image = self.ids[index]
        rows = self.rows[image]
        label = self._label(rows[0].get("label"), image, "label")
        boxed = [r for r in rows if any((r.get(k) or "").strip() for k in REQUIRED[2:])]
        try:
            boxes = np.array([[float(r[k]) for k in REQUIRED[2:]] for r in boxed], np.float32).reshape(-1, 4)
        except (TypeError, ValueError) as error:
            raise SkipSample(f"corrupt annotation: {image}: {error}") from None
        box_labels = np.array([self._label(r.get("box_label") or r.get("label"), image, "box label") for r in boxed],
                              np.int64)
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
