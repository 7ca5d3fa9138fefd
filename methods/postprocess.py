"""The named post-processing steps that turn an attribution into a heatmap [B, H, W].

ReLU, channel reduction and upsampling (mode, ``align_corners``) are explicit options of every
explainer, recorded with its scores, and applied here only: ``Explainer.attribute`` returns the
raw attribution. This is what makes captum (no ReLU, layer resolution, nearest upsampling) and
pytorch-grad-cam (ReLU, per-image min-max, bilinear) comparable with each other and with salbench.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "none")
CHANNEL_REDUCTIONS = ("max_abs", "sum_abs", "sum", "mean", "l2", "none")


def reduce_channels(attribution: Tensor, reduction: str) -> Tensor:
    """[B, C, H, W] -> [B, H, W] by a named reduction (``max_abs`` is Simonyan et al.'s rule)."""
    if reduction == "max_abs":
        return attribution.abs().amax(dim=1)
    if reduction == "sum_abs":
        return attribution.abs().sum(dim=1)
    if reduction == "sum":
        return attribution.sum(dim=1)
    if reduction == "mean":
        return attribution.mean(dim=1)
    if reduction == "l2":
        return attribution.pow(2).sum(dim=1).sqrt()
    raise ValueError(f"unknown channel reduction {reduction!r}; valid: {', '.join(CHANNEL_REDUCTIONS[:-1])}")


def upsample(maps: Tensor, size: Tuple[int, int], mode: str, align_corners: bool = False) -> Tensor:
    """[B, h, w] -> [B, H, W] by ``mode`` (bilinear/bicubic use ``align_corners``)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample mode {mode!r}; valid: {', '.join(UPSAMPLE_MODES)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == "none":
        raise ValueError(f"upsample='none' but the map is {tuple(maps.shape[-2:])}, the input {tuple(size)}")
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    return F.interpolate(maps[:, None], size=size, mode=mode, **kwargs)[:, 0]


@dataclass(frozen=True)
class Postprocess:
    """Named post-processing steps applied to ``attribute()`` to make the heatmap."""

    relu: bool = False
    channel_reduction: str = "none"  # for [B, C, H, W] attributions
    upsample: str = "bilinear"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.channel_reduction not in CHANNEL_REDUCTIONS:
            raise ValueError(
                f"unknown channel_reduction {self.channel_reduction!r}; valid: {', '.join(CHANNEL_REDUCTIONS)}"
            )
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {self.upsample!r}; valid: {', '.join(UPSAMPLE_MODES)}")

    def __call__(self, attribution: Tensor, size: Tuple[int, int]) -> Tensor:
        maps = attribution
        if maps.ndim == 4:
            if self.channel_reduction == "none":
                if maps.shape[1] != 1:
                    raise ValueError("a [B, C, H, W] attribution with C > 1 needs a channel_reduction")
                maps = maps[:, 0]
            else:
                maps = reduce_channels(maps, self.channel_reduction)
        if self.relu:
            maps = maps.clamp_min(0)
        if maps.dtype in (torch.float16, torch.bfloat16):  # half-precision models: upsample in float32
            maps = maps.float()
        return upsample(maps, size, self.upsample, self.align_corners).float()

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)
