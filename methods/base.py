"""Explainer base class, scoped hooks and the named post-processing steps.

Every explainer takes ``x`` [B, C, H, W] (float, normalized model input) and ``target`` [B]
(long, one class per image) and returns tensors on ``x``'s device:

* ``attribute(x, target)``: the raw attribution in the method's native space: [B, h, w] at the
  layer's resolution for the CAM family, [B, C, H, W] for pixel-space methods;
* ``__call__(x, target)``: the heatmap [B, H, W] float32 at input resolution, after the
  method's post-processing (ReLU, channel reduction, upsampling), never min-max normalized.

Hooks live for one call (context managers with try/finally) and the model is left exactly as
it was: train/eval mode, ``requires_grad`` flags, parameter ``.grad`` and registered hooks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.registry import UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from salbench.methods.shared import PassRequest, PassResult

UPSAMPLE_MODES = ("bilinear", "bicubic", "nearest", "none")
CHANNEL_REDUCTIONS = ("max_abs", "sum_abs", "sum", "mean", "l2", "none")


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


# --------------------------------------------------------------------------- model state
@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval mode, every parameter's ``requires_grad`` and ``.grad``."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


def find_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``; an unknown name lists the candidates."""
    modules = dict(model.named_modules())
    if name not in modules:
        candidates = [n for n, m in modules.items() if n and isinstance(m, (nn.Conv2d, nn.Sequential))]
        raise UnknownNameError("layer", name, candidates or [n for n in modules if n])
    return modules[name]


class LayerCapture:
    """Holds the output of one layer during one forward pass (see :func:`capture_layer`)."""

    def __init__(self, name: str):
        self.name = name
        self.activation: Optional[Tensor] = None
        self.calls = 0


@contextlib.contextmanager
def capture_layer(model: nn.Module, name: str) -> Iterator[LayerCapture]:
    """Record the output of layer ``name`` for the duration of the ``with`` block (the model
    continues with an identical copy, so in-place ops downstream leave the record intact)."""
    module = find_module(model, name)
    capture = LayerCapture(name)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
        capture.activation = output
        capture.calls += 1
        # the rest of the model gets a copy, so a later in-place op (DenseNet's
        # F.relu(features, inplace=True)) cannot overwrite the captured layer output
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()
    if capture.calls > 1:
        raise ValueError(
            f"layer {name!r} ran {capture.calls} times in one forward pass (a shared module); "
            "choose a layer that runs once"
        )


def class_scores(logits: Tensor, target: Tensor) -> Tensor:
    """logits [B, K], target [B] -> the pre-softmax score of each image's target class [B]."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits [B, K]; got shape {tuple(logits.shape)}")
    check_target_range(target, logits.shape[1])
    return logits.gather(1, target[:, None])[:, 0]


@dataclass
class ForwardTrace:
    """One traced forward pass: ``started`` names modules in the order their forward first ran;
    ``finished`` lists ``(name, output shape or None)`` in completion order (a module called
    twice appears twice); ``calls`` counts the calls of each module."""

    started: List[str]
    finished: List[Tuple[str, Optional[Tuple[int, ...]]]]
    calls: Dict[str, int]


def trace_forward(model: nn.Module, x: Tensor) -> ForwardTrace:
    """Run ``model(x[:1])`` without gradients, hooks on every named submodule for this call only."""
    trace = ForwardTrace(started=[], finished=[], calls={})
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def before(_m: nn.Module, _i: Any, name: str = name) -> None:
            if name not in trace.calls:
                trace.started.append(name)
            trace.calls[name] = trace.calls.get(name, 0) + 1

        def after(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            trace.finished.append((name, tuple(out.shape) if isinstance(out, Tensor) else None))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return trace


def default_target_layer(model: nn.Module, x: Tensor) -> str:
    """The last module (in forward-completion order) whose output is a spatial map [B, C, h, w]
    with h * w > 1, that is not a pooling layer and runs once per pass: the feature map that
    feeds the global pooling (``layer4`` of a ResNet, ``features`` of VGG/DenseNet/MobileNet)."""
    pooling = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
    modules = dict(model.named_modules())
    trace = trace_forward(model, x)
    candidates = [
        name for name, shape in trace.finished
        if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1
        and not isinstance(modules[name], pooling)
        and trace.calls[name] == 1  # shared modules cannot be captured
    ]
    if not candidates:
        raise ValueError("found no layer with a spatial output [B, C, h, w]; pass layer=... explicitly")
    return candidates[-1]


# --------------------------------------------------------------------------- post-processing
def reduce_channels(attribution: Tensor, reduction: str) -> Tensor:
    """[B, C, H, W] -> [B, H, W] by a named reduction (``max_abs`` is Simonyan et al.'s rule)."""
    if reduction == "max_abs":
        return attribution.abs().amax(dim=1)
    if reduction == "sum_abs":
        return attribution.abs().sum(dim=1)
    if reduction == "sum":
        return attribution.sum(dim=1)
    if reduction == "mean":
        return attribution.mean(dim=1)
    if reduction == "l2":
        return attribution.pow(2).sum(dim=1).sqrt()
    raise ValueError(f"unknown channel reduction {reduction!r}; valid: {', '.join(CHANNEL_REDUCTIONS[:-1])}")


def upsample(maps: Tensor, size: Tuple[int, int], mode: str, align_corners: bool = False) -> Tensor:
    """[B, h, w] -> [B, H, W] by ``mode`` (bilinear/bicubic use ``align_corners``)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsample mode {mode!r}; valid: {', '.join(UPSAMPLE_MODES)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == "none":
        raise ValueError(f"upsample='none' but the map is {tuple(maps.shape[-2:])}, the input {tuple(size)}")
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    return F.interpolate(maps[:, None], size=size, mode=mode, **kwargs)[:, 0]


@dataclass(frozen=True)
class Postprocess:
    """Named post-processing steps applied to ``attribute()`` to make the heatmap."""

    relu: bool = False
    channel_reduction: str = "none"  # for [B, C, H, W] attributions
    upsample: str = "bilinear"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.channel_reduction not in CHANNEL_REDUCTIONS:
            raise ValueError(
                f"unknown channel_reduction {self.channel_reduction!r}; valid: {', '.join(CHANNEL_REDUCTIONS)}"
            )
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample mode {self.upsample!r}; valid: {', '.join(UPSAMPLE_MODES)}")

    def __call__(self, attribution: Tensor, size: Tuple[int, int]) -> Tensor:
        maps = attribution
        if maps.ndim == 4:
            if self.channel_reduction == "none":
                if maps.shape[1] != 1:
                    raise ValueError("a [B, C, H, W] attribution with C > 1 needs a channel_reduction")
                maps = maps[:, 0]
            else:
                maps = reduce_channels(maps, self.channel_reduction)
        if self.relu:
            maps = maps.clamp_min(0)
        if maps.dtype in (torch.float16, torch.bfloat16):  # half-precision models: upsample in float32
            maps = maps.float()
        return upsample(maps, size, self.upsample, self.align_corners).float()


# --------------------------------------------------------------------------- base class
class Explainer:
    """Base of every method. Subclasses set ``name`` and ``default_postprocess`` and implement
    :meth:`attribute`. Keyword options ``relu``, ``channel_reduction``, ``upsample`` and
    ``align_corners`` override the default post-processing."""

    name: str = ""
    space: str = "pixel"  # "layer" for the CAM family
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
        overrides = {
            "relu": relu,
            "channel_reduction": channel_reduction,
            "upsample": upsample,
            "align_corners": align_corners,
        }
        base = self.default_postprocess
        self.postprocess = Postprocess(
            **{k: (getattr(base, k) if v is None else v) for k, v in overrides.items()}
        )

    def attribute(self, x: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def pass_request(self, x: Tensor) -> Optional["PassRequest"]:
        """What this method needs from a shared forward/backward pass
        (:class:`salbench.methods.shared.PassRequest`), or ``None`` when it cannot share one
        (the default: occlusion, baselines). Methods that return a request implement
        :meth:`from_pass`."""
        return None

    def from_pass(self, result: "PassResult") -> Tensor:
        """The attribution (as :meth:`attribute` returns it) built from a shared pass's tensors
        (:class:`salbench.methods.shared.PassResult`); equal to ``attribute(result.x, result.target)``."""
        raise NotImplementedError(f"{type(self).__name__} does not take part in shared passes")

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        """x: [B, C, H, W]; target: [B] -> heatmap [B, H, W] float32 on x's device."""
        target = check_inputs(x, target)
        return self.postprocess(self.attribute(x, target), tuple(x.shape[-2:]))

    def options(self) -> Dict[str, Any]:
        """Every choice that shapes the heatmap, recorded with the scores."""
        return {"method": self.name, **self.postprocess.__dict__}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if k != "method")
        return f"{type(self).__name__}({opts})"


class LayerExplainer(Explainer):
    """Base for methods that read one layer's activation (the CAM family).

    ``layer``: a name from ``model.named_modules()``; default: the feature map that feeds the
    global pooling (:func:`default_target_layer`), found on the first call.
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

    def forward_with_activation(self, x: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """Run the model once with gradients enabled; returns (activation [B, K, h, w],
        target scores [B]). Call inside :func:`preserved_model_state`."""
        layer = self.resolve_layer(x)
        x = x.detach().requires_grad_(True)  # the graph reaches the layer even if params are frozen
        with torch.enable_grad(), capture_layer(self.model, layer) as capture:
            scores = class_scores(self.model(x), target)
        if capture.activation is None:
            raise ValueError(f"layer {layer!r} did not run in the forward pass")
        activation = capture.activation
        if activation.ndim != 4:
            raise ValueError(f"layer {layer!r} output has shape {tuple(activation.shape)}; need [B, K, h, w]")
        return activation, scores

    def options(self) -> Dict[str, Any]:
        return {**super().options(), "layer": self.layer}
