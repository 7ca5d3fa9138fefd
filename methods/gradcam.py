"""Grad-CAM (Selvaraju et al. 2017), its counterfactual variant, and the gradient-weighted CAM
family base.

alpha_k^c = mean_{i,j} d y^c / d A^k_ij,  map = ReLU(sum_k alpha_k^c A^k), y^c the pre-softmax
score. Counterfactual Grad-CAM negates the gradients (alpha -> -alpha): regions whose removal
would raise the class score. Variants override one hook, :meth:`GradientCAM.channel_weights`;
a variant whose map is not a channel-weighted sum overrides the second hook,
:meth:`GradientCAM.cam_map`. The ReLU is the post-processing step's (``relu``, default on).
"""
from __future__ import annotations

import torch
from torch import Tensor

from salbench.methods import register_method
from salbench.methods.base import LayerExplainer
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassRequest, PassResult


class GradientCAM(LayerExplainer):
    """CAM-family base: map = sum_k w_k A^k with w from :meth:`channel_weights`.
    ``attribute``: [B, h, w] at the layer's resolution, before the ReLU; the heatmap is its ReLU
    (``relu``, default on) bilinearly upsampled (align_corners=False) to the input size."""

    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients: [B, K, h, w] -> weights [B, K]."""
        raise NotImplementedError

    def cam_map(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] (d y^c / d A) -> map [B, h, w]: the
        :meth:`channel_weights`-weighted sum of the activation's channels."""
        weights = self.channel_weights(activation, gradients)
        return torch.einsum("bk,bkhw->bhw", weights, activation)

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(layer_gradients=frozenset({self.resolve_layer(x)}))

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, h, w] from the shared pass's activation and d y / d A at ``layer``."""
        activation = self.spatial(result.activations[self.layer].detach())
        return self.cam_map(activation, result.layer_gradients[self.layer].detach())


@register_method("gradcam")
class GradCAM(GradientCAM):
    """Grad-CAM: channel weights are the spatial mean of d y^c / d A."""

    name = "gradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))


@register_method("counterfactual_gradcam")
class CounterfactualGradCAM(GradientCAM):
    """Counterfactual Grad-CAM (Selvaraju et al. 2017, sec. 5): weights from -d y^c / d A."""

    name = "counterfactual_gradcam"

    def channel_weights(self, activation: Tensor, gradients: Tensor) -> Tensor:
        return -gradients.mean(dim=(2, 3))
