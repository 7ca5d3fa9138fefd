"""The pure batched functions of the metric families, in one namespace (torchmetrics'
``functional``): tensors in, tensors out, on the input's device, no state. Each lives in its
family's module (which also holds the thin registered metric class) and is re-exported here.

=====================================  =============================================  ==========================
function                               shapes                                         module
=====================================  =============================================  ==========================
``sparseness(maps)``                   [B, H, W] -> [B] Gini index of ``|map|``       :mod:`~.complexity`
``complexity(maps)``                   [B, H, W] -> [B] entropy of ``|map|`` shares   :mod:`~.complexity`
``effective_complexity(maps, eps)``    [B, H, W] -> [B] count of ``|map| > eps``      :mod:`~.complexity`
``relevance_mass(maps, masks)``        [B, H, W], bool [B, H, W] -> [B]               :mod:`~.ground_truth`
``relevance_rank(maps, masks)``        [B, H, W], bool [B, H, W] -> [B]               :mod:`~.ground_truth`
``auc_mask(maps, masks)``              [B, H, W], bool [B, H, W] -> [B] ROC AUC       :mod:`~.ground_truth`
``confidence_change(Y, O, eps)``       [B], [B] -> {average_drop, increase, gain}     :mod:`~.confidence`
``sensitivity(maps, perturbed)``       [B, H, W], [B, n, H, W] -> {max, avg} [B]      :mod:`~.robustness`
``local_lipschitz(maps, pm, x, px)``   ... -> [B]                                     :mod:`~.robustness`
``region_curves(model, x, maps, ...)`` -> {method: [B, S + 1]} scores                 :mod:`~.region`
``aopc(curves)``, ``irof(curves)``     [B, S + 1] -> [B]                              :mod:`~.region`
``faithfulness_correlation(a, d)``     [B, R], [B, R] -> [B] Pearson                  :mod:`~.correlation`
``infidelity(dots, drops, normalize)`` [B, n], [B, n] -> [B]                          :mod:`~.infidelity`
``other_classes(targets, K, seeds)``   [B] -> [B] a random other class                :mod:`~.random_logit`
=====================================  =============================================  ==========================
"""
from __future__ import annotations

from salbench.metrics.complexity import complexity, effective_complexity, normalize_by_max, sparseness
from salbench.metrics.confidence import confidence_change, explanation_inputs, scale_maps
from salbench.metrics.correlation import faithfulness_correlation, random_pixel_subsets, subset_sums
from salbench.metrics.ground_truth import auc_mask, relevance_mass, relevance_rank
from salbench.metrics.infidelity import attribution_dots, infidelity, infidelity_perturbations
from salbench.metrics.random_logit import classes_from_draws, other_classes, random_logit_similarity
from salbench.metrics.region import (
    aopc,
    irof,
    patch_labels,
    region_curves,
    region_ranks,
    region_relevance,
    removed_values,
    slic_labels,
)
from salbench.metrics.robustness import (
    gaussian_noise,
    linf_ball_noise,
    local_lipschitz,
    map_distances,
    perturbation_seeds,
    sensitivity,
    sensitivity_from_distances,
)

__all__ = [
    "aopc", "attribution_dots", "auc_mask", "classes_from_draws", "complexity", "confidence_change", "effective_complexity",
    "explanation_inputs", "faithfulness_correlation", "gaussian_noise", "infidelity", "infidelity_perturbations",
    "irof", "linf_ball_noise", "local_lipschitz", "map_distances", "normalize_by_max", "other_classes",
    "patch_labels", "perturbation_seeds", "random_logit_similarity", "random_pixel_subsets", "region_curves",
    "region_ranks", "region_relevance", "relevance_mass", "relevance_rank", "removed_values", "scale_maps",
    "sensitivity", "sensitivity_from_distances", "slic_labels", "sparseness", "subset_sums",
]
