"""Integrated Gradients (Sundararajan et al. 2017) with captum's integration rules.

    IG(x) = (x - x') * sum_j s_j d y^c / d x (x' + a_j (x - x')),

y^c the pre-softmax score, x' the ``baseline`` (a constant in the model's normalized input
space; 0 = the dataset mean), (a_j, s_j) the nodes and weights of ``integration`` with
``n_steps`` nodes, as captum's ``approximation_methods``:

* ``gausslegendre`` (default, as captum): Gauss-Legendre nodes on [0, 1], a_j = (1 + t_j) / 2,
  s_j = w_j / 2 (numpy's ``leggauss``);
* ``riemann_left`` a_j = j / n, ``riemann_right`` a_j = (j + 1) / n, ``riemann_middle``
  a_j = (j + 1/2) / n, all s_j = 1 / n; ``riemann_trapezoid`` a_j = j / (n - 1), s_j = 1 / n
  with half weight at both ends (j = 0..n-1); the nodes in float32 as ``torch.linspace``
  computes them (captum's values, to the bit).

The B x n_steps interpolated inputs go through one forward and one backward pass per chunk of
at most ``batch_size`` (the shared pass's true-gradient rule,
:func:`salbench.methods.shared.shared_pass`). ``attribute``: [B, C, H, W]; the heatmap is the
signed sum over channels (completeness: the map sums to about y^c(x) - y^c(x')).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs
from salbench.methods.chunks import add_per_image, item_indices
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassRequest, shared_pass
from salbench.metrics.perturbation import equal_chunk

INTEGRATIONS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def integration_rule(integration: str, n_steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """(alphas [n], step sizes [n]) float64 of captum's rule ``integration`` with ``n_steps`` nodes."""
    if integration not in INTEGRATIONS:
        raise ValueError(f"unknown integration {integration!r}; valid: {', '.join(INTEGRATIONS)}")
    minimum = 1 if integration == "gausslegendre" else 2  # captum's bounds
    if n_steps < minimum:
        raise ValueError(f"{integration} needs n_steps >= {minimum}; got {n_steps}")
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    steps = np.full(n_steps, 1.0 / n_steps)
    if integration == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
    first, last = {"riemann_left": (0.0, 1 - 1 / n_steps), "riemann_right": (1 / n_steps, 1.0),
                   "riemann_middle": (1 / (2 * n_steps), 1 - 1 / (2 * n_steps)),
                   "riemann_trapezoid": (0.0, 1.0)}[integration]
    # captum's Riemann nodes are float32 torch.linspace values: the same here, to the bit (a node
    # that moves by one float32 step can flip a ReLU gate on the path)
    alphas = torch.linspace(first, last, n_steps, dtype=torch.float32, device="cpu").double().numpy()
    return alphas, steps


@register_method("integrated_gradients")
class IntegratedGradients(Explainer):
    """Integrated Gradients. ``n_steps``, ``integration`` (captum's rule names), ``baseline`` (a
    constant in the model's input space), ``batch_size`` (interpolated inputs per pass)."""

    name = "integrated_gradients"
    default_postprocess = Postprocess(channel_reduction="sum", upsample="bilinear")

    def __init__(self, model: nn.Module, *, n_steps: int = 50, integration: str = "gausslegendre", baseline: float = 0.0,
                 batch_size: int = 64, **postprocess: Any):
        super().__init__(model, **postprocess)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        integration_rule(integration, n_steps)  # checks both
        self.n_steps, self.integration, self.baseline, self.batch_size = n_steps, integration, float(baseline), batch_size

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, C, H, W] on x's device."""
        target = check_inputs(x, target)
        x = x.detach()
        alphas, steps = integration_rule(self.integration, self.n_steps)
        alphas = torch.tensor(alphas, device=x.device, dtype=x.dtype)
        steps = torch.tensor(steps, device=x.device, dtype=x.dtype)
        baseline = torch.full_like(x[:1], self.baseline)
        total = torch.zeros_like(x)
        count, chunk = x.shape[0] * self.n_steps, equal_chunk(self.n_steps, self.batch_size)
        request = PassRequest(input_rules=frozenset({"gradient"}))
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            image, step = item_indices(start, stop, self.n_steps, x.device)
            scale = alphas[step].view(-1, 1, 1, 1)
            path = baseline + scale * (x[image] - baseline)
            gradients = shared_pass(self.model, path, target[image], request).input_gradients["gradient"]
            add_per_image(total, gradients * steps[step].view(-1, 1, 1, 1), start, stop, self.n_steps)
        return total * (x - baseline)
