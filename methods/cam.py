"""Class activation mapping (Zhou et al. 2016): CAM_c = sum_k w_k^c A^k.

A [B, K, h, w] is the feature map that feeds the global average pooling, w [N, K] the weights
of the linear (or 1x1 conv) head. The architecture is verified numerically on every call:
logits must equal W @ mean_{i,j}(A) + b, else CAM raises an error that names what it found and
suggests ``gradcam``. No bias, no 1/(h*w): on such a model Grad-CAM == CAM / (h*w) before the
ReLU. The default heatmap has no ReLU (as wsolevaluation's CAM), bilinearly upsampled.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from salbench.methods.base import (
    LayerExplainer,
    Postprocess,
    capture_layer,
    check_inputs,
    check_target_range,
    preserved_model_state,
)

if TYPE_CHECKING:  # annotations only (shared imports this module)
    from salbench.methods.shared import PassRequest, PassResult

_POOLING_FUNCTIONS = ("adaptive_avg_pool2d", "avg_pool2d", "mean")


@dataclass
class HeadTrace:
    """What one forward pass showed of the model's head."""

    pooled_inputs: List[Tensor] = field(default_factory=list)  # inputs of global average pools
    heads: List[Tuple[str, nn.Module, Tensor]] = field(default_factory=list)  # (name, module, input)


class _GlobalPoolRecorder(TorchFunctionMode):
    """Records the input of every global average pool ([B, K, h, w] -> B * K values), whether
    a module (``nn.AdaptiveAvgPool2d``) or a function (``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``)."""

    def __init__(self, trace: HeadTrace):
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func: Callable, types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _POOLING_FUNCTIONS and args and isinstance(args[0], Tensor):
            inp = args[0]
            if (
                inp.ndim == 4
                and isinstance(out, Tensor)
                and out.numel() == inp.shape[0] * inp.shape[1]
            ):
                self.trace.pooled_inputs.append(inp)
        return out


def _is_head(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


@contextlib.contextmanager
def trace_head(model: nn.Module) -> Iterator[HeadTrace]:
    """Record global-average-pool inputs and the inputs of every ``nn.Linear`` / 1x1
    ``nn.Conv2d`` in execution order, for one forward pass."""
    trace = HeadTrace()
    handles = []
    for name, module in model.named_modules():
        if _is_head(module):

            def hook(mod: nn.Module, inputs: Tuple[Any, ...], _out: Any, name: str = name) -> None:
                if inputs and isinstance(inputs[0], Tensor):
                    trace.heads.append((name, mod, inputs[0]))

            handles.append(module.register_forward_hook(hook))
    try:
        with _GlobalPoolRecorder(trace):
            yield trace
    finally:
        for handle in handles:
            handle.remove()


class CAM(LayerExplainer):
    """CAM. ``layer``: the feature map A (default: the input of the global average pool, found
    on each call; the model's target layer is *not* used, since it may precede a nonlinearity).
    ``check_tolerance``: relative tolerance of the logits == W @ mean(A) + b check.
    ``attribute``: [B, h, w] at A's resolution."""

    name = "cam"
    default_layer_from_model = False
    default_postprocess = Postprocess(relu=False, upsample="bilinear", align_corners=False)

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, check_tolerance: float = 1e-4, **postprocess: Any):
        super().__init__(model, layer=layer, **postprocess)
        self.check_tolerance = check_tolerance

    def features_and_weights(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One forward pass -> (A [B, K, h, w], head weight [N, K], logits [B, N]); raises a
        ValueError when the model is not GAP + linear from A."""
        with preserved_model_state(self.model), torch.no_grad():
            capture_scope = capture_layer(self.model, self.layer) if self.layer else contextlib.nullcontext()
            with capture_scope as capture, trace_head(self.model) as trace:
                logits = self.model(x)
        return self.features_from_trace(logits, trace, capture.activation if capture is not None else None)

    def features_from_trace(self, logits: Tensor, trace: HeadTrace, captured: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """(A, head weight, logits) from one forward pass's head trace (and ``layer``'s captured
        output when a layer is set); the architecture check of :meth:`features_and_weights`."""
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

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> CAM [B, h, w] (ReLU if ``relu``)."""
        target = check_inputs(x, target)
        return self._cam(*self.features_and_weights(x), target)

    def _cam(self, activation: Tensor, weight: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        check_target_range(target, logits.shape[1])
        maps = torch.einsum("bk,bkhw->bhw", weight[target].to(activation.dtype), activation)
        return maps.clamp_min(0) if self.postprocess.relu else maps

    def pass_request(self, x: Tensor) -> "PassRequest":
        from salbench.methods.shared import PassRequest

        return PassRequest(activations=frozenset({self.layer}) if self.layer else frozenset(), head=True)

    def from_pass(self, result: "PassResult") -> Tensor:
        """CAM [B, h, w] from the shared pass's head trace (same architecture check)."""
        captured = result.activations.get(self.layer) if self.layer else None
        return self._cam(*self.features_from_trace(result.logits, result.head_trace, captured), result.target)

    def options(self) -> Dict[str, Any]:
        return {**super().options(), "check_tolerance": self.check_tolerance}
