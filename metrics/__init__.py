"""Metrics by name: ``create_metric("cam_paper")``, ``list_metrics("*loc*")``."""
from __future__ import annotations

from typing import Any, List

from salbench.metrics.base import (
    BatchCosts,
    CurveKind,
    ExplainedBatch,
    MethodBatch,
    MethodwiseMetric,
    Metric,
    Needs,
    ScoreInfo,
)
from salbench.harness.registry import Registry

METRICS = Registry("metric")

for _name, _target in {
    "cam_paper": "salbench.metrics.localization:CamPaperLocalization",
    "wsoleval": "salbench.metrics.wsoleval:WsolEvalLocalization",
    "pxap": "salbench.metrics.wsoleval:PixelAveragePrecision",
    "pointing_game": "salbench.metrics.pointing:PointingGame",
    "energy_pointing_game": "salbench.metrics.pointing:EnergyPointingGame",
    "grid_pointing_game": "salbench.metrics.pointing:GridPointingGame",
    "rise": "salbench.metrics.deletion:DeletionInsertion",
    "road": "salbench.metrics.road:RemoveAndDebias",
    "randomization": "salbench.metrics.randomization:ModelRandomization",
    "timing": "salbench.metrics.timing:Timing",
}.items():
    METRICS.register_lazy(_name, _target)


def list_metrics(pattern: str = "*") -> List[str]:
    """Registered metric names matching the glob ``pattern``."""
    return METRICS.list(pattern)


def create_metric(name: str, **options: Any) -> Metric:
    """Build metric ``name``; ``None`` options take the metric's (preset's) default."""
    return METRICS.create(name, **options)


__all__ = ["BatchCosts", "CurveKind", "ExplainedBatch", "MethodBatch", "MethodwiseMetric", "Metric", "Needs", "ScoreInfo",
           "METRICS", "create_metric", "list_metrics"]
