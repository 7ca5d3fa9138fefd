"""Occlusion (Zeiler & Fergus 2014): slide a ``window`` x ``window`` patch of value ``fill``
over the image with step ``stride``; a pixel's attribution is y^c(x) - y^c(x occluded),
averaged over the windows that cover it. y^c is the pre-softmax score.

Window placement follows captum's ``Occlusion``: offsets 0, s, 2s, ... up to
ceil((D - window) / s) * s along each side, the last window cropped at the border, so every
pixel is covered. The window spans all channels. Occluded copies of all images are batched into
forward passes of exactly ``batch_size`` (image, window) pairs (the last padded), so a window's
score does not depend on how many images the call holds.

``incremental`` (Nakandala et al., SIGMOD 2019; :mod:`salbench.methods.incremental`): each
occluded forward recomputes every layer only on the region the window changed, from the
unoccluded activations cached once per image; equal to the full forward up to float rounding.
``auto`` uses it where the model can be traced by ``torch.fx`` and the plan saves work.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs, class_scores
from salbench.methods.hooks import preserved_model_state
from salbench.methods.postprocess import Postprocess
from salbench.metrics.perturbation import AUTO, ChunkTuning, pad_rows

INCREMENTAL = ("auto", True, False)


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
    dataset mean; ``batch_size``: (image, window) pairs per forward pass, or ``"auto"``: chosen
    by measuring the throughput at a few sizes on the first call (then :meth:`options` reports
    the chosen size, and the choice is kept for later calls with the same input shape);
    ``incremental``: ``auto`` | ``true`` | ``false`` (module docstring; ``true`` on a model
    that cannot be traced is an error naming the reason).

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
        batch_size: Union[int, str] = 64,
        incremental: Union[str, bool] = "auto",
        **postprocess: Any,
    ):
        super().__init__(model, **postprocess)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1; got {window}, {stride}")
        if stride > window:
            raise ValueError(f"stride {stride} > window {window} would leave pixels uncovered")
        if not (incremental is True or incremental is False or incremental == AUTO):
            raise ValueError(f"incremental must be one of auto, true, false; got {incremental!r}")
        self.chunk_tuning = ChunkTuning(batch_size)
        self.window, self.stride, self.fill = window, stride, float(fill)
        self._batch_size, self.incremental = self.chunk_tuning.batch_size, incremental

    @property
    def batch_size(self) -> Union[int, str]:
        """The configured chunk, or once ``"auto"`` has been tuned, the chosen one (what
        :meth:`options` records and what a copy built from the options reuses)."""
        return self.chunk_tuning.chosen() or self._batch_size

    def window_masks(self, height: int, width: int, device: torch.device) -> Tensor:
        """-> bool [n_windows, H, W], row-major over (top, left) offsets."""
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        tops = torch.tensor(window_offsets(height, self.window, self.stride), device=device)
        lefts = torch.tensor(window_offsets(width, self.window, self.stride), device=device)
        in_rows = (rows[None] >= tops[:, None]) & (rows[None] < tops[:, None] + self.window)  # [nt, H]
        in_cols = (cols[None] >= lefts[:, None]) & (cols[None] < lefts[:, None] + self.window)  # [nl, W]
        return (in_rows[:, None, :, None] & in_cols[None, :, None, :]).reshape(-1, height, width)

    def window_grid(self, height: int, width: int) -> tuple:
        """(tops, lefts) [n_windows] int64 numpy arrays, row-major as :meth:`window_masks`."""
        tops = np.asarray(window_offsets(height, self.window, self.stride), dtype=np.int64)
        lefts = np.asarray(window_offsets(width, self.window, self.stride), dtype=np.int64)
        return np.repeat(tops, len(lefts)), np.tile(lefts, len(tops))

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, C, H, W] on x's device."""
        target = check_inputs(x, target)
        batch, channels, height, width = x.shape
        masks = self.window_masks(height, width, x.device)
        n_windows = masks.shape[0]
        x = x.detach()
        with preserved_model_state(self.model), torch.no_grad():
            engine = self._incremental_engine(x) if self.incremental is not False else None
            if engine is not None:
                drops = self._incremental_drops(engine, x, target, n_windows)
            else:
                drops = self._full_drops(x, target, masks)
        # windows added in a fixed order: deterministic on CUDA (index_add_ uses float atomics
        # there) and, on the CPU, the same additions in the same order as index_add_
        drops = drops.view(batch, n_windows)
        total = torch.zeros(batch, height, width, device=x.device, dtype=x.dtype)
        for w in range(n_windows):
            total += drops[:, w, None, None] * masks[w].to(x.dtype)
        counts = masks.sum(dim=0).to(x.dtype)
        return (total / counts).unsqueeze(1).expand(batch, channels, height, width).contiguous()

    # ------------------------------------------------------------------ the full forward
    def _full_drops(self, x: Tensor, target: Tensor, masks: Tensor) -> Tensor:
        """clean - occluded score of every (image, window) pair [B * n_windows], each occluded
        image through the whole model."""
        batch, n_windows = x.shape[0], masks.shape[0]
        drops = torch.empty(batch * n_windows, device=x.device, dtype=x.dtype)  # (image, window) pairs
        clean = class_scores(self.model(x), target)  # checks the logits' shape and the targets once

        def occluded(pairs: Tensor) -> Tensor:
            image, window = pairs // n_windows, pairs % n_windows
            return torch.where(masks[window][:, None], torch.full_like(x[image], self.fill), x[image])

        chunk = self.chunk_tuning.resolve(
            f"full {list(x.shape[1:])}", lambda size: self.model(occluded(torch.arange(size, device=x.device) % n_windows)),
            x.device)
        for start in range(0, batch * n_windows, chunk):
            stop = min(start + chunk, batch * n_windows)
            pairs = torch.arange(start, stop, device=x.device)
            image = pairs // n_windows
            # every pass has chunk inputs (the last padded): a window's score does not depend on
            # how many others share its pass; no per-chunk host sync (the targets were checked
            # with the clean pass)
            scores = self.model(pad_rows(occluded(pairs), chunk))[: stop - start]
            drops[start:stop] = clean[image] - scores.gather(1, target[image, None])[:, 0]
        return drops

    # ------------------------------------------------------------------ incremental inference
    def _incremental_engine(self, x: Tensor) -> Optional[Any]:
        """The planned :class:`~salbench.methods.incremental.IncrementalOcclusion` engine, or
        None where ``auto`` falls back to the full forward (untraceable model, or a plan that
        recomputes at least ``AUTO_MAX_SHARE`` of the multiply-adds)."""
        from salbench.methods.incremental import AUTO_MAX_SHARE, IncrementalOcclusion, Untraceable, trace_model

        try:
            graph = trace_model(self.model)
        except Untraceable as why:
            if self.incremental is True:
                raise ValueError(f"occlusion: incremental=true, but {why}; use incremental: auto (falls back to the "
                                 "full forward) or false") from None
            return None
        tops, lefts = self.window_grid(*x.shape[-2:])
        engine = IncrementalOcclusion(self.model, graph, tops, lefts, self.window, self.fill)
        engine.prepare(x[:1])
        if self.incremental == AUTO and engine.planned_share() >= AUTO_MAX_SHARE:
            return None
        return engine

    def _incremental_drops(self, engine: Any, x: Tensor, target: Tensor, n_windows: int) -> Tensor:
        """clean - occluded score of every (image, window) pair [B * n_windows] by incremental
        inference: chunks of exactly ``chunk`` pairs (the last padded), each image's cache from
        a forward pass of that image alone."""
        batch = x.shape[0]
        device = x.device

        def probe(size: int) -> Any:  # windows of the first image, its cache in slot 0
            windows = torch.arange(size, device=device) % n_windows
            return engine.run_chunk(windows, torch.zeros_like(windows))

        if self.chunk_tuning.batch_size == AUTO:
            engine.allocate(1, x.dtype)
            engine.store(0, x[:1])
        chunk = self.chunk_tuning.resolve(f"incremental {list(x.shape[1:])}", probe, device)
        slots = (chunk - 1) // n_windows + 2  # images one chunk of consecutive pairs can touch
        engine.allocate(slots, x.dtype)
        clean = torch.empty(batch, device=device, dtype=x.dtype)
        drops = torch.empty(batch * n_windows, device=device, dtype=x.dtype)
        cached = -1  # images 0..cached have their clean maps in their slots
        for start in range(0, batch * n_windows, chunk):
            stop = min(start + chunk, batch * n_windows)
            while cached < (stop - 1) // n_windows:
                cached += 1
                output = engine.store(cached % slots, x[cached:cached + 1])
                clean[cached] = class_scores(output, target[cached:cached + 1])[0]
            pairs = pad_rows(torch.arange(start, stop, device=device), chunk)
            image, window = pairs // n_windows, pairs % n_windows
            logits = engine.run_chunk(window, image % slots)
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise ValueError(f"the model must return logits [B, K]; got {type(logits).__name__}")
            image = image[: stop - start]
            drops[start:stop] = clean[image] - logits[: stop - start].gather(1, target[image, None])[:, 0]
        return drops
