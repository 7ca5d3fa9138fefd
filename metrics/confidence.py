"""Confidence change when the image is shown only through the map (registered ``confidence_change``).

Chattopadhyay et al. 2018 ("Grad-CAM++", WACV, sec. 5.1): with ``Y`` the class score on the
image and ``O`` the score on the image multiplied by the explanation map (the map normalized to
[0, 1]),

* Average Drop: ``max(0, Y - O) / Y`` per image (the paper reports the mean in percent; lower is
  better);
* Increase in Confidence: ``1[O > Y]`` per image (higher is better);
* Average Gain, Zhang et al. 2023 ("Opti-CAM: optimizing saliency maps for interpretability"):
  ``max(0, O - Y) / (1 - Y)`` per image (probabilities; higher is better).

Presets: ``gradcampp`` (the per-image min-max normalized map multiplied into the model input,
softmax probability of the class predicted on the clean image, no epsilon) and ``torchcam``
(the same with TorchCAM's ``+1e-7`` in Average Drop's denominator). pytorch-grad-cam's
``DropInConfidence`` returns ``max(0, Y - O)`` without dividing by ``Y`` (docs/metrics.md).

All methods' masked inputs of a batch go through the perturbation engine in shared forward chunks.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice
from salbench.metrics.perturbation import AUTOCAST, class_readout, forward_in_chunks

MULTIPLIED = ("input", "image")
MAP_NORMALIZATIONS = ("minmax", "max", "none")
SCORES = ("softmax", "logit")


def scale_maps(maps: Tensor, normalization: str = "minmax") -> Tensor:
    """maps [B, H, W] -> [B, H, W] float32: ``minmax`` per image to [0, 1] (a constant map
    becomes zeros), ``max``: divided by the max of its positive part (clamped at 0; an all
    non-positive map becomes zeros), ``none``: as given."""
    check_choice("map_normalization", normalization, MAP_NORMALIZATIONS)
    maps = maps.float()
    if normalization == "none":
        return maps
    flat = maps.flatten(1)
    if normalization == "max":
        positive = maps.clamp_min(0)
        peak = positive.flatten(1).amax(1)[:, None, None]
        return torch.where(peak > 0, positive / torch.where(peak > 0, peak, 1.0), torch.zeros_like(maps))
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    span = high - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(maps))


def explanation_inputs(x: Tensor, maps: Tensor, multiplied: str = "input", images: Optional[Tensor] = None,
                       normalize: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """The image as the map shows it [B, C, H, W]: ``input``: the model input (normalized space)
    times the map (so removed pixels tend to 0, the dataset mean), as TorchCAM and
    pytorch-grad-cam; ``image``: the [0, 1] image times the map (removed pixels tend to black),
    then ``normalize`` (the model's normalization). maps [B, H, W] in [0, 1]."""
    check_choice("multiplied", multiplied, MULTIPLIED)
    weights = maps.to(x.device, x.dtype)[:, None]
    if multiplied == "input":
        return x * weights
    if images is None or normalize is None:
        raise ValueError("multiplied='image' needs the [0, 1] images and the model's normalization")
    return normalize(images.to(x.device, x.dtype) * weights)


def confidence_change(scores: Tensor, masked_scores: Tensor, epsilon: float = 0.0) -> Dict[str, Tensor]:
    """scores ``Y`` [B] (clean image), masked_scores ``O`` [B] (image times map) -> per image
    ``average_drop = max(0, Y - O) / (Y + epsilon)``, ``increase_in_confidence = 1[O > Y]``,
    ``average_gain = max(0, O - Y) / (1 - Y + epsilon)`` (probabilities), float64."""
    clean, masked = scores.double(), masked_scores.double()
    return {
        "average_drop": (clean - masked).clamp_min(0) / (clean + epsilon),
        "increase_in_confidence": (masked > clean).double(),
        "average_gain": (masked - clean).clamp_min(0) / (1.0 - clean + epsilon),
    }


@register_metric("confidence_change")
class ConfidenceChange(TracksClass, Metric):
    """Average Drop, Increase in Confidence and Average Gain of each map (module docstring).

    Options: ``target`` (tracked class: ``predicted`` on the clean image, ``label``, or
    ``explained``), ``score`` (``softmax`` | ``logit``; Average Gain needs probabilities and is
    left out with logits), ``map_normalization`` (``minmax`` | ``max`` | ``none``),
    ``multiplied`` (``input``: the normalized model input | ``image``: the [0, 1] image, then
    normalized), ``epsilon`` (added to the denominators: 0 in the papers, 1e-7 in TorchCAM),
    ``batch_size`` (masked inputs per forward pass), ``autocast``.
    """

    name = "confidence_change"
    category = "faithfulness"
    presets = {
        "gradcampp": {"target": "predicted", "score": "softmax", "map_normalization": "minmax", "multiplied": "input",
                      "epsilon": 0.0},
        "torchcam": {"target": "predicted", "score": "softmax", "map_normalization": "minmax", "multiplied": "input",
                     "epsilon": 1e-7},
    }
    scores = (
        ScoreInfo("average_drop", False, "faithfulness"),
        ScoreInfo("increase_in_confidence", True, "faithfulness"),
        ScoreInfo("average_gain", True, "faithfulness"),
    )

    def __init__(self, target: str = "predicted", score: str = "softmax", map_normalization: str = "minmax",
                 multiplied: str = "input", epsilon: float = 0.0, batch_size: int = 256,
                 autocast: Optional[str] = None):
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("map_normalization", map_normalization, MAP_NORMALIZATIONS)
        check_choice("multiplied", multiplied, MULTIPLIED)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0; got {epsilon}")
        self.target, self.score, self.map_normalization = target, score, map_normalization
        self.multiplied, self.epsilon = multiplied, float(epsilon)
        self.batch_size, self.autocast = batch_size, autocast
        self.scores = tuple(s for s in type(self).scores if score == "softmax" or s.name != "average_gain")

    def protocol(self) -> Dict[str, Any]:
        return {
            "target": self.target,
            "score": self.score,
            "map_normalization": self.map_normalization,
            "multiplied": self.multiplied,
            "epsilon": self.epsilon,
            "average_drop": "max(0, Y - O) / (Y + epsilon) (chattopadhyay2018)",
            "increase_in_confidence": "1[O > Y] (chattopadhyay2018)",
            "average_gain": "max(0, O - Y) / (1 - Y + epsilon) (zhang2023)" if self.score == "softmax" else None,
            "autocast": self.autocast,
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        x, methods = explained.inputs, list(explained.maps)
        model = explained.classifier
        tracked = self.tracked_class(explained)
        count = x.shape[0]
        clean = class_readout(explained.logits.float(), tracked, self.score)
        scaled = torch.stack([scale_maps(explained.maps[m].to(x.device), self.map_normalization) for m in methods])
        normalize = getattr(explained.model, "normalize", None) if self.multiplied == "image" else None
        images = explained.images if self.multiplied == "image" else None

        def build(start: int, stop: int) -> Tensor:  # items: (method, image), method-major
            item = torch.arange(start, stop, device=x.device)
            rows = item % count
            return explanation_inputs(x[rows], scaled.flatten(0, 1)[item], self.multiplied,
                                      None if images is None else images.to(x.device)[rows], normalize)

        def read(logits: Tensor, start: int, stop: int) -> Tensor:
            return class_readout(logits, tracked[torch.arange(start, stop, device=x.device) % count], self.score)

        masked = forward_in_chunks(model, len(methods) * count, build, read, device=x.device,
                                   chunk=self.batch_size, autocast=self.autocast)
        out: Dict[str, Dict[str, Tensor]] = {}
        for i, method in enumerate(methods):
            values = confidence_change(clean, masked[i * count:(i + 1) * count], self.epsilon)
            bad = torch.isnan(explained.maps[method].to(x.device)).flatten(1).any(1)
            out[method] = {s.name: torch.where(bad, torch.nan, values[s.name].float()) for s in self.scores}
        return out
