"""Explanation infidelity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of
explanations", NeurIPS; registered ``infidelity``).

``INFD(phi, f, x) = E_I[(I^T phi(x) - (f(x) - f(x - I)))^2]`` over random perturbations ``I``,
estimated with ``n_perturbations`` draws per image (lower is better). ``phi`` is the heatmap
[H, W], applied to every channel: ``I^T phi = sum_{c,h,w} I_chw phi_hw`` (captum's
``infidelity`` with the map repeated over the channels).

Presets (where captum and the authors' code differ, captum issues #613 and #1018):

* ``captum``: ``I ~ N(0, 0.003^2)`` per element in normalized input space, ``x - I`` evaluated
  (the example of ``captum.metrics.infidelity``), no normalization (captum's default
  ``normalize=False``: the value scales with the map's magnitude);
* ``paper`` (the authors' ``infid_sen_utils.get_exp_infid``, Gaussian setting): the perturbed
  input is a noisy baseline, ``x - I = clip(N(0, 0.2^2), 0, 1)`` per pixel and channel in [0, 1]
  image space (then the model's normalization), so ``I = x - x_noisy``; the map is first scaled
  by the optimal ``beta = E[I^T phi (f(x) - f(x - I))] / E[(I^T phi)^2]`` (captum's
  ``normalize=True``), which makes the score invariant to the map's scale.

The class score is the logit (the model's output, as both references). Draws: perturbation
``k`` of the image at dataset position ``i`` from a CPU generator seeded with
``(seed * 1_000_003 + i) * 100_003 + k``. The ``B * n`` perturbed inputs do not depend on the
map: every method shares them (one forward each).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice, image_seeds
from salbench.metrics.perturbation import AUTOCAST, class_readout, forward_in_chunks, image_aligned_chunk
from salbench.metrics.robustness import gaussian_noise, perturbation_seeds

PERTURBATIONS = ("gaussian", "noisy_baseline")
SCORES = ("logit", "softmax")


def infidelity_perturbations(x: Tensor, seeds: Tensor, kind: str, noise_std: float,
                             normalize: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """x [N, C, H, W] (normalized inputs, one per perturbation), seeds [N] -> ``I`` [N, C, H, W]:
    ``gaussian``: N(0, noise_std^2) per element; ``noisy_baseline``: ``x - normalize(clip(N(0,
    noise_std^2), 0, 1))`` (``normalize``: the model's normalization of [0, 1] images)."""
    check_choice("perturbation", kind, PERTURBATIONS)
    noise = gaussian_noise(seeds, x.shape[1:], noise_std, x.device).to(x.dtype)
    if kind == "gaussian":
        return noise
    if normalize is None:
        raise ValueError("the noisy_baseline perturbation needs the model's normalization of [0, 1] images")
    return x - normalize(noise.clamp(0.0, 1.0))


def attribution_dots(maps: Tensor, perturbations: Tensor) -> Tensor:
    """maps [N, H, W], perturbations [N, C, H, W] -> [N] float64: ``sum_{c,h,w} I_chw phi_hw``."""
    return (perturbations.double().sum(1) * maps.double()).flatten(1).sum(1)


def infidelity(dots: Tensor, drops: Tensor, normalize: bool = False) -> Tensor:
    """dots [B, n] (``I^T phi``), drops [B, n] (``f(x) - f(x - I)``) -> [B] float64:
    ``mean_k (dots - drops)^2``, or with ``normalize`` ``mean_k (beta dots - drops)^2`` with the
    optimal ``beta = mean(dots drops) / mean(dots^2)`` (0 when every dot is 0)."""
    dots, drops = dots.double(), drops.double()
    if normalize:
        energy = (dots * dots).mean(1, keepdim=True)
        beta = torch.where(energy > 0, (dots * drops).mean(1, keepdim=True) / torch.where(energy > 0, energy, 1.0), 0.0)
        dots = beta * dots
    return ((dots - drops) ** 2).mean(1)


@register_metric("infidelity")
class Infidelity(TracksClass, Metric):
    """Explanation infidelity (module docstring), lower is better.

    Options: ``n_perturbations`` per image (the Monte-Carlo sample size: captum's default 10, the
    authors' code 10000), ``perturbation`` (``gaussian`` | ``noisy_baseline``), ``noise_std``,
    ``normalize`` (optimal scaling of the map), ``target``, ``score`` (``logit`` | ``softmax``),
    ``seed``, ``batch_size``, ``autocast``."""

    name = "infidelity"
    category = "faithfulness"
    presets = {
        "paper": {"perturbation": "noisy_baseline", "noise_std": 0.2, "normalize": True, "score": "logit"},
        "captum": {"perturbation": "gaussian", "noise_std": 0.003, "normalize": False, "score": "logit"},
    }
    scores = (ScoreInfo("infidelity", False, "faithfulness"),)

    def __init__(self, n_perturbations: int = 100, perturbation: str = "noisy_baseline", noise_std: float = 0.2,
                 normalize: bool = True, target: str = "predicted", score: str = "logit", seed: int = 0,
                 batch_size: int = 256, autocast: Optional[str] = None):
        check_choice("perturbation", perturbation, PERTURBATIONS)
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if n_perturbations < 1 or batch_size < 1 or not noise_std > 0:
            raise ValueError(f"need n_perturbations >= 1, batch_size >= 1, noise_std > 0; got {n_perturbations}, "
                             f"{batch_size}, {noise_std}")
        self.n_perturbations, self.perturbation, self.noise_std = int(n_perturbations), perturbation, float(noise_std)
        self.normalize, self.target, self.score = bool(normalize), target, score
        self.seed, self.batch_size, self.autocast = int(seed), int(batch_size), autocast

    def protocol(self) -> Dict[str, Any]:
        return {
            "target": self.target,
            "score": self.score,
            "n_perturbations": self.n_perturbations,
            "perturbation": self.perturbation,
            "perturbed_input": "x - I, I ~ N(0, std^2) (normalized space)" if self.perturbation == "gaussian"
            else "clip(N(0, std^2), 0, 1) in [0, 1] image space, normalized; I = x - that",
            "noise_std": self.noise_std,
            "normalize": "optimal_scaling_beta" if self.normalize else False,
            "dot": "sum over channels and pixels of I * map",
            "seed": self.seed,
            "seeding": "(seed * 1_000_003 + dataset position) * 100_003 + k",
            "autocast": self.autocast,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        x = explained.inputs
        model = explained.classifier
        target = self.tracked_class(explained)
        count, samples = x.shape[0], self.n_perturbations
        seeds = perturbation_seeds(image_seeds(explained, self.seed), samples)
        normalize = getattr(explained.model, "normalize", None)
        maps = {m: v.to(x.device) for m, v in explained.maps.items()}
        dots = {m: torch.empty(count * samples, dtype=torch.float64, device=x.device) for m in maps}

        def build(start: int, stop: int) -> Tensor:  # items: (image, k), image-major
            rows = torch.arange(start, stop, device=x.device) // samples
            perturbation = infidelity_perturbations(x[rows], seeds[start:stop], self.perturbation, self.noise_std,
                                                    normalize)
            for m, values in maps.items():
                dots[m][start:stop] = attribution_dots(values[rows], perturbation)
            return x[rows] - perturbation

        def read(logits: Tensor, start: int, stop: int) -> Tensor:
            rows = torch.arange(start, stop, device=x.device) // samples
            return class_readout(logits, target[rows], self.score)

        perturbed = forward_in_chunks(model, count * samples, build, read, device=x.device,
                                      chunk=image_aligned_chunk(samples, self.batch_size), autocast=self.autocast)
        clean = class_readout(explained.logits.float(), target, self.score)
        drops = clean[:, None].double() - perturbed.view(count, samples).double()
        out = {}
        for method, values in maps.items():
            value = infidelity(dots[method].view(count, samples), drops, self.normalize)
            bad = torch.isnan(values).flatten(1).any(1)
            out[method] = {"infidelity": torch.where(bad, torch.nan, value).float()}
        return out
