"""COCO-style instance annotations (``instances_val2017.json`` and any file in that format)::

    images_dir/000000000139.jpg
    annotations.json   # {"images": [{"id", "file_name", "width", "height"}],
                       #  "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h],
                       #                   "segmentation": [[x, y, ...], ...] | RLE, "iscrowd", "area"}],
                       #  "categories": [{"id", "name"}]}

Classes are the categories sorted by id (label = position). ``label`` is the class of the
image's largest non-crowd annotation; ``boxes``/``box_labels`` hold every annotation (crowd
ones flagged ``difficult``). ``class_masks`` hold, per class present, the union of its
annotations' segmentations (polygons, uncompressed RLE and compressed RLE strings, crowd ones
included); ``mask`` is ``label``'s. Box ``x, y, w, h`` becomes the inclusive ``(x, y, x + w - 1, y + h - 1)``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root


def polygons_to_mask(polygons: List[List[float]], height: int, width: int) -> np.ndarray:
    """Rasterize COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (continuous coordinates, pixel
    ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``) into a bool mask [H, W]: a pixel is in when its
    centre lies inside a polygon (a square with corners 10..30 covers pixels 10..29)."""
    from matplotlib.path import Path as PolygonPath

    mask = np.zeros((height, width), bool)
    for polygon in polygons:
        if len(polygon) < 6:
            continue
        points = np.asarray(polygon, np.float64)[: len(polygon) // 2 * 2].reshape(-1, 2)
        x0, y0 = np.floor(points.min(0)).astype(int).clip(0)
        x1, y1 = np.ceil(points.max(0)).astype(int)
        x1, y1 = min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
        inside = PolygonPath(points).contains_points(centres).reshape(ys.shape)
        mask[y0:y1, x0:x1] |= inside
    return mask


def rle_string_to_counts(text: str) -> List[int]:
    """Decode COCO's compressed RLE string into run lengths. Each count is a little-endian
    sequence of 5-bit groups stored as characters ``48 + group`` (bit 0x20: more groups follow;
    bit 0x10 of the last group: negative, sign-extended); from the fourth count on, the stored
    value is the difference to the count two places before."""
    counts: List[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError(f"truncated compressed RLE string at character {position}")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid character {text[position]!r} in a compressed RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_to_mask(rle: Dict[str, Any], height: int, width: int) -> np.ndarray:
    """COCO RLE -> bool mask [H, W]. ``counts`` is a list of run lengths (uncompressed RLE) or
    a compressed string (:func:`rle_string_to_counts`); runs are column-major and start with
    background. Raises ``ValueError`` when the runs do not add up to ``H * W``."""
    size = rle.get("size")
    if size is not None and [int(v) for v in size] != [height, width]:
        raise ValueError(f"RLE size {list(size)} differs from the image's {height} x {width}")
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts)
    if not isinstance(counts, list):
        raise ValueError(f"RLE counts must be a list or a string; got {type(counts).__name__}")
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"RLE runs add up to {int(runs.sum())} pixels (negative: {bool((runs < 0).any())}); "
                         f"the image has {height} x {width} = {height * width}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T


@register_dataset("coco")
class COCOInstances(ImageRecordDataset):
    """Images of a COCO-format instance file ``annotations`` under ``images_dir`` (both
    relative to ``root`` unless absolute).
    ``masks=False`` skips rasterizing the polygons; images without annotations are left out."""

    def __init__(
        self,
        root: Optional[str] = None,
        annotations: str = "annotations/instances_val2017.json",
        images_dir: str = "val2017",
        masks: bool = True,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        base = dataset_root(root, "coco", "the COCO folder")
        path = base / Path(annotations).expanduser()  # an absolute path stays as it is
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path} (see docs/datasets.md)")
        data = json.loads(path.read_text())
        self.annotations_path = path
        self.images_dir, self.with_masks = base / Path(images_dir).expanduser(), masks
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.class_names = [c["name"] for c in categories]
        self._label = {c["id"]: i for i, c in enumerate(categories)}
        self.images = {image["id"]: image for image in data.get("images", [])}
        self.annotations: Dict[Any, List[Dict[str, Any]]] = {}
        for ann in data.get("annotations", []):
            self.annotations.setdefault(ann.get("image_id"), []).append(ann)
        self.ids = sorted((i for i in self.images if i in self.annotations), key=lambda i: (str(type(i)), i))

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return str(self.ids[index])

    def record(self, index: int) -> Record:
        info = self.images[self.ids[index]]
        anns = self.annotations[self.ids[index]]
        name = str(info.get("file_name", ""))
        try:
            boxes = np.array([[float(v) for v in a["bbox"]] for a in anns], np.float32).reshape(-1, 4)
            labels = np.array([self._label[a["category_id"]] for a in anns])
        except (KeyError, TypeError, ValueError) as error:
            raise SkipSample(f"corrupt annotation: image {info.get('id')} ({name}): {error!r}") from None
        if (boxes[:, 2:] <= 0).any():
            raise SkipSample(f"corrupt annotation: image {info.get('id')} ({name}): box with non-positive size")
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns])
        area = np.array([float(a.get("area", w * h)) for a, (w, h) in zip(anns, boxes[:, 2:])])
        order = np.where(~crowd)[0] if (~crowd).any() else np.arange(len(anns))
        label = int(labels[order[np.argmax(area[order])]])
        boxes[:, 2:] = boxes[:, :2] + boxes[:, 2:] - 1
        mask, class_masks = None, None
        if self.with_masks:
            height, width = int(info.get("height", 0)), int(info.get("width", 0))
            class_masks = {}
            for ann, ann_label in zip(anns, labels):
                segmentation = ann.get("segmentation")
                if not segmentation or not height or not width:
                    continue
                try:
                    part = (polygons_to_mask(segmentation, height, width) if isinstance(segmentation, list)
                            else rle_to_mask(segmentation, height, width))
                except (ValueError, TypeError, AttributeError) as error:
                    raise SkipSample(f"corrupt segmentation: image {info.get('id')} ({name}): {error}") from None
                cls = int(ann_label)
                class_masks[cls] = class_masks[cls] | part if cls in class_masks else part
            mask = class_masks.get(label)
        return Record(image_id=str(info.get("id")), path=self.images_dir / name, label=label, boxes=boxes,
                      box_labels=labels, difficult=crowd, mask=mask, class_masks=class_masks)
