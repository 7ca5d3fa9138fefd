"""Pixel-space gradient methods: saliency, guided backprop, deconvnet.

* Saliency (Simonyan et al. 2014): d y^c / d x; heatmap = max over channels of |grad|.
* Guided backprop (Springenberg et al. 2015): the gradient with ReLU(g) * 1[x > 0] at every
  rectifier.
* Deconvnet (Zeiler & Fergus 2014): the gradient with ReLU(g) at every rectifier.

``attribute`` returns [B, C, H, W] (signed); the heatmap [B, H, W] is the channel-wise max of the
absolute value (``channel_reduction="max_abs"``). y^c is the pre-softmax score. The rectifier
rules are applied by :func:`salbench.methods.rectifiers.rectifier_backward` (see there for which
calls are covered).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from salbench.methods.base import Explainer, Postprocess, check_inputs, class_scores, preserved_model_state
from salbench.methods.rectifiers import rectifier_backward
from salbench.methods.shared import PassRequest, PassResult


def input_gradient(model: nn.Module, x: Tensor, target: Tensor, rule: Optional[str] = None) -> Tensor:
    """x [B, C, H, W], target [B] -> d y^c / d x [B, C, H, W], with the rectifier backward
    ``rule`` (None or "gradient": the true gradient). The model is left as it was.

    Images are independent in eval mode, so the gradient of the summed target scores is each
    image's own gradient (train-mode BatchNorm couples them: use eval mode).
    """
    with preserved_model_state(model):
        for param in model.parameters():
            param.requires_grad_(False)  # only d/dx is needed; restored on exit
        leaf = x.detach().requires_grad_(True)
        scope = rectifier_backward(rule) if rule not in (None, "gradient") else contextlib.nullcontext()
        with torch.enable_grad():
            with scope:
                logits = model(leaf)
            scores = class_scores(logits, target)
        (gradient,) = torch.autograd.grad(scores.sum(), leaf)
    return gradient


class GradientExplainer(Explainer):
    """Base of the pixel-gradient methods: ``attribute`` = the input gradient under ``rule``."""

    rule: str = "gradient"
    default_postprocess = Postprocess(channel_reduction="max_abs", upsample="bilinear")

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, C, H, W] on x's device."""
        target = check_inputs(x, target)
        return input_gradient(self.model, x, target, self.rule)

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(input_rules=frozenset({self.rule}))

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, C, H, W]: the shared pass's input gradient under this method's rectifier rule."""
        return result.input_gradients[self.rule]

    def options(self) -> Dict[str, Any]:
        return {**super().options(), "rectifier_rule": self.rule}


class Saliency(GradientExplainer):
    """Vanilla gradient (Simonyan et al. 2014)."""

    name = "saliency"
    rule = "gradient"


class GuidedBackprop(GradientExplainer):
    """Guided backpropagation (Springenberg et al. 2015)."""

    name = "guided_backprop"
    rule = "guided"


class Deconvnet(GradientExplainer):
    """Deconvnet (Zeiler & Fergus 2014) as a modified gradient."""

    name = "deconvnet"
    rule = "deconvnet"

