"""Grad-CAM++ (Chattopadhyay et al. 2018): channel weights from the closed form of eq. 19, as
pytorch-grad-cam computes them.

With g = d y^c / d A^k_ij (y^c the pre-softmax score; the paper's exponential readout makes the
higher derivatives powers of g):

    a^k_ij = g^2 / (2 g^2 + (sum_ab A^k_ab) g^3 + 1e-6),  a^k_ij = 0 where g = 0,
    w_k = sum_ij ReLU(g) a^k_ij,  map = sum_k w_k A^k.

The ReLU of the map is the post-processing step's (``relu``, default on).
"""
from __future__ import annotations

import torch
from torch import Tensor

from salbench.methods import register_method
from salbench.methods.gradcam import GradientCAM

EPS = 1e-6  # pytorch-grad-cam's guard in the denominator of a^k_ij


@register_method("gradcampp")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ from the shared pass's activation and gradient at ``layer``."""

    name = "gradcampp"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] -> weights [B, K]."""
        squared = gradients.pow(2)
        total = activation.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + total * squared * gradients + EPS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (gradients.clamp_min(0) * alpha).sum(dim=(2, 3))
