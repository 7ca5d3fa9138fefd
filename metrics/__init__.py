"""Metrics by name: ``create_metric("cam_paper")``, ``list_metrics("*loc*")``."""
from __future__ import annotations

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

METRICS = Registry("metric", package="salbench.metrics")
register_metric = METRICS.register

list_metrics = METRICS.list
create_metric = METRICS.create


__all__ = ["register_metric", "BatchCosts", "CurveKind", "ExplainedBatch", "MethodBatch", "MethodwiseMetric", "Metric", "Needs", "ScoreInfo",
           "METRICS", "create_metric", "list_metrics"]
