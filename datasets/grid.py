"""Grid pointing game datasets (Rao et al. 2022; Böhle et al. 2022): ``n x n`` tiles of images of
different classes that the model classifies confidently.

Candidates: images of a source dataset (any registered one, at the model's input size) whose
top-1 prediction is their label with softmax probability >= ``threshold``. Each grid draws
``n * n`` candidates of distinct classes (seeded), resizes each to its cell and tiles them. With
``per_cell=True`` (default) a grid yields ``n * n`` samples, one per cell: ``label`` = that cell's
class, ``boxes`` = that cell (inclusive pixels); with ``per_cell=False`` one sample per grid with
every cell as a box (``box_labels`` = the cell classes, ``label`` = the first cell's). Every
sample carries ``cells``: ``{"boxes": [n*n, 4], "labels": [n*n], "image_ids": [...]}``.
The grid score (positive attribution in the cell / total) is the energy in the target box.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from salbench.datasets import register_dataset
from salbench.datasets.base import ImageSize, LocalizationDataset, input_size, is_skip


def confident_candidates(dataset: LocalizationDataset, model: Any, threshold: float, batch_size: int = 16) -> List[Dict[str, Any]]:
    """Samples of ``dataset`` that ``model`` (a ModelBundle) classifies as their label with
    probability >= ``threshold``; each returned dict has ``image``, ``label``, ``image_id``, ``prob``."""
    module = model.module
    device = next(module.parameters()).device
    kept: List[Dict[str, Any]] = []
    samples = [s for s in (dataset[i] for i in range(len(dataset))) if not is_skip(s)]
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = torch.stack([s["image"] for s in chunk]).to(device)
        with torch.no_grad():
            probs = module(model.normalize(images)).softmax(1).cpu()
        for sample, prob in zip(chunk, probs):
            top = int(prob.argmax())
            if top == int(sample["label"]) and float(prob[top]) >= threshold:
                kept.append({"image": sample["image"], "label": top, "image_id": sample["image_id"], "prob": float(prob[top])})
    return kept


@register_dataset("grid")
class GridPointingGame(LocalizationDataset):
    """``num_grids`` grids of ``grid`` x ``grid`` confidently classified images of distinct classes.

    ``model``: the ModelBundle that must classify each tile (the runner passes its model; from
    Python pass it directly); ``classifier``: a registered model name built (with its defaults)
    only when no ``model`` is given; ``source`` / ``source_options``: the dataset of the tiles.
    """

    needs_model = True  # the job loop passes its ModelBundle as ``model``

    def __init__(
        self,
        model: Any = None,
        classifier: Optional[str] = None,
        source: str = "samples",
        source_options: Optional[Dict[str, Any]] = None,
        grid: int = 2,
        num_grids: int = 8,
        threshold: float = 0.5,
        per_cell: bool = True,
        seed: int = 0,
        image_size: ImageSize = None,
        limit: Optional[int] = None,
        shard: int = 0,
        num_shards: int = 1,
    ):
        super().__init__(limit=limit, shard=shard, num_shards=num_shards)
        if model is None and classifier is not None:
            from salbench.models import create_model

            model = create_model(classifier)
        if model is None:
            raise ValueError("the grid dataset needs the model that classifies its tiles: create_dataset('grid', model=bundle, ...)")
        if grid < 1 or num_grids < 0:
            raise ValueError(f"need grid >= 1 and num_grids >= 0; got grid={grid}, num_grids={num_grids}")
        from salbench.datasets import create_dataset

        self.size = input_size(image_size, default=tuple(model.input_size))
        self.grid, self.per_cell, self.classifier = grid, per_cell, getattr(model, "name", None)
        source_dataset = create_dataset(source, **{**(source_options or {}), "image_size": self.size})
        self.class_names = list(getattr(source_dataset, "class_names", []) or model.class_names)
        candidates = confident_candidates(source_dataset, model, threshold)
        by_class: Dict[int, List[Dict[str, Any]]] = {}
        for candidate in candidates:
            by_class.setdefault(candidate["label"], []).append(candidate)
        cells = grid * grid
        if len(by_class) < cells:
            raise ValueError(
                f"grid {grid}x{grid} needs {cells} classes classified with probability >= {threshold}; "
                f"{source!r} has {len(by_class)} ({len(candidates)} images): lower threshold, use grid=1 or a larger source"
            )
        self.candidate_count, self.class_count = len(candidates), len(by_class)
        rng = np.random.default_rng(seed)
        classes = sorted(by_class)
        self.grids: List[List[Dict[str, Any]]] = []
        for _ in range(num_grids):
            chosen = rng.choice(len(classes), size=cells, replace=False)
            self.grids.append([by_class[classes[c]][int(rng.integers(len(by_class[classes[c]])))] for c in chosen])
        height, width = self.size
        ys = [round(i * height / grid) for i in range(grid + 1)]
        xs = [round(j * width / grid) for j in range(grid + 1)]
        self.cell_boxes = torch.tensor(
            [[xs[j], ys[i], xs[j + 1] - 1, ys[i + 1] - 1] for i in range(grid) for j in range(grid)], dtype=torch.float32
        )
        self._edges = (ys, xs)

    def num_items(self) -> int:
        return len(self.grids) * (self.grid * self.grid if self.per_cell else 1)

    def _split(self, index: int):
        cells = self.grid * self.grid
        return (index // cells, index % cells) if self.per_cell else (index, 0)

    def image_id(self, index: int) -> str:
        grid_index, cell = self._split(index)
        return f"grid{self.grid}x{self.grid}-{grid_index:04d}" + (f"-cell{cell}" if self.per_cell else "")

    def compose(self, grid_index: int) -> torch.Tensor:
        """The tiled image [3, H, W] of grid ``grid_index``."""
        ys, xs = self._edges
        canvas = torch.zeros(3, self.size[0], self.size[1])
        for k, tile in enumerate(self.grids[grid_index]):
            i, j = divmod(k, self.grid)
            cell_h, cell_w = ys[i + 1] - ys[i], xs[j + 1] - xs[j]
            resized = F.interpolate(tile["image"][None], size=(cell_h, cell_w), mode="bilinear", align_corners=False, antialias=True)[0]
            canvas[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = resized.clamp(0, 1)
        return canvas

    def load(self, index: int) -> Dict[str, Any]:
        grid_index, cell = self._split(index)
        tiles = self.grids[grid_index]
        labels = torch.tensor([t["label"] for t in tiles], dtype=torch.long)
        if self.per_cell:
            boxes, box_labels = self.cell_boxes[cell : cell + 1].clone(), labels[cell : cell + 1]
        else:
            boxes, box_labels = self.cell_boxes.clone(), labels
        return {
            "image": self.compose(grid_index),
            "label": int(box_labels[0]),
            "boxes": boxes,
            "box_labels": box_labels,
            "difficult": torch.zeros(len(boxes), dtype=torch.bool),
            "mask": None,
            "orig_size": tuple(self.size),
            "orig_boxes": boxes.clone(),
            "image_id": self.image_id(index),
            "cells": {"boxes": self.cell_boxes.clone(), "labels": labels, "image_ids": [t["image_id"] for t in tiles]},
        }
