"""Maximally activating patches (Zeiler & Fergus 2014, "Visualizing and understanding
convolutional networks", Fig. 2 right: the image patches that excite a unit most).

:class:`TopActivations` keeps, for each chosen unit (channel) of a layer, the ``k`` largest
activations seen so far and where they were: a bounded buffer of ``k`` entries per unit (the role
of a heap, batched on the device), merged with each batch's candidates, so the dataset's
activations are never held. Order: activation descending, ties broken by position ascending
(dataset position, then row, then column), so the result does not depend on the batch size.
With ``distinct_images`` (default) each image contributes at most one patch per unit, at its
maximum (its first maximal position); otherwise every position competes.

The winners are cropped by the unit's receptive field
(:func:`salbench.inspection.receptive_field.crop_patch`).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor


def top_k_by_value_then_position(values: Tensor, k: int) -> Tensor:
    """values [U, N] (columns in ascending position order) -> column indices [U, min(k, N)] of
    the ``k`` largest values per row, ordered by value descending then column ascending (an
    exact total order: the same winners whatever ``torch.topk`` does with ties)."""
    count = values.shape[1]
    k = min(k, count)
    if k == 0:
        return torch.zeros(values.shape[0], 0, dtype=torch.long, device=values.device)
    kth = values.topk(k, dim=1).values[:, -1:]  # [U, 1]: the k-th largest value
    above = values > kth
    tied = values == kth
    needed = k - above.sum(1, keepdim=True)  # ties to take, the earliest columns first
    keep = above | (tied & (tied.cumsum(1) <= needed))
    columns = keep.nonzero()[:, 1].view(values.shape[0], k)  # ascending column order per row
    chosen = values.gather(1, columns)
    order = chosen.sort(dim=1, descending=True, stable=True).indices
    return columns.gather(1, order)


class TopActivations:
    """Running top-``k`` activations of ``units`` (channel indices) of one layer.

    :meth:`update` takes the layer's activations [B, C, h, w] and the batch's dataset positions
    [B]; :meth:`result` gives ``values`` [U, k] (float32, -inf where fewer than ``k`` were seen),
    ``positions`` [U, k] (dataset position, -1 when none), ``rows`` / ``cols`` [U, k] (the
    unit's grid coordinates) and ``grid`` (h, w).
    """

    def __init__(self, units: Sequence[int], k: int, distinct_images: bool = True):
        if k < 1:
            raise ValueError(f"top_k must be >= 1; got {k}")
        self.units = [int(u) for u in units]
        self.k, self.distinct_images = int(k), bool(distinct_images)
        self.values: Optional[Tensor] = None
        self.codes: Optional[Tensor] = None  # position * h * w + row * w + col
        self.grid: Optional[tuple] = None

    def update(self, activations: Tensor, positions: Tensor) -> None:
        batch, channels, height, width = activations.shape
        bad = [u for u in self.units if not 0 <= u < channels]
        if bad:
            raise ValueError(f"unit {bad[0]} is outside the layer's {channels} channels (valid: 0..{channels - 1})")
        if self.grid is None:
            self.grid = (height, width)
            self.values = torch.full((len(self.units), self.k), float("-inf"), device=activations.device)
            self.codes = torch.full((len(self.units), self.k), -1, dtype=torch.long, device=activations.device)
        elif self.grid != (height, width):
            raise ValueError(f"the layer's grid changed from {self.grid} to {(height, width)} (images of different sizes)")
        index = torch.tensor(self.units, device=activations.device)
        chosen = activations.index_select(1, index).float().flatten(2)  # [B, U, h*w]
        positions = positions.to(activations.device).long()
        cells = height * width
        if self.distinct_images:
            values, where = chosen.max(2).values, chosen.argmax(2)  # [B, U]; argmax: the first maximum
            candidates = values.t()  # [U, B]
            codes = (positions[:, None] * cells + where).t()
        else:
            candidates = chosen.permute(1, 0, 2).reshape(len(self.units), batch * cells)
            offsets = torch.arange(cells, device=activations.device)
            codes = (positions[:, None] * cells + offsets[None]).reshape(1, -1).expand(len(self.units), -1)
        best = top_k_by_value_then_position(candidates, self.k)
        new_values, new_codes = candidates.gather(1, best), codes.gather(1, best)
        # the buffer holds earlier positions only: stable sorting keeps it ahead of the batch on ties
        merged_values = torch.cat([self.values, new_values], 1)
        merged_codes = torch.cat([self.codes, new_codes], 1)
        order = merged_values.sort(dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values, self.codes = merged_values.gather(1, order), merged_codes.gather(1, order)

    def result(self) -> Dict[str, Tensor]:
        if self.grid is None:
            raise ValueError("no activations were seen (an empty dataset)")
        height, width = self.grid
        cells = height * width
        seen = self.codes >= 0
        positions = torch.where(seen, self.codes // cells, -1)
        rows = torch.where(seen, (self.codes % cells) // width, -1)
        cols = torch.where(seen, self.codes % width, -1)
        return {"units": torch.tensor(self.units), "values": self.values, "positions": positions, "rows": rows,
                "cols": cols, "grid": torch.tensor([height, width])}
