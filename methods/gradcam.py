"""Grad-CAM (Selvaraju et al. 2017) and the gradient-weighted CAM family base.

alpha_k^c = mean_{i,j} d y^c / d A^k_ij,  map = ReLU(sum_k alpha_k^c A^k), y^c the pre-softmax
score. Variants override one hook, :meth:`GradientCAM.channel_weights`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from salbench.methods.base import LayerExplainer, Postprocess, preserved_model_state


class GradientCAM(LayerExplainer):
    """CAM-family base: map = sum_k w_k A^k with w from :meth:`channel_weights`, then the
    optional ReLU. ``attribute``: [B, h, w] at the layer's resolution."""

    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients: [B, K, h, w] -> weights [B, K]."""
        raise NotImplementedError

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        with preserved_model_state(self.model):
            activation, scores = self.forward_with_activation(x, target)
            # autograd.grad leaves parameter .grad untouched; images are independent, so the
            # gradient of the summed scores is each image's own gradient.
            (gradients,) = torch.autograd.grad(scores.sum(), activation)
        weights = self.channel_weights(activation.detach(), gradients)
        maps = (weights[:, :, None, None] * activation.detach()).sum(dim=1)
        return maps.clamp_min(0) if self.postprocess.relu else maps


class GradCAM(GradientCAM):
    """Grad-CAM: channel weights are the spatial mean of d y^c / d A."""

    name = "gradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))
