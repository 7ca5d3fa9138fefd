"""Explainers by name: ``create_method("gradcam", model, layer="layer4")``, ``list_methods("*cam*")``.

Each method lives in its own module and registers itself there with :func:`register_method`
(an :class:`~salbench.methods.base.Explainer` subclass, or a plain function
``f(model, x, target, **options) -> maps [B, H, W]``, :mod:`salbench.methods.function`).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from torch import nn

from salbench.harness.registry import Registry
from salbench.methods.base import Explainer, LayerExplainer
from salbench.methods.postprocess import Postprocess


def _check_method(name: str, entry: Any) -> None:
    if not (inspect.isclass(entry) and issubclass(entry, Explainer)):
        raise TypeError(f"register_method({name!r}): {entry!r} is not an Explainer subclass or a function "
                        "f(model, x, target, **options) -> maps [B, H, W]")


METHODS = Registry("method", package="salbench.methods", check=_check_method)
list_methods = METHODS.list


def register_method(name: Optional[str] = None) -> Callable[[Any], Any]:
    """Decorator registering a method under ``name`` (default: the entry's ``__name__``):

    * an :class:`Explainer` subclass (its ``name`` attribute is set to ``name`` when empty);
    * a plain function ``f(model, x, target, **options) -> maps [B, H, W]``, wrapped in an
      Explainer whose options are the function's keyword parameters (each with a default;
      :func:`salbench.methods.function.function_explainer`). The function itself is returned
      unchanged, so it stays callable as written.

    Anything else, or a function of another signature, is a TypeError saying the expected one.
    """

    def decorator(entry: Any) -> Any:
        key = name or getattr(entry, "__name__", None)
        if inspect.isclass(entry):
            if issubclass(entry, Explainer) and not entry.name:
                entry.name = key
            METHODS.register(key)(entry)
            return entry
        if callable(entry):
            from salbench.methods.function import function_explainer

            registered = METHODS._entries.get(key)
            if registered is not None and getattr(registered, "function", None) is entry:
                return entry  # the same function again (a module imported twice)
            METHODS.register(key)(function_explainer(entry, str(key)))
            return entry
        raise TypeError(f"register_method({key!r}): {entry!r} is not an Explainer subclass or a function "
                        "f(model, x, target, **options) -> maps [B, H, W]")

    return decorator


def create_method(name: str, model: Any, **options: Any) -> Explainer:
    """Build explainer ``name`` for ``model`` (an ``nn.Module`` or a :class:`salbench.models.bundle.ModelBundle`).

    ``None`` options take the method's default. A bundle supplies its default target layer to
    methods that take a ``layer`` option (unless the method declares ``default_layer_from_model``
    false, or a function of the options that says whether these options need a layer).
    """
    entry = METHODS.get(name)
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelBundle; got {type(model).__name__}")
    accepted = inspect.signature(entry).parameters
    wants_layer = getattr(entry, "default_layer_from_model", True)
    if callable(wants_layer):
        wants_layer = wants_layer(options)
    # CAM reads the global-pooling input, not the bundle's target layer (default_layer_from_model)
    if options.get("layer") is None and "layer" in accepted and wants_layer and getattr(model, "target_layer", None):
        options["layer"] = model.target_layer
    return METHODS.create(name, module, **options)


__all__ = ["register_method", "Explainer", "LayerExplainer", "Postprocess", "METHODS", "create_method", "list_methods"]
