"""Occlusion (Zeiler & Fergus 2014): slide a ``window`` x ``window`` patch of value ``fill``
over the image with step ``stride``; a pixel's attribution is y^c(x) - y^c(x occluded),
averaged over the windows that cover it. y^c is the pre-softmax score.

Window placement follows captum's ``Occlusion``: offsets 0, s, 2s, ... up to
ceil((D - window) / s) * s along each side, the last window cropped at the border, so every
pixel is covered. The window spans all channels. Occluded copies of all images are batched into
forward passes of exactly ``batch_size`` images (the last padded).
"""
from __future__ import annotations

import math
from typing import Any, List

import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs, class_scores
from salbench.methods.hooks import preserved_model_state
from salbench.methods.postprocess import Postprocess
from salbench.metrics.perturbation import pad_rows


def window_offsets(size: int, window: int, stride: int) -> List[int]:
    """Start offsets of the windows along one side of length ``size`` (captum's placement)."""
    if window > size:
        raise ValueError(f"occlusion window {window} is larger than the input side {size}")
    steps = math.ceil((size - window) / stride)
    return [i * stride for i in range(steps + 1)]


@register_method("occlusion")
class Occlusion(Explainer):
    """``window``: side of the square patch (pixels); ``stride``: step (<= window);
    ``fill``: value of the occluded pixels in the model's (normalized) input space, 0 = the
    dataset mean; ``batch_size``: images per forward pass.

    ``attribute``: [B, C, H, W] (equal over channels); heatmap: the channel mean (signed, no ReLU)."""

    name = "occlusion"
    default_postprocess = Postprocess(channel_reduction="mean", upsample="bilinear")

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int = 16,
        stride: int = 8,
        fill: float = 0.0,
        batch_size: int = 64,
        **postprocess: Any,
    ):
        super().__init__(model, **postprocess)
        if window < 1 or stride < 1 or batch_size < 1:
            raise ValueError(f"window, stride and batch_size must be >= 1; got {window}, {stride}, {batch_size}")
        if stride > window:
            raise ValueError(f"stride {stride} > window {window} would leave pixels uncovered")
        self.window, self.stride, self.fill, self.batch_size = window, stride, float(fill), batch_size

    def window_masks(self, height: int, width: int, device: torch.device) -> Tensor:
        """-> bool [n_windows, H, W], row-major over (top, left) offsets."""
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        tops = torch.tensor(window_offsets(height, self.window, self.stride), device=device)
        lefts = torch.tensor(window_offsets(width, self.window, self.stride), device=device)
        in_rows = (rows[None] >= tops[:, None]) & (rows[None] < tops[:, None] + self.window)  # [nt, H]
        in_cols = (cols[None] >= lefts[:, None]) & (cols[None] < lefts[:, None] + self.window)  # [nl, W]
        return (in_rows[:, None, :, None] & in_cols[None, :, None, :]).reshape(-1, height, width)

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, C, H, W] on x's device."""
        target = check_inputs(x, target)
        batch, channels, height, width = x.shape
        masks = self.window_masks(height, width, x.device)
        n_windows = masks.shape[0]
        x = x.detach()
        drops = torch.empty(batch * n_windows, device=x.device, dtype=x.dtype)  # (image, window) pairs
        with preserved_model_state(self.model), torch.no_grad():
            clean = class_scores(self.model(x), target)  # checks the logits' shape and the targets once
            for start in range(0, batch * n_windows, self.batch_size):
                stop = min(start + self.batch_size, batch * n_windows)
                pairs = torch.arange(start, stop, device=x.device)
                image, window = pairs // n_windows, pairs % n_windows
                mask = masks[window][:, None]  # [n, 1, H, W]
                occluded = torch.where(mask, torch.full_like(x[image], self.fill), x[image])
                # every pass has batch_size inputs (the last padded): a window's score does not
                # depend on how many others share its pass; no per-chunk host sync (the targets
                # were checked with the clean pass)
                scores = self.model(pad_rows(occluded, self.batch_size))[: stop - start]
                drops[start:stop] = clean[image] - scores.gather(1, target[image, None])[:, 0]
        # windows added in a fixed order: deterministic on CUDA (index_add_ uses float atomics
        # there) and, on the CPU, the same additions in the same order as index_add_
        drops = drops.view(batch, n_windows)
        total = torch.zeros(batch, height, width, device=x.device, dtype=x.dtype)
        for w in range(n_windows):
            total += drops[:, w, None, None] * masks[w].to(x.dtype)
        counts = masks.sum(dim=0).to(x.dtype)
        return (total / counts).unsqueeze(1).expand(batch, channels, height, width).contiguous()
