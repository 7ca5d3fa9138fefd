"""Class activation mapping (Zhou et al. 2016): CAM_c = sum_k w_k^c A^k.

A [B, K, h, w] is the feature map that feeds the global average pooling, w [N, K] the weights
of the linear (or 1x1 conv) head. The architecture is verified numerically on every call:
logits must equal W @ mean_{i,j}(A) + b, else CAM raises an error that names what it found and
suggests ``gradcam``. No bias, no 1/(h*w): on such a model Grad-CAM == CAM / (h*w) before the
ReLU. The default heatmap has no ReLU (as wsolevaluation's CAM), bilinearly upsampled.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import LayerExplainer, check_target_range
from salbench.methods.hooks import HeadTrace, trace_head
from salbench.methods.postprocess import Postprocess
from salbench.methods.shared import PassRequest, PassResult

HEAD_RECORDER = ("head", trace_head)  # the forward-pass recorder CAM asks the shared pass for


@register_method("cam")
class CAM(LayerExplainer):
    """CAM. ``layer``: the feature map A (default: the input of the global average pool, found
    on each call; the model's target layer is *not* used, since it may precede a nonlinearity).
    ``check_tolerance``: relative tolerance of the logits == W @ mean(A) + b check.
    ``attribute``: [B, h, w] at A's resolution (no ReLU; the heatmap's ReLU is ``relu``)."""

    name = "cam"
    default_layer_from_model = False
    default_postprocess = Postprocess(relu=False, upsample="bilinear", align_corners=False)

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, check_tolerance: float = 1e-4, **postprocess: Any):
        super().__init__(model, layer=layer, **postprocess)
        self.check_tolerance = check_tolerance

    def features_from_trace(self, logits: Tensor, trace: HeadTrace, captured: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """(A, head weight, logits) from one forward pass's head trace (and ``layer``'s captured
        output when a layer is set), after checking that the model is GAP + linear from A."""
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(f"CAM needs logits [B, N]; the model returned {getattr(logits, 'shape', type(logits))}")
        if not trace.heads:
            raise ValueError(
                "CAM needs a global-average-pooling + linear (or 1x1 conv) head, but the forward pass ran "
                "no nn.Linear or 1x1 nn.Conv2d; use method 'gradcam' instead"
            )
        head_name, head, head_input = trace.heads[-1]
        weight = head.weight.detach().reshape(head.weight.shape[0], -1)
        bias = head.bias.detach() if head.bias is not None else torch.zeros_like(weight[:, 0])
        spatial_head = head_input.ndim == 4 and head_input.shape[-1] * head_input.shape[-2] > 1
        if self.layer:
            activation, source = captured, f"layer {self.layer!r}"
        elif spatial_head:  # 1x1 conv classifier followed by global pooling
            activation, source = head_input, f"the input of 1x1 conv {head_name!r}"
        elif trace.pooled_inputs:
            activation, source = trace.pooled_inputs[-1], "the input of the last global average pool"
        else:
            raise ValueError(
                f"CAM needs a global-average-pooling + linear head; found the head {head_name!r} "
                f"({type(head).__name__}) but no global average pool before it; use method 'gradcam' instead"
            )
        if activation is None or activation.ndim != 4:
            raise ValueError(f"CAM: {source} is not a feature map [B, K, h, w]; use method 'gradcam' instead")
        self.spatial(activation, source)
        if activation.shape[1] != weight.shape[1] or logits.shape[1] != weight.shape[0]:
            raise ValueError(
                f"CAM needs a global-average-pooling + linear head: {source} has {activation.shape[1]} channels, "
                f"the last head {head_name!r} ({type(head).__name__}) maps {weight.shape[1]} -> {weight.shape[0]} "
                f"and the model returns {logits.shape[1]} logits; use method 'gradcam' instead"
            )
        predicted = activation.mean(dim=(2, 3)) @ weight.T + bias
        # one device-to-host transfer for both figures
        error, peak = torch.stack([(predicted - logits).abs().max(), logits.abs().max()]).tolist()
        allowed = self.check_tolerance * max(1.0, peak)
        if not error <= allowed:
            raise ValueError(
                f"CAM needs logits == W @ mean(A) + b (global-average-pooling + linear head); with A = {source} "
                f"{tuple(activation.shape)} and W, b of {head_name!r} ({type(head).__name__}) they differ by "
                f"{error:.3g} (> {allowed:.3g}): something nonlinear or non-average lies between them; "
                "use method 'gradcam' instead"
            )
        return activation.detach(), weight, logits.detach()

    def cam(self, activation: Tensor, weight: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        """A [B, K, h, w], head weight [N, K], logits [B, N], target [B] -> CAM [B, h, w]."""
        check_target_range(target, logits.shape[1])
        return torch.einsum("bk,bkhw->bhw", weight[target].to(activation.dtype), activation)

    def pass_request(self, x: Tensor) -> PassRequest:
        return PassRequest(activations=frozenset({self.layer}) if self.layer else frozenset(),
                           recorders=frozenset({HEAD_RECORDER}))

    def from_pass(self, result: PassResult) -> Tensor:
        """CAM [B, h, w] from one forward pass's head trace (with the architecture check)."""
        captured = result.activations.get(self.layer) if self.layer else None
        return self.cam(*self.features_from_trace(result.logits, result.recorded["head"], captured), result.target)
