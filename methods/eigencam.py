"""Eigen-CAM (Muhammad & Yeasin 2020): the activation's projection on its first principal
component, no gradient.

For one image, X [h*w, K] holds A's pixels as rows, centred per channel (the mean over pixels
subtracted, as pytorch-grad-cam); v1 is X's first right singular vector and the map is X v1
[h, w] (= s1 u1). A singular vector's sign is arbitrary (pytorch-grad-cam keeps whatever its
SVD returns); salbench fixes it: the map is positively correlated with the channel-mean
activation map m = mean_k A^k, i.e. sum_ij map_ij m_ij >= 0 (ties: left as computed). The
decomposition is an eigendecomposition in float64 of the smaller Gram matrix (X X^T or X^T X),
the map cast back to A's dtype. The ReLU of the map is the post-processing step's (``relu``,
default on, as pytorch-grad-cam).
"""
from __future__ import annotations

import torch
from torch import Tensor

from salbench.methods import register_method
from salbench.methods.base import LayerExplainer
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassRequest, PassResult


def first_component_projection(activation: Tensor) -> Tensor:
    """activation [B, K, h, w] -> the projection [B, h, w] of the per-channel centred pixels on
    their first principal component, signed to correlate positively with the channel mean."""
    batch, channels, height, width = activation.shape
    pixels = activation.detach().double().flatten(2).transpose(1, 2)  # [B, hw, K]
    centred = pixels - pixels.mean(dim=1, keepdim=True)
    if height * width <= channels:
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # ascending
        projection = vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()  # s1 u1
    else:
        _, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        projection = (centred @ vectors[..., -1:])[..., 0]  # X v1
    correlation = (projection * pixels.mean(dim=2)).sum(dim=1, keepdim=True)
    projection = torch.where(correlation < 0, -projection, projection)
    return projection.reshape(batch, height, width).to(activation.dtype)


@register_method("eigencam")
class EigenCAM(LayerExplainer):
    """Eigen-CAM from the shared pass's activation at ``layer`` (a forward pass only)."""

    name = "eigencam"
    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(activations=frozenset({self.resolve_layer(x)}))

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, h, w] at ``layer``'s resolution."""
        return first_component_projection(result.activations[self.layer])
