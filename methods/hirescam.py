"""HiResCAM (Draelos & Carin 2020): map = sum_k (d y^c / d A^k) * A^k, the element-wise product
summed over channels (y^c pre-softmax), as pytorch-grad-cam. Equal to Grad-CAM where the
gradient is constant over space (a global-average-pooling + linear head right after A). The
ReLU of the map is the post-processing step's (``relu``, default on).
"""
from __future__ import annotations

from torch import Tensor

from salbench.methods import register_method
from salbench.methods.gradcam import GradientCAM


@register_method("hirescam")
class HiResCAM(GradientCAM):
    """HiResCAM from the shared pass's activation and gradient at ``layer`` (overrides the
    element-wise hook :meth:`~salbench.methods.gradcam.GradientCAM.cam_map`)."""

    name = "hirescam"

    def cam_map(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] -> map [B, h, w]."""
        return (gradients * activation).sum(dim=1)
