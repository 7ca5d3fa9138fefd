"""Pixel-space gradient methods: saliency, guided backprop, deconvnet.

* Saliency (Simonyan et al. 2014): d y^c / d x; heatmap = max over channels of |grad|.
* Guided backprop (Springenberg et al. 2015): the gradient with ReLU(g) * 1[x > 0] at every
  rectifier.
* Deconvnet (Zeiler & Fergus 2014): the gradient with ReLU(g) at every rectifier.

``attribute`` returns [B, C, H, W] (signed); the heatmap [B, H, W] is the channel-wise max of the
absolute value (``channel_reduction="max_abs"``). y^c is the pre-softmax score. The rectifier
rules are applied by :func:`salbench.methods.rectifiers.rectifier_backward` (see there for which
calls are covered); the gradient comes from the shared pass
(:func:`salbench.methods.shared.shared_pass`), one backward per rule.
"""
from __future__ import annotations

from torch import Tensor

from salbench.methods import register_method
from salbench.methods.base import Explainer
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassRequest, PassResult


class GradientExplainer(Explainer):
    """Base of the pixel-gradient methods: ``attribute`` = the input gradient under ``rule``."""

    rule: str = "gradient"
    default_postprocess = Postprocess(channel_reduction="max_abs", upsample="bilinear")

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(input_rules=frozenset({self.rule}))

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, C, H, W]: the shared pass's input gradient under this method's rectifier rule."""
        return result.input_gradients[self.rule]


@register_method("saliency")
class Saliency(GradientExplainer):
    """Vanilla gradient (Simonyan et al. 2014)."""

    name = "saliency"
    rule = "gradient"


@register_method("guided_backprop")
class GuidedBackprop(GradientExplainer):
    """Guided backpropagation (Springenberg et al. 2015)."""

    name = "guided_backprop"
    rule = "guided"


@register_method("deconvnet")
class Deconvnet(GradientExplainer):
    """Deconvnet (Zeiler & Fergus 2014) as a modified gradient."""

    name = "deconvnet"
    rule = "deconvnet"
