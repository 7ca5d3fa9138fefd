"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop x ReLU(Grad-CAM) upsampled to the input.

Built from a :class:`~salbench.methods.gradcam.GradCAM` and a
:class:`~salbench.methods.gradients.GuidedBackprop` (composition, as captum's ``GuidedGradCam``),
sharing one forward pass: the rectifiers record a switchable backward rule, the first backward
pass (true gradients) gives Grad-CAM's d y^c / d A, the second (guided rule) the pixel gradients.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer
from salbench.methods.gradcam import GradCAM
from salbench.methods.gradients import GuidedBackprop
from salbench.methods.postprocess import Postprocess, upsample
from salbench.methods.shared import PassRequest, PassResult


@register_method("guided_gradcam")
class GuidedGradCAM(Explainer):
    """``attribute``: guided backprop [B, C, H, W] x ReLU(Grad-CAM) at the layer, upsampled to
    the input by ``upsample`` (default bilinear, align_corners=False; captum's default is
    nearest). Heatmap: max over channels of |attribution|.

    ``layer``: Grad-CAM's layer (default: the model's target layer)."""

    name = "guided_gradcam"
    default_postprocess = Postprocess(channel_reduction="max_abs", upsample="bilinear", align_corners=False)

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        self.gradcam = GradCAM(model, layer=layer)
        self.guided_backprop = GuidedBackprop(model)

    @property
    def layer(self) -> Optional[str]:
        return self.gradcam.layer

    def pass_request(self, x: Tensor) -> PassRequest:
        return self.gradcam.pass_request(x) | self.guided_backprop.pass_request(x)

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, C, H, W] from the shared pass's guided input gradients and Grad-CAM layer gradients."""
        pixel_gradients = self.guided_backprop.from_pass(result)
        cam = self.gradcam.from_pass(result).clamp_min(0)  # Guided Grad-CAM multiplies by ReLU(Grad-CAM)
        cam = upsample(cam, tuple(pixel_gradients.shape[-2:]), self.postprocess.upsample, self.postprocess.align_corners)
        return pixel_gradients * cam[:, None]
