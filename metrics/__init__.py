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



def _check_metric(name: str, entry: object) -> None:
    import inspect

    if not (inspect.isclass(entry) and issubclass(entry, Metric)):
        raise TypeError(f"register_metric({name!r}): {entry!r} is not a Metric subclass (salbench.metrics.Metric or "
                        "MethodwiseMetric, with update(explained) -> {method: {score: [N]}})")


METRICS = Registry("metric", package="salbench.metrics", check=_check_metric)
register_metric = METRICS.register

list_metrics = METRICS.list
create_metric = METRICS.create


__all__ = ["register_metric", "BatchCosts", "CurveKind", "ExplainedBatch", "MethodBatch", "MethodwiseMetric", "Metric", "Needs", "ScoreInfo",
           "METRICS", "create_metric", "list_metrics"]
