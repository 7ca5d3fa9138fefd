"""Items over (image x sample) in chunks: the index helpers of the batched methods (Score-CAM,
Ablation-CAM, RISE, Integrated Gradients, SmoothGrad).

A method with ``per_image`` perturbed (or interpolated, or noisy) inputs per image numbers them
image-major: item ``i`` is sample ``i % per_image`` of image ``i // per_image``. Chunks
``[start, stop)`` of items go through the model together, whatever images they span; per-image
totals are accumulated over the image's contiguous run of items in a fixed order (no atomics),
so results are deterministic on every device. The forward-only methods run their chunks through
the perturbation engine's :func:`salbench.metrics.perturbation.forward_in_chunks` (equal chunks,
the last one padded) with the chunk size of :func:`salbench.metrics.perturbation.equal_chunk`.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch import Tensor


def item_indices(start: int, stop: int, per_image: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(image [n], sample [n]) long on ``device`` of items ``start..stop-1``."""
    items = torch.arange(start, stop, device=device)
    return items // per_image, items % per_image


def image_runs(start: int, stop: int, per_image: int) -> Iterator[Tuple[int, int, int]]:
    """(image, first, last + 1) of each image's run within items ``start..stop-1``, the bounds
    relative to ``start``."""
    for image in range(start // per_image, (stop - 1) // per_image + 1):
        yield image, max(start, image * per_image) - start, min(stop, (image + 1) * per_image) - start


def add_per_image(total: Tensor, values: Tensor, start: int, stop: int, per_image: int) -> None:
    """total[b] += sum of ``values`` [stop - start, ...] over image b's items, in place."""
    for image, first, last in image_runs(start, stop, per_image):
        total[image] += values[first:last].sum(dim=0)


__all__ = ["add_per_image", "image_runs", "item_indices"]
