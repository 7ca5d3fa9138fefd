"""Random-logit sanity check (Sixt et al. 2020, "When explanations lie: why many modified BP
attributions fail", ICML; registered ``random_logit``), beside the model-randomization check.

The map of the ground-truth class is compared with the map of a random other class of the same
image: a method whose map hardly changes with the explained class does not explain the class.
Per image, the other class is drawn uniformly from the ``K - 1`` other classes (``j`` uniform in
``0..K-2``, then ``j + 1`` when ``j >= label``: the draw rule of Quantus' RandomLogit), from a CPU
generator seeded with ``seed * 1_000_003 + dataset position`` (independent of the batch).
Similarities: Spearman rank correlation of ``|map|`` and of the signed map, and SSIM of the
per-image min-max normalized maps (skimage's defaults), as ``randomization``
(:func:`salbench.metrics.randomization.map_similarity`); lower is better. The other classes'
maps are re-explained for every method in one shared pass per chunk.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import ExplainedBatch, Metric, Needs, ScoreInfo, image_seeds
from salbench.metrics.perturbation import capped_chunk, reexplain_in_chunks
from salbench.metrics.randomization import SIMILARITIES, map_similarity


def classes_from_draws(draws: Tensor, targets: Tensor) -> Tensor:
    """draws [B] in ``0..K-2``, targets [B] -> the other class [B]: ``j + (j >= target)`` (the
    ``j``-th class of the list without the target, Quantus' rule)."""
    draws = draws.long().to(targets.device)
    return draws + (draws >= targets.long()).long()


def other_classes(targets: Tensor, num_classes: int, seeds: Tensor) -> Tensor:
    """targets [B] long, seeds [B] -> [B] long on the targets' device: a class != target drawn
    uniformly per image (``j ~ U{0..K-2}`` from a CPU generator seeded per image, then
    :func:`classes_from_draws`)."""
    if num_classes < 2:
        raise ValueError(f"random_logit needs a model with >= 2 classes; got {num_classes}")
    draws = []
    for seed in torch.as_tensor(seeds, device="cpu").tolist():
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        draws.append(int(torch.randint(0, num_classes - 1, (1,), generator=generator, device="cpu")))
    return classes_from_draws(torch.tensor(draws, dtype=torch.long, device="cpu"), targets)


def random_logit_similarity(maps: Tensor, other_maps: Tensor) -> Dict[str, Tensor]:
    """maps [B, H, W] (the explained class), other_maps [B, H, W] (another class) ->
    {``spearman_abs`` | ``spearman_signed`` | ``ssim``: [B]}."""
    return map_similarity(maps, other_maps)


@register_metric("random_logit")
class RandomLogit(Metric):
    """The random-logit check (module docstring): per image ``random_logit_<similarity>`` between
    the map of the ground-truth class and the map of a random other class (lower is better).
    Options: ``seed``; ``batch_size``: images re-explained per pass; ``max_images``: score only
    the job's first images (the rest NaN; null: all)."""

    name = "random_logit"
    category = "sanity"
    needs = Needs(maps="label", explainers=True)
    presets = {"sixt2020": {}}
    scores = tuple(ScoreInfo(f"random_logit_{s}", False, "sanity") for s in SIMILARITIES)

    def __init__(self, seed: int = 0, batch_size: int = 64, max_images: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if max_images is not None and max_images < 0:
            raise ValueError(f"max_images must be >= 0 or null; got {max_images}")
        self.seed, self.batch_size, self.max_images = int(seed), int(batch_size), max_images
        self._seen = 0

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "other_class": "uniform over the other classes: j ~ U{0..K-2}, j + (j >= label)",
            "seed": self.seed,
            "seeding": "seed * 1_000_003 + dataset position",
            "similarities": list(SIMILARITIES),
            "ssim": {"window": "uniform 7x7", "maps": "per-image min-max", "data_range": 1.0},
            "max_images": self.max_images,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        x, methods = explained.inputs, list(explained.maps)
        if explained.explainers is None:
            raise ValueError("random_logit re-runs the explainers: the batch carries none (Needs(explainers=True))")
        keep = x.shape[0] if self.max_images is None else max(0, min(x.shape[0], self.max_images - self._seen))
        self._seen += keep
        others = other_classes(explained.targets.to(x.device), explained.logits.shape[1],
                               image_seeds(explained, self.seed))
        other_maps = {m: torch.empty_like(explained.maps[m], device=x.device) for m in methods}

        def build(start: int, stop: int):
            return x[start:stop], others[start:stop]

        def read(maps: Dict[str, Tensor], start: int, stop: int) -> None:
            for m in methods:
                other_maps[m][start:stop] = maps[m]

        reexplain_in_chunks({m: explained.explainers[m] for m in methods}, keep, build, read,
                          chunk=capped_chunk(self.batch_size, self.max_images))  # fixed pass shape: values do not depend on the batch
        out = {}
        for m in methods:
            values = random_logit_similarity(explained.maps[m].to(x.device)[:keep], other_maps[m][:keep])
            out[m] = {f"random_logit_{s}": torch.cat([v, torch.full((x.shape[0] - keep,), float("nan"), device=x.device,
                                                                     dtype=v.dtype)]) for s, v in values.items()}
        return out
