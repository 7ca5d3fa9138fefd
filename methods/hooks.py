"""Hooks and layer tracing, each living for one call (context managers with try/finally).

* :func:`preserved_model_state`: every module's train/eval mode, every parameter's
  ``requires_grad`` and ``.grad`` restored after the block, also when it raised;
* :func:`capture_layer`: one layer's output during one forward pass;
* :func:`replaced_output`: one layer's output replaced by given tensors (Ablation-CAM);
* :func:`trace_forward` / :func:`default_target_layer`: the modules a forward pass runs, in order,
  and the feature map that feeds the global pooling;
* :func:`trace_head`: the inputs of the global average pools and of the linear heads (CAM);
* :func:`find_module`: a submodule by name, with the candidates listed when the name is wrong.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from dataclasses import field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from salbench.harness.registry import UnknownNameError


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


class OutputSlot:
    """The tensor that replaces a layer's output in the next forward passes (see
    :func:`replaced_output`): ``output`` [n, ...], n <= the pass's batch size."""

    def __init__(self, name: str):
        self.name = name
        self.output: Optional[Tensor] = None


@contextlib.contextmanager
def replaced_output(model: nn.Module, name: str) -> Iterator[OutputSlot]:
    """Within the block, layer ``name`` returns ``slot.output`` [n, ...] instead of its own output
    [m, ...] (the layers before it still run; the rest of the model gets a copy). n < m: padded
    to m rows by repeating its last row (the perturbation engine pads a chunk's inputs the same
    way); n > m = 1: the pass ran the layers before on one input and continues with n rows
    (tensors from before the layer broadcast against them); another shape is an error."""
    module = find_module(model, name)
    slot = OutputSlot(name)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        replacement = slot.output
        if replacement is None:
            raise RuntimeError(f"no replacement set for the output of layer {name!r}")
        rows = output.shape[0] if isinstance(output, Tensor) else 0
        if not isinstance(output, Tensor) or replacement.shape[1:] != output.shape[1:] or (
                replacement.shape[0] > rows != 1):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"layer {name!r} returns {shape}; its replacement has shape {tuple(replacement.shape)}")
        if replacement.shape[0] < rows:
            replacement = torch.cat([replacement, replacement[-1:].expand(rows - replacement.shape[0], *replacement.shape[1:])])
        return replacement.to(output.dtype, copy=True)  # a later in-place op cannot alter the caller's tensor

    handle = module.register_forward_hook(hook)
    try:
        yield slot
    finally:
        handle.remove()


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


# --------------------------------------------------------------------------- the head (CAM)
_POOLING_FUNCTIONS = ("adaptive_avg_pool2d", "avg_pool2d", "mean")


@dataclass
class HeadTrace:
    """What one forward pass showed of the model's head."""

    pooled_inputs: List[Tensor] = field(default_factory=list)  # inputs of global average pools
    heads: List[Tuple[str, nn.Module, Tensor]] = field(default_factory=list)  # (name, module, input)


class _GlobalPoolRecorder(TorchFunctionMode):
    """Records the input of every global average pool ([B, K, h, w] -> B * K values), whether
    a module (``nn.AdaptiveAvgPool2d``) or a function (``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``)."""

    def __init__(self, trace: HeadTrace):
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func: Callable, types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _POOLING_FUNCTIONS and args and isinstance(args[0], Tensor):
            inp = args[0]
            if (
                inp.ndim == 4
                and isinstance(out, Tensor)
                and out.numel() == inp.shape[0] * inp.shape[1]
            ):
                self.trace.pooled_inputs.append(inp)
        return out


def _is_head(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


@contextlib.contextmanager
def trace_head(model: nn.Module) -> Iterator[HeadTrace]:
    """Record global-average-pool inputs and the inputs of every ``nn.Linear`` / 1x1
    ``nn.Conv2d`` in execution order, for one forward pass."""
    trace = HeadTrace()
    handles = []
    for name, module in model.named_modules():
        if _is_head(module):

            def hook(mod: nn.Module, inputs: Tuple[Any, ...], _out: Any, name: str = name) -> None:
                if inputs and isinstance(inputs[0], Tensor):
                    trace.heads.append((name, mod, inputs[0]))

            handles.append(module.register_forward_hook(hook))
    try:
        with _GlobalPoolRecorder(trace):
            yield trace
    finally:
        for handle in handles:
            handle.remove()
