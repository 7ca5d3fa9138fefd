"""PASCAL VOC 2007 (multi-label, with ``difficult`` flags) and the Pascal-VOC XML reader shared
with the ImageNet localization annotations.

Layout (``root`` = ``VOCdevkit/VOC2007``)::

    root/JPEGImages/000001.jpg
    root/Annotations/000001.xml
    root/ImageSets/Main/test.txt      # one image id a line (also train/val/trainval)

Each object gives a box (VOC coordinates are 1-based inclusive pixels; they are shifted to
0-based), its class and its ``difficult`` flag. ``label`` is the class of the first object in
the file; ``box_labels`` hold every object's class (the pointing game scores each class present).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


def parse_voc_xml(path: Path, one_based: bool = True) -> Tuple[Optional[str], Tuple[int, int], List[Tuple[str, List[float], bool]]]:
    """Parse a Pascal-VOC XML file -> (filename or None, (width, height) or (0, 0),
    [(class name, [x0, y0, x1, y1] 0-based inclusive, difficult)]). A missing or malformed file
    raises :class:`SkipSample`."""
    if not path.is_file():
        raise SkipSample(f"missing annotation: {path}")
    try:
        root = ET.parse(path).getroot()
        filename = root.findtext("filename")
        size = root.find("size")
        dims = (int(float(size.findtext("width"))), int(float(size.findtext("height")))) if size is not None else (0, 0)
        objects = []
        shift = 1.0 if one_based else 0.0
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            coords = [float(box.findtext(k)) - shift for k in ("xmin", "ymin", "xmax", "ymax")]
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            objects.append((obj.findtext("name").strip(), coords, difficult))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as error:
        raise SkipSample(f"corrupt annotation: {path}: {error}") from None
    return filename, dims, objects


@register_dataset("voc2007")
class VOCDetection(ImageRecordDataset):
    """PASCAL VOC (2007 by default) ``split`` ("test" | "trainval" | "train" | "val") from
    ``root`` = ``VOCdevkit/VOC2007``. ``include_difficult=False`` drops difficult objects."""

    class_names = VOC_CLASSES

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "test",
        include_difficult: bool = True,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        self.root = dataset_root(root, "voc2007", "the VOCdevkit/VOC2007 folder")
        ids_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {ids_file} (expected root = VOCdevkit/VOC2007; see docs/datasets.md)")
        self.ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
        self.split, self.include_difficult = split, include_difficult
        self._index: Dict[str, int] = {name: i for i, name in enumerate(VOC_CLASSES)}

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def record(self, index: int) -> Record:
        image_id = self.ids[index]
        _, _, objects = parse_voc_xml(self.root / "Annotations" / f"{image_id}.xml")
        if not self.include_difficult:
            objects = [o for o in objects if not o[2]]
        if not objects:
            raise SkipSample(f"no objects: {image_id}")
        unknown = sorted({name for name, _, _ in objects if name not in self._index})
        if unknown:
            raise SkipSample(f"corrupt annotation: {image_id}: unknown class {', '.join(unknown)}")
        labels = np.array([self._index[name] for name, _, _ in objects])
        return Record(
            image_id=image_id,
            path=self.root / "JPEGImages" / f"{image_id}.jpg",
            label=int(labels[0]),
            boxes=np.array([coords for _, coords, _ in objects], np.float32),
            box_labels=labels,
            difficult=np.array([d for _, _, d in objects], bool),
        )
