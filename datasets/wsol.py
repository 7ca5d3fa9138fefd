"""Datasets in the wsolevaluation metadata format (Choe et al., CVPR 2020).

Metadata folder (e.g. ``metadata/ILSVRC/test``, ``metadata/CUB/test``, ``metadata/OpenImages/test``)::

    image_ids.txt      # one relative image path a line (the dataset order)
    class_labels.txt   # "<path>,<class index>"
    image_sizes.txt    # "<path>,<width>,<height>" (optional; checked against the file when given)
    localization.txt   # boxes:  "<path>,<x0>,<y0>,<x1>,<y1>"  one line per box (several per image)
                       # masks:  "<path>,<mask path>,<ignore mask path>"  one line per instance mask;
                       #         the ignore path is given on the image's first line only

Images live under ``data_root`` (``dataset/ILSVRC``, ...), masks under ``mask_root`` (default:
``data_root``). Masks (OpenImages) follow wsolevaluation's ``get_mask``: resized with cv2
``INTER_NEAREST`` (output pixel ``i`` takes source pixel ``floor(i * scale)``, not PIL's pixel
centres: on OpenImages-style masks hundreds of pixels differ and PxAP moves by about 0.1),
binarized at grey value > 0 (their ``mask > 0.5`` on the grey levels); an image's instance masks
are united; ignore pixels that are object pixels are not ignored. Box coordinates are used as
given (original pixels; the protocol's resize with truncation is the metric's business, see
``orig_boxes``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageRecordDataset, Record, SkipSample, dataset_root


def _lines(path: Path, required: bool = True) -> List[List[str]]:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"wsolevaluation metadata file not found: {path} (see docs/datasets.md)")
        return []
    return [line.rstrip("\n").split(",") for line in path.read_text().splitlines() if line.strip()]


@register_dataset("wsol")
class WSOLMetadata(ImageRecordDataset):
    """Images listed by wsolevaluation metadata at ``metadata_dir`` (``metadata_dir``,
    ``data_root`` and ``mask_root`` are relative to ``root`` unless absolute); ``kind`` = "boxes" |
    "masks" | "auto" (masks when localization.txt lines hold mask paths)."""

    mask_resample = "cv2_nearest"
    mask_threshold = 0

    def __init__(
        self,
        root: Optional[str] = None,
        metadata_dir: str = "metadata/ILSVRC/test",
        data_root: str = "dataset/ILSVRC",
        mask_root: Optional[str] = None,
        kind: str = "auto",
        class_names_file: Optional[str] = None,
        **common: Any,
    ):
        super().__init__(**common)  # image_size, crop_fraction, limit, shard, num_shards
        base = dataset_root(root, "wsol", "the wsolevaluation folder holding metadata/ and dataset/")
        self.metadata_dir = meta = base / Path(metadata_dir).expanduser()  # absolute paths stay as they are
        self.data_root = base / Path(data_root).expanduser()
        self.mask_root = base / Path(mask_root).expanduser() if mask_root else self.data_root
        self.ids = [row[0] for row in _lines(meta / "image_ids.txt")]
        self.labels: Dict[str, str] = {row[0]: row[1] if len(row) > 1 else "" for row in _lines(meta / "class_labels.txt")}
        self.sizes: Dict[str, List[str]] = {row[0]: row[1:] for row in _lines(meta / "image_sizes.txt", required=False)}
        localization = _lines(meta / "localization.txt")
        if kind == "auto":
            kind = "masks" if localization and len(localization[0]) == 3 else "boxes"
        if kind not in ("boxes", "masks"):
            raise ValueError(f"unknown wsolevaluation kind {kind!r}; valid: auto, boxes, masks")
        self.kind = kind
        self.boxes: Dict[str, List[List[str]]] = {}
        self.masks: Dict[str, List[str]] = {}
        self.ignores: Dict[str, str] = {}
        self.bad: Dict[str, str] = {}
        for row in localization:
            path = row[0]
            if kind == "boxes":
                self.boxes.setdefault(path, []).append(row[1:])
            elif len(row) != 3:
                self.bad[path] = f"corrupt annotation: {path}: mask line with {len(row)} fields, not 3"
            else:
                self.masks.setdefault(path, []).append(row[1])
                if row[2] and path not in self.ignores:
                    self.ignores[path] = row[2]
        if class_names_file:
            self.class_names = [line.strip() for line in (base / class_names_file).read_text().splitlines() if line.strip()]
        else:
            numbers = [int(v) for v in self.labels.values() if v.strip().lstrip("-").isdigit()]
            self.class_names = [str(i) for i in range(max(numbers, default=-1) + 1)]

    def num_items(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def record(self, index: int) -> Record:
        path = self.ids[index]
        if path in self.bad:
            raise SkipSample(self.bad[path])
        try:
            label = int(self.labels[path])
        except (KeyError, ValueError):
            raise SkipSample(f"corrupt annotation: {path}: no valid class label") from None
        rec = Record(image_id=path, path=self.data_root / path, label=label)
        if self.kind == "boxes":
            rows = self.boxes.get(path)
            if not rows:
                raise SkipSample(f"missing annotation: {path}: no box in localization.txt")
            try:
                rec.boxes = np.array([[float(v) for v in row[:4]] for row in rows], np.float32).reshape(-1, 4)
            except ValueError as error:
                raise SkipSample(f"corrupt annotation: {path}: {error}") from None
            if any(len(row) != 4 for row in rows):
                raise SkipSample(f"corrupt annotation: {path}: box line without 4 coordinates")
        else:
            if path not in self.masks:
                raise SkipSample(f"missing annotation: {path}: no mask in localization.txt")
            rec.mask = [self.mask_root / m for m in self.masks[path]]
            rec.ignore = self.mask_root / self.ignores[path] if path in self.ignores else None
        return rec

    def load(self, index: int) -> Dict[str, Any]:
        sample = super().load(index)
        size = self.sizes.get(self.ids[index])
        if size:
            height, width = sample["orig_size"]
            if [v.strip() for v in size[:2]] != [str(width), str(height)]:
                raise SkipSample(f"corrupt annotation: {self.ids[index]}: image_sizes.txt says {','.join(size)}, file is {width}x{height}")
        return sample
