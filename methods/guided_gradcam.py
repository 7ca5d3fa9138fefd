"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop x Grad-CAM upsampled to the input.

Built from a :class:`~salbench.methods.gradcam.GradCAM` and a
:class:`~salbench.methods.gradients.GuidedBackprop` (composition, as captum's ``GuidedGradCam``),
sharing one forward pass: the rectifiers record a switchable backward rule, the first backward
pass (true gradients) gives Grad-CAM's d y^c / d A, the second (guided rule) the pixel gradients.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from salbench.methods.base import (
    Explainer,
    Postprocess,
    capture_layer,
    check_inputs,
    class_scores,
    preserved_model_state,
    upsample,
)
from salbench.methods.gradcam import GradCAM
from salbench.methods.gradients import GuidedBackprop
from salbench.methods.rectifiers import rectifier_backward
from salbench.methods.shared import PassRequest, PassResult


class GuidedGradCAM(Explainer):
    """``attribute``: guided backprop [B, C, H, W] x Grad-CAM (with ReLU) at the layer, upsampled
    to the input by ``upsample`` (default bilinear, align_corners=False; captum's default is
    nearest). Heatmap: max over channels of |attribution|.

    ``layer``: Grad-CAM's layer (default: the model's target layer)."""

    name = "guided_gradcam"
    default_postprocess = Postprocess(channel_reduction="max_abs", upsample="bilinear", align_corners=False)

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        self.gradcam = GradCAM(model, layer=layer, relu=True)
        self.guided_backprop = GuidedBackprop(model)

    @property
    def layer(self) -> Optional[str]:
        return self.gradcam.layer

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, C, H, W] on x's device."""
        target = check_inputs(x, target)
        layer = self.gradcam.resolve_layer(x)
        with preserved_model_state(self.model):
            for param in self.model.parameters():
                param.requires_grad_(False)
            leaf = x.detach().requires_grad_(True)
            with torch.enable_grad():
                with capture_layer(self.model, layer) as capture, rectifier_backward("gradient") as rule:
                    logits = self.model(leaf)
                total = class_scores(logits, target).sum()
            if capture.activation is None or capture.activation.ndim != 4:
                raise ValueError(f"layer {layer!r} gave no [B, K, h, w] output in the forward pass")
            (layer_gradients,) = torch.autograd.grad(total, capture.activation, retain_graph=True)
            rule.rule = self.guided_backprop.rule
            (pixel_gradients,) = torch.autograd.grad(total, leaf)
        return self._combine(pixel_gradients, self.gradcam.cam_from_gradients(capture.activation, layer_gradients))

    def _combine(self, pixel_gradients: Tensor, cam: Tensor) -> Tensor:
        """guided gradients [B, C, H, W] x Grad-CAM [B, h, w] upsampled -> [B, C, H, W]."""
        cam = upsample(cam, tuple(pixel_gradients.shape[-2:]), self.postprocess.upsample, self.postprocess.align_corners)
        return pixel_gradients * cam[:, None]

    def pass_request(self, x: Tensor) -> PassRequest:
        return self.gradcam.pass_request(x) | self.guided_backprop.pass_request(x)

    def from_pass(self, result: PassResult) -> Tensor:
        """Reuses the shared pass's guided input gradients and Grad-CAM layer gradients."""
        return self._combine(self.guided_backprop.from_pass(result), self.gradcam.from_pass(result))

    def options(self) -> Dict[str, Any]:
        return {**super().options(), "layer": self.layer}
