"""Robustness of the maps to small input perturbations (registered ``sensitivity`` and
``local_lipschitz``). Both re-run the explainers on perturbed inputs (``Needs(explainers=True)``),
all methods of a batch in shared passes (:func:`salbench.metrics.perturbation.reexplain_in_chunks`).

* max- and avg-sensitivity, Yeh et al. 2019 ("On the (in)fidelity and sensitivity of
  explanations", NeurIPS): ``n`` inputs ``x + delta_k`` with ``delta_k`` uniform in the L-inf ball
  of radius ``r`` (normalized input space), the same class explained; per image
  ``max_k ||phi(x + delta_k) - phi(x)||_F / ||phi(x)||_F`` and the mean over ``k`` (the relative
  form captum's ``sensitivity_max`` and Quantus' Max/AvgSensitivity compute);
* local Lipschitz estimate, Alvarez-Melis & Jaakkola 2018 ("On the robustness of
  interpretability methods", WHI): ``max_k ||phi(x) - phi(x_k)||_2 / ||x - x_k||_2`` over ``n``
  Gaussian neighbours ``x_k = x + N(0, sigma^2)``.

``phi`` is the method's heatmap [H, W] (its post-processing included). Perturbation ``k`` of the
image at dataset position ``i`` is drawn from a CPU generator seeded with
``(seed * 1_000_003 + i) * 100_003 + k``: it depends neither on the batch nor on the device. The
distances are streamed per re-explanation chunk (no [B, n, H, W] maps are held).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import ExplainedBatch, Metric, Needs, ScoreInfo, image_seeds
from salbench.metrics.perturbation import capped_chunk, image_aligned_chunk, reexplain_in_chunks, seeded_draws

ITEM_STRIDE = 100_003  # perturbation k of an image: seed image_seed * ITEM_STRIDE + k


# --------------------------------------------------------------------------- perturbations
def perturbation_seeds(seeds: Tensor, count: int) -> Tensor:
    """Per-image seeds [B] -> per-perturbation seeds [B * count] (image-major)."""
    seeds = torch.as_tensor(seeds, device="cpu").long()
    return (seeds[:, None] * ITEM_STRIDE + torch.arange(count, device="cpu")[None]).flatten()


def linf_ball_noise(seeds: Tensor, shape: Any, radius: float, device: torch.device) -> Tensor:
    """[N, *shape]: one draw per seed, uniform in [-radius, radius) per element (the L-inf ball
    of captum's ``default_perturb_func`` and Quantus' ``uniform_noise``)."""
    return (seeded_draws(seeds, shape, "uniform", device=device) * 2 - 1) * radius


def gaussian_noise(seeds: Tensor, shape: Any, std: float, device: torch.device) -> Tensor:
    """[N, *shape]: one draw per seed, N(0, std^2) per element."""
    return seeded_draws(seeds, shape, "normal", device=device) * std


# --------------------------------------------------------------------------- pure functions
def map_distances(maps: Tensor, other: Tensor) -> Tensor:
    """maps, other [N, H, W] -> [N] float64: Frobenius norm of the difference."""
    return (maps.detach().double() - other.detach().double()).flatten(1).norm(dim=1)


def sensitivity_from_distances(distances: Tensor, norms: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """distances [B, n] (``||phi(x + delta_k) - phi(x)||``), norms [B] (``||phi(x)||``; None: not
    relative) -> ``{"max": [B], "avg": [B]}`` float64; a zero-norm map gives NaN."""
    distances = distances.double()
    if norms is not None:
        norms = norms.double().to(distances.device)[:, None]
        distances = torch.where(norms > 0, distances / torch.where(norms > 0, norms, 1.0), torch.nan)
    return {"max": distances.amax(1), "avg": distances.mean(1)}


def sensitivity(maps: Tensor, perturbed_maps: Tensor, relative: bool = True) -> Dict[str, Tensor]:
    """maps [B, H, W], perturbed_maps [B, n, H, W] (the maps of ``n`` perturbed inputs) ->
    ``{"max": [B], "avg": [B]}``: max- and avg-sensitivity (Yeh et al. 2019), relative to
    ``||phi(x)||_F`` when ``relative``."""
    count, samples = perturbed_maps.shape[:2]
    distances = map_distances(maps.repeat_interleave(samples, 0), perturbed_maps.flatten(0, 1)).view(count, samples)
    return sensitivity_from_distances(distances, maps.detach().double().flatten(1).norm(dim=1) if relative else None)


def local_lipschitz(maps: Tensor, perturbed_maps: Tensor, x: Tensor, perturbed_x: Tensor) -> Tensor:
    """maps [B, H, W], perturbed_maps [B, n, H, W], x [B, C, H, W], perturbed_x [B, n, C, H, W] ->
    [B] float64: ``max_k ||phi(x) - phi(x_k)||_2 / ||x - x_k||_2`` (Alvarez-Melis & Jaakkola 2018)."""
    count, samples = perturbed_maps.shape[:2]
    numerator = map_distances(maps.repeat_interleave(samples, 0), perturbed_maps.flatten(0, 1))
    denominator = (x.double().repeat_interleave(samples, 0) - perturbed_x.double().flatten(0, 1)).flatten(1).norm(dim=1)
    return (numerator / denominator).view(count, samples).amax(1)


# --------------------------------------------------------------------------- the metrics
class _Reexplaining(Metric):
    """Shared shell: perturb each image ``n_perturbations`` times, re-explain every method's
    class on the perturbed inputs in shared passes, stream one value per (method, image, k)."""

    needs = Needs(maps="target", explainers=True)
    noise = "uniform"

    def __init__(self, n_perturbations: int, seed: int, batch_size: int, max_images: Optional[int] = None):
        if n_perturbations < 1:
            raise ValueError(f"n_perturbations must be >= 1; got {n_perturbations}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if max_images is not None and max_images < 0:
            raise ValueError(f"max_images must be >= 0 or null; got {max_images}")
        self.n_perturbations, self.seed, self.batch_size = int(n_perturbations), int(seed), int(batch_size)
        self.max_images = max_images
        self._seen = 0

    def kept(self, count: int) -> int:
        """How many of the batch's first rows are scored (``max_images``: the costly re-explaining
        runs on the job's first images only; the other rows are NaN)."""
        keep = count if self.max_images is None else max(0, min(count, self.max_images - self._seen))
        self._seen += keep
        return keep

    def deltas(self, seeds: Tensor, shape: Any, device: torch.device) -> Tensor:
        raise NotImplementedError

    def item_values(self, explained: ExplainedBatch, value: Any) -> Dict[str, Tensor]:
        """{method: [B, n]} of ``value(method, maps [m, H, W], perturbed maps [m, H, W], deltas
        [m, C, H, W], rows [m]) -> [m]`` over every (image, k) item, image-major."""
        x = explained.inputs
        methods = list(explained.maps)
        if explained.explainers is None:
            raise ValueError(f"{self.name} re-runs the explainers: the batch carries none (Needs(explainers=True))")
        explainers = {m: explained.explainers[m] for m in methods}
        count, samples = self.kept(x.shape[0]), self.n_perturbations
        if count < x.shape[0]:
            out_all = {m: torch.full((x.shape[0], samples), float("nan"), dtype=torch.float64, device=x.device)
                       for m in methods}
            if count == 0:
                return out_all
        seeds = perturbation_seeds(image_seeds(explained, self.seed), samples)
        targets = explained.targets.to(x.device)
        out = {m: torch.empty(count * samples, dtype=torch.float64, device=x.device) for m in methods}
        current: Dict[str, Any] = {}

        def build(start: int, stop: int):
            rows = torch.arange(start, stop, device=x.device) // samples
            current["deltas"] = self.deltas(seeds[start:stop], x.shape[1:], x.device).to(x.dtype)
            current["rows"] = rows
            return x[rows] + current["deltas"], targets[rows]

        def read(maps: Dict[str, Tensor], start: int, stop: int) -> None:
            rows = current["rows"]
            for m in methods:
                out[m][start:stop] = value(m, explained.maps[m].to(x.device)[rows], maps[m], current["deltas"], rows)

        most = None if self.max_images is None else self.max_images * samples
        reexplain_in_chunks(explainers, count * samples, build, read,
                            chunk=image_aligned_chunk(samples, capped_chunk(self.batch_size, most)))
        if count < x.shape[0]:
            for m, v in out.items():
                out_all[m][:count] = v.view(count, samples)
            return out_all
        return {m: v.view(count, samples) for m, v in out.items()}


@register_metric("sensitivity")
class Sensitivity(_Reexplaining):
    """Max- and avg-sensitivity (Yeh et al. 2019; module docstring), lower is better.

    Options: ``n_perturbations`` per image, ``radius`` of the L-inf ball (normalized input
    space), ``relative`` (divide by ``||phi(x)||_F``, as captum and Quantus), ``seed``,
    ``batch_size`` (perturbed inputs per explanation pass), ``max_images`` (score only the job's
    first images: the rest NaN; null: all). Presets ``captum``
    (``sensitivity_max`` defaults: radius 0.02, 10 perturbations) and ``quantus``
    (MaxSensitivity / AvgSensitivity defaults: 0.2, 200).
    """

    name = "sensitivity"
    category = "robustness"
    presets = {"captum": {"radius": 0.02, "n_perturbations": 10, "relative": True},
               "quantus": {"radius": 0.2, "n_perturbations": 200, "relative": True}}
    scores = (ScoreInfo("max_sensitivity", False, "robustness"), ScoreInfo("avg_sensitivity", False, "robustness"))

    def __init__(self, n_perturbations: int = 10, radius: float = 0.02, relative: bool = True, seed: int = 0,
                 batch_size: int = 64, max_images: Optional[int] = None):
        super().__init__(n_perturbations, seed, batch_size, max_images)
        if not radius > 0:
            raise ValueError(f"radius must be > 0; got {radius}")
        self.radius, self.relative = float(radius), bool(relative)

    def deltas(self, seeds: Tensor, shape: Any, device: torch.device) -> Tensor:
        return linf_ball_noise(seeds, shape, self.radius, device)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "target (re-explained on each perturbed input)",
            "perturbation": "uniform_linf_ball_normalized_input_space",
            "radius": self.radius,
            "n_perturbations": self.n_perturbations,
            "distance": "frobenius_norm_of_heatmap_difference",
            "relative": "divided_by_frobenius_norm_of_the_map" if self.relative else False,
            "zero_map": "nan" if self.relative else None,
            "seed": self.seed,
            "seeding": "(seed * 1_000_003 + dataset position) * 100_003 + k",
            "max_images": self.max_images,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        distances = self.item_values(explained, lambda m, maps, perturbed, deltas, rows: map_distances(maps, perturbed))
        out = {}
        for method, values in distances.items():
            maps = explained.maps[method]
            norms = maps.detach().double().flatten(1).norm(dim=1) if self.relative else None
            result = sensitivity_from_distances(values, norms)
            out[method] = {"max_sensitivity": result["max"].float(), "avg_sensitivity": result["avg"].float()}
        return out


@register_metric("local_lipschitz")
class LocalLipschitz(_Reexplaining):
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018; module docstring), lower is
    better: ``n_perturbations`` Gaussian neighbours ``x + N(0, noise_std^2)`` (normalized input
    space) per image. Preset ``quantus`` (LocalLipschitzEstimate's defaults: std 0.1, 200
    samples, Euclidean distances)."""

    name = "local_lipschitz"
    category = "robustness"
    presets = {"quantus": {"noise_std": 0.1, "n_perturbations": 200}}
    scores = (ScoreInfo("local_lipschitz", False, "robustness"),)

    def __init__(self, n_perturbations: int = 200, noise_std: float = 0.1, seed: int = 0, batch_size: int = 64,
                 max_images: Optional[int] = None):
        super().__init__(n_perturbations, seed, batch_size, max_images)
        if not noise_std > 0:
            raise ValueError(f"noise_std must be > 0; got {noise_std}")
        self.noise_std = float(noise_std)

    def deltas(self, seeds: Tensor, shape: Any, device: torch.device) -> Tensor:
        return gaussian_noise(seeds, shape, self.noise_std, device)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "target (re-explained on each perturbed input)",
            "perturbation": "gaussian_normalized_input_space",
            "noise_std": self.noise_std,
            "n_perturbations": self.n_perturbations,
            "estimate": "max_k ||phi(x) - phi(x_k)||_2 / ||x - x_k||_2",
            "seed": self.seed,
            "seeding": "(seed * 1_000_003 + dataset position) * 100_003 + k",
            "max_images": self.max_images,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        def ratio(method: str, maps: Tensor, perturbed: Tensor, deltas: Tensor, rows: Tensor) -> Tensor:
            return map_distances(maps, perturbed) / deltas.double().flatten(1).norm(dim=1)

        values = self.item_values(explained, ratio)
        return {method: {"local_lipschitz": v.amax(1).float()} for method, v in values.items()}


__all__: List[str] = ["gaussian_noise", "linf_ball_noise", "local_lipschitz", "map_distances", "perturbation_seeds",
                      "sensitivity", "sensitivity_from_distances", "LocalLipschitz", "Sensitivity"]
