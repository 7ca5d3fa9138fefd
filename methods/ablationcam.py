"""Ablation-CAM (Desai & Ramaswamy 2020), as pytorch-grad-cam computes it.

For image x, class c and each channel k of the activation A [K, h, w] at ``layer``: y^c is the
pre-softmax score of x, y^c_k the score when ``layer`` outputs A with channel k replaced by a
constant, and

    w_k = (y^c - y^c_k) / y^c,  map = sum_k w_k A^k.

The constant (``fill=None``, pytorch-grad-cam's rule) is 0 when min A == 0 (a rectified layer)
and min A - 1e7 otherwise; a number sets it. pytorch-grad-cam differs in one case: with negative
activations its ablation layer re-reads the minimum of the batch it is filling, already lowered
by the rows it ablated before, so its k-th row of a batch gets min A - k * 1e7; salbench uses
min A - 1e7 for every channel (its first row's value). All channels are ablated
(pytorch-grad-cam's ``ratio_channels_to_ablate=1.0``). A y^c of 0 gives infinite weights, as
there.

Passes: with ``reuse_prefix=True`` (default) each ablated pass feeds the model ONE copy of x
and replaces ``layer``'s output by the chunk's n ablated activations
(:func:`salbench.methods.hooks.replaced_output`): the layers before ``layer`` run once per chunk
instead of once per channel, and the layers after it on n rows, so a pass costs about the part
of the model after ``layer`` (pytorch-grad-cam runs the layers before ``layer`` on every copy and
skips only the layer itself). A tensor from before the layer that a later op combines with its
output (a residual connection around ``layer``) broadcasts from its one row, the same values as
n copies, since a chunk never spans two images. A model that needs the input's batch size after
``layer`` (e.g. ``x.view(batch_size, -1)`` with the size read from the input) fails with a clear
error; ``reuse_prefix=False`` then runs the full model on copies of x, the B x K ablated passes
in equal chunks of at most ``batch_size`` (the perturbation engine). ``attribute``: [B, h, w] at
the layer; the heatmap is its ReLU bilinearly upsampled.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import LayerExplainer, check_inputs, class_scores
from salbench.methods.chunks import item_indices
from salbench.methods.hooks import capture_layer, preserved_model_state, replaced_output
from salbench.methods.postprocess import Postprocess
from salbench.metrics.perturbation import class_readout, equal_chunk, forward_in_chunks

NEGATIVE_OFFSET = 1e7  # pytorch-grad-cam's ablation value below a layer's minimum


@register_method("ablationcam")
class AblationCAM(LayerExplainer):
    """Ablation-CAM. ``fill``: the ablated channel's value (None: 0 for a layer whose minimum is
    0, else its minimum - 1e7, per image); ``batch_size``: ablated activations per forward pass;
    ``reuse_prefix``: run the layers before ``layer`` on one copy of the image per pass."""

    name = "ablationcam"
    default_postprocess = Postprocess(relu=True, upsample="bilinear", align_corners=False)

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, fill: Optional[float] = None,
                 batch_size: int = 64, reuse_prefix: bool = True, **postprocess: Any):
        super().__init__(model, layer=layer, **postprocess)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.fill = None if fill is None else float(fill)
        self.batch_size, self.reuse_prefix = batch_size, bool(reuse_prefix)

    def fill_values(self, activation: Tensor) -> Tensor:
        """activation [B, K, h, w] -> the ablation value of each image [B]."""
        if self.fill is not None:
            return torch.full(activation.shape[:1], self.fill, dtype=activation.dtype, device=activation.device)
        low = activation.flatten(1).amin(dim=1)
        return torch.where(low == 0, torch.zeros_like(low), low - NEGATIVE_OFFSET)

    def ablated_scores(self, x: Tensor, target: Tensor, activation: Tensor, layer: str) -> Tensor:
        """The target's pre-softmax scores [B, K] with each channel ablated in turn."""
        batch, channels = activation.shape[:2]
        fill = self.fill_values(activation)
        chunk = equal_chunk(channels, self.batch_size)
        with preserved_model_state(self.model), replaced_output(self.model, layer) as slot:
            if not self.reuse_prefix:

                def build(start: int, stop: int) -> Tensor:
                    image, channel = item_indices(start, stop, channels, x.device)
                    ablated = activation[image].clone()
                    ablated[torch.arange(stop - start, device=x.device), channel] = fill[image, None, None]
                    slot.output = ablated
                    return x[image]

                def read(logits: Tensor, start: int, stop: int) -> Tensor:
                    image, _ = item_indices(start, stop, channels, x.device)
                    return class_readout(logits, target[image], "logit")

                scores = forward_in_chunks(self.model, batch * channels, build, read, device=x.device, chunk=chunk)
                return scores.view(batch, channels)
            scores = torch.empty(batch, channels, device=x.device, dtype=torch.float32)
            with torch.inference_mode():
                for b in range(batch):
                    for start in range(0, channels, chunk):
                        stop = min(start + chunk, channels)
                        ablated = activation[b].expand(stop - start, *activation.shape[1:]).clone()
                        ablated[torch.arange(stop - start, device=x.device), torch.arange(start, stop, device=x.device)] = fill[b]
                        slot.output = ablated
                        hint = (f"Ablation-CAM ran the model on one copy of the image with {stop - start} ablated "
                                f"activations at {layer!r}")
                        try:
                            logits = self.model(x[b:b + 1])
                        except RuntimeError as error:
                            raise RuntimeError(f"{hint} and the model failed ({error}): it may need the input's "
                                               "batch size after that layer; use reuse_prefix=False") from error
                        if logits.ndim != 2 or logits.shape[0] != stop - start:
                            raise ValueError(f"{hint} and got output {tuple(logits.shape)}: the model needs the "
                                             "input's batch size after that layer; use reuse_prefix=False")
                        scores[b, start:stop] = logits.float().index_select(1, target[b:b + 1])[:, 0]
            return scores

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> [B, h, w] at ``layer``."""
        target = check_inputs(x, target)
        x = x.detach()
        layer = self.resolve_layer(x)
        with preserved_model_state(self.model), torch.no_grad(), capture_layer(self.model, layer) as capture:
            clean = class_scores(self.model(x), target)
        activation = capture.activation.detach()
        ablated = self.ablated_scores(x, target, activation, layer)
        clean = clean.float()[:, None]
        weights = ((clean - ablated) / clean).to(activation.dtype)
        return torch.einsum("bk,bkhw->bhw", weights, activation)
