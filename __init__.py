"""salbench: evaluation and benchmarking harness for visual explanations of CNN classifiers.

The public API, importable from ``salbench`` itself::

    import salbench
    model = salbench.create_model("synthetic_cnn")
    explainer = salbench.create_method("gradcam", model)
    metric = salbench.create_metric("cam_paper")
    scores = salbench.evaluate(model, images, labels, methods=["gradcam", my_function], metrics=["rise"])

Registries: ``create_method`` / ``list_methods`` / ``register_method``, and the same for metrics,
models and datasets (``register_*`` are decorators: a component's module registers it). Every import path
names its file: ``salbench.harness.runner`` is ``harness/runner.py``. Names are imported on
first use, so ``import salbench`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "create_method": "salbench.methods", "list_methods": "salbench.methods", "Explainer": "salbench.methods",
    "create_metric": "salbench.metrics", "list_metrics": "salbench.metrics", "Metric": "salbench.metrics",
    "create_model": "salbench.models", "list_models": "salbench.models", "ModelBundle": "salbench.models",
    "create_dataset": "salbench.datasets", "list_datasets": "salbench.datasets",
    "register_method": "salbench.methods", "register_metric": "salbench.metrics",
    "register_model": "salbench.models", "register_dataset": "salbench.datasets",
    "run_job": "salbench.harness.runner",
    "evaluate": "salbench.harness.evaluate",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'salbench' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_PUBLIC))
