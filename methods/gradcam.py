"""Grad-CAM (Selvaraju et al. 2017), its counterfactual variant, and the gradient-weighted CAM
family base.

alpha_k^c = mean_{i,j} d y^c / d A^k_ij,  map = ReLU(sum_k alpha_k^c A^k), y^c the pre-softmax
score. Counterfactual Grad-CAM negates the gradients (alpha -> -alpha): regions whose removal
would raise the class score. Variants override one hook, :meth:`GradientCAM.channel_weights`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from salbench.methods.base import LayerExplainer, Postprocess, check_inputs, preserved_model_state
from salbench.methods.shared import PassRequest, PassResult


class GradientCAM(LayerExplainer):
    """CAM-family base: map = sum_k w_k A^k with w from :meth:`channel_weights`, then the
    optional ReLU (``relu``, default on). ``attribute``: [B, h, w] at the layer's resolution;
    the heatmap is its bilinear upsampling (align_corners=False) to the input size."""

    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients: [B, K, h, w] -> weights [B, K]."""
        raise NotImplementedError

    def cam_from_gradients(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] (d y^c / d A) -> map [B, h, w] (ReLU if ``relu``)."""
        activation = activation.detach()
        weights = self.channel_weights(activation, gradients.detach())
        maps = torch.einsum("bk,bkhw->bhw", weights, activation)
        return maps.clamp_min(0) if self.postprocess.relu else maps

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, h, w] at the layer's resolution."""
        target = check_inputs(x, target)
        with preserved_model_state(self.model):
            activation, scores = self.forward_with_activation(x, target)
            # autograd.grad leaves parameter .grad untouched; images are independent, so the
            # gradient of the summed scores is each image's own gradient.
            (gradients,) = torch.autograd.grad(scores.sum(), activation)
        return self.cam_from_gradients(activation, gradients)

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(layer_gradients=frozenset({self.resolve_layer(x)}))

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, h, w] from the shared pass's activation and d y / d A at ``layer``."""
        return self.cam_from_gradients(result.activations[self.layer], result.layer_gradients[self.layer])


class GradCAM(GradientCAM):
    """Grad-CAM: channel weights are the spatial mean of d y^c / d A."""

    name = "gradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))


class CounterfactualGradCAM(GradientCAM):
    """Counterfactual Grad-CAM (Selvaraju et al. 2017, sec. 5): weights from -d y^c / d A."""

    name = "counterfactual_gradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        return -gradients.mean(dim=(2, 3))
