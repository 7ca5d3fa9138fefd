"""Synthetic localization dataset: one class-defining shape over class-free clutter.

Each RGB image holds exactly one object whose *shape* is the class (disk, square, triangle,
plus, ring) at a random position, scale, rotation and colour, drawn over a smooth random
background with noise and random line segments and dots. Colour, size, position and clutter
follow the same distribution for every class, so only the shape carries class signal. The
object's exact pixel mask and its tight box are the ground truth.

Images are generated on the fly from ``numpy.random.default_rng([seed, split, index])``, so a
sample depends only on (seed, split, index): deterministic, and independent of sharding.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from salbench.datasets import register_dataset
from salbench.datasets.base import LocalizationDataset

CLASS_NAMES = ["disk", "square", "triangle", "plus", "ring"]
SPLITS = {"train": 0, "val": 1, "test": 2}


def _shape_mask(kind: int, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean mask of shape ``kind`` centred at (cx, cy) with outer radius ``radius``."""
    dx, dy = xs - cx, ys - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    dist2 = dx * dx + dy * dy
    if kind == 0:  # disk
        return dist2 <= radius**2
    if kind == 1:  # square (half side 0.75 r, rotated)
        half = 0.75 * radius
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == 2:  # equilateral triangle inscribed in the circle of radius r
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):  # three half-planes whose normals point at the edges' midpoints
            theta = angle + np.pi / 2 + np.pi + 2 * np.pi * k / 3
            inside &= dx * np.cos(theta) + dy * np.sin(theta) <= radius / 2
        return inside
    if kind == 3:  # plus
        arm = 0.3 * radius
        return ((np.abs(u) <= radius) & (np.abs(v) <= arm)) | ((np.abs(v) <= radius) & (np.abs(u) <= arm))
    if kind == 4:  # ring
        return (dist2 <= radius**2) & (dist2 >= (0.55 * radius) ** 2)
    raise ValueError(f"unknown shape index {kind}")


def render_sample(seed: int, split: int, index: int, image_size: int = 64, clutter: int = 10) -> Tuple[np.ndarray, int, np.ndarray]:
    """Draw one image. Returns (image float32 [3, S, S] in [0, 1], label, mask bool [S, S])."""
    rng = np.random.default_rng([seed, split, index])
    size = image_size
    label = int(rng.integers(len(CLASS_NAMES)))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)

    # background: a smooth random colour gradient plus pixel noise
    corner = rng.uniform(0.0, 0.6, size=(2, 3)).astype(np.float32)
    ramp = (xs * np.cos(a := rng.uniform(0, 2 * np.pi)) + ys * np.sin(a)) / size
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    image = corner[0][:, None, None] * (1 - ramp) + corner[1][:, None, None] * ramp
    image = image + rng.normal(0, 0.04, size=(3, size, size)).astype(np.float32)

    # clutter: line segments and dots in random colours, no class signal
    for _ in range(clutter):
        colour = rng.uniform(0, 1, size=3).astype(np.float32)[:, None]
        if rng.uniform() < 0.7:
            p0, p1 = rng.uniform(0, size, size=(2, 2))
            steps = int(np.hypot(*(p1 - p0))) * 2 + 2
            t = np.linspace(0, 1, steps)
            px = np.clip((p0[0] + t * (p1[0] - p0[0])).astype(int), 0, size - 1)
            py = np.clip((p0[1] + t * (p1[1] - p0[1])).astype(int), 0, size - 1)
            image[:, py, px] = colour
        else:
            cx, cy = rng.uniform(0, size, size=2)
            dot = (xs - cx) ** 2 + (ys - cy) ** 2 <= rng.uniform(1.0, 2.5) ** 2
            image[:, dot] = colour

    # the object: class-defining shape, random scale / position / rotation / colour
    radius = rng.uniform(0.14, 0.26) * size
    cx, cy = rng.uniform(radius + 1, size - radius - 2, size=2)
    mask = _shape_mask(label, xs, ys, cx, cy, radius, rng.uniform(0, 2 * np.pi))
    colour = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    colour[rng.integers(3)] *= rng.uniform(0.0, 0.4)  # saturated, varied hues
    image[:, mask] = colour[:, None] + rng.normal(0, 0.03, size=(3, int(mask.sum()))).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32), label, mask


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight inclusive box (x0, y0, x1, y1) of a non-empty boolean mask [H, W]."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


@register_dataset("synthetic")
class SyntheticShapes(LocalizationDataset):
    """``num_images`` generated samples of ``split`` ("train" | "val" | "test") at ``image_size``."""

    class_names = CLASS_NAMES

    def __init__(
        self,
        num_images: int = 200,
        split: str = "test",
        seed: int = 0,
        image_size: int = 64,
        clutter: int = 10,
        limit: Optional[int] = None,
        shard: int = 0,
        num_shards: int = 1,
    ):
        super().__init__(limit=limit, shard=shard, num_shards=num_shards)
        if isinstance(image_size, (tuple, list)):  # (H, W) from a model bundle: square only
            if len(set(image_size)) != 1:
                raise ValueError(f"synthetic images are square; got image_size={tuple(image_size)}")
            image_size = int(image_size[0])
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16; got {image_size}")
        self.num_images, self.split, self.seed = num_images, split, seed
        self.image_size, self.clutter = image_size, clutter

    def num_items(self) -> int:
        return self.num_images

    def load(self, index: int) -> Dict[str, Any]:
        image, label, mask = render_sample(self.seed, SPLITS[self.split], index, self.image_size, self.clutter)
        box = torch.from_numpy(mask_to_box(mask))[None]
        return {
            "image": torch.from_numpy(image),
            "label": label,
            "boxes": box,
            "box_labels": torch.tensor([label]),
            "mask": torch.from_numpy(mask),
            "orig_size": (self.image_size, self.image_size),
            "orig_boxes": box.clone(),
            "image_id": f"synthetic-{self.split}-{self.seed}-{index:06d}",
        }
