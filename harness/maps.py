"""Saved maps: a job's maps on disk in wsolevaluation's layout, and reading them back.

A job with ``save_maps=float32`` (or ``float16``) writes every method's map of each image (the
job's own target maps, the heatmaps [H, W] at input resolution after the method's
post-processing) as ``maps/<method>/<image_id>.npy`` in its folder, the layout of a
wsolevaluation ``scoremap_root`` (``<scoremap_root>/<image_id>.npy``; image ids as the dataset
reports them, sub-folders included), plus ``maps/classes.txt``: one ``image_id,class`` line per
image (the format of wsolevaluation's ``class_labels.txt``), the class each map explains.

Each map is written atomically when its batch is scored, so the maps of every flushed batch are
on disk when a job is killed, and a resumed job rewrites the rest; ``classes.txt`` is rewritten
(atomically) at every flush and at the end. :mod:`salbench.methods.precomputed` reads such a
folder back, and ``salbench rescore`` scores a finished run's maps with more metrics.
"""
from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Dict, List, Mapping, Sequence

import numpy as np
from torch import Tensor

from salbench.harness import store

MAPS = "maps"
CLASSES = "classes.txt"
DTYPES = {"float16": np.float16, "float32": np.float32}


def map_relative_path(image_id: str, suffix: str = ".npy") -> PurePosixPath:
    """``<image_id><suffix>`` as a path under a method's maps folder (sub-folders of the id kept;
    a leading ``/`` dropped); an id that would leave the folder (``..``) is a ValueError."""
    parts = [p for p in PurePosixPath(str(image_id).replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or ".." in parts:
        raise ValueError(f"image id {image_id!r} cannot name a file under a maps folder")
    return PurePosixPath(*parts[:-1], parts[-1] + suffix)


def read_classes(path: Path) -> Dict[str, int]:
    """``image_id,class`` lines (salbench's ``maps/classes.txt``, wsolevaluation's
    ``class_labels.txt``) as {image_id: class}; an id may hold commas (the class is after the last)."""
    classes: Dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        image_id, sep, value = line.rstrip("\r").rpartition(",")
        try:
            classes[image_id.strip()] = int(value)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'image_id,class'; got {line!r}") from None
        if not sep:
            raise ValueError(f"{path}:{number}: expected 'image_id,class'; got {line!r}")
    return classes


def write_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file renamed into place."""
    with store.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


class MapWriter:
    """Writes a job's maps into ``folder`` (the job's ``maps/``) as ``dtype`` (``float16`` |
    ``float32``); see the module docstring. ``classes`` of an interrupted run are read back."""

    def __init__(self, folder: Path, dtype: str, methods: Sequence[str] = ()):
        if dtype not in DTYPES:
            raise ValueError(f"unknown save_maps {dtype!r}; valid: null, {', '.join(DTYPES)}")
        self.folder, self.dtype = Path(folder), dtype
        classes = self.folder / CLASSES
        self.classes: Dict[str, int] = read_classes(classes) if classes.is_file() else {}
        self.methods: List[str] = list(methods)
        self._warned: set = set()

    def write(self, image_ids: Sequence[str], targets: Tensor, maps: Mapping[str, Tensor]) -> None:
        """Write ``maps[method]`` [B, H, W] of the images ``image_ids``, which explain ``targets`` [B]."""
        for method, batch in maps.items():
            if method not in self.methods:
                self.methods.append(method)
            arrays = batch.detach().float().cpu().numpy()
            for image_id, array in zip(image_ids, arrays):
                out = array.astype(DTYPES[self.dtype])
                if self.dtype == "float16" and method not in self._warned and \
                        (np.isfinite(array).sum() != np.isfinite(out).sum()):
                    self._warned.add(method)
                    print(f"salbench: warning: {method}'s map of {image_id} exceeds float16's range (|v| > 65504) "
                          "and is saved as inf; save_maps=float32 keeps it", file=sys.stderr)
                write_npy(self.folder / method / map_relative_path(image_id), out)
        for image_id, target in zip(image_ids, targets.tolist()):
            self.classes[str(image_id)] = int(target)

    def flush(self) -> None:
        """Write ``classes.txt`` (every image written so far)."""
        if self.classes:
            store.write_text(self.folder / CLASSES, "".join(f"{i},{c}\n" for i, c in self.classes.items()))

    def describe(self) -> Dict[str, object]:
        """What run.json records: the folder, the dtype, each method's folder, the classes file."""
        return {"folder": MAPS, "dtype": self.dtype, "layout": "maps/<method>/<image_id>.npy",
                "methods": {m: f"{MAPS}/{m}" for m in self.methods}, "classes": f"{MAPS}/{CLASSES}"}
