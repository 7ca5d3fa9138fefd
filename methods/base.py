"""Explainer base classes and input checks.

Every explainer takes ``x`` [B, C, H, W] (float, normalized model input) and ``target`` [B]
(long, one class per image) and returns tensors on ``x``'s device:

* ``attribute(x, target)``: the raw attribution in the method's native space: [B, h, w] at the
  layer's resolution for the CAM family, [B, C, H, W] for pixel-space methods; no ReLU;
* ``__call__(x, target)``: the heatmap [B, H, W] float32 at input resolution, after the named
  post-processing (:class:`~salbench.methods.postprocess.Postprocess`: ReLU, channel reduction,
  upsampling), never min-max normalized.

One path per method: a method that reads a forward/backward pass (the gradient and CAM family)
declares what it needs (:meth:`Explainer.pass_request`) and builds its attribution from the
pass's tensors (:meth:`Explainer.from_pass`); ``attribute`` runs that pass for the method alone,
and :func:`salbench.methods.shared.explain_all` runs one pass for several methods. Methods that
need no such pass (occlusion, the baselines) implement ``attribute`` instead.

Hooks live for one call (:mod:`salbench.methods.hooks`) and the model is left exactly as it was.
Options are the constructor's keyword arguments, stored under the same names
(:meth:`Explainer.options` reads them back): what a job records with every score.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from salbench.harness.registry import entry_parameters
from salbench.methods.hooks import default_target_layer, find_module
from salbench.methods.postprocess import Postprocess

if TYPE_CHECKING:  # pragma: no cover
    from salbench.methods.shared import PassRequest, PassResult


# --------------------------------------------------------------------------- input checks
def check_inputs(x: Tensor, target: Tensor) -> Tensor:
    """Validate ``x`` [B, C, H, W] float and ``target`` [B] long; return target on x's device."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, Tensor) else None
        raise ValueError(f"x must be a float tensor [B, C, H, W]; got shape {shape}, dtype {dtype}")
    target = torch.as_tensor(target, device=x.device)
    if target.ndim == 0:
        target = target.expand(x.shape[0])
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"target must be an integer tensor [B]; got dtype {target.dtype}")
    if target.shape != (x.shape[0],):
        raise ValueError(f"target must have shape [B]=[{x.shape[0]}]; got {tuple(target.shape)}")
    return target.long()


def check_target_range(target: Tensor, num_classes: int) -> None:
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"target class {int(target[bad][0])} is outside the model's {num_classes} classes "
            f"(valid: 0..{num_classes - 1})"
        )


def class_scores(logits: Tensor, target: Tensor) -> Tensor:
    """logits [B, K], target [B] -> the pre-softmax score of each image's target class [B]."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits [B, K]; got shape {tuple(logits.shape)}")
    check_target_range(target, logits.shape[1])
    return logits.gather(1, target[:, None])[:, 0]


# --------------------------------------------------------------------------- base class
POSTPROCESS_OPTIONS = ("relu", "channel_reduction", "upsample", "align_corners")


class Explainer:
    """Base of every method. Subclasses set ``name`` and ``default_postprocess`` and implement
    either :meth:`pass_request` + :meth:`from_pass` (methods computed from a shared pass) or
    :meth:`attribute`. Keyword options ``relu``, ``channel_reduction``, ``upsample`` and
    ``align_corners`` override the default post-processing. ``baseline``: a reference map that
    ignores the model (random, center); reports draw baselines apart.

    Declarations the job loop reads: ``needs_image_ids``: the maps are looked up by image id
    (saved maps, :mod:`salbench.methods.precomputed`): callers pass ``image_ids`` to
    :meth:`__call__` and :meth:`attribute`; ``recomputable``: the maps can be computed for any
    input and model (False for saved maps: metrics that re-run the explainers on perturbed inputs
    or a randomized model, ``Needs(explainers=True)``, refuse such a method)."""

    name: str = ""
    space: str = "pixel"  # "layer" for the CAM family
    baseline: bool = False
    needs_image_ids: bool = False
    recomputable: bool = True
    default_postprocess = Postprocess()

    def __init__(
        self,
        model: nn.Module,
        *,
        relu: Optional[bool] = None,
        channel_reduction: Optional[str] = None,
        upsample: Optional[str] = None,
        align_corners: Optional[bool] = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        overrides = {"relu": relu, "channel_reduction": channel_reduction, "upsample": upsample,
                     "align_corners": align_corners}
        base = self.default_postprocess
        self.postprocess = Postprocess(**{k: (getattr(base, k) if v is None else v) for k, v in overrides.items()})

    # ------------------------------------------------------------------ the one path
    def pass_request(self, x: Tensor) -> Optional["PassRequest"]:
        """What this method needs from a shared forward/backward pass
        (:class:`salbench.methods.shared.PassRequest`), or ``None`` when it computes its
        attribution otherwise (occlusion, baselines: they implement :meth:`attribute`)."""
        return None

    def from_pass(self, result: "PassResult") -> Tensor:
        """The attribution built from a shared pass's tensors
        (:class:`salbench.methods.shared.PassResult`)."""
        raise NotImplementedError(f"{type(self).__name__} does not take part in shared passes")

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> the raw attribution (module docstring). Default: this
        method's own shared pass, then :meth:`from_pass`."""
        from salbench.methods.shared import shared_pass

        target = check_inputs(x, target)
        request = self.pass_request(x)
        if request is None:
            raise NotImplementedError(f"{type(self).__name__} implements neither attribute nor pass_request")
        return self.from_pass(shared_pass(self.model, x, target, request))

    def __call__(self, x: Tensor, target: Tensor, image_ids: Optional[Sequence[str]] = None) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> heatmap [B, H, W] float32 on x's device.
        ``image_ids`` (B strings): the images' ids, for a method that ``needs_image_ids``."""
        target = check_inputs(x, target)
        if self.needs_image_ids:
            if image_ids is None or len(image_ids) != x.shape[0]:
                raise ValueError(f"{self.name} looks its maps up by image id: call it with image_ids=[...] "
                                 f"({x.shape[0]} ids; got {None if image_ids is None else len(image_ids)})")
            attribution = self.attribute(x, target, image_ids=list(image_ids))  # type: ignore[call-arg]
        else:
            attribution = self.attribute(x, target)
        return self.postprocess(attribution, tuple(x.shape[-2:]))

    # ------------------------------------------------------------------ options
    def options(self) -> Dict[str, Any]:
        """Every choice that shapes the heatmap, recorded with the scores: the method's name and
        its constructor's keyword options (post-processing included), read back from the
        attributes of the same names."""
        out: Dict[str, Any] = {"method": self.name, **self.postprocess.as_dict()}
        for name in entry_parameters(type(self)):
            if name not in POSTPROCESS_OPTIONS:
                out[name] = getattr(self, name)
        return out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if k != "method")
        return f"{type(self).__name__}({opts})"


class LayerExplainer(Explainer):
    """Base for methods that read one layer's activation (the CAM family).

    ``layer``: a name from ``model.named_modules()``; default: the feature map that feeds the
    global pooling (:func:`~salbench.methods.hooks.default_target_layer`), found on the first call.
    """

    space = "layer"
    default_layer_from_model = True  # create_method passes the bundle's target layer as `layer`

    def __init__(self, model: nn.Module, *, layer: Optional[str] = None, **postprocess: Any):
        super().__init__(model, **postprocess)
        if layer is not None:
            find_module(model, layer)  # fail early with the candidates listed
        self.layer = layer

    def resolve_layer(self, x: Tensor) -> str:
        if self.layer is None:
            self.layer = default_target_layer(self.model, x)
        return self.layer

    def spatial(self, activation: Tensor, source: Optional[str] = None) -> Tensor:
        """``activation`` [B, K, h, w] when it is a spatial map of at least 2 x 2; a smaller one
        (a pooled layer, e.g. ``avgpool``) would give a map that is constant up to upsampling
        rounding, so it is an error naming the layer."""
        if activation.ndim != 4 or activation.shape[-1] * activation.shape[-2] < 4 \
                or min(activation.shape[-2:]) < 1:
            where = source or f"layer {self.layer!r}"
            raise ValueError(f"{self.name}: {where} outputs {list(activation.shape)}, no spatial map of at least "
                             "2 x 2 (a pooled layer?); choose a convolutional layer, e.g. the one feeding the global "
                             "pool (layer=null picks it)")
        return activation
