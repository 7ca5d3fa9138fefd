"""Faithfulness correlation (Bhatt et al. 2020, "Evaluating and aggregating feature-based model
explanations", IJCAI; registered ``faithfulness_correlation``).

For ``n_runs`` random subsets ``S`` of ``subset_size`` pixels of an image, the pixels of ``S``
(all channels) are set to a baseline value and the drop of the class score ``f(x) - f(x_S)`` is
paired with the map's sum over ``S``; the score is the Pearson correlation of the two over the
runs (higher is better; NaN when either is constant). The subsets of the image at dataset
position ``i`` come from a CPU generator seeded with ``seed * 1_000_003 + i`` (``randperm`` per
run), so they depend neither on the batch nor on the device, and they do not depend on the map:
the ``B * n_runs`` perturbed inputs of a batch are shared by every method (one forward each).

Quantus' FaithfulnessCorrelation draws ``subset_size`` *elements* of the flattened [C, H, W]
input (channels of a pixel separately); salbench draws pixels (docs/metrics.md).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice, image_seeds
from salbench.metrics.perturbation import AUTOCAST, class_readout, forward_in_chunks, image_aligned_chunk
from salbench.metrics.region import BASELINES, removed_values

SCORES = ("softmax", "logit")


def random_pixel_subsets(seeds: Tensor, num_pixels: int, subset_size: int, runs: int,
                         device: Optional[torch.device] = None) -> Tensor:
    """seeds [B] -> [B, runs, subset_size] long: per image and run, ``subset_size`` distinct
    flat pixel indices (the first entries of a ``randperm`` of one seeded CPU generator per image)."""
    if not 1 <= subset_size <= num_pixels:
        raise ValueError(f"subset_size must be in [1, {num_pixels}]; got {subset_size}")
    out = torch.empty(len(seeds), runs, subset_size, dtype=torch.long, device="cpu")
    for row, seed in enumerate(torch.as_tensor(seeds, device="cpu").tolist()):
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        for run in range(runs):
            out[row, run] = torch.randperm(num_pixels, generator=generator, device="cpu")[:subset_size]
    return out.to(device)


def subset_sums(maps: Tensor, subsets: Tensor) -> Tensor:
    """maps [B, H, W], subsets [B, R, k] flat pixel indices -> [B, R] float64: the map's sum over
    each subset."""
    flat = maps.detach().double().flatten(1)
    return flat.gather(1, subsets.flatten(1)).view(subsets.shape).sum(2)


def faithfulness_correlation(attribution_sums: Tensor, score_drops: Tensor) -> Tensor:
    """attribution_sums [B, R], score_drops [B, R] (``f(x) - f(x_S)``) -> [B] float64: Pearson
    correlation over the runs (Bhatt et al. 2020); NaN when either row is constant."""
    a, b = attribution_sums.double(), score_drops.double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(1) / torch.where(denominator > 0, denominator, 1.0), torch.nan)


@register_metric("faithfulness_correlation")
class FaithfulnessCorrelation(TracksClass, Metric):
    """Faithfulness correlation (module docstring), higher is better.

    Options: ``subset_size`` (pixels per subset), ``n_runs``, ``baseline`` (the value removed
    pixels take: ``black`` = the image's minimum, Quantus' default; ``zero``, ``mean``,
    ``uniform``: as ``region_perturbation``), ``target``, ``score`` (``softmax`` | ``logit``),
    ``seed``, ``batch_size``, ``autocast``. Preset ``quantus`` (FaithfulnessCorrelation's
    defaults: 224 pixels, 100 runs, black)."""

    name = "faithfulness_correlation"
    category = "faithfulness"
    presets = {"quantus": {"subset_size": 224, "n_runs": 100, "baseline": "black"}}
    scores = (ScoreInfo("faithfulness_correlation", True, "faithfulness"),)

    def __init__(self, subset_size: int = 224, n_runs: int = 100, baseline: str = "black", target: str = "predicted",
                 score: str = "softmax", seed: int = 0, batch_size: int = 256, autocast: Optional[str] = None):
        check_choice("baseline", baseline, BASELINES)
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if subset_size < 1 or n_runs < 2 or batch_size < 1:
            raise ValueError(f"need subset_size >= 1, n_runs >= 2 (a correlation), batch_size >= 1; got "
                             f"{subset_size}, {n_runs}, {batch_size}")
        self.subset_size, self.n_runs, self.baseline = int(subset_size), int(n_runs), baseline
        self.target, self.score, self.seed = target, score, int(seed)
        self.batch_size, self.autocast = int(batch_size), autocast

    def protocol(self) -> Dict[str, Any]:
        return {
            "target": self.target,
            "score": self.score,
            "subset_size": self.subset_size,
            "subset_unit": "pixel (all channels)",
            "n_runs": self.n_runs,
            "baseline": self.baseline,
            "correlation": "pearson over runs of (sum of the map over S, f(x) - f(x_S)) (bhatt2020)",
            "seed": self.seed,
            "seeding": "seed * 1_000_003 + dataset position; randperm per run",
            "autocast": self.autocast,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        x = explained.inputs
        model = explained.classifier
        target = self.tracked_class(explained)
        count, _, height, width = x.shape
        seeds = image_seeds(explained, self.seed)
        subsets = random_pixel_subsets(seeds, height * width, self.subset_size, self.n_runs, x.device)
        removed = removed_values(x, self.baseline, seeds + 1)  # uniform values: a stream apart from the subsets
        runs = self.n_runs

        def build(start: int, stop: int) -> Tensor:  # items: (image, run), image-major
            item = torch.arange(start, stop, device=x.device)
            rows = item // runs
            mask = torch.zeros(stop - start, height * width, dtype=torch.bool, device=x.device)
            mask.scatter_(1, subsets[rows, item % runs], True)
            return torch.where(mask.view(-1, 1, height, width), removed[rows], x[rows])

        def read(logits: Tensor, start: int, stop: int) -> Tensor:
            return class_readout(logits, target[torch.arange(start, stop, device=x.device) // runs], self.score)

        perturbed = forward_in_chunks(model, count * runs, build, read, device=x.device,
                                      chunk=image_aligned_chunk(runs, self.batch_size), autocast=self.autocast)
        clean = class_readout(explained.logits.float(), target, self.score)
        drops = clean[:, None].double() - perturbed.view(count, runs).double()
        out = {}
        for method, maps in explained.maps.items():
            maps = maps.to(x.device)
            value = faithfulness_correlation(subset_sums(maps, subsets), drops)
            bad = torch.isnan(maps).flatten(1).any(1)
            out[method] = {"faithfulness_correlation": torch.where(bad, torch.nan, value).float()}
        return out

