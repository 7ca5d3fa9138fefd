"""RISE, the explainer (Petsiuk et al. 2018): the expected score of the target under random masks,
as the authors' code (eclique/RISE, ``explanations.py``) computes it. (The deletion / insertion
*metric* of the same paper is the metric ``rise``, :mod:`salbench.metrics.deletion`; the method
and metric registries are separate.)

N binary grids g_i [s, s] with cells 1 with probability ``p1``; each is upsampled bilinearly to
((s + 1) * ceil(H / s), (s + 1) * ceil(W / s)) (``skimage.transform.resize(order=1,
mode="reflect", anti_aliasing=False)``: pixel centres at (i + 0.5) * s / out - 0.5, mirrored
about the edge cells) and cropped at a random shift (r, c), r in [0, ceil(H / s)), c in
[0, ceil(W / s)), to M_i [H, W]; then

    map = sum_i readout_c(model(x * M_i)) M_i / (N * p1)

with readout the target's softmax probability (the authors' ``nn.Softmax`` head; ``score=
"logit"``: the pre-softmax score). The masks multiply the model's (normalized) input, so a masked
pixel is 0 there (the dataset mean), as in the authors' code.

Draws: ``per_image_masks=True`` (default) draws every image's grids and shifts from a CPU
generator seeded with ``seed * 1_000_003 + CRC-32 of the image's float32 bytes``
(:mod:`salbench.methods.draws`), so an image gets the same masks in any batch and on any device;
``False`` draws one set from ``seed`` for every image, as the authors' code (their notebooks:
N = 6000, s = 8, p1 = 0.1, the defaults here). Order of the draws: the N x s x s uniforms of the
grids (cell = 1 where u < p1), then N row shifts, then N column shifts.

The B x N masked inputs go through the model in equal chunks of at most ``batch_size`` (the
perturbation engine), each chunk's masks made on the input's device from the interpolation
matrices (``M_i = R[r_i : r_i + H] g_i C[c_i : c_i + W]^T``). ``attribute``: [B, H, W].
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs, check_target_range, class_scores
from salbench.methods.chunks import image_runs, item_indices
from salbench.methods.draws import cpu_generator, image_seeds
from salbench.methods.hooks import preserved_model_state
from salbench.methods.postprocess import Postprocess
from salbench.metrics.perturbation import class_readout, equal_chunk, forward_in_chunks

SCORES = ("softmax", "logit")


def mirrored_linear_resize_matrix(size_in: int, size_out: int) -> Tensor:
    """[size_out, size_in] float64 on the CPU: linear interpolation at pixel centres
    ((i + 0.5) * size_in / size_out - 0.5), neighbours mirrored about the edge samples
    (scipy.ndimage's ``mirror``, skimage's ``reflect``): one side of ``skimage.transform.resize``
    with ``order=1, anti_aliasing=False``."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64, device="cpu")
    period = 2 * (size_in - 1)

    def mirror(index: int) -> int:
        if size_in == 1:
            return 0
        index = abs(index) % period
        return period - index if index > size_in - 1 else index

    for i in range(size_out):
        position = (i + 0.5) * size_in / size_out - 0.5
        low = math.floor(position)
        fraction = position - low
        matrix[i, mirror(low)] += 1.0 - fraction
        matrix[i, mirror(low + 1)] += fraction
    return matrix


def rise_draws(generator: torch.Generator, n_masks: int, grid: int, p1: float, cells: Tuple[int, int]) -> Tuple[Tensor, Tensor, Tensor]:
    """(grids [N, s, s] float32, row shifts [N], column shifts [N]) on the CPU from ``generator``."""
    grids = (torch.rand((n_masks, grid, grid), generator=generator, device="cpu") < p1).float()
    rows = torch.randint(0, cells[0], (n_masks,), generator=generator, device="cpu")
    cols = torch.randint(0, cells[1], (n_masks,), generator=generator, device="cpu")
    return grids, rows, cols


@register_method("rise")
class RISE(Explainer):
    """RISE. ``n_masks`` (N), ``grid`` (s), ``p1`` (probability of a kept cell), ``seed``,
    ``per_image_masks``, ``score`` (``softmax`` | ``logit``), ``batch_size`` (masked inputs per
    forward pass). ``attribute``: [B, H, W]."""

    name = "rise"
    default_postprocess = Postprocess(upsample="bilinear")

    def __init__(self, model: nn.Module, *, n_masks: int = 6000, grid: int = 8, p1: float = 0.1, seed: int = 0,
                 per_image_masks: bool = True, score: str = "softmax", batch_size: int = 100, **postprocess: Any):
        super().__init__(model, **postprocess)
        if n_masks < 1 or grid < 1 or batch_size < 1:
            raise ValueError(f"n_masks, grid and batch_size must be >= 1; got {n_masks}, {grid}, {batch_size}")
        if not 0.0 < p1 <= 1.0:
            raise ValueError(f"p1 must be in (0, 1]; got {p1}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
        self.n_masks, self.grid, self.p1, self.seed = n_masks, grid, float(p1), seed
        self.per_image_masks, self.score, self.batch_size = bool(per_image_masks), score, batch_size

    def cells(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """The cell size ceil(H / s), ceil(W / s)."""
        return math.ceil(size[0] / self.grid), math.ceil(size[1] / self.grid)

    def draws(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(grids [B, N, s, s], row shifts [B, N], column shifts [B, N]) on x's device."""
        cells = self.cells(tuple(x.shape[-2:]))
        if self.per_image_masks:
            per_image = [rise_draws(cpu_generator(seed), self.n_masks, self.grid, self.p1, cells) for seed in image_seeds(x, self.seed)]
        else:
            per_image = [rise_draws(cpu_generator(self.seed), self.n_masks, self.grid, self.p1, cells)] * x.shape[0]
        return tuple(torch.stack(parts).to(x.device) for parts in zip(*per_image))  # type: ignore[return-value]

    def interpolation(self, size: Tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Row and column interpolation matrices [(s + 1) * cell, s] on ``device``."""
        cells = self.cells(size)
        return tuple(mirrored_linear_resize_matrix(self.grid, (self.grid + 1) * cell).to(device, dtype)
                     for cell in cells)  # type: ignore[return-value]

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, H, W] on x's device."""
        target = check_inputs(x, target)
        x = x.detach()
        height, width = x.shape[-2:]
        grids, row_shifts, col_shifts = self.draws(x)
        rows, cols = self.interpolation((height, width), x.device, x.dtype)
        row_span = torch.arange(height, device=x.device)
        col_span = torch.arange(width, device=x.device)
        saliency = torch.zeros(x.shape[0], height, width, device=x.device, dtype=torch.float32)
        current: Dict[str, Tensor] = {}  # the chunk being built, read back with its logits

        def build(start: int, stop: int) -> Tensor:
            image, mask = item_indices(start, stop, self.n_masks, x.device)
            row_matrix = rows[row_shifts[image, mask][:, None] + row_span]  # [n, H, s]
            col_matrix = cols[col_shifts[image, mask][:, None] + col_span]  # [n, W, s]
            masks = row_matrix @ grids[image, mask].to(x.dtype) @ col_matrix.transpose(1, 2)  # [n, H, W]
            current["masks"] = masks
            return x[image] * masks[:, None]

        def read(logits: Tensor, start: int, stop: int) -> Tensor:
            image, _ = item_indices(start, stop, self.n_masks, x.device)
            values = class_readout(logits, target[image], self.score)
            masks = current.pop("masks").float()
            for b, first, last in image_runs(start, stop, self.n_masks):
                saliency[b] += torch.einsum("n,nhw->hw", values[first:last], masks[first:last])
            return values

        with preserved_model_state(self.model):
            with torch.no_grad():  # the logits' shape and every target's range, checked once
                logits = self.model(x[:1])
                class_scores(logits, target[:1])
                check_target_range(target, logits.shape[1])
            forward_in_chunks(self.model, x.shape[0] * self.n_masks, build, read, device=x.device,
                              chunk=equal_chunk(self.n_masks, self.batch_size))
        return (saliency / (self.n_masks * self.p1)).to(x.dtype)
