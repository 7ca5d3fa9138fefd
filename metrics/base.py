"""Metric base class: a thin stateful shell over pure batched tensor functions.

The runner calls, for every batch and method, ``metric.update(explained) -> {score: [B]}``
(per-image values, NaN where undefined) and, at the end, ``metric.compute() -> {score: float}``
(dataset-level values such as MaxBoxAcc; may be empty). Every score carries its metadata
(:class:`ScoreInfo`) and the metric's :meth:`protocol` (the preset name and every choice),
which are written next to each value in ``scores.parquet``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor


@dataclass
class ExplainedBatch:
    """What a metric sees for one batch and one method. Tensors are on the run's device.

    ``images`` [B, 3, H, W] in [0, 1]; ``inputs`` the normalized model input; ``heatmaps``
    [B, H, W] at input resolution; ``targets`` [B] the explained class; ``logits`` [B, K] on the
    clean input; ``model`` the :class:`salbench.models.ModelBundle`; ``explainer`` the method;
    ``timing`` (for the ``timing`` metric): ``seconds`` of the explainer call, ``metric_seconds``
    of every other metric's update, ``peak_memory_bytes``, ``shared_with``, ``device``, ``clock``.
    """

    batch: Any  # salbench.datasets.Batch
    inputs: Tensor
    heatmaps: Tensor
    targets: Tensor
    logits: Tensor
    model: Any
    explainer: Any
    method: str
    timing: Optional[Dict[str, Any]] = None  # set by the runner for metrics with ``wants_timing``

    @property
    def images(self) -> Tensor:
        return self.batch.images


@dataclass(frozen=True)
class ScoreInfo:
    """Metadata of one score a metric produces (reports orient arrows and tables from it)."""

    name: str
    higher_is_better: bool
    category: str  # "localization" | "faithfulness" | "cost" | "sanity"
    scope: str = "image"  # "image": one value per image; "dataset": one value per run


class Metric:
    """Base class. Subclasses set ``name``, ``category``, ``preset`` and ``scores`` and implement
    :meth:`update` (and :meth:`compute` for dataset-level scores)."""

    name: str = ""
    category: str = ""
    preset: str = "custom"
    scores: Tuple[ScoreInfo, ...] = ()
    # The class the maps this metric scores must explain: None (the job's ``target``),
    # "label", "predicted" or "present" (one row per class present, see PointingGame). The
    # runner explains the images whose class differs again.
    map_target: Optional[str] = None

    def protocol(self) -> Dict[str, Any]:
        """Every choice that shapes the scores (recorded with each value)."""
        return {}

    def update(self, explained: ExplainedBatch) -> Dict[str, Tensor]:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        return {}

    def reset(self) -> None:
        pass

    def tables(self) -> Dict[str, Any]:
        """Extra tidy tables (``name -> pandas.DataFrame``) written beside scores.parquet."""
        return {}

    def score_info(self, score: str) -> Optional[ScoreInfo]:
        return next((s for s in self.scores if s.name == score), None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, {self.protocol()})"


TRACKED = ("predicted", "label", "explained")


class TracksClass:
    """For perturbation metrics with option ``target`` (one of :data:`TRACKED`): the class whose
    score they track is also the class the maps must explain (RISE and ROAD explain the
    prediction); ``target: explained`` scores the job's maps as they are."""

    target: str = "predicted"

    @property
    def map_target(self) -> Optional[str]:
        return self.target if self.target in ("predicted", "label") else None

    def tracked_class(self, explained: ExplainedBatch) -> Tensor:
        """[B] long on the inputs' device."""
        if self.target == "predicted":
            return explained.logits.argmax(dim=1)
        if self.target == "label":
            return explained.batch.labels.to(explained.inputs.device)
        return explained.targets.to(explained.inputs.device)


def image_positions(explained: ExplainedBatch) -> Tensor:
    """[B] int64 on the CPU: each image's dataset position (its batch position when the batch
    carries none)."""
    indices = getattr(explained.batch, "indices", None)
    if indices is None:
        return torch.arange(explained.inputs.shape[0])
    return torch.as_tensor(indices, device="cpu")


def image_seeds(explained: ExplainedBatch, seed: int) -> Tensor:
    """[B] int64 on the CPU: ``seed * 1_000_003 + position``, so seeded noise does not depend
    on batching."""
    return seed * 1_000_003 + image_positions(explained)


def image_ids(explained: ExplainedBatch) -> list:
    """The batch's image ids, or the dataset positions as strings."""
    return list(getattr(explained.batch, "image_ids", None) or map(str, image_positions(explained).tolist()))
