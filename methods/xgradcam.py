"""XGrad-CAM (Fu et al. 2020): channel weights w_k = sum_ij (A^k_ij / (sum_ab A^k_ab + 1e-7))
d y^c / d A^k_ij, as pytorch-grad-cam computes them; map = sum_k w_k A^k (y^c pre-softmax).
The ReLU of the map is the post-processing step's (``relu``, default on).
"""
from __future__ import annotations

from torch import Tensor

from salbench.methods import register_method
from salbench.methods.gradcam import GradientCAM

EPS = 1e-7  # pytorch-grad-cam's guard against channels that sum to zero


@register_method("xgradcam")
class XGradCAM(GradientCAM):
    """XGrad-CAM from the shared pass's activation and gradient at ``layer``."""

    name = "xgradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] -> weights [B, K]."""
        total = activation.sum(dim=(2, 3), keepdim=True)
        return (gradients * activation / (total + EPS)).sum(dim=(2, 3))
