"""Saved maps as a method: ``method=precomputed method.precomputed.root=DIR``.

Looks each image's map up by image id instead of computing it (it declares
``needs_image_ids``: the job loop passes the batch's ids), from

* a salbench job folder written with ``save_maps=float32`` (``DIR/maps/<method>/<image_id>.npy``;
  ``saved_method`` chooses the method when the job saved several),
* one method's folder of such maps (``DIR/<image_id>.npy``), or
* a wsolevaluation ``scoremap_root`` (their layout is the same: ``<scoremap_root>/<image_id>.npy``).

Which class each map explains comes from ``classes``: an ``image_id,class`` file (the job's
``maps/classes.txt``, found beside the maps by default; for wsolevaluation's maps, which explain
the ground-truth class, their ``metadata/<dataset>/<split>/class_labels.txt``), and every request
is checked against it: a metric that asks for the map of another class (e.g. RISE's predicted
class in a ``target=label`` job) is a clear error, never silently another class's map.
``classes="any"``: maps that stand for every class (no check).

A map may be [H, W] (or [1, H, W]) of any size and float dtype; it is read as float32 (float16 and
float32 exactly) and goes through the named post-processing (default: none, bilinear upsampling
of a map smaller than the input), so float32 maps a job saved give exactly that job's maps and
scores. Saved maps cannot be recomputed on perturbed inputs or another model (``recomputable``
False): metrics that re-run the explainers refuse them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from salbench.harness.maps import CLASSES, MAPS, map_relative_path, read_classes
from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs
from salbench.methods.postprocess import Postprocess, upsample

ANY_CLASS = "any"


@register_method("precomputed")
class Precomputed(Explainer):
    """Maps read from ``root`` by image id (module docstring): ``root`` a job folder, a method's
    maps folder or a wsolevaluation ``scoremap_root``; ``saved_method`` the method folder under a
    job's ``maps/`` (needed when it holds several); ``classes`` the ``image_id,class`` file
    (default: ``classes.txt`` beside the maps; ``any``: no class check); ``suffix`` the files'
    extension after the id."""

    name = "precomputed"
    needs_image_ids = True
    recomputable = False
    default_postprocess = Postprocess()

    def __init__(self, model: nn.Module, *, root: Optional[str] = None, saved_method: Optional[str] = None,
                 classes: Optional[str] = None, suffix: str = ".npy", **postprocess: Any):
        super().__init__(model, **postprocess)
        if root is None:
            raise ValueError("precomputed: set root to a folder of saved maps (method.precomputed.root=DIR): a job "
                             "folder written with save_maps=float32, one method's maps folder, or a wsolevaluation "
                             "scoremap_root")
        self.root, self.saved_method, self.classes, self.suffix = root, saved_method, classes, suffix
        self.folder = self._maps_folder(Path(root).expanduser(), saved_method)
        self.class_of = self._read_classes(classes)

    @staticmethod
    def _maps_folder(root: Path, saved_method: Optional[str]) -> Path:
        if not root.is_dir():
            raise FileNotFoundError(f"precomputed: maps folder {root} does not exist")
        if (root / MAPS).is_dir():  # a job folder
            saved = sorted(p.name for p in (root / MAPS).iterdir() if p.is_dir())
            if saved_method is None:
                if len(saved) != 1:
                    raise ValueError(f"precomputed: {root / MAPS} holds the maps of {len(saved)} methods "
                                     f"({', '.join(saved) or 'none'}); choose one with saved_method=...")
                saved_method = saved[0]
            if saved_method not in saved:
                raise ValueError(f"precomputed: no maps of method {saved_method!r} in {root / MAPS}; "
                                 f"saved: {', '.join(saved) or 'none'}")
            return root / MAPS / saved_method
        if saved_method is not None:
            if not (root / saved_method).is_dir():
                raise ValueError(f"precomputed: no folder {saved_method!r} in {root}")
            return root / saved_method
        return root

    def _read_classes(self, classes: Optional[str]) -> Optional[Dict[str, int]]:
        if classes == ANY_CLASS:
            return None
        if classes is None:
            found = [p for p in (self.folder / CLASSES, self.folder.parent / CLASSES) if p.is_file()]
            if not found:
                raise ValueError(f"precomputed: no {CLASSES} beside the maps in {self.folder} says which class each "
                                 "map explains; pass classes=FILE (image_id,class lines; for a wsolevaluation "
                                 "scoremap_root their class_labels.txt: their maps explain the ground-truth class), "
                                 f"or classes={ANY_CLASS} for maps that stand for every class")
            return read_classes(found[0])
        path = Path(classes).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"precomputed: classes file {path} does not exist")
        return read_classes(path)

    def path_of(self, image_id: str) -> Path:
        return self.folder / map_relative_path(image_id, self.suffix)

    def _missing(self, image_ids: Sequence[str]) -> None:
        missing = [i for i in dict.fromkeys(image_ids) if not self.path_of(i).is_file()]
        if missing:
            held = sorted(self.folder.rglob(f"*{self.suffix}"))
            example = f"; it holds {len(held)} maps, e.g. {held[0].relative_to(self.folder)}" if held else \
                "; it holds none"
            raise FileNotFoundError(
                f"precomputed: {len(missing)} of the {len(set(image_ids))} maps asked for are missing in {self.folder}: "
                f"{', '.join(repr(i) for i in missing[:5])}{', ...' if len(missing) > 5 else ''} "
                f"(expected {self.path_of(missing[0])}{example})")

    def _check_classes(self, image_ids: Sequence[str], target: Tensor) -> None:
        if self.class_of is None:
            return
        unknown = [i for i in image_ids if i not in self.class_of]
        if unknown:
            raise ValueError(f"precomputed: the classes file names no class for {len(set(unknown))} image(s) "
                             f"({', '.join(repr(i) for i in unknown[:5])})")
        wrong = [(i, self.class_of[i], t) for i, t in zip(image_ids, target.tolist()) if self.class_of[i] != t]
        if wrong:
            image_id, saved, asked = wrong[0]
            raise ValueError(
                f"precomputed: the saved map of {image_id!r} explains class {saved}, but class {asked} was asked for "
                f"({len(wrong)} such image(s) in this batch). A metric that scores another class's maps (e.g. "
                "RISE's predicted class in a target=label job) cannot use these maps: set that metric's target to "
                "explained (metric.<name>.target=explained) where it has one, or save maps from a job whose target "
                "is the class it asks for")

    def attribute(self, x: Tensor, target: Tensor, image_ids: Optional[Sequence[str]] = None) -> Tensor:
        """x: [B, C, H, W] (only its shape and device are read); target: [B]; image_ids: B ids
        -> the saved maps [B, h, w] (float32; resized to the input when their sizes differ)."""
        target = check_inputs(x, target)
        if image_ids is None or len(image_ids) != x.shape[0]:
            raise ValueError(f"precomputed looks its maps up by image id: pass image_ids ({x.shape[0]} ids)")
        image_ids = [str(i) for i in image_ids]
        self._missing(image_ids)
        self._check_classes(image_ids, target)
        loaded: Dict[str, Tensor] = {}
        for image_id in dict.fromkeys(image_ids):
            loaded[image_id] = self._load(image_id)
        maps: List[Tensor] = [loaded[i] for i in image_ids]
        if len({tuple(m.shape) for m in maps}) > 1:  # sizes differ: each to the input size first
            size = tuple(x.shape[-2:])
            maps = [upsample(m[None], size, self.postprocess.upsample, self.postprocess.align_corners)[0] for m in maps]
        return torch.stack(maps).to(x.device)

    def _load(self, image_id: str) -> Tensor:
        path = self.path_of(image_id)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"precomputed: cannot read {path}: {error}") from None
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"precomputed: {path} holds a {array.dtype} array of shape {list(array.shape)}; "
                             "a map is [H, W] of numbers")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
