"""Complexity of a map: how concentrated its relevance is (registered ``complexity``).

* sparseness, Chalasani et al. 2020 ("Concise explanations of neural networks using adversarial
  training", ICML): the Gini index of the sorted absolute values ``|a|_(1) <= ... <= |a|_(n)``,
  ``G = sum_i (2 i - n - 1) |a|_(i) / (n sum_i |a|_i)``, in [0, 1 - 1/n]; higher is sparser;
* complexity, Bhatt et al. 2020 ("Evaluating and aggregating feature-based model
  explanations", IJCAI): the entropy (natural log) of the fractional contributions
  ``p_i = |a_i| / sum_j |a_j|``, in [0, ln n]; lower is simpler;
* effective complexity, Nguyen & Martinez 2020 ("On quantitative aspects of model
  interpretability"): the number of pixels with ``|a_i| > eps``; lower is simpler.

A map is the heatmap [H, W] the method produced (one value per pixel). An all-zero map has no
Gini index and no distribution: NaN. Computed in float64 on the maps' device.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, ScoreInfo, check_choice

NORMALIZATIONS = ("none", "max")


def _flat_abs(maps: Tensor) -> Tensor:
    if maps.ndim < 2:
        raise ValueError(f"maps must be [B, H, W] (or [B, N]); got shape {tuple(maps.shape)}")
    return maps.detach().double().flatten(1).abs()


def sparseness(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> [B] float64: Gini index of ``|map|`` (Chalasani et al. 2020); NaN for
    an all-zero map."""
    values = torch.sort(_flat_abs(maps), dim=1).values
    count = values.shape[1]
    weights = 2 * torch.arange(1, count + 1, device=values.device, dtype=values.dtype) - count - 1
    total = values.sum(1)
    gini = (values * weights).sum(1) / (count * total)
    return torch.where(total > 0, gini, torch.full_like(gini, float("nan")))


def complexity(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> [B] float64: entropy (nats) of ``|map| / sum |map|`` (Bhatt et al.
    2020); ``0 log 0 = 0``; NaN for an all-zero map."""
    values = _flat_abs(maps)
    total = values.sum(1, keepdim=True)
    share = values / torch.where(total > 0, total, torch.ones_like(total))
    terms = torch.where(share > 0, share * torch.log(torch.where(share > 0, share, torch.ones_like(share))),
                        torch.zeros_like(share))
    entropy = -terms.sum(1)
    return torch.where(total[:, 0] > 0, entropy, torch.full_like(entropy, float("nan")))


def effective_complexity(maps: Tensor, eps: float = 1e-5) -> Tensor:
    """maps [B, H, W] -> [B] float64: the number of pixels with ``|map| > eps`` (Nguyen &
    Martinez 2020)."""
    return (_flat_abs(maps) > eps).sum(1).double()


def normalize_by_max(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> each map divided by its own max ``|map|`` (float64); an all-zero map
    stays zero."""
    values = maps.detach().double()
    peak = values.flatten(1).abs().amax(1).view(-1, *([1] * (values.ndim - 1)))
    return values / torch.where(peak > 0, peak, torch.ones_like(peak))


@register_metric("complexity")
class Complexity(MethodwiseMetric):
    """Sparseness (Gini, higher is sparser), complexity (entropy, lower is simpler) and effective
    complexity (pixels above ``eps``, lower is simpler) of each map.

    ``normalize``: ``max`` divides each map by its own max ``|map|`` first (only the effective
    complexity depends on it: Gini and entropy are scale invariant; Quantus' default
    ``normalise_by_max``, which in Quantus 0.6 takes the max over the whole batch) or ``none``;
    ``eps``: the effective-complexity threshold (Quantus' default 1e-5).
    """

    name = "complexity"
    category = "complexity"
    presets = {"quantus": {"normalize": "max", "eps": 1e-5}}
    scores = (
        ScoreInfo("sparseness", True, "complexity"),
        ScoreInfo("complexity", False, "complexity"),
        ScoreInfo("effective_complexity", False, "complexity"),
    )

    def __init__(self, normalize: str = "max", eps: float = 1e-5):
        super().__init__()
        check_choice("normalize", normalize, NORMALIZATIONS)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0; got {eps}")
        self.normalize, self.eps = normalize, float(eps)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "target",
            "values": "absolute_value_of_the_heatmap",
            "normalize": "per_image_max_abs" if self.normalize == "max" else "none",
            "sparseness": "gini_index_chalasani2020",
            "complexity": "entropy_nats_of_abs_share_bhatt2020",
            "effective_complexity": {"rule": "count_abs_greater_than_eps_nguyen2020", "eps": self.eps},
            "all_zero_map": "nan_for_sparseness_and_complexity",
        }

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        maps = explained.heatmaps
        scaled = normalize_by_max(maps) if self.normalize == "max" else maps.double()
        return {
            "sparseness": sparseness(maps).float(),
            "complexity": complexity(maps).float(),
            "effective_complexity": effective_complexity(scaled, self.eps).float(),
        }
