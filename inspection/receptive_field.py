"""Receptive fields of a network's layers, traced from the layer geometry.

The arithmetic of Araujo, Norris & Sim, "Computing receptive fields of convolutional neural
networks" (Distill 2019), per spatial axis. A unit ``i`` of a feature map covers the input pixels
``start + i * jump ... start + i * jump + size - 1`` (inclusive; negative or too-large pixel
coordinates lie in the padding). Through an operation with kernel ``k``, stride ``s``, padding
``p`` (before the first element) and dilation ``d`` (effective kernel ``k' = d (k - 1) + 1``):

    size' = size + (k' - 1) * jump,   jump' = jump * s,   start' = start - p * jump

(the input is the identity field: size 1, jump 1, start 0). An explicit pad shifts ``start`` by
``-p * jump``; an element-wise op of several maps (a residual sum, a concatenation along
channels) covers the union of their fields; a global pool, or anything that maps the spatial
grid to one value, covers the whole input. These are *theoretical* receptive fields: the input
pixels that can reach a unit through the network's graph, whatever the weights.

:func:`receptive_fields` runs one forward pass of a blank image with a
:class:`~torch.overrides.TorchFunctionMode` that follows every tensor derived from the input
through ``conv2d``, ``max_pool2d``, ``avg_pool2d``, ``pad``, ``adaptive_*_pool2d`` and the
element-wise ops, so branches and skip connections (ResNet, EfficientNet) are handled without
knowing the architecture. An operation that changes the spatial grid in any other way (an
interpolation, a slice) makes the field *unknown* for everything downstream: an error, never a
wrong crop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from salbench.methods.hooks import find_module


@dataclass(frozen=True)
class AxisField:
    """One axis of a receptive field: unit ``i`` covers input pixels
    ``[start + i * jump, start + i * jump + size - 1]``."""

    size: int
    jump: int
    start: int

    def through(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "AxisField":
        """The field after a convolution or pool (``padding`` before the first element)."""
        effective = dilation * (kernel - 1) + 1
        return AxisField(size=self.size + (effective - 1) * self.jump, jump=self.jump * stride,
                         start=self.start - padding * self.jump)

    def padded(self, before: int) -> "AxisField":
        """The field after padding ``before`` elements ahead of the first one (negative: a crop)."""
        return AxisField(self.size, self.jump, self.start - before * self.jump)

    def union(self, other: "AxisField") -> Optional["AxisField"]:
        """The field covering both (None when the grids differ: different jumps)."""
        if self.jump != other.jump:
            return None
        start = min(self.start, other.start)
        end = max(self.start + self.size, other.start + other.size)
        return AxisField(end - start, self.jump, start)

    def span(self, index: int) -> Tuple[int, int]:
        """Inclusive input pixel range of unit ``index``."""
        first = self.start + index * self.jump
        return first, first + self.size - 1


IDENTITY_AXIS = AxisField(size=1, jump=1, start=0)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units: ``rows`` and ``cols`` axes; ``whole_input``: every unit
    sees the whole input (after a global pool, a squeeze-and-excitation gate...); ``known``: False
    when an operation the tracer cannot follow changed the grid."""

    rows: AxisField = IDENTITY_AXIS
    cols: AxisField = IDENTITY_AXIS
    whole_input: bool = False
    known: bool = True

    @property
    def size(self) -> Tuple[int, int]:
        return (self.rows.size, self.cols.size)

    @property
    def jump(self) -> Tuple[int, int]:
        return (self.rows.jump, self.cols.jump)

    @property
    def start(self) -> Tuple[int, int]:
        return (self.rows.start, self.cols.start)

    def box(self, y: int, x: int) -> Tuple[int, int, int, int]:
        """Inclusive input box ``(x0, y0, x1, y1)`` of unit ``(y, x)``, unclipped (may extend into
        the padding); the whole input is the caller's to clip."""
        if not self.known:
            raise ValueError("the receptive field of this layer is unknown (an operation the tracer cannot "
                             "follow changed the spatial grid)")
        y0, y1 = self.rows.span(y)
        x0, x1 = self.cols.span(x)
        return x0, y0, x1, y1

    def describe(self) -> Dict[str, Any]:
        return {"size_h": self.rows.size, "size_w": self.cols.size, "jump_h": self.rows.jump,
                "jump_w": self.cols.jump, "start_h": self.rows.start, "start_w": self.cols.start,
                "whole_input": self.whole_input, "known": self.known}


IDENTITY = ReceptiveField()
UNKNOWN = ReceptiveField(known=False)


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if len(value) in (1, 2) else (int(value[0]), int(value[1]))
    return (int(value), int(value))


def through(field: ReceptiveField, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> ReceptiveField:
    """``field`` after a 2-D convolution / pool with the given geometry (ints or (h, w) pairs;
    ``padding`` may be ``"same"`` / ``"valid"`` as ``F.conv2d`` takes it)."""
    if not field.known or field.whole_input:
        return field
    kernel, stride, dilation = _pair(kernel), _pair(stride), _pair(dilation)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":  # PyTorch pads total = d (k - 1), the smaller half first
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    padding = _pair(padding)
    return ReceptiveField(field.rows.through(kernel[0], stride[0], padding[0], dilation[0]),
                          field.cols.through(kernel[1], stride[1], padding[1], dilation[1]))


def union(fields: Iterable[ReceptiveField]) -> ReceptiveField:
    """The field covering every one of ``fields`` (unknown if any is; whole if any is)."""
    fields = list(fields)
    if not fields:
        return UNKNOWN
    if any(not f.known for f in fields):
        return UNKNOWN
    if any(f.whole_input for f in fields):
        return ReceptiveField(whole_input=True)
    rows, cols = fields[0].rows, fields[0].cols
    for f in fields[1:]:
        rows, cols = rows.union(f.rows), cols.union(f.cols)
        if rows is None or cols is None:
            return UNKNOWN
    return ReceptiveField(rows, cols)


# --------------------------------------------------------------------------- the tracer
_WHOLE = ReceptiveField(whole_input=True)


def _tensors(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _argument(args: Sequence[Any], kwargs: Dict[str, Any], position: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _conv_field(field: ReceptiveField, args: Sequence[Any], kwargs: Dict[str, Any]) -> ReceptiveField:
    weight = _argument(args, kwargs, 1, "weight", None)
    return through(field, tuple(weight.shape[-2:]), _argument(args, kwargs, 3, "stride", 1),
                   _argument(args, kwargs, 4, "padding", 0), _argument(args, kwargs, 5, "dilation", 1))


def _max_pool_field(field: ReceptiveField, args: Sequence[Any], kwargs: Dict[str, Any]) -> ReceptiveField:
    kernel = _argument(args, kwargs, 1, "kernel_size", None)
    stride = _argument(args, kwargs, 2, "stride", None)
    return through(field, kernel, kernel if stride in (None, [], ()) else stride,
                   _argument(args, kwargs, 3, "padding", 0), _argument(args, kwargs, 4, "dilation", 1))


def _avg_pool_field(field: ReceptiveField, args: Sequence[Any], kwargs: Dict[str, Any]) -> ReceptiveField:
    kernel = _argument(args, kwargs, 1, "kernel_size", None)
    stride = _argument(args, kwargs, 2, "stride", None)
    return through(field, kernel, kernel if stride in (None, [], ()) else stride, _argument(args, kwargs, 3, "padding", 0))


def _pad_field(field: ReceptiveField, args: Sequence[Any], kwargs: Dict[str, Any]) -> ReceptiveField:
    pad = list(_argument(args, kwargs, 1, "pad", ()))
    if not field.known or field.whole_input:
        return field
    left, top = (pad + [0, 0, 0, 0])[0], (pad + [0, 0, 0, 0])[2]  # (left, right, top, bottom, ...)
    return ReceptiveField(field.rows.padded(int(top)), field.cols.padded(int(left)))


# functions (by __name__) that change the spatial grid in a way the tracer follows
_SPATIAL: Dict[str, Callable[[ReceptiveField, Sequence[Any], Dict[str, Any]], ReceptiveField]] = {
    "conv2d": _conv_field,
    "max_pool2d": _max_pool_field, "_max_pool2d": _max_pool_field, "max_pool2d_with_indices": _max_pool_field,
    "avg_pool2d": _avg_pool_field,
    "pad": _pad_field,
}
_GLOBAL = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices")


class _FieldTracer(TorchFunctionMode):
    """Follows the receptive field of every tensor derived from the traced input."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: Dict[int, Tuple[Tensor, ReceptiveField]] = {}  # id -> (tensor kept alive, field)

    def field_of(self, tensor: Tensor) -> Optional[ReceptiveField]:
        entry = self.fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def mark(self, tensor: Tensor, field: ReceptiveField) -> None:
        self.fields[id(tensor)] = (tensor, field)

    def __torch_function__(self, func: Callable, types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        inputs = [(t, self.field_of(t)) for t in _tensors(args) + _tensors(kwargs)]
        # an in-place op returns one of its inputs: read the fields before the call
        traced = [(t, f) for t, f in inputs if f is not None]
        out = func(*args, **kwargs)
        if not traced:
            return out
        name = getattr(func, "__name__", "")
        outputs = _tensors(out)
        if name in _SPATIAL:
            field = _SPATIAL[name](traced[0][1], args, kwargs)
        elif name in _GLOBAL:
            sizes = {tuple(t.shape[-2:]) for t in outputs}
            field = _WHOLE if sizes == {(1, 1)} else UNKNOWN
        else:
            field = self._elementwise(traced, outputs)
        for tensor in outputs:
            self.mark(tensor, field)
        return out

    @staticmethod
    def _elementwise(traced: List[Tuple[Tensor, ReceptiveField]], outputs: List[Tensor]) -> ReceptiveField:
        """Any other op. An output on the inputs' grid covers the union of their fields (a
        [B, C, 1, 1] operand broadcast over the grid, e.g. a squeeze-and-excitation gate, covers the
        whole input); an output that reduces or flattens a spatial grid covers the whole input; any
        other change of the grid (a slice, a reshape into a grid) is unknown."""
        fields: List[ReceptiveField] = []
        for tensor in outputs:
            grid = tuple(tensor.shape[-2:]) if tensor.ndim == 4 else None
            for source, field in traced:
                source_grid = tuple(source.shape[-2:]) if source.ndim == 4 else None
                if grid is None or grid == (1, 1):
                    reduced = source_grid is not None and source_grid != (1, 1)
                    fields.append(_WHOLE if reduced else field)
                elif source_grid == grid:
                    fields.append(field)
                elif source_grid == (1, 1):
                    fields.append(_WHOLE)
                else:
                    fields.append(UNKNOWN)
        return union(fields)


def receptive_fields(model: nn.Module, input_size: Tuple[int, int], layers: Sequence[str],
                     device: Optional[torch.device] = None) -> Dict[str, ReceptiveField]:
    """Receptive field of each layer's output (module names of ``model``), traced through one
    forward pass of a blank [1, 3, H, W] image without gradients. A layer that runs more than
    once per pass must have the same field each time."""
    modules = {name: find_module(model, name) for name in layers}
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    tracer = _FieldTracer()
    found: Dict[str, List[ReceptiveField]] = {name: [] for name in layers}
    handles = []
    for name, module in modules.items():
        def hook(_module: nn.Module, _inputs: Any, output: Any, name: str = name) -> None:
            field = tracer.field_of(output) if isinstance(output, Tensor) else None
            found[name].append(field if field is not None else UNKNOWN)
        handles.append(module.register_forward_hook(hook))
    x = torch.zeros(1, 3, *input_size, device=device)
    tracer.mark(x, IDENTITY)
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    out: Dict[str, ReceptiveField] = {}
    for name, fields in found.items():
        if not fields:
            raise ValueError(f"layer {name!r} did not run in a forward pass")
        if any(f != fields[0] for f in fields[1:]):
            raise ValueError(f"layer {name!r} runs {len(fields)} times per forward pass with different receptive "
                             "fields (a shared module); choose a layer that runs once")
        out[name] = fields[0]
    return out


def crop_box(field: ReceptiveField, y: int, x: int, image_size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Inclusive box ``(x0, y0, x1, y1)`` of unit ``(y, x)``'s field in an image of ``(H, W)``:
    the whole image for a field that covers it; unclipped otherwise (see :func:`crop_patch`)."""
    height, width = image_size
    if field.whole_input:
        return 0, 0, width - 1, height - 1
    return field.box(y, x)


def crop_patch(image: Tensor, box: Tuple[int, int, int, int], fill: float = float("nan")) -> Tensor:
    """image [C, H, W], inclusive box (x0, y0, x1, y1) possibly extending past the image ->
    [C, y1 - y0 + 1, x1 - x0 + 1]: the image's pixels, ``fill`` where the box is outside it (the
    padding the network saw there)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    channels, height, width = image.shape
    patch = torch.full((channels, y1 - y0 + 1, x1 - x0 + 1), fill, dtype=image.dtype, device=image.device)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, height - 1), max(x0, 0), min(x1, width - 1)
    if sy0 <= sy1 and sx0 <= sx1:
        patch[:, sy0 - y0: sy1 - y0 + 1, sx0 - x0: sx1 - x0 + 1] = image[:, sy0: sy1 + 1, sx0: sx1 + 1]
    return patch


def analytic_field(stack: Sequence[Tuple[int, int, int, int]]) -> AxisField:
    """One axis of the field of a plain chain of layers ``(kernel, stride, padding, dilation)``,
    by the closed forms of Araujo et al. (2019): ``size = 1 + sum_l (k'_l - 1) prod_{i<l} s_i``,
    ``jump = prod_l s_l``, ``start = -sum_l p_l prod_{i<l} s_i``."""
    size, start, jump = 1, 0, 1
    for kernel, stride, padding, dilation in stack:
        size += (dilation * (kernel - 1)) * jump
        start -= padding * jump
        jump *= stride
    return AxisField(size=size, jump=jump, start=start)


__all__ = ["AxisField", "ReceptiveField", "IDENTITY", "UNKNOWN", "through", "union", "receptive_fields",
           "crop_box", "crop_patch", "analytic_field"]
