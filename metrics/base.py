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
    # "label" or "predicted". The runner explains the images whose class differs again.
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
