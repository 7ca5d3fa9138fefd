"""Input x Gradient (Shrikumar et al. 2016): x * d y^c / d x, y^c the pre-softmax score, from the
shared pass's input gradient (captum's ``InputXGradient``).

``attribute``: [B, C, H, W] (signed); the heatmap is the signed sum over channels
(``channel_reduction="sum"``: the attributions of a pixel's channels add up, as in Integrated
Gradients, whose completeness this keeps).
"""
from __future__ import annotations

from torch import Tensor

from salbench.methods import register_method
from salbench.methods.gradients import GradientExplainer
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassResult


@register_method("input_x_gradient")
class InputXGradient(GradientExplainer):
    """The input times its gradient (the true gradient: rule ``gradient``)."""

    name = "input_x_gradient"
    rule = "gradient"
    default_postprocess = Postprocess(channel_reduction="sum", upsample="bilinear")

    def from_pass(self, result: PassResult) -> Tensor:
        """[B, C, H, W]: the pass's input times its input gradient."""
        return result.x.detach() * result.input_gradients["gradient"]
