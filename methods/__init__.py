"""Explainers by name: ``create_method("gradcam", model, layer="layer4")``, ``list_methods("*cam*")``.

Each method lives in its own module and registers itself there; the table below names the
module of every method so that ``list_methods`` works without importing them all.
"""
from __future__ import annotations

import inspect
from typing import Any
from torch import nn

from salbench.harness.registry import Registry
from salbench.methods.base import Explainer, LayerExplainer
from salbench.methods.postprocess import Postprocess

METHODS = Registry("method", package="salbench.methods")
register_method = METHODS.register

list_methods = METHODS.list


def create_method(name: str, model: Any, **options: Any) -> Explainer:
    """Build explainer ``name`` for ``model`` (an ``nn.Module`` or a :class:`salbench.models.bundle.ModelBundle`).

    ``None`` options take the method's default. A bundle supplies its default target layer to
    methods that take a ``layer`` option.
    """
    entry = METHODS.get(name)
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelBundle; got {type(model).__name__}")
    accepted = inspect.signature(entry).parameters
    # CAM reads the global-pooling input, not the bundle's target layer (default_layer_from_model)
    if (
        options.get("layer") is None
        and "layer" in accepted
        and getattr(entry, "default_layer_from_model", True)
        and getattr(model, "target_layer", None)
    ):
        options["layer"] = model.target_layer
    return METHODS.create(name, module, **options)


__all__ = ["register_method", "Explainer", "LayerExplainer", "Postprocess", "METHODS", "create_method", "list_methods"]
