"""Sample and batch format shared by every dataset, and the dataset base class.

A sample is a dict:

* ``image``: FloatTensor [3, H, W], RGB in [0, 1], at the model's input size (not normalized:
  normalization travels with the model, see :class:`salbench.models.ModelBundle`);
* ``label``: int, the class to explain (the primary class for multi-label datasets);
* ``boxes``: FloatTensor [N, 4] ``(x0, y0, x1, y1)`` inclusive pixel coordinates in the input
  frame (N may be 0); ``box_labels``: LongTensor [N]; ``difficult``: BoolTensor [N];
* ``mask``: BoolTensor [H, W] or None (object pixels); ``ignore``: BoolTensor [H, W] or None;
* ``orig_size``: ``(height, width)`` of the image on disk; ``orig_boxes``: FloatTensor [N, 4]
  in the original frame; ``image_id``: str.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass
class Batch:
    """A collated batch. ``images`` [B, 3, H, W] in [0, 1]; ``labels`` [B]; per-image lists for
    the variable-length fields."""

    images: Tensor
    labels: Tensor
    boxes: List[Tensor]
    box_labels: List[Tensor]
    difficult: List[Tensor]
    masks: Optional[Tensor]  # [B, H, W] bool, or None when no sample has a mask
    ignore: Optional[Tensor]
    orig_sizes: List[Tuple[int, int]]
    orig_boxes: List[Tensor]
    image_ids: List[str]
    indices: Tensor  # [B] position of each sample in the dataset
    extras: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "Batch":
        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, list) and value and isinstance(value[0], Tensor):
                return [v.to(device, non_blocking=True) for v in value]
            return value

        return Batch(**{name: move(getattr(self, name)) for name in self.__dataclass_fields__})


def _stack_optional(samples: Sequence[Dict[str, Any]], key: str) -> Optional[Tensor]:
    if all(s.get(key) is None for s in samples):
        return None
    height, width = samples[0]["image"].shape[-2:]
    return torch.stack(
        [s[key] if s.get(key) is not None else torch.zeros(height, width, dtype=torch.bool) for s in samples]
    )


def collate(samples: Sequence[Dict[str, Any]]) -> Batch:
    """Collate sample dicts (see the module docstring) into a :class:`Batch`."""
    empty_boxes = torch.zeros(0, 4)
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        labels=torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
        boxes=[s.get("boxes", empty_boxes).float() for s in samples],
        box_labels=[
            s.get("box_labels", torch.full((len(s.get("boxes", empty_boxes)),), int(s["label"]))).long()
            for s in samples
        ],
        difficult=[
            s.get("difficult", torch.zeros(len(s.get("boxes", empty_boxes)), dtype=torch.bool)) for s in samples
        ],
        masks=_stack_optional(samples, "mask"),
        ignore=_stack_optional(samples, "ignore"),
        orig_sizes=[tuple(s.get("orig_size", s["image"].shape[-2:])) for s in samples],
        orig_boxes=[s.get("orig_boxes", s.get("boxes", empty_boxes)).float() for s in samples],
        image_ids=[str(s["image_id"]) for s in samples],
        indices=torch.tensor([int(s.get("index", i)) for i, s in enumerate(samples)], dtype=torch.long),
    )


class LocalizationDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``load(index) -> sample dict``.

    ``limit`` keeps the first ``limit`` samples; ``shard`` / ``num_shards`` keep every
    ``num_shards``-th sample starting at ``shard`` (applied after ``limit``), so shards of a
    sweep partition the dataset. ``class_names`` lists the dataset's classes (index = label).
    """

    class_names: List[str] = []

    def __init__(self, limit: Optional[int] = None, shard: int = 0, num_shards: int = 1):
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"need 0 <= shard < num_shards; got shard={shard}, num_shards={num_shards}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        self.limit, self.shard, self.num_shards = limit, shard, num_shards

    def num_items(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Dict[str, Any]:
        raise NotImplementedError

    def _positions(self) -> range:
        total = self.num_items() if self.limit is None else min(self.limit, self.num_items())
        return range(self.shard, total, self.num_shards)

    def __len__(self) -> int:
        return len(self._positions())

    def __getitem__(self, position: int) -> Dict[str, Any]:
        index = self._positions()[position]
        sample = self.load(index)
        sample.setdefault("index", index)
        return sample
