"""ImageNet ILSVRC2012 validation set with localization boxes, in either layout.

``layout="xml"`` (the ILSVRC2012 devkit / bbox archive)::

    root/val/ILSVRC2012_val_00000001.JPEG          # flat, or in class sub-folders val/n01751748/
    root/bbox/val/ILSVRC2012_val_00000001.xml      # Pascal-VOC XML, <name> = synset id
    root/LOC_synset_mapping.txt                    # "n01440764 tench, Tinca tinca", class order

``layout="csv"`` (the Kaggle ImageNet localization challenge)::

    root/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG
    root/LOC_val_solution.csv    # ImageId,PredictionString = "n01751748 x0 y0 x1 y1 n01751748 ..."
    root/LOC_synset_mapping.txt

``layout="auto"`` picks ``csv`` when ``root/LOC_val_solution.csv`` exists. The class index is
the line number in the synset mapping (the standard 1000-class order of torchvision's models).
XML coordinates are 0-based pixel coordinates in the ILSVRC files (no shift); the CSV's too.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root
from salbench.datasets.voc import parse_voc_xml

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_synset_mapping(path: Path) -> Tuple[List[str], List[str]]:
    """``LOC_synset_mapping.txt`` / ``synset_words.txt`` -> (synset ids, class names)."""
    wnids, names = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            wnids.append(wnid)
            names.append(name.split(",")[0].strip() or wnid)
    return wnids, names


def scan_images(folder: Path) -> Dict[str, Path]:
    """Image stem -> path for every image under ``folder`` (recursively, class sub-folders too)."""
    found: Dict[str, Path] = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(Path(name).stem, Path(directory) / name)
    return found


def _first_existing(root: Path, candidates: List[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise FileNotFoundError(f"ImageNet {what} not found under {root}; looked for {', '.join(candidates)} (see docs/datasets.md)")


@register_dataset("imagenet_val")
class ImageNetVal(ImageRecordDataset):
    """ILSVRC2012 val images with their boxes (see the module docstring for the layouts).

    ``images_dir`` / ``boxes_dir`` / ``solution_csv`` / ``synset_mapping`` override the default
    locations (absolute, or relative to ``root``).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        layout: str = "auto",
        images_dir: Optional[str] = None,
        boxes_dir: Optional[str] = None,
        solution_csv: Optional[str] = None,
        synset_mapping: Optional[str] = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        self.root = root_path = dataset_root(root, "imagenet_val", "the folder holding LOC_synset_mapping.txt")
        if layout == "auto":
            layout = "csv" if (solution_csv or (root_path / "LOC_val_solution.csv").is_file()) else "xml"
        if layout not in ("xml", "csv"):
            raise ValueError(f"unknown ImageNet layout {layout!r}; valid: auto, xml, csv")
        self.layout = layout
        self.mapping_path = mapping = root_path / synset_mapping if synset_mapping else _first_existing(root_path, ["LOC_synset_mapping.txt", "synset_words.txt"], "synset mapping")
        self.wnids, self.class_names = read_synset_mapping(mapping)
        self._label = {wnid: i for i, wnid in enumerate(self.wnids)}
        images = root_path / images_dir if images_dir else _first_existing(root_path, ["val", "ILSVRC2012_img_val", "ILSVRC/Data/CLS-LOC/val"], "validation images")
        self.images_dir, self.images = images, scan_images(images)
        self._csv_boxes: Dict[str, str] = {}
        if layout == "xml":
            self.boxes_dir = root_path / boxes_dir if boxes_dir else _first_existing(root_path, ["bbox/val", "val_bbox", "ILSVRC/Annotations/CLS-LOC/val", "ILSVRC2012_bbox_val"], "box annotations (XML)")
            self.ids = sorted(self.images)
        else:
            self.table_path = table = root_path / (solution_csv or "LOC_val_solution.csv")
            with open(table, newline="") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                    raise ValueError(f"{table}: expected the header 'ImageId,PredictionString'; got {header}")
                for row in reader:
                    if row:
                        self._csv_boxes[row[0].strip()] = row[1] if len(row) > 1 else ""
            self.ids = sorted(self._csv_boxes)

    def fingerprint_paths(self) -> List[Path]:
        """The synset mapping, the validation images and their boxes (not the whole root, which
        may hold the training set)."""
        return [self.mapping_path, self.images_dir, getattr(self, "boxes_dir", None) or self.table_path]

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def _objects(self, image_id: str) -> List[Tuple[str, List[float]]]:
        if self.layout == "xml":
            _, _, objects = parse_voc_xml(self.boxes_dir / f"{image_id}.xml", one_based=False)
            return [(name, coords) for name, coords, _ in objects]
        fields = self._csv_boxes[image_id].split()
        if not fields or len(fields) % 5:
            raise SkipSample(f"corrupt annotation: {image_id}: PredictionString has {len(fields)} fields, not 5 per box")
        try:
            return [(fields[i], [float(v) for v in fields[i + 1 : i + 5]]) for i in range(0, len(fields), 5)]
        except ValueError as error:
            raise SkipSample(f"corrupt annotation: {image_id}: {error}") from None

    def record(self, index: int) -> Record:
        image_id = self.ids[index]
        if image_id not in self.images:
            raise SkipSample(f"missing image: {image_id}")
        objects = self._objects(image_id)
        if not objects:
            raise SkipSample(f"no objects: {image_id}")
        unknown = sorted({name for name, _ in objects if name not in self._label})
        if unknown:
            raise SkipSample(f"corrupt annotation: {image_id}: unknown synset {', '.join(unknown)}")
        labels = np.array([self._label[name] for name, _ in objects])
        return Record(
            image_id=image_id,
            path=self.images[image_id],
            label=int(labels[0]),
            boxes=np.array([coords for _, coords in objects], np.float32),
            box_labels=labels,
        )
