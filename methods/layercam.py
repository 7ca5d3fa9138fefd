"""LayerCAM (Jiang et al. 2021): element-wise weights, map = sum_k ReLU(d y^c / d A^k) * A^k
(y^c pre-softmax), as pytorch-grad-cam. The ReLU of the map is the post-processing step's
(``relu``, default on).
"""
from __future__ import annotations

from torch import Tensor

from salbench.methods import register_method
from salbench.methods.gradcam import GradientCAM


@register_method("layercam")
class LayerCAM(GradientCAM):
    """LayerCAM from the shared pass's activation and gradient at ``layer`` (overrides the
    element-wise hook :meth:`~salbench.methods.gradcam.GradientCAM.cam_map`)."""

    name = "layercam"

    def cam_map(self, activation: Tensor, gradients: Tensor) -> Tensor:
        """activation, gradients [B, K, h, w] -> map [B, h, w]."""
        return (gradients.clamp_min(0) * activation).sum(dim=1)
