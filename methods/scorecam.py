"""Score-CAM (Wang et al. 2020), as pytorch-grad-cam computes it.

For image x, class c and each channel k of the activation A [K, h, w] at ``layer``:

    M_k = normalize(upsample(A^k)),  normalize(m) = (m - min m) / (max m - min m + 1e-8),
    s_k = readout_c(model(x * M_k)),  w = softmax_k(s),  map = sum_k w_k A^k

with ``upsample`` bilinear to the input size, ``align_corners=True`` (pytorch-grad-cam's
``nn.UpsamplingBilinear2d``), ``readout`` the target's pre-softmax score (``score="logit"``;
``"softmax"``: its probability) and the softmax over channels (``channel_softmax``). The
authors' code (haofanwang/Score-CAM) uses ``score="softmax"``, ``channel_softmax=False``,
``mask_align_corners=False`` and skips constant channels (weight 0; here they give an all-zero
mask). The masks multiply the model's (normalized) input, so a masked pixel is 0 there (the
dataset mean).

The B x K masked inputs of a batch go through the model in equal chunks of at most
``batch_size`` (the perturbation engine, :mod:`salbench.metrics.perturbation`), each mask made on
the input's device when its chunk is built. ``attribute``: [B, h, w] at the layer; the heatmap is
its ReLU bilinearly upsampled (pytorch-grad-cam's normalization aside).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import LayerExplainer, check_inputs, class_scores
from salbench.methods.chunks import item_indices
from salbench.methods.hooks import capture_layer, preserved_model_state
from salbench.methods.postprocess import Postprocess
from salbench.metrics.perturbation import class_readout, equal_chunk, forward_in_chunks

SCORES = ("logit", "softmax")
EPS = 1e-8  # pytorch-grad-cam's guard in the mask normalization


def layer_activation(model: nn.Module, layer: str, x: Tensor, target: Tensor) -> Tensor:
    """One forward pass without gradients: the activation [B, K, h, w] at ``layer``, after
    checking the logits and the targets."""
    with preserved_model_state(model), torch.no_grad(), capture_layer(model, layer) as capture:
        class_scores(model(x), target)
    activation = capture.activation
    if activation is None or activation.ndim != 4:
        raise ValueError(f"layer {layer!r} gave no [B, K, h, w] output in the forward pass")
    return activation.detach()


@register_method("scorecam")
class ScoreCAM(LayerExplainer):
    """Score-CAM. ``score``: ``logit`` | ``softmax`` readout of the target on each masked input;
    ``channel_softmax``: weights = softmax over channels of the readouts (else the readouts);
    ``mask_align_corners``: the masks' bilinear upsampling; ``batch_size``: masked inputs per
    forward pass."""

    name = "scorecam"
    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: Optional[str] = None,
        score: str = "logit",
        channel_softmax: bool = True,
        mask_align_corners: bool = True,
        batch_size: int = 64,
        **postprocess: Any,
    ):
        super().__init__(model, layer=layer, **postprocess)
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.score, self.channel_softmax = score, bool(channel_softmax)
        self.mask_align_corners, self.batch_size = bool(mask_align_corners), batch_size

    def masks(self, activation: Tensor, size: Any) -> Tensor:
        """activation maps [n, h, w] -> masks [n, H, W] in [0, 1] (upsampled, min-max normalized)."""
        upsampled = F.interpolate(activation[:, None], size=size, mode="bilinear",
                                  align_corners=self.mask_align_corners)[:, 0]
        low = upsampled.flatten(1).amin(dim=1)[:, None, None]
        high = upsampled.flatten(1).amax(dim=1)[:, None, None]
        return (upsampled - low) / (high - low + EPS)

    def channel_scores(self, x: Tensor, target: Tensor, activation: Tensor) -> Tensor:
        """The readouts [B, K] of the target on the B x K masked inputs."""
        channels = activation.shape[1]
        size = tuple(x.shape[-2:])

        def build(start: int, stop: int) -> Tensor:
            image, channel = item_indices(start, stop, channels, x.device)
            return x[image] * self.masks(activation[image, channel], size)[:, None]

        def read(logits: Tensor, start: int, stop: int) -> Tensor:
            image, _ = item_indices(start, stop, channels, x.device)
            return class_readout(logits, target[image], self.score)

        with preserved_model_state(self.model):
            values = forward_in_chunks(self.model, x.shape[0] * channels, build, read, device=x.device,
                                       chunk=equal_chunk(channels, self.batch_size))
        return values.view(x.shape[0], channels)

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, h, w] at ``layer``."""
        target = check_inputs(x, target)
        x = x.detach()
        activation = layer_activation(self.model, self.resolve_layer(x), x, target)
        scores = self.channel_scores(x, target, activation).to(activation.dtype)
        weights = scores.softmax(dim=1) if self.channel_softmax else scores
        return torch.einsum("bk,bkhw->bhw", weights, activation)
