"""SmoothGrad (Smilkov et al. 2017) and its squared and variance forms, around any method.

For image x with n samples of noise e_j ~ N(0, sigma^2), sigma = ``noise_level`` x (max x -
min x) (the image's range in the model's input space), and A the ``inner`` method's
attribution (default: the gradient, ``saliency``):

* ``smoothgrad``: mean_j A(x + e_j);
* ``smoothgrad_sq``: mean_j A(x + e_j)^2;
* ``vargrad``: mean_j A(x + e_j)^2 - (mean_j A(x + e_j))^2 (captum's ``NoiseTunnel``: the
  population variance).

``inner`` names any registered method (``guided_backprop``: SmoothGrad of guided backprop;
``integrated_gradients``, ``gradcam`` ...), built on the same model with ``inner_options``
(post-processing options excluded: SmoothGrad's own ``relu`` / ``channel_reduction`` /
``upsample`` apply to the aggregate; their defaults are the inner method's). ``attribute``
has the inner method's attribution shape.

Noise: the standard normal draws of sample j of an image come from
:func:`salbench.methods.draws.hashed_normal` on the input's device, stream
``mix64(mix64(seed * 1_000_003 + CRC-32 of the image's float32 bytes) + j)``: the same for an
image in any batch and on any device. The B x n noisy inputs go through the inner method in
chunks of at most ``batch_size``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from salbench.methods import create_method, register_method
from salbench.methods.base import POSTPROCESS_OPTIONS, Explainer, check_inputs
from salbench.methods.chunks import add_per_image, item_indices
from salbench.methods.draws import hashed_normal, image_seeds, stream_keys
from salbench.metrics.perturbation import equal_chunk


def smoothgrad_noise(x: Tensor, n_samples: int, noise_level: float, seed: int) -> Tensor:
    """x: [B, C, H, W] -> the noise [B, n_samples, C, H, W] SmoothGrad adds (every sample at
    once; :class:`SmoothGrad` draws the same values chunk by chunk)."""
    keys = stream_keys(image_seeds(x, seed), n_samples, x.device)
    sigma = noise_level * (x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1))
    noise = hashed_normal(keys.flatten(), tuple(x.shape[1:]), x.dtype).view(x.shape[0], n_samples, *x.shape[1:])
    return noise * sigma.view(-1, 1, 1, 1, 1)


class NoiseAggregate(Explainer):
    """Base of SmoothGrad, SmoothGrad^2 and VarGrad: ``aggregate`` is ``mean``, ``mean_square``
    or ``variance`` of the inner attributions over the noisy samples."""

    aggregate: str = "mean"

    def __init__(self, model: nn.Module, *, inner: str = "saliency", inner_options: Optional[Dict[str, Any]] = None,
                 n_samples: int = 50, noise_level: float = 0.15, seed: int = 0, batch_size: int = 64,
                 **postprocess: Any):
        inner_options = dict(inner_options or {})
        post = sorted(set(inner_options) & set(POSTPROCESS_OPTIONS))
        if post:
            raise ValueError(f"inner_options {post} are post-processing options of the inner method, which "
                             f"{self.name} does not apply; set them on {self.name} itself")
        self.inner_explainer = create_method(inner, model, **inner_options)
        self.default_postprocess = self.inner_explainer.default_postprocess  # the inner method's heatmap defaults
        super().__init__(model, **postprocess)
        if n_samples < 1 or batch_size < 1:
            raise ValueError(f"n_samples and batch_size must be >= 1; got {n_samples}, {batch_size}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0; got {noise_level}")
        self.inner, self.inner_options = inner, inner_options
        self.n_samples, self.noise_level, self.seed, self.batch_size = n_samples, float(noise_level), seed, batch_size

    @property
    def space(self) -> str:  # type: ignore[override]
        return self.inner_explainer.space

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> the aggregate of the inner attributions (their shape)."""
        target = check_inputs(x, target)
        x = x.detach()
        keys = stream_keys(image_seeds(x, self.seed), self.n_samples, x.device).flatten()
        sigma = self.noise_level * (x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1))
        count, chunk = x.shape[0] * self.n_samples, equal_chunk(self.n_samples, self.batch_size)
        total: Optional[Tensor] = None
        total_square: Optional[Tensor] = None
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            image, _ = item_indices(start, stop, self.n_samples, x.device)
            noise = hashed_normal(keys[start:stop], tuple(x.shape[1:]), x.dtype) * sigma[image].view(-1, 1, 1, 1)
            attribution = self.inner_explainer.attribute(x[image] + noise, target[image]).detach()
            if total is None:
                total = torch.zeros(x.shape[0], *attribution.shape[1:], device=x.device, dtype=attribution.dtype)
                total_square = torch.zeros_like(total)
            add_per_image(total, attribution, start, stop, self.n_samples)
            add_per_image(total_square, attribution * attribution, start, stop, self.n_samples)
        assert total is not None and total_square is not None
        mean, mean_square = total / self.n_samples, total_square / self.n_samples
        if self.aggregate == "mean":
            return mean
        if self.aggregate == "mean_square":
            return mean_square
        return mean_square - mean * mean


@register_method("smoothgrad")
class SmoothGrad(NoiseAggregate):
    """SmoothGrad: the mean inner attribution over noisy copies."""

    name = "smoothgrad"
    aggregate = "mean"


@register_method("smoothgrad_sq")
class SmoothGradSquared(NoiseAggregate):
    """SmoothGrad^2 (captum's ``smoothgrad_sq``): the mean squared inner attribution."""

    name = "smoothgrad_sq"
    aggregate = "mean_square"


@register_method("vargrad")
class VarGrad(NoiseAggregate):
    """VarGrad (Adebayo et al. 2018): the variance of the inner attribution over noisy copies."""

    name = "vargrad"
    aggregate = "variance"
