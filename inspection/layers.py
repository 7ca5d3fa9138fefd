"""Which layers an inspection reads, and their outputs captured in one forward pass.

Layer names are module names of the model (``features.2``, ``layer4``) or one of:

* ``first``: the first convolution's stage: the last module after the first ``nn.Conv2d`` (in
  the order modules finish) that keeps its output shape and runs once, before the grid or the
  channel count changes (``conv -> BN -> ReLU``: the ReLU; a shared activation module that runs
  several times per pass cannot be captured, so EfficientNet-Lite's stem gives its BatchNorm);
* ``target``: the bundle's target layer (the feature map that feeds the global pooling);
* ``conv_stages``: the stage (as for ``first``) of every convolution, in network order.

:func:`resolve_layers` expands them and orders the result as the network runs the layers.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from salbench.methods.hooks import ForwardTrace, LayerCapture, capture_layer, find_module, trace_forward, trace_head

LAYER_KEYWORDS = ("first", "target", "conv_stages")
# modules that act on each element (or each channel) and keep the grid: part of a conv's stage
_STAGE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU,
                  nn.Hardtanh, nn.Hardswish, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d,
                  nn.GroupNorm, nn.InstanceNorm2d)


def _probe(model: nn.Module, input_size: Tuple[int, int]) -> Tensor:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.zeros(1, 3, *input_size, device=device)


def conv_stage(model: nn.Module, conv_name: str, trace: ForwardTrace) -> str:
    """The stage of convolution ``conv_name`` (see the module docstring)."""
    modules = dict(model.named_modules())
    finished = trace.finished
    position = next(i for i, (name, _) in enumerate(finished) if name == conv_name)
    shape = finished[position][1]
    stage = conv_name
    for name, out_shape in finished[position + 1:]:
        module = modules[name]
        if out_shape != shape or not isinstance(module, _STAGE_MODULES):
            break
        if trace.calls.get(name, 0) == 1:
            stage = name
    return stage


def convolutions(model: nn.Module, trace: ForwardTrace) -> List[str]:
    """Names of the ``nn.Conv2d`` modules in the order they first run."""
    modules = dict(model.named_modules())
    return [name for name in trace.started if isinstance(modules[name], nn.Conv2d)]


def first_convolution(model: nn.Module, input_size: Tuple[int, int]) -> str:
    """The first ``nn.Conv2d`` a forward pass runs."""
    convs = convolutions(model, trace_forward(model, _probe(model, input_size)))
    if not convs:
        raise ValueError("the model runs no nn.Conv2d; filters cannot be drawn")
    return convs[0]


def resolve_layers(model: nn.Module, names: Sequence[str], input_size: Tuple[int, int],
                   target_layer: Optional[str] = None) -> List[str]:
    """Module names for ``names`` (module names and the keywords of the module docstring), each
    once, in the order the network finishes them; an unknown name lists the candidates."""
    trace = trace_forward(model, _probe(model, input_size))
    wanted: List[str] = []
    for name in names:
        if name == "first":
            convs = convolutions(model, trace)
            if not convs:
                raise ValueError("layer 'first': the model runs no nn.Conv2d")
            wanted.append(conv_stage(model, convs[0], trace))
        elif name == "target":
            if not target_layer:
                raise ValueError("layer 'target': the model bundle names no target layer; give a module name")
            wanted.append(target_layer)
        elif name == "conv_stages":
            wanted += [conv_stage(model, conv, trace) for conv in convolutions(model, trace)]
        else:
            find_module(model, name)  # unknown: lists the candidates
            wanted.append(name)
    order = {}
    for index, (name, _) in enumerate(trace.finished):
        order.setdefault(name, index)
    missing = [n for n in wanted if n not in order]
    if missing:
        raise ValueError(f"layer {missing[0]!r} does not run in a forward pass of the model")
    shapes = dict(trace.finished)
    for name in wanted:
        shape = shapes[name]
        if shape is None or len(shape) != 4:
            raise ValueError(f"layer {name!r} returns {shape}, not a feature map [B, C, h, w]")
        if trace.calls[name] > 1:
            raise ValueError(f"layer {name!r} runs {trace.calls[name]} times per forward pass (a shared module); "
                             "choose a layer that runs once")
    return sorted(dict.fromkeys(wanted), key=order.__getitem__)


@contextlib.contextmanager
def capture_layers(model: nn.Module, names: Sequence[str]) -> Iterator[Dict[str, LayerCapture]]:
    """The outputs of several layers during one forward pass ({name: capture}), hooks removed after."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(capture_layer(model, name)) for name in dict.fromkeys(names)}


class InputCapture:
    """The input of one module during one forward pass (see :func:`capture_input`)."""

    def __init__(self, name: str):
        self.name = name
        self.value: Optional[Tensor] = None


@contextlib.contextmanager
def capture_input(model: nn.Module, name: str) -> Iterator[InputCapture]:
    """Record the (first) input of module ``name`` for the ``with`` block."""
    module = find_module(model, name)
    capture = InputCapture(name)

    def hook(_module: nn.Module, inputs: Tuple[Any, ...]) -> None:
        capture.value = inputs[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


def head_name(model: nn.Module, input_size: Tuple[int, int]) -> str:
    """The model's last linear head (``nn.Linear`` or 1x1 ``nn.Conv2d`` run last): its input is
    the penultimate feature vector."""
    modules = {id(m): n for n, m in model.named_modules()}
    with torch.no_grad(), trace_head(model) as trace:
        model(_probe(model, input_size))
    if not trace.heads:
        raise ValueError("the model has no linear head (nn.Linear or 1x1 nn.Conv2d); no penultimate features")
    name, module, _ = trace.heads[-1]
    return modules.get(id(module), name)


def penultimate(value: Tensor) -> Tensor:
    """The head's input as one vector per image: [B, D] as is, [B, D, 1, 1] (a 1x1 conv head
    after pooling) flattened, [B, D, h, w] averaged over the grid."""
    if value.ndim == 2:
        return value
    if value.ndim == 4:
        return value.mean((2, 3))
    return value.flatten(1)
