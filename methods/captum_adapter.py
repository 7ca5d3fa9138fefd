"""Any captum attribution as a method: ``method=captum method.captum.attribution=IntegratedGradients``.

``create_method("captum", model, attribution="IntegratedGradients", init={...}, kwargs={"n_steps": 32})``
builds ``captum.attr.<attribution>(model, [layer,] **init)`` for each call and returns exactly
what its ``attribute(x, target=target, **kwargs)`` returns (captum's raw attribution: [B, C, H, W]
for input attributions, [B, K, h, w] for layer attributions, e.g. LayerGradCam's [B, 1, h, w]).

* ``attribution``: a captum.attr class that explains a class target (its ``attribute`` takes
  ``target``): Saliency, IntegratedGradients, InputXGradient, GuidedBackprop, Deconvolution,
  DeepLift, GradientShap, Occlusion, FeatureAblation, ShapleyValueSampling, Lime, KernelShap, the
  Layer* classes, GuidedGradCam, and NoiseTunnel (``init={"attribution": "Saliency"}``: the
  attribution it wraps, built with the same model and layer);
* ``layer``: the module name for classes that take a layer (``layer=null``: the model bundle's
  target layer, else the feature map feeding the global pooling); an error for others;
* ``init``: further constructor keywords (e.g. ``multiply_by_inputs``); ``kwargs``: keywords of
  ``attribute`` (e.g. ``n_steps``, ``baselines``, ``sliding_window_shapes`` as a list,
  ``internal_batch_size``); lists become tuples (captum's shapes and strides are tuples).

Post-processing, explicit and recorded with the options like every method's: default
``channel_reduction=sum`` (captum's ``visualize_image_attr`` sums channels), no ReLU, bilinear
upsampling (layer maps). Hooks live for one call; the model's mode, ``requires_grad`` and
``.grad`` are restored afterwards. captum's code assumes CPU as torch's default device (it builds
some tensors without ``device=`` and moves them), so the call runs with that default.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from salbench.methods import register_method
from salbench.methods.base import Explainer, check_inputs
from salbench.methods.hooks import default_target_layer, find_module, preserved_model_state
from salbench.methods.postprocess import Postprocess

ABSTRACT = {"Attribution", "GradientAttribution", "PerturbationAttribution", "LayerAttribution",
            "NeuronAttribution", "LimeBase", "DataLoaderAttribution"}


def captum_attributions() -> Dict[str, type]:
    """{name: class} of the captum.attr classes that explain a class target."""
    import captum.attr as attr

    found = {}
    for name in dir(attr):
        cls = getattr(attr, name)
        if not (inspect.isclass(cls) and issubclass(cls, attr.Attribution)) or name in ABSTRACT:
            continue
        if issubclass(cls, attr.NeuronAttribution) or name.startswith(("LLM", "RemoteLLM")):
            continue  # they explain a neuron or a text model, not an image class
        if name == "NoiseTunnel" or "target" in inspect.signature(cls.attribute).parameters:
            found[name] = cls
    return found


def _takes_layer(cls: type) -> bool:
    return "layer" in inspect.signature(cls.__init__).parameters


def _tupled(value: Any) -> Any:
    """Config lists as tuples (captum's window shapes and strides), recursively."""
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value


def _wants_layer(options: Dict[str, Any]) -> bool:
    """Whether these options name a captum class that takes a layer (then a bundle's target
    layer is the default, :func:`salbench.methods.create_method`)."""
    try:
        classes = captum_attributions()
        cls = classes[options.get("attribution") or CaptumAttribution.default_attribution]
        if cls.__name__ == "NoiseTunnel":
            cls = classes[(options.get("init") or {}).get("attribution", "")]
    except (KeyError, ImportError):
        return False
    return _takes_layer(cls)


@register_method("captum")
class CaptumAttribution(Explainer):
    """captum.attr's ``attribution`` class (module docstring); ``attribute`` returns what
    captum returns for ``attribute(x, target=target, **kwargs)``."""

    name = "captum"
    default_attribution = "IntegratedGradients"
    default_postprocess = Postprocess(relu=False, channel_reduction="sum", upsample="bilinear")
    default_layer_from_model = staticmethod(_wants_layer)

    def __init__(self, model: nn.Module, *, attribution: str = "IntegratedGradients", layer: Optional[str] = None,
                 init: Optional[Dict[str, Any]] = None, kwargs: Optional[Dict[str, Any]] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        classes = captum_attributions()
        if attribution not in classes:
            from salbench.harness.registry import UnknownNameError

            raise UnknownNameError("captum attribution", attribution, classes)
        self.attribution, self.layer = attribution, layer
        self.init, self.kwargs = dict(init or {}), dict(kwargs or {})
        cls = classes[attribution]
        inner = None
        if attribution == "NoiseTunnel":
            inner = self.init.get("attribution")
            if inner not in classes or inner == "NoiseTunnel":
                raise ValueError(f"captum NoiseTunnel wraps an attribution: init={{'attribution': NAME}}, NAME one of "
                                 f"{', '.join(n for n in classes if n != 'NoiseTunnel')}; got {inner!r}")
        self._cls, self._inner = cls, classes[inner] if inner else None
        self._needs_layer = _takes_layer(self._inner or cls)
        if layer is not None:
            if not self._needs_layer:
                raise ValueError(f"captum {attribution} takes no layer; layer={layer!r} given (layer methods: "
                                 f"{', '.join(n for n, c in classes.items() if _takes_layer(c))})")
            find_module(model, layer)  # fail early with the candidates listed
        if self.kwargs.get("return_convergence_delta"):
            raise ValueError("captum kwargs return_convergence_delta=True returns (attributions, delta); salbench "
                             "needs the attributions alone")

    def _build(self, layer: Optional[nn.Module]) -> Any:
        init = {k: _tupled(v) for k, v in self.init.items()}
        if self._inner is not None:
            init.pop("attribution")
            inner = self._inner(self.model, layer, **init) if layer is not None else self._inner(self.model, **init)
            return self._cls(inner)
        return self._cls(self.model, layer, **init) if layer is not None else self._cls(self.model, **init)

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> captum's attribution, unchanged."""
        target = check_inputs(x, target)
        layer = None
        if self._needs_layer:
            if self.layer is None:
                self.layer = default_target_layer(self.model, x)
            layer = find_module(self.model, self.layer)
        kwargs = {k: _tupled(v) for k, v in self.kwargs.items()}
        with preserved_model_state(self.model), torch.device("cpu"), torch.enable_grad():
            out = self._build(layer).attribute(x, target=target, **kwargs)
        if isinstance(out, (tuple, list)):
            raise ValueError(f"captum {self.attribution}.attribute returned a {type(out).__name__} of "
                             f"{len(out)}; salbench needs one attribution tensor")
        return out.detach()
