"""Plain functions as explainers.

* :func:`function_explainer`: ``@register_method("name")`` on a function
  ``f(model, x, target, **options) -> maps`` makes an :class:`~salbench.methods.base.Explainer`
  subclass whose options are the function's keyword parameters (their defaults are the
  method's defaults, recorded with every score like any method's options);
* :class:`CallableExplainer`: any callable ``f(x, target) -> maps`` given to
  :func:`salbench.evaluate` (no registration).

The function gets the model's normalized input ``x`` [B, C, H, W] and ``target`` [B] (long) on
the model's device and returns maps [B, H, W] (or [B, C, H, W], reduced by ``channel_reduction``),
a tensor or a numpy array; the maps are taken to ``x``'s device as float32. Post-processing is
the explicit default of every method: no ReLU, no channel reduction, bilinear upsampling of a map
smaller than the input (all options: ``relu``, ``channel_reduction``, ``upsample``,
``align_corners``). Gradients are enabled during the call and the model's mode,
``requires_grad`` flags and ``.grad`` are restored afterwards.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Type

import numpy as np
import torch
from torch import Tensor, nn

from salbench.methods.base import POSTPROCESS_OPTIONS, Explainer, check_inputs
from salbench.methods.hooks import preserved_model_state
from salbench.methods.postprocess import Postprocess

SIGNATURE = "f(model, x, target, **options) -> maps [B, H, W]"


def as_maps(out: Any, x: Tensor, what: str) -> Tensor:
    """A function's result as a float tensor [B, h, w] or [B, C, h, w] on ``x``'s device;
    anything else is a ValueError naming ``what`` and the shape it returned."""
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(np.ascontiguousarray(out))
    if not isinstance(out, Tensor):
        raise ValueError(f"{what} returned a {type(out).__name__}; it must return maps [B, H, W] (a tensor or a "
                         "numpy array)")
    if out.ndim not in (3, 4) or out.shape[0] != x.shape[0]:
        raise ValueError(f"{what} returned shape {list(out.shape)} for {x.shape[0]} images; it must return maps "
                         f"[B, H, W] = [{x.shape[0]}, {x.shape[-2]}, {x.shape[-1]}] (or [B, C, H, W])")
    out = out.detach().to(x.device)
    return out if out.is_floating_point() else out.float()


def _check_signature(function: Callable, name: str) -> Dict[str, inspect.Parameter]:
    """The options of a method function (its parameters after ``model, x, target``); a
    function of another shape is a TypeError saying the expected one."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        raise TypeError(f"register_method({name!r}): cannot read the signature of {function!r}") from None
    params = list(signature.parameters.values())
    positional = [p for p in params[:3] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3:
        raise TypeError(f"register_method({name!r}): a method function is {SIGNATURE}; "
                        f"{getattr(function, '__qualname__', function)}{signature} does not take model, x and target "
                        "as its first three parameters")
    options: Dict[str, inspect.Parameter] = {}
    for param in params[3:]:
        if param.kind is param.VAR_POSITIONAL:
            raise TypeError(f"register_method({name!r}): *{param.name} after (model, x, target): options must be "
                            f"keyword parameters with defaults ({SIGNATURE})")
        if param.kind is param.VAR_KEYWORD:
            continue
        if param.default is param.empty:
            raise TypeError(f"register_method({name!r}): option {param.name!r} of "
                            f"{getattr(function, '__qualname__', function)} has no default; every option needs one "
                            "(it is the method's config default)")
        if param.name in POSTPROCESS_OPTIONS or param.name in ("model", "name", "label"):
            raise TypeError(f"register_method({name!r}): option {param.name!r} is reserved (post-processing and "
                            f"config options: {', '.join(POSTPROCESS_OPTIONS)}, name, label)")
        options[param.name] = param
    return options


def function_explainer(function: Callable, name: str) -> Type[Explainer]:
    """An Explainer subclass named ``name`` that calls ``function(model, x, target, **options)``
    (:data:`SIGNATURE`); its constructor takes the function's options as keywords."""
    options = _check_signature(function, name)

    def __init__(self: Explainer, model: nn.Module, **kwargs: Any) -> None:
        post = {key: kwargs.pop(key) for key in POSTPROCESS_OPTIONS if key in kwargs}
        unknown = sorted(set(kwargs) - set(options))
        if unknown:  # create_method checks first; this guards a direct call
            raise TypeError(f"method {name!r} has no option {unknown[0]!r}; valid options: "
                            f"{', '.join([*options, *POSTPROCESS_OPTIONS])}")
        Explainer.__init__(self, model, **post)
        for key, param in options.items():
            setattr(self, key, kwargs.get(key, param.default))

    # the signature create_method, the config schema and options() read
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
         *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in options.values()],
         inspect.Parameter("postprocess", inspect.Parameter.VAR_KEYWORD)])
    __init__.__annotations__ = {key: p.annotation for key, p in options.items() if p.annotation is not p.empty}

    def attribute(self: Explainer, x: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(x, target)
        with preserved_model_state(self.model), torch.enable_grad():
            out = function(self.model, x, target, **{key: getattr(self, key) for key in options})
        return as_maps(out, x, f"method {name!r} ({getattr(function, '__qualname__', function)})")

    doc = inspect.getdoc(function) or f"The function {getattr(function, '__qualname__', function)} as a method."
    return type(f"FunctionMethod_{name}", (Explainer,), {
        "__init__": __init__, "attribute": attribute, "name": name, "function": staticmethod(function),
        "default_postprocess": Postprocess(), "__doc__": doc, "__module__": getattr(function, "__module__", __name__),
        "__qualname__": f"FunctionMethod_{name}"})


class CallableExplainer(Explainer):
    """Any callable ``function(x, target) -> maps [B, H, W]`` as an explainer of ``model``
    (``x`` [B, C, H, W] normalized model input, ``target`` [B]); ``label`` names it in the options."""

    name = "callable"

    def __init__(self, model: nn.Module, *, function: Callable = None, label: str = "callable", **postprocess: Any):
        super().__init__(model, **postprocess)
        if not callable(function):
            raise TypeError(f"function must be a callable f(x, target) -> maps [B, H, W]; got {type(function).__name__}")
        self.function, self.label = function, label
        self.name = label

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(x, target)
        with preserved_model_state(self.model), torch.enable_grad():
            out = self.function(x, target)
        return as_maps(out, x, f"method {self.label!r}")

    def options(self) -> Dict[str, Any]:
        function = getattr(self.function, "__qualname__", type(self.function).__name__)
        return {"method": self.label, **self.postprocess.as_dict(),
                "function": f"{getattr(self.function, '__module__', '?')}.{function}"}
