"""Any architecture: ``model=module model.factory=my_pkg.nets:build``.

``factory`` names any callable (a function or an ``nn.Module`` class, ``module.path:attribute``,
dotted attributes allowed) that returns an ``nn.Module`` mapping normalized images [B, 3, H, W]
to logits [B, K]; ``kwargs`` are its keyword arguments. The options say what travels with the
module: ``input_size`` (H, W), ``mean`` / ``std`` (the normalization it was trained with),
``class_names`` (a list or a text file; default the indices ``"0"`` .. ``"K-1"``, K read from one
forward pass), ``target_layer`` (default: the feature map feeding the global pooling, traced).
``weights``: a state dict, training checkpoint, DataParallel dict or ``.safetensors`` file,
loaded strictly (:func:`salbench.models.weights.load_weights`; its sha256 is part of the job's
identity); the factory's code itself is not (change ``model.factory`` or the weights when the
architecture changes).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from salbench.models import register_model
from salbench.models.bundle import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, class_names_from, traced_target_layer
from salbench.models.weights import load_weights


def import_factory(factory: str) -> Any:
    """The object ``module.path:attribute`` (or ``module.path.attribute``) names."""
    if not factory or not isinstance(factory, str):
        raise ValueError("model=module needs factory=PACKAGE.MODULE:CALLABLE (a callable returning an nn.Module)")
    module_name, sep, attribute = factory.partition(":")
    if not sep:
        module_name, _, attribute = factory.rpartition(".")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model factory {factory!r}: cannot import {module_name!r} ({error})") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"model factory {factory!r}: {module_name} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"model factory {factory!r} is a {type(found).__name__}, not a callable")
    return found


@register_model("module")
def module_model(
    factory: Optional[str] = None,
    kwargs: Optional[Dict[str, Any]] = None,
    input_size: List[int] = (224, 224),
    mean: List[float] = IMAGENET_MEAN,
    std: List[float] = IMAGENET_STD,
    class_names: Optional[Any] = None,
    target_layer: Optional[str] = None,
    weights: Optional[str] = None,
    state_dict_key: Optional[str] = None,
) -> ModelBundle:
    """The ``nn.Module`` that ``factory(**kwargs)`` returns, with the facts the options give
    (module docstring)."""
    build = import_factory(factory)
    module = build(**dict(kwargs or {}))
    if not isinstance(module, nn.Module):
        raise ValueError(f"model factory {factory!r} returned a {type(module).__name__}, not an nn.Module")
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be (H, W); got {input_size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB); got mean={list(mean)}, std={list(std)}")
    module.eval()
    info: Dict[str, Any] = {"factory": factory, "kwargs": dict(kwargs or {})}
    with torch.no_grad():
        out = module(torch.zeros(1, 3, *size))
    classes = int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
    if weights:
        load_weights(module, weights, state_dict_key=state_dict_key, what=f"model {factory}", num_classes=classes)
        info["weights"] = str(weights)
    names = class_names_from(class_names, classes, what=f"model {factory}") if classes is not None else \
        list(class_names or [])  # an unusual output: check_model_output says what it is
    return ModelBundle(name=f"module.{factory}", module=module, input_size=size, mean=tuple(float(v) for v in mean),
                       std=tuple(float(v) for v in std), class_names=names,
                       target_layer=target_layer or traced_target_layer(module, size), info=info)
