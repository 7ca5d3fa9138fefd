"""The notebook API: ``salbench.evaluate(model, images, targets, methods=..., metrics=...)``.

Scores maps of images already in memory with the job loop itself
(:func:`salbench.harness.runner.evaluate_batch` per batch, :func:`~salbench.harness.runner.dataset_rows`
at the end, on a :class:`~salbench.harness.runner.Job`), so every score equals what a
``salbench`` job computes for the same images, model and options; nothing is written to disk.
Returns the tidy scores frame (the columns of ``scores.parquet``).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from salbench.datasets import collate
from salbench.datasets.memory import InMemory
from salbench.harness.runner import (Job, ScoreRows, check_components, dataset_rows, evaluate_batch, new_job_state,
                                     resolve_device)
from salbench.methods import create_method
from salbench.methods.base import Explainer
from salbench.methods.function import CallableExplainer
from salbench.metrics import Metric, create_metric
from salbench.models.bundle import ModelBundle, check_model_output, traced_target_layer

MethodSpec = Union[str, Explainer, Callable[..., Any], Dict[str, Any]]
MetricSpec = Union[str, Metric, Dict[str, Any]]


def _named(specs: Any, what: str) -> Dict[str, Any]:
    """``specs`` as {label: spec}: a dict as it is; one spec or a list, each labelled by its name
    (a string: itself; an Explainer or Metric: its ``name``; a callable: its ``__name__``; a dict:
    its ``name``)."""
    if isinstance(specs, dict) and not isinstance(specs.get("name"), str):  # {label: spec}
        return dict(specs)
    items = [specs] if isinstance(specs, (str, Explainer, Metric, dict)) or callable(specs) else list(specs)
    named: Dict[str, Any] = {}
    for spec in items:
        if isinstance(spec, str):
            label = spec
        elif isinstance(spec, dict):
            label = spec.get("label") or spec["name"]
        elif isinstance(spec, (Explainer, Metric)):
            label = spec.name
        else:
            label = getattr(spec, "__name__", type(spec).__name__)
        if label in named:
            raise ValueError(f"two {what}s are named {label!r}; pass a dict {{label: {what}}} to name each")
        named[str(label)] = spec
    return named


def _bundle(model: Any, images: torch.Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
            class_names: Optional[List[str]], target_layer: Optional[str], name: Optional[str]) -> ModelBundle:
    if isinstance(model, ModelBundle):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelBundle; got {type(model).__name__}")
    size = tuple(images.shape[-2:])
    parameter = next(model.parameters(), None)
    with torch.no_grad():
        logits = model(torch.zeros(1, *images.shape[1:], device=parameter.device if parameter is not None else "cpu"))
    classes = int(logits.shape[-1])
    return ModelBundle(name=name or type(model).__name__, module=model, input_size=size,
                       mean=tuple(mean) if mean is not None else (0.0, 0.0, 0.0),
                       std=tuple(std) if std is not None else (1.0, 1.0, 1.0),
                       class_names=list(class_names) if class_names is not None else [str(i) for i in range(classes)],
                       target_layer=target_layer if target_layer is not None else _traced(model, size))


def _traced(model: nn.Module, size: Tuple[int, int]) -> Optional[str]:
    try:
        return traced_target_layer(model, size)
    except Exception:  # no spatial layer feeds a global pool: methods that need a layer say so
        return None


def _explainer(label: str, spec: MethodSpec, bundle: ModelBundle) -> Explainer:
    if isinstance(spec, Explainer):
        return spec
    if isinstance(spec, str):
        return create_method(spec, bundle)
    if isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k not in ("name", "label")}
        return create_method(spec["name"], bundle, **options)
    if callable(spec):
        return CallableExplainer(bundle.module, function=spec, label=label)
    raise TypeError(f"method {label!r}: a registered name, an Explainer, a callable f(x, target) -> maps [B, H, W] "
                    f"or a dict {{'name': ..., options}}; got {type(spec).__name__}")


def _metric(label: str, spec: MetricSpec) -> Metric:
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        return create_metric(spec)
    if isinstance(spec, dict):
        return create_metric(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    raise TypeError(f"metric {label!r}: a registered name, a Metric or a dict {{'name': ..., options}}; "
                    f"got {type(spec).__name__}")


def evaluate(model: Any, images: Any, targets: Any, methods: Any = ("gradcam",), metrics: Any = ("rise",),
             boxes: Optional[Sequence[Any]] = None, masks: Optional[Any] = None, *,
             image_ids: Optional[Sequence[str]] = None, target: str = "label", batch_size: int = 32,
             forward_chunk: int = 32, shared_passes: bool = True, device: Optional[str] = None, seed: int = 0,
             mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
             class_names: Optional[List[str]] = None, target_layer: Optional[str] = None,
             model_name: Optional[str] = None, dataset_name: str = "in_memory",
             return_tables: bool = False) -> Union[pd.DataFrame, Tuple[pd.DataFrame, Dict[str, pd.DataFrame]]]:
    """Score the maps of ``methods`` on ``images`` with ``metrics``; returns the tidy scores
    frame (one row per image x method x metric score, plus ``scope == "dataset"`` rows).

    * ``model``: a :class:`~salbench.models.bundle.ModelBundle` (e.g. ``salbench.create_model(...)``;
      ``images`` in [0, 1], normalized by the bundle) or an ``nn.Module`` (``images`` are its input
      as given, unless ``mean`` / ``std`` are given; ``class_names``, ``target_layer``: as a
      bundle's, by default the indices and the traced feature map before the global pooling);
    * ``images`` [N, 3, H, W] float; ``targets`` [N] class indices (the labels);
    * ``methods``: a name, an Explainer, a callable ``f(x [B, C, H, W], target [B]) -> maps
      [B, H, W]`` (``x`` the normalized input), a dict ``{"name": ..., **options}``, a list of
      them, or a dict ``{label: any of these}``;
    * ``metrics``: names, Metric objects, dicts ``{"name": ..., **options}``, a list, or ``{label: ...}``;
    * ``boxes``: N tensors [n_i, 4] (inclusive pixel coordinates in the images' frame); ``masks``
      [N, H, W] bool: the ground truth of the localization metrics (refused without either);
    * options as a job's: ``target`` (``label`` | ``predicted``: the class the maps explain),
      ``batch_size``, ``forward_chunk``, ``shared_passes``, ``device`` (default: the model's), ``seed``.

    ``return_tables``: also return the metrics' side tables ({kind: frame}: curves, ...).
    Torch's, numpy's and Python's random states are restored afterwards.
    """
    images = torch.as_tensor(images)
    bundle = _bundle(model, images, mean, std, class_names, target_layer, model_name)
    parameter = next(bundle.module.parameters(), None)
    run_device = resolve_device(device) if device is not None else (
        parameter.device if parameter is not None else torch.device("cpu"))
    if device is not None:
        bundle.to(run_device)
    check_model_output(bundle)
    if target not in ("label", "predicted"):
        raise ValueError(f"unknown target {target!r}; valid: label, predicted")
    dataset = InMemory(images, targets, boxes=boxes, masks=masks, image_ids=image_ids, class_names=bundle.class_names)
    explainers = {label: _explainer(label, spec, bundle) for label, spec in _named(methods, "method").items()}
    built = {label: _metric(label, spec) for label, spec in _named(metrics, "metric").items()}
    if not explainers or not built:
        raise ValueError("evaluate needs at least one method and one metric")
    check_components(explainers, built, dataset, dataset_name)
    job = Job(bundle=bundle, explainers=explainers, metrics=built, device=run_device, dataset_name=dataset_name,
              target_rule=target, shared_passes=shared_passes, forward_chunk=int(forward_chunk))
    state = new_job_state()
    rows = ScoreRows()
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[run_device] if run_device.type == "cuda" else []):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            loader = DataLoader(dataset, batch_size=int(batch_size), shuffle=False, collate_fn=collate)
            for batch in loader:
                rows.add(evaluate_batch(job, batch.to(run_device), state))
            for key, metric in built.items():
                rows.add(dataset_rows(job, key, metric))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    scores = rows.frame()
    if not return_tables:
        return scores
    tables: Dict[str, List[pd.DataFrame]] = {}
    for key, metric in built.items():
        for kind, table in metric.tables().items():
            tables.setdefault(kind, []).append(table.assign(metric=key))
    return scores, {kind: pd.concat(parts, ignore_index=True) for kind, parts in tables.items()}
