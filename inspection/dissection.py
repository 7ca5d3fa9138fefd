"""Network Dissection (Bau, Zhou, Khosla, Oliva & Torralba 2017, "Network dissection:
quantifying interpretability of deep visual representations").

For each unit ``k`` of a layer:

1. threshold: the top-quantile level ``T_k`` of the unit's activations over every spatial
   position of every image of the dataset, ``P(a_k > T_k) = q`` with ``q = 0.005``. Reference
   code (CSAILVision/NetDissect-Lite ``feature_operation.quantile_threshold``):
   ``numpy.percentile(features, 100 * (1 - q), axis=[0, 2, 3])``, i.e. linear interpolation
   between the order statistics at ascending position ``(n - 1)(1 - q)``;
2. each image's activation map is upsampled to the mask resolution (bilinear: the reference
   resizes with ``imresize(mode="F")``, a bilinear resize of pixel centres, ``align_corners=False``)
   and thresholded, ``M_k(x) = S_k(x) > T_k`` (strict, as the reference's ``mask > threshold``);
3. ``IoU_{k,c} = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|`` over the dataset's images
   (``L_c(x)``: the mask of concept ``c`` in image ``x``, empty where absent); a unit whose best
   IoU exceeds 0.04 is a detector of that concept (the paper's rule).

The threshold without holding the activations (``threshold`` option):

* ``exact`` (:class:`ExactQuantile`): the interpolated percentile needs only the ``m = n -
  floor((n - 1)(1 - q))`` largest activations of each unit (``n`` activations per unit over the
  dataset; ``m ~ q n + 1``): one pass keeps a running top-``m`` buffer per unit (merged per
  batch with ``torch.topk``), so memory is ``q`` of the layer's activations (0.5%), and the
  result equals ``numpy.percentile`` on all of them (the same interpolation in float64);
* ``histogram`` (:class:`HistogramQuantile`): two passes with ``bins`` buckets per unit between
  the unit's minimum and maximum (pass 1: the range, pass 2: the counts); the order statistics
  are interpolated within their bucket, so the threshold is within one bucket width
  (``(max - min) / bins``) of the exact value; memory ``bins`` counts per unit, whatever ``n``.

:class:`IoUAccumulator` then sums intersections, activated pixels and concept pixels over the
dataset (a second pass), ``units x concepts`` counters on the device.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

CONCEPT_SOURCES = ("auto", "class_masks", "mask", "boxes")
THRESHOLD_METHODS = ("exact", "histogram")
UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")


def percentile_position(count: int, quantile: float) -> Tuple[int, float]:
    """(lower ascending index, fraction) of ``numpy.percentile(values, 100 * (1 - quantile))``
    over ``count`` values (linear method)."""
    position = (count - 1) * (1.0 - quantile)
    lower = int(math.floor(position))
    return lower, position - lower


def top_count(count: int, quantile: float) -> int:
    """How many of the largest values the interpolated top-quantile level reads."""
    lower, _ = percentile_position(count, quantile)
    return count - lower


def _lerp(low: Tensor, high: Tensor, fraction: float) -> Tensor:
    """numpy's interpolation (``numpy.lib._function_base_impl._lerp``): ``low + (high - low) t``,
    computed from the upper end for ``t >= 0.5``."""
    diff = high - low
    return high - diff * (1.0 - fraction) if fraction >= 0.5 else low + diff * fraction


def _unit_values(activations: Tensor) -> Tensor:
    """[B, U, h, w] -> [U, B * h * w]."""
    return activations.transpose(0, 1).reshape(activations.shape[1], -1)


class ExactQuantile:
    """Exact top-quantile level per unit from a running top-``m`` buffer (module docstring).
    ``planned_maps``: the number of images the pass will see (fixes ``m`` from the first
    batch's grid; fewer images seen, e.g. skipped ones, only leave the buffer larger than needed)."""

    def __init__(self, quantile: float, planned_maps: int, max_megabytes: float = 1024.0):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        self.quantile, self.planned_maps, self.max_megabytes = float(quantile), int(planned_maps), float(max_megabytes)
        self.buffer: Optional[Tensor] = None
        self.count = 0
        self.capacity = 0

    def update(self, activations: Tensor) -> None:
        values = _unit_values(activations).float()
        if self.buffer is None:
            units, cells = values.shape[0], activations.shape[2] * activations.shape[3]
            self.capacity = top_count(max(self.planned_maps, activations.shape[0]) * cells, self.quantile)
            megabytes = units * self.capacity * 4 / 2**20
            if megabytes > self.max_megabytes:
                raise ValueError(f"the exact top-quantile buffer needs {megabytes:.0f} MB ({units} units x "
                                 f"{self.capacity} values) > max_megabytes={self.max_megabytes:g}; use "
                                 "threshold=histogram (bounded, within one bin width) or fewer images")
            self.buffer = values.new_empty(units, 0)
        merged = torch.cat([self.buffer, values], 1)
        self.buffer = merged.topk(min(self.capacity, merged.shape[1]), dim=1).values
        self.count += values.shape[1]

    def thresholds(self) -> Tensor:
        """[U] float64: ``numpy.percentile(all activations of the unit, 100 * (1 - q))``."""
        if self.buffer is None or self.count == 0:
            raise ValueError("no activations were seen")
        lower, fraction = percentile_position(self.count, self.quantile)
        top = self.buffer.double().sort(dim=1, descending=True).values
        low = top[:, self.count - 1 - lower]  # ascending index `lower` is the (count - lower)-th largest
        high = top[:, max(self.count - 2 - lower, 0)]
        return _lerp(low, high, fraction)


class HistogramQuantile:
    """Bounded top-quantile level per unit: pass 1 :meth:`observe_range`, pass 2
    :meth:`observe_counts`, then :meth:`thresholds` (within one bin width of the exact level)."""

    def __init__(self, quantile: float, bins: int = 4096):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        if bins < 2:
            raise ValueError(f"histogram bins must be >= 2; got {bins}")
        self.quantile, self.bins = float(quantile), int(bins)
        self.low: Optional[Tensor] = None
        self.high: Optional[Tensor] = None
        self.counts: Optional[Tensor] = None
        self.count = 0

    def observe_range(self, activations: Tensor) -> None:
        values = _unit_values(activations).double()
        low, high = values.min(1).values, values.max(1).values
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def bin_width(self) -> Tensor:
        return (self.high - self.low).clamp_min(1e-12) / self.bins

    def observe_counts(self, activations: Tensor) -> None:
        if self.low is None:
            raise ValueError("observe_range must see the dataset before observe_counts")
        values = _unit_values(activations).double()
        units = values.shape[0]
        index = ((values - self.low[:, None]) / self.bin_width()[:, None]).floor().long().clamp_(0, self.bins - 1)
        flat = index + torch.arange(units, device=values.device)[:, None] * self.bins
        counts = torch.bincount(flat.flatten(), minlength=units * self.bins).view(units, self.bins)
        self.counts = counts if self.counts is None else self.counts + counts
        self.count += values.shape[1]

    def _order_statistic(self, rank: int) -> Tensor:
        """Ascending order statistic ``rank`` per unit, placed uniformly inside its bin."""
        cumulative = self.counts.cumsum(1)  # [U, bins]
        bucket = (cumulative <= rank).sum(1).clamp_max(self.bins - 1)  # first bin whose cumulative count > rank
        before = torch.where(bucket > 0, cumulative.gather(1, (bucket - 1).clamp_min(0)[:, None])[:, 0],
                             torch.zeros_like(bucket))
        inside = self.counts.gather(1, bucket[:, None])[:, 0].clamp_min(1)
        offset = (rank - before + 0.5).double() / inside.double()
        return self.low + (bucket.double() + offset) * self.bin_width()

    def thresholds(self) -> Tensor:
        if self.counts is None or self.count == 0:
            raise ValueError("no activations were counted")
        lower, fraction = percentile_position(self.count, self.quantile)
        low = self._order_statistic(lower)
        high = self._order_statistic(min(lower + 1, self.count - 1))
        return _lerp(low, high, fraction)


def float32_floor(values: Tensor) -> Tensor:
    """The largest float32 <= each float64 value: for a float32 ``x``, ``x > floor32(t)`` exactly
    when ``x > t`` (if ``t`` is no float32, no float32 lies between ``floor32(t)`` and ``t``)."""
    rounded = values.float()
    above = rounded.double() > values
    return torch.where(above, torch.nextafter(rounded, torch.full_like(rounded, float("-inf"))), rounded)


class IoUAccumulator:
    """Sums over a dataset, per unit ``k`` and concept ``c``: ``intersection[k, c]`` (pixels where
    the thresholded upsampled map and the concept mask are both on), ``activated[k]`` and
    ``area[c]``; :meth:`iou` = intersection / (activated + area - intersection).

    ``thresholds`` [U] (float64, on the activations' device); ``num_concepts``: the concept
    index range (a dataset's classes); units are upsampled in chunks of at most
    ``chunk_elements`` mask-resolution values.
    """

    def __init__(self, thresholds: Tensor, num_concepts: int, upsample: str = "bilinear", align_corners: bool = False,
                 chunk_elements: int = 2**24):
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {upsample!r}; valid: {', '.join(UPSAMPLE_MODES)}")
        self.thresholds = thresholds.double()
        self.upsample, self.align_corners, self.chunk_elements = upsample, bool(align_corners), int(chunk_elements)
        units = self.thresholds.shape[0]
        device = self.thresholds.device
        self.intersection = torch.zeros(units, num_concepts, dtype=torch.float64, device=device)
        self.activated = torch.zeros(units, dtype=torch.float64, device=device)
        self.area = torch.zeros(num_concepts, dtype=torch.float64, device=device)

    def _upsampled(self, activations: Tensor, size: Tuple[int, int]) -> Tensor:
        if self.upsample == "nearest":
            return F.interpolate(activations.float(), size=size, mode="nearest")
        return F.interpolate(activations.float(), size=size, mode=self.upsample, align_corners=self.align_corners)

    def update(self, activations: Tensor, masks: Tensor, concepts: Tensor) -> None:
        """activations [B, U, h, w]; masks [B, P, H, W] bool, the masks of concepts ``concepts``
        [P] (distinct indices) in each image."""
        batch, units = activations.shape[:2]
        height, width = masks.shape[-2:]
        concepts = concepts.to(self.area.device).long()
        masks_float = masks.to(self.area.device).float()
        self.area.index_add_(0, concepts, masks_float.sum((0, 2, 3)).double())
        # 0/1 products summed in float32 are exact below 2**24 per entry
        exact_dtype = torch.float32 if batch * height * width < 2**24 else torch.float64
        masks_float = masks_float.to(exact_dtype)
        chunk = max(1, self.chunk_elements // max(1, batch * height * width))
        levels = float32_floor(self.thresholds)
        for start in range(0, units, chunk):
            stop = min(units, start + chunk)
            maps = self._upsampled(activations[:, start:stop], (height, width))
            fired = maps > levels[start:stop][None, :, None, None]  # == (maps as float64 > thresholds)
            self.activated[start:stop] += fired.sum((0, 2, 3)).double()
            if len(concepts):
                overlap = torch.einsum("bkhw,bphw->kp", fired.to(exact_dtype), masks_float).double()
                self.intersection[start:stop].index_add_(1, concepts, overlap)

    def iou(self) -> Tensor:
        """[U, K] float64 (0 where the union is empty)."""
        union = self.activated[:, None] + self.area[None, :] - self.intersection
        return torch.where(union > 0, self.intersection / union.clamp_min(1e-300), torch.zeros_like(union))


# --------------------------------------------------------------------------- concept masks
def resolve_concept_source(batch: Any, source: str) -> str:
    """``auto``: per-class masks when the batch has them (COCO), else the object mask of each
    image's label (the synthetic shapes), else its boxes, filled."""
    if source not in CONCEPT_SOURCES:
        raise ValueError(f"unknown concept source {source!r}; valid: {', '.join(CONCEPT_SOURCES)}")
    if source != "auto":
        return source
    if batch.extras.get("class_masks") is not None and any(m is not None for m in batch.extras["class_masks"]):
        return "class_masks"
    if batch.masks is not None:
        return "mask"
    return "boxes"


def concept_masks(batch: Any, source: str) -> Tuple[Tensor, Tensor, str]:
    """The concept masks of a batch: (masks [B, P, H, W] bool, concepts [P] class indices, the
    source used). ``class_masks``: one mask per class present (``batch.extras``); ``mask``: the
    image's object mask is its label's concept; ``boxes``: each box filled (pixels ``r`` with
    ``y0 <= r <= y1``, ``x0 <= c <= x1``) for its box label."""
    source = resolve_concept_source(batch, source)
    images = batch.images
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    device = images.device
    if source == "mask":
        if batch.masks is None:
            raise ValueError("concepts=mask but the dataset gives no object masks; use concepts=boxes")
        concepts = torch.unique(batch.labels).to(device)
        masks = (batch.labels.to(device)[:, None] == concepts[None])[:, :, None, None] & batch.masks.to(device)[:, None]
        return masks, concepts, source
    per_image: List[Dict[int, Tensor]] = []
    if source == "class_masks":
        extra_masks = batch.extras.get("class_masks") or [None] * count
        extra_labels = batch.extras.get("class_mask_labels") or [None] * count
        for masks, labels in zip(extra_masks, extra_labels):
            found: Dict[int, Tensor] = {}
            if masks is not None:
                for mask, label in zip(masks.to(device), labels.tolist()):
                    found[label] = found.get(label, torch.zeros_like(mask)) | mask
            per_image.append(found)
    elif source == "boxes":
        rows = torch.arange(height, device=device)[:, None]
        cols = torch.arange(width, device=device)[None, :]
        for boxes, labels in zip(batch.boxes, batch.box_labels):
            found = {}
            for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist()):
                box = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)
                found[label] = found.get(label, torch.zeros_like(box)) | box
            per_image.append(found)
    concepts = sorted({label for found in per_image for label in found})
    masks = torch.zeros(count, len(concepts), height, width, dtype=torch.bool, device=device)
    for i, found in enumerate(per_image):
        for label, mask in found.items():
            masks[i, concepts.index(label)] = mask
    return masks, torch.tensor(concepts, dtype=torch.long, device=device), source


# --------------------------------------------------------------------------- tables
def dissection_rows(layer: str, iou: Tensor, present: Sequence[int], concept_names: Sequence[str]) -> pd.DataFrame:
    """One row per (unit, concept present in the dataset): columns layer, unit, concept, iou."""
    values = iou.detach().cpu().double().numpy()[:, list(present)]
    units, concepts = values.shape
    return pd.DataFrame({
        "layer": layer,
        "unit": np.repeat(np.arange(units), concepts),
        "concept": np.tile(np.array([concept_names[c] for c in present], dtype=object), units),
        "iou": values.reshape(-1),
    })


def unit_summary(table: pd.DataFrame, thresholds: Dict[str, np.ndarray], iou_threshold: float) -> pd.DataFrame:
    """Per (layer, unit): the activation threshold, the best concept and its IoU, and whether the
    unit is a detector (best IoU > ``iou_threshold``)."""
    if table.empty:
        return pd.DataFrame(columns=["layer", "unit", "threshold", "best_concept", "best_iou", "detector"])
    best = table.loc[table.groupby(["layer", "unit"], sort=False)["iou"].idxmax()]
    best = best.rename(columns={"concept": "best_concept", "iou": "best_iou"}).reset_index(drop=True)
    best["threshold"] = [float(thresholds[layer][unit]) for layer, unit in zip(best["layer"], best["unit"])]
    best["detector"] = best["best_iou"] > iou_threshold
    return best[["layer", "unit", "threshold", "best_concept", "best_iou", "detector"]]


def layer_summary(table: pd.DataFrame, units: pd.DataFrame, iou_threshold: float) -> pd.DataFrame:
    """Per (layer, concept), in the table's layer order: ``detectors`` (units whose best concept it
    is, with IoU > ``iou_threshold``: the paper's count) and ``units_above`` (units whose IoU with
    it exceeds the threshold, best or not); plus ``units`` (units in the layer)."""
    layers = list(dict.fromkeys(table["layer"]))
    concepts = list(dict.fromkeys(table["concept"]))
    rows = []
    for layer in layers:
        part = table[table["layer"] == layer]
        unit_part = units[units["layer"] == layer]
        for concept in concepts:
            rows.append({
                "layer": layer, "concept": concept, "units": int(part["unit"].nunique()),
                "detectors": int((unit_part["detector"] & (unit_part["best_concept"] == concept)).sum()),
                "units_above": int((part.loc[part["concept"] == concept, "iou"] > iou_threshold).sum()),
            })
    return pd.DataFrame(rows, columns=["layer", "concept", "units", "detectors", "units_above"])
