"""Images already in memory as a dataset (what :func:`salbench.evaluate` scores).

Not a config option: it holds tensors. ``images`` [N, 3, H, W] float, ``labels`` [N] class
indices, optional ``boxes`` (N tensors [n_i, 4], inclusive pixel coordinates in the images'
frame), ``masks`` [N, H, W] bool and ``image_ids`` (default ``"0"`` .. ``"N-1"``). Its
``annotations`` are the ground truth given (none: localization metrics are refused).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from salbench.datasets.base import LocalizationDataset


class InMemory(LocalizationDataset):
    """Tensors as a :class:`LocalizationDataset` (module docstring)."""

    def __init__(self, images: Tensor, labels: Any, boxes: Optional[Sequence[Any]] = None, masks: Optional[Any] = None,
                 image_ids: Optional[Sequence[str]] = None, class_names: Optional[List[str]] = None):
        super().__init__()
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [N, 3, H, W]; got {images.dtype} {list(images.shape)}")
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape[0] != images.shape[0] or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"targets must be N={images.shape[0]} class indices; got {labels.dtype} {list(labels.shape)}")
        count, size = images.shape[0], tuple(images.shape[-2:])
        if boxes is not None:
            boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
            if len(boxes) != count:
                raise ValueError(f"boxes must hold one [n, 4] tensor per image ({count}); got {len(boxes)}")
        if masks is not None:
            masks = torch.as_tensor(masks).bool()
            if tuple(masks.shape) != (count, *size):
                raise ValueError(f"masks must be [N, H, W] = {[count, *size]}; got {list(masks.shape)}")
        ids = [str(i) for i in image_ids] if image_ids is not None else [str(i) for i in range(count)]
        if len(ids) != count:
            raise ValueError(f"image_ids must name the {count} images; got {len(ids)}")
        self.images, self.targets, self.boxes, self.masks, self.ids = images, labels.long(), boxes, masks, ids
        self.annotations: Tuple[str, ...] = tuple(name for name, given in (("boxes", boxes), ("masks", masks))
                                                 if given is not None)
        if class_names is not None:
            self.class_names = list(class_names)

    def num_items(self) -> int:
        return self.images.shape[0]

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def load(self, index: int) -> Dict[str, Any]:
        sample: Dict[str, Any] = {"image": self.images[index], "label": int(self.targets[index]),
                                  "image_id": self.ids[index]}
        if self.boxes is not None:
            sample["boxes"] = self.boxes[index]
        if self.masks is not None:
            sample["mask"] = self.masks[index]
        return sample

    def fingerprint(self) -> str:
        return "in-memory"
