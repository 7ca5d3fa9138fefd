"""Trivial baselines every table shows: a random map and a centered Gaussian map.

Both ignore the model and the target. They are deterministic per image: the random map is
drawn from a generator seeded by ``seed`` and the image's content, so a score never depends
on the batch an image lands in.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs
from salbench.methods.draws import cpu_generator, image_seeds


@register_method("random")
class RandomMap(Explainer):
    """Uniform random map. ``resolution``: side of the random grid, bilinearly upsampled to the
    input (``None``: one independent value per input pixel)."""

    name = "random"
    baseline = True

    def __init__(self, model: nn.Module, *, seed: int = 0, resolution: Optional[int] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be >= 1 or None; got {resolution}")
        self.seed, self.resolution = seed, resolution

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        check_inputs(x, target)
        height, width = x.shape[-2:]
        side = (height, width) if self.resolution is None else (self.resolution, self.resolution)
        # one device-to-host copy per batch (not per image); the CPU generator makes the map
        # the same on every device
        maps = [torch.rand(side, generator=cpu_generator(seed), device="cpu") for seed in image_seeds(x, self.seed)]
        maps = torch.stack(maps).to(x.device)
        if self.resolution is not None:
            maps = F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return maps


@register_method("center")
class CenterGaussian(Explainer):
    """Isotropic Gaussian centred on the image, std = ``sigma`` x the image side."""

    name = "center"
    baseline = True

    def __init__(self, model: nn.Module, *, sigma: float = 0.25, **postprocess: Any):
        super().__init__(model, **postprocess)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        self.sigma = sigma

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        check_inputs(x, target)
        height, width = x.shape[-2:]
        ys = (torch.arange(height, device=x.device, dtype=torch.float32) - (height - 1) / 2) / (self.sigma * height)
        xs = (torch.arange(width, device=x.device, dtype=torch.float32) - (width - 1) / 2) / (self.sigma * width)
        gauss = torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))
        return gauss.expand(x.shape[0], height, width).clone()
