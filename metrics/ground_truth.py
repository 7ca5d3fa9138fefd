"""Relevance against a ground-truth mask (registered ``mask_relevance``).

* relevance mass accuracy, Arras et al. 2022 ("CLEVR-XAI: a benchmark dataset for the ground
  truth evaluation of neural network explanations", Information Fusion): the share of the
  relevance that lies inside the mask, ``sum_{mask} R / sum R``;
* relevance rank accuracy (same paper): with ``K = |mask|``, the share of the ``K`` most
  relevant pixels that lie inside the mask;
* mask AUC: the area under the ROC curve of the map's values as scores of the mask's pixels
  (as ``sklearn.metrics.roc_auc_score``: the Mann-Whitney statistic, ties counted 1/2).

Pure batched functions on the maps' device (maps [B, H, W], masks bool [B, H, W] -> [B], float64);
an empty mask (or one covering every pixel, for the AUC) gives NaN, as does a map without mass.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo, check_choice
from salbench.metrics.pointing import boxes_to_mask
from salbench.metrics.randomization import average_ranks

GROUND_TRUTHS = ("mask", "boxes")


def _pair(maps: Tensor, masks: Tensor):
    if maps.shape != masks.shape or maps.ndim < 2:
        raise ValueError(f"need maps and masks of the same shape [B, H, W]; got {tuple(maps.shape)}, {tuple(masks.shape)}")
    return maps.detach().double().flatten(1), masks.to(maps.device).bool().flatten(1)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """maps [B, H, W], masks bool [B, H, W] -> [B]: ``sum(map * mask) / sum(map)`` (Arras et al.
    2022; the metric keeps only positive relevance first); NaN for an empty mask or a zero sum."""
    values, inside = _pair(maps, masks)
    total = values.sum(1)
    within = (values * inside).sum(1)
    undefined = (total == 0) | ~inside.any(1)
    return torch.where(undefined, torch.full_like(total, float("nan")), within / torch.where(undefined, 1.0, total))


def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """maps [B, H, W], masks bool [B, H, W] -> [B]: share of the ``K = |mask|`` highest pixels of
    the map inside the mask (Arras et al. 2022). Order: a stable descending sort, so tied values
    are taken in row-major order (lower index first). NaN for an empty mask."""
    values, inside = _pair(maps, masks)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    size = inside.sum(1)
    top = torch.arange(values.shape[1], device=values.device)[None] < size[:, None]  # the first K positions
    hits = (inside.gather(1, order) & top).sum(1).double()
    return torch.where(size > 0, hits / size.clamp_min(1).double(), torch.full_like(hits, float("nan")))


def auc_mask(maps: Tensor, masks: Tensor) -> Tensor:
    """maps [B, H, W], masks bool [B, H, W] -> [B]: ROC AUC of the map's values against the mask
    (``(sum of the mask pixels' average ranks - P (P + 1) / 2) / (P N)``, ties count 1/2, as
    ``sklearn.metrics.roc_auc_score``); NaN when the mask is empty or covers the whole map."""
    values, inside = _pair(maps, masks)
    ranks = average_ranks(values)
    positives = inside.sum(1).double()
    negatives = inside.shape[1] - positives
    statistic = (ranks * inside).sum(1) - positives * (positives + 1) / 2
    defined = (positives > 0) & (negatives > 0)
    return torch.where(defined, statistic / torch.where(defined, positives * negatives, 1.0),
                       torch.full_like(statistic, float("nan")))


@register_metric("mask_relevance")
class MaskRelevance(MethodwiseMetric):
    """Relevance mass accuracy, relevance rank accuracy (Arras et al. 2022) and mask ROC AUC of
    the map of the ground-truth class against its mask (``ground_truth: mask``: ``batch.masks``)
    or the union of its boxes (``ground_truth: boxes``). ``positive_only``: negative relevance set
    to 0 first (Arras et al. "only consider positive relevance"; the AUC always uses the raw
    map). Higher is better for all three."""

    name = "mask_relevance"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"arras2022": {"ground_truth": "mask", "positive_only": True}}
    scores = (
        ScoreInfo("relevance_mass", True, "localization"),
        ScoreInfo("relevance_rank", True, "localization"),
        ScoreInfo("auc_mask", True, "localization"),
    )

    def __init__(self, ground_truth: str = "mask", positive_only: bool = True):
        super().__init__()
        check_choice("ground_truth", ground_truth, GROUND_TRUTHS)
        self.ground_truth, self.positive_only = ground_truth, bool(positive_only)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "ground_truth": "batch_mask" if self.ground_truth == "mask" else "union_of_the_class_boxes",
            "positive_only": self.positive_only,
            "relevance_mass": "sum_inside / sum_total (arras2022)",
            "relevance_rank": "share of the |mask| top pixels inside the mask; ties: row-major first",
            "auc_mask": "roc_auc of the raw map vs the mask; ties 1/2",
            "undefined": "nan: empty mask, zero mass, or (auc) a mask covering every pixel",
        }

    def masks(self, explained: MethodBatch) -> Tensor:
        batch, maps = explained.batch, explained.heatmaps
        if self.ground_truth == "mask":
            if batch.masks is None:
                raise ValueError("mask_relevance with ground_truth=mask needs a dataset with masks "
                                 "(batch.masks is None); use ground_truth=boxes")
            return batch.masks.to(maps.device)
        classes = explained.targets.tolist()
        return torch.stack([boxes_to_mask(boxes[labels.to(boxes.device) == cls] if len(labels) == len(boxes) else boxes,
                                          maps.shape[-2:])
                            for boxes, labels, cls in zip(batch.boxes, batch.box_labels, classes)]).to(maps.device)

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        maps = explained.heatmaps
        masks = self.masks(explained)
        relevance = maps.double().clamp_min(0) if self.positive_only else maps.double()
        return {
            "relevance_mass": relevance_mass(relevance, masks).float(),
            "relevance_rank": relevance_rank(relevance, masks).float(),
            "auc_mask": auc_mask(maps, masks).float(),
        }
