"""Incremental inference for occlusion: each layer recomputed only where a window changed it.

Nakandala, Kumar & Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations" (SIGMOD 2019, their system "Krypton"): an occluding
window changes only the activations inside its projective field, which grows layer by layer by
each kernel's reach. The unoccluded activations of every layer are computed once per image and
cached; for a batch of windows each layer is recomputed only on the changed region (plus the
halo its kernel reads), on crops gathered from the cache with the previous layer's changed
region written in. The result equals the full forward of the occluded image up to float
rounding (different summation orders of the same products; tests/test_incremental.py checks
1e-5 relative on every supported family).

How it is done here:

* the model is traced by ``torch.fx`` (:func:`trace_model`); every node of the graph is
  classified (:func:`classify`) as a *window* op (convolution, max / average pooling: a changed
  input region [a, b) changes outputs ceil((a + pad - (k-1)d) / s) .. floor((b - 1 + pad) / s)),
  a *pointwise* op (batch norm in eval mode, activations, dropout in eval mode: the region is
  unchanged), an *elementwise* op of several maps (residual additions, products: the union of the
  regions), a channel *concatenation* (union), a constant *padding* (the region shifts), or
  *opaque* (anything else, :data:`UNBOUNDED`);
* :func:`plan_regions` computes, once per geometry (input size, window, stride), every node's
  region for every window. Within a node all windows get a region of the **same size** (the
  largest, shifted inside the map at the borders), so a batch of windows is one batched op on
  equal crops, and a window's numbers do not depend on which other windows share its batch;
* a node whose region covers at least :data:`FULL_FORWARD_SHARE` of its map, an opaque node,
  and every node after them that reads their output, runs in full on the occluded batch (the
  changed region is written into the cached map first): from there it is the ordinary forward;
* windows are processed in forward chunks of exactly ``batch_size`` (image, window) pairs, the
  last one padded, and each image's cache comes from a forward pass of that image alone, so the
  values do not depend on how many images a call holds (the reliability rule).

:func:`incremental_cost` reports, for a model, input size, window and stride, the share of the
multiply-adds of one forward pass that a window forces to be recomputed: ``exact`` (each
window's own changed region, Krypton's theoretical bound) and ``planned`` (what this engine
computes: equal-size regions, the full-map fallback), per layer and in total.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

# a node whose changed region covers this share of its map (or more) runs in full from there on:
# gathering crops then costs more than the few multiply-adds it saves
FULL_FORWARD_SHARE = 0.8
# incremental="auto" runs the engine only when it recomputes less than this share of the
# multiply-adds of a full forward (else the ordinary occlusion is as fast)
AUTO_MAX_SHARE = 0.9

# What the engine cannot bound and therefore runs in full (from that node on), by kind. The
# classification below is the single source of truth; this list documents it (docs/methods.md).
UNBOUNDED = (
    "global and adaptive pooling, flatten, linear layers, reshapes, slicing (they mix all positions)",
    "batch norm in training mode or without running statistics, group / layer / instance norm (statistics over the map)",
    "squeeze-and-excitation products and any product or sum with a per-image [N, C, 1, 1] tensor computed from the input",
    "interpolation / upsampling, transposed and 1-D / 3-D convolutions, attention",
    "convolutions with a padding mode other than zeros, average pooling with count_include_pad=False and "
    "padding, average pooling whose ceil_mode changes the output size, max pooling returning indices",
    "padding with negative amounts or a non-constant mode, concatenation along any dimension but channels",
    "any module with forward hooks, any subclass that overrides forward, and every other operation",
)


class Untraceable(ValueError):
    """The model cannot be run incrementally (torch.fx cannot trace it, or hooks would be bypassed)."""


# --------------------------------------------------------------------------- tracing
def trace_model(model: nn.Module) -> fx.Graph:
    """The model's ``torch.fx`` graph (leaf modules: torch.nn's own). Raises :class:`Untraceable`
    with the reason when fx cannot trace it, when it takes more than one input, or when a hook
    is registered where the graph would bypass it (a traced-through module, the model itself,
    or a global module hook)."""
    glob = nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks:
        raise Untraceable("global module forward hooks are registered; the traced graph would bypass them")
    try:
        graph = fx.Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any failure of the tracer means "not traceable"
        raise Untraceable(f"torch.fx cannot trace the model ({type(error).__name__}: {error})") from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise Untraceable(f"the traced model takes {len(placeholders)} inputs; occlusion needs exactly one")
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    for name, module in model.named_modules():
        if name not in called and (module._forward_hooks or module._forward_pre_hooks):
            raise Untraceable(f"module {name or type(model).__name__!r} has forward hooks that the traced graph "
                              "would bypass")
    # the engine gives an in-place op a copy (caches stay intact): a value read again after it was
    # overwritten in place would then read the old values
    position = {node: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op in ("call_module", "call_function", "call_method") and node.args \
                and isinstance(node.args[0], fx.Node) and _mutates(node, model):
            later = [user.name for user in node.args[0].users if position[user] > position[node]]
            if later:
                raise Untraceable(f"{node.name} overwrites {node.args[0].name} in place, which {', '.join(later)} "
                                  "read(s) afterwards")
    return graph


# --------------------------------------------------------------------------- classification
@dataclass
class OpSpec:
    """How one graph node is run on changed regions. ``kind``: ``window`` | ``pointwise`` |
    ``elementwise`` | ``concat`` | ``pad`` | ``opaque``. Window ops: ``kernel``, ``stride``,
    ``padding`` (before, per axis), ``dilation`` (per axis, (rows, cols)), ``fill`` (the value of
    positions outside the map: 0 for convolutions and average pooling, -inf for max pooling),
    ``apply(crop) -> out`` (the op without padding), ``macs_per_output`` (multiply-adds per
    output position, convolutions only). Pad: ``pads`` (top, bottom, left, right). ``reason``:
    why an op is opaque."""

    kind: str
    kernel: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    fill: float = 0.0
    apply: Optional[Callable[[Tensor], Tensor]] = None
    macs_per_output: int = 0
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)
    reason: str = ""


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if len(value) in (1, 2) else (-1, -1)
    return int(value), int(value)


def _bound(names: Sequence[str], defaults: Dict[str, Any], node: fx.Node, env: Callable[[Any], Any]) -> Dict[str, Any]:
    """A call_function node's arguments by name (positional, keyword, defaults), values resolved."""
    out = dict(defaults)
    for name, arg in zip(names, node.args):
        out[name] = env(arg)
    for name, arg in node.kwargs.items():
        out[name] = env(arg)
    return out


POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                     nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity)
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
POINTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
                       F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.sigmoid, F.sigmoid,
                       torch.tanh, F.tanh, operator.neg, torch.neg, torch.abs, torch.clamp, torch.clip}
POINTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "neg", "abs",
                     "contiguous", "clone"}
ELEMENTWISE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                         operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
SHAPE_METHODS = {"size", "dim"}


def _same_forward(module: nn.Module, base: type) -> bool:
    """``module`` is a ``base`` whose forward is ``base``'s (a subclass may change its meaning)."""
    return isinstance(module, base) and type(module).forward is base.forward


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _conv_spec(weight: Tensor, bias: Optional[Tensor], stride: Any, padding: Any, dilation: Any, groups: int) -> OpSpec:
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":  # torch pads d * (k - 1) in total, the smaller half before
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        else:
            return OpSpec("opaque", reason=f"conv2d padding {padding!r}")
    padding = _pair(padding)
    if min(stride + dilation + padding) < 0 or -1 in stride + dilation + padding:
        return OpSpec("opaque", reason="conv2d with unusual stride / padding / dilation")
    macs = int(weight.shape[0]) * int(weight.shape[1]) * kernel[0] * kernel[1]

    def apply(crop: Tensor) -> Tensor:
        return F.conv2d(crop, weight, bias, stride, 0, dilation, groups)

    return OpSpec("window", kernel, stride, padding, dilation, 0.0, apply, macs)


def _max_pool_spec(kernel: Any, stride: Any, padding: Any, dilation: Any, return_indices: bool) -> OpSpec:
    if return_indices:
        return OpSpec("opaque", reason="max pooling returning indices")
    kernel, padding, dilation = _pair(kernel), _pair(padding), _pair(dilation)
    stride = _pair(stride) if stride not in (None, [], ()) else kernel

    def apply(crop: Tensor) -> Tensor:
        return F.max_pool2d(crop, kernel, stride, 0, dilation)

    return OpSpec("window", kernel, stride, padding, dilation, -math.inf, apply)


def _avg_pool_spec(kernel: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool,
                   divisor_override: Optional[int]) -> OpSpec:
    kernel, padding = _pair(kernel), _pair(padding)
    stride = _pair(stride) if stride not in (None, [], ()) else kernel
    if max(padding) > 0 and not count_include_pad and divisor_override is None:
        return OpSpec("opaque", reason="average pooling with count_include_pad=False and padding")
    # the divisor is the kernel's area (padding counted): the crop's zeros play the padding
    divisor = divisor_override if divisor_override is not None else None

    def apply(crop: Tensor) -> Tensor:
        return F.avg_pool2d(crop, kernel, stride, 0, False, True, divisor)

    return OpSpec("window", kernel, stride, padding, (1, 1), 0.0, apply,
                  reason="ceil_mode" if ceil_mode else "")


def classify(node: fx.Node, model: nn.Module, const: Callable[[Any], Any]) -> OpSpec:
    """The :class:`OpSpec` of a node that depends on the input. ``const(arg)`` resolves an
    argument that does not depend on the input (weights, numbers)."""
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        if _has_hooks(module):
            return OpSpec("opaque", reason=f"module {node.target!r} has hooks")
        if _same_forward(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return OpSpec("opaque", reason=f"padding_mode {module.padding_mode!r}")
            return _conv_spec(module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
        if _same_forward(module, nn.MaxPool2d):
            return _max_pool_spec(module.kernel_size, module.stride, module.padding, module.dilation,
                                  module.return_indices)
        if _same_forward(module, nn.AvgPool2d):
            return _avg_pool_spec(module.kernel_size, module.stride, module.padding, module.ceil_mode,
                                  module.count_include_pad, module.divisor_override)
        if _same_forward(module, nn.BatchNorm2d) or _same_forward(module, nn.SyncBatchNorm):
            if module.training or module.running_mean is None:
                return OpSpec("opaque", reason="batch norm using batch statistics")
            return OpSpec("pointwise")
        if any(_same_forward(module, base) for base in DROPOUT_MODULES):
            return OpSpec("pointwise") if not module.training else OpSpec("opaque", reason="dropout in training mode")
        if any(_same_forward(module, base) for base in POINTWISE_MODULES):
            return OpSpec("pointwise")
        if _same_forward(module, nn.ZeroPad2d) or _same_forward(module, nn.ConstantPad2d):
            left, right, top, bottom = _pad4(module.padding)
            if min(left, right, top, bottom) < 0:
                return OpSpec("opaque", reason="negative padding")
            return OpSpec("pad", pads=(top, bottom, left, right))
        return OpSpec("opaque", reason=type(module).__name__)
    if node.op == "call_function":
        target = node.target
        if target in (F.conv2d, torch.conv2d):
            a = _bound(("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                       {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}, node, const)
            if not isinstance(a["weight"], Tensor) or a["weight"].ndim != 4:
                return OpSpec("opaque", reason="conv2d with a computed weight")
            return _conv_spec(a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], int(a["groups"]))
        if target is F.max_pool2d or target is torch.max_pool2d:
            a = _bound(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                       {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
                       node, const)
            return _max_pool_spec(a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["return_indices"])
        if target is F.avg_pool2d:
            a = _bound(("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                       {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                        "divisor_override": None}, node, const)
            return _avg_pool_spec(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                                  a["divisor_override"])
        if target in DROPOUT_FUNCTIONS:
            a = _bound(("input", "p", "training", "inplace"), {"training": True}, node, const)
            return OpSpec("pointwise") if not a["training"] else OpSpec("opaque", reason="dropout in training mode")
        if target in POINTWISE_FUNCTIONS:
            return OpSpec("pointwise")
        if target in ELEMENTWISE_FUNCTIONS:
            return OpSpec("elementwise")
        if target in (torch.cat, torch.concat):
            dim = const(node.kwargs["dim"]) if "dim" in node.kwargs else (const(node.args[1]) if len(node.args) > 1 else 0)
            return OpSpec("concat") if dim in (1, -3) else OpSpec("opaque", reason=f"concatenation along dim {dim}")
        if target is F.pad:
            a = _bound(("input", "pad", "mode", "value"), {"mode": "constant", "value": None}, node, const)
            pad = list(a["pad"])
            if a["mode"] != "constant" or len(pad) not in (2, 4) or min(pad) < 0:
                return OpSpec("opaque", reason="padding other than constant and non-negative")
            left, right, top, bottom = (pad + [0, 0])[:4]
            return OpSpec("pad", pads=(top, bottom, left, right))
        return OpSpec("opaque", reason=getattr(target, "__name__", str(target)))
    if node.op == "call_method":
        if node.target in POINTWISE_METHODS:
            return OpSpec("pointwise")
        if node.target in ELEMENTWISE_METHODS:
            return OpSpec("elementwise")
        return OpSpec("opaque", reason=f"method {node.target}")
    return OpSpec("opaque", reason=node.op)


def _pad4(padding: Any) -> Tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = tuple(int(p) for p in padding)
    return padding if len(padding) == 4 else (padding[0], padding[1], 0, 0)


def _mutates(node: fx.Node, model: nn.Module) -> bool:
    """Whether the node writes into its first argument (in-place ops)."""
    if node.op == "call_module":
        return bool(getattr(model.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        return node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv, F.relu_, torch.relu_) \
            or bool(node.kwargs.get("inplace", False)) \
            or (node.target in (F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.elu, F.dropout) and _positional_inplace(node))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False


def _positional_inplace(node: fx.Node) -> bool:
    index = {F.relu: 1, F.relu6: 1, F.leaky_relu: 2, F.hardtanh: 3, F.elu: 2, F.dropout: 3}[node.target]
    return len(node.args) > index and bool(node.args[index])


def invoke(node: fx.Node, model: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """Run one node's operation on the given argument values (a mutating op gets a copy of its
    first argument, so cached and shared tensors are never overwritten)."""
    if _mutates(node, model) and args and isinstance(args[0], Tensor):
        args = (args[0].clone(), *args[1:])
    if node.op == "call_module":
        return model.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        self_value, *rest = args
        return getattr(self_value, node.target)(*rest, **kwargs)
    if node.op == "get_attr":
        value: Any = model
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value
    raise ValueError(f"cannot invoke node {node.name} ({node.op})")


# --------------------------------------------------------------------------- region planning
@dataclass
class Region:
    """Per-window regions of one node's map [H, W]: rows ``top[w] .. top[w] + height[w] - 1``
    and columns ``left[w] .. left[w] + width[w] - 1`` (numpy int64 arrays over the windows; a
    planned region has one height and width for all windows)."""

    top: np.ndarray
    height: np.ndarray
    left: np.ndarray
    width: np.ndarray
    size: Tuple[int, int]

    def area_share(self) -> float:
        return float(np.max(self.height) * np.max(self.width)) / float(self.size[0] * self.size[1])


def _window_axis(lo: np.ndarray, extent: np.ndarray, k: int, s: int, pad: int, d: int, out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Outputs of a window op (kernel k, stride s, padding before ``pad``, dilation d, ``out``
    outputs) whose receptive field meets input rows [lo, lo + extent): (first, count) per window."""
    first = -((-(lo + pad - (k - 1) * d)) // s)  # ceil
    last = (lo + extent - 1 + pad) // s
    first, last = np.clip(first, 0, out), np.clip(last, -1, out - 1)
    count = np.where(extent > 0, np.maximum(last - first + 1, 0), 0)
    return first, count


def _uniform(first: np.ndarray, count: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One extent for all windows (the largest), regions shifted to stay inside [0, size)."""
    extent = max(int(count.max(initial=0)), 1)
    top = np.clip(np.minimum(first, size - extent), 0, None)
    return top, np.full_like(count, extent)


def _union(regions: Sequence[Region]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    big = np.iinfo(np.int64).max // 4

    def axis(lo_of, ext_of):
        lo = np.min([np.where(ext_of(r) > 0, lo_of(r), big) for r in regions], axis=0)
        hi = np.max([np.where(ext_of(r) > 0, lo_of(r) + ext_of(r), -big) for r in regions], axis=0)
        empty = lo >= hi
        return np.where(empty, 0, lo), np.where(empty, 0, hi - lo)

    top, height = axis(lambda r: r.top, lambda r: r.height)
    left, width = axis(lambda r: r.left, lambda r: r.width)
    return top, height, left, width


@dataclass
class NodePlan:
    """What the engine does with one node: ``mode`` ``const`` (does not depend on the input),
    ``patch`` (recomputed on ``region``), ``full`` (recomputed on the whole map) or ``output``;
    ``spec`` its classification; ``crop`` for a window op in patch mode: the input rows/columns
    read ((top [W], height), (left [W], width)); ``cached``: consumers read its clean map around
    the region; ``crop_outside``: some crop reaches outside the input map (filled with the
    op's ``fill``); ``shape``: its output's shape for one image; ``macs``: multiply-adds of one image's
    full forward of this node (convolutions and linear layers)."""

    mode: str
    spec: Optional[OpSpec] = None
    region: Optional[Region] = None
    crop: Optional[Tuple[Tuple[np.ndarray, int], Tuple[np.ndarray, int]]] = None
    crop_outside: bool = False
    cached: bool = False
    shape: Tuple[int, ...] = ()
    macs: int = 0
    reason: str = ""


def _spatial(shape: Tuple[int, ...]) -> bool:
    return len(shape) == 4


def plan_regions(graph: fx.Graph, model: nn.Module, shapes: Dict[str, Tuple[int, ...]], consts: Dict[str, Any],
                 window_tops: np.ndarray, window_lefts: np.ndarray, window: int, *, exact: bool = False,
                 full_share: float = FULL_FORWARD_SHARE) -> Dict[str, NodePlan]:
    """Every node's :class:`NodePlan` for the windows at (``window_tops``, ``window_lefts``) of
    side ``window`` (cropped at the border). ``shapes``: each node's output shape for one image;
    ``consts``: the values of the nodes that do not depend on the input. ``exact=True``: each
    window's own changed region, no equal sizes and no full-map fallback (the theoretical bound
    of :func:`incremental_cost`)."""
    plans: Dict[str, NodePlan] = {}
    dynamic: set = set()

    def const(arg: Any) -> Any:  # the image-dependent operands resolve to None
        return fx.node.map_arg(arg, lambda n: consts.get(n.name))

    for node in graph.nodes:
        shape = shapes.get(node.name, ())
        if node.op == "placeholder":
            dynamic.add(node.name)
            height, width = shape[-2:]
            top = np.minimum(window_tops, height - window) if not exact else window_tops
            left = np.minimum(window_lefts, width - window) if not exact else window_lefts
            rows = np.minimum(window_tops + window, height) - top
            cols = np.minimum(window_lefts + window, width) - left
            plans[node.name] = NodePlan("patch", region=Region(top, rows, left, cols, (height, width)), cached=True,
                                        shape=shape)
            continue
        inputs = [n for n in node.all_input_nodes if n.name in dynamic]
        if node.op == "output":
            plans[node.name] = NodePlan("output", shape=shape)
            continue
        if not inputs:
            plans[node.name] = NodePlan("const", shape=shape)
            continue
        dynamic.add(node.name)
        spec = classify(node, model, const)
        plan = NodePlan("full", spec=spec, shape=shape, reason=spec.reason)
        plans[node.name] = plan
        if spec.kind == "window" and spec.macs_per_output:
            plan.macs = spec.macs_per_output * int(np.prod(shape[-2:]))
        elif node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.Linear):
            weight = model.get_submodule(node.target).weight
            plan.macs = int(weight.numel()) * int(np.prod(shape[1:-1]) if len(shape) > 2 else 1)
        sources = [plans[n.name] for n in inputs]
        if spec.kind == "opaque" or not _spatial(shape) or any(p.mode != "patch" for p in sources):
            if not plan.reason:
                plan.reason = "its input is recomputed in full" if any(p.mode != "patch" for p in sources) \
                    else "not a 4-D map"
            continue
        if any(p.shape[-2:] != shape[-2:] for p in sources) and spec.kind != "window" and spec.kind != "pad":
            plan.reason = "broadcasts a map of another size"
            continue
        if spec.kind in ("pointwise", "window", "pad") and len(inputs) != 1:
            plan.reason = "more than one input depends on the image"
            continue
        if spec.kind == "pointwise":
            if sources[0].shape != shape:
                plan.reason = "changes the shape"
                continue
            plan.mode, plan.region = "patch", sources[0].region
        elif spec.kind == "pad":
            top, bottom, left, right = spec.pads
            r = sources[0].region
            plan.mode = "patch"
            plan.region = Region(r.top + top, r.height, r.left + left, r.width, tuple(shape[-2:]))
        elif spec.kind == "window":
            if node.args[0] is not inputs[0]:
                plan.reason = "the image-dependent input is not the op's input"
                continue
            r = sources[0].region
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel, spec.stride, spec.padding, spec.dilation
            out_h, out_w = shape[-2:]
            in_h, in_w = sources[0].shape[-2:]
            if spec.reason == "ceil_mode" and ((in_h + 2 * ph - kh) // sh + 1, (in_w + 2 * pw - kw) // sw + 1) != (out_h, out_w):
                plan.reason = "average pooling whose ceil_mode changes the output size"
                continue
            spec.reason = ""
            first_r, count_r = _window_axis(r.top, r.height, kh, sh, ph, dh, out_h)
            first_c, count_c = _window_axis(r.left, r.width, kw, sw, pw, dw, out_w)
            if exact:
                plan.mode, plan.region = "patch", Region(first_r, count_r, first_c, count_c, (out_h, out_w))
                continue
            top, height = _uniform(first_r, count_r, out_h)
            left, width = _uniform(first_c, count_c, out_w)
            region = Region(top, height, left, width, (out_h, out_w))
            if region.area_share() >= full_share:
                plan.reason = f"the changed region covers {region.area_share():.0%} of the map"
                continue
            plan.mode, plan.region = "patch", region
            plan.crop = ((top * sh - ph, (int(height[0]) - 1) * sh + (kh - 1) * dh + 1),
                         (left * sw - pw, (int(width[0]) - 1) * sw + (kw - 1) * dw + 1))
            (crop_top, crop_h), (crop_left, crop_w) = plan.crop
            plan.crop_outside = bool(crop_top.min() < 0 or crop_left.min() < 0 or crop_top.max() + crop_h > in_h
                                     or crop_left.max() + crop_w > in_w)
        elif spec.kind in ("elementwise", "concat"):
            if spec.kind == "elementwise" and not _broadcast_safe(node, dynamic, consts):
                plan.reason = "combines the map with a constant of spatial extent"
                continue
            top, height, left, width = _union([p.region for p in sources])
            if not exact:
                top, height = _uniform(top, height, shape[-2])
                left, width = _uniform(left, width, shape[-1])
            region = Region(top, height, left, width, tuple(shape[-2:]))
            if not exact and region.area_share() >= full_share:
                plan.reason = f"the changed region covers {region.area_share():.0%} of the map"
                continue
            plan.mode, plan.region = "patch", region
    # a patch node's clean map is read around its region by window ops, unions and full consumers
    for node in graph.nodes:
        plan = plans[node.name]
        for source in node.all_input_nodes:
            source_plan = plans[source.name]
            if source_plan.mode != "patch":
                continue
            reads_around = plan.mode in ("full", "output") and not _shape_query(node) \
                or (plan.mode == "patch" and plan.spec is not None and plan.spec.kind in ("window", "elementwise", "concat"))
            source_plan.cached = source_plan.cached or reads_around
    return plans


def _broadcast_safe(node: fx.Node, dynamic: set, consts: Dict[str, Any]) -> bool:
    """The non-image operands of an elementwise op are numbers or tensors without spatial extent."""
    for arg in [*node.args, *node.kwargs.values()]:
        if isinstance(arg, fx.Node) and arg.name not in dynamic:
            value = consts.get(arg.name)
            if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[-2:].numel() > 1:
                return False
    return True


def _shape_query(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in SHAPE_METHODS) or \
        (node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape")


# --------------------------------------------------------------------------- the clean pass
def clean_pass(graph: fx.Graph, model: nn.Module, image: Tensor, keep: Optional[Callable[[str], bool]] = None
               ) -> Tuple[Any, Dict[str, Any]]:
    """Run the graph on ``image`` [1, C, H, W] node by node (exactly the model's forward);
    returns (output, {node name: value} of the nodes ``keep`` selects, all when None)."""
    env: Dict[str, Any] = {}
    kept: Dict[str, Any] = {}
    last_use = _last_uses(graph)
    output = None
    for index, node in enumerate(graph.nodes):
        if node.op == "placeholder":
            value = image
        elif node.op == "output":
            output = fx.node.map_arg(node.args[0], lambda n: env[n.name])
            break
        else:
            args = fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            value = invoke(node, model, args, kwargs)
        env[node.name] = value
        if keep is None or keep(node.name):
            kept[node.name] = value
        for name in last_use.get(index, ()):
            env.pop(name, None)
    return output, kept


def _last_uses(graph: fx.Graph) -> Dict[int, List[str]]:
    """{node index: names of the nodes whose last reader it is} (values freed after that)."""
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    last: Dict[str, int] = {}
    for node in graph.nodes:
        for source in node.all_input_nodes:
            last[source.name] = max(last.get(source.name, -1), position[node.name])
    out: Dict[int, List[str]] = {}
    for name, index in last.items():
        out.setdefault(index, []).append(name)
    return out


# --------------------------------------------------------------------------- the engine
@dataclass
class Patch:
    """A map equal to node ``node``'s clean map everywhere except on that node's planned region
    of each item's window (``plans[node].region``), where it is ``values`` [n, C, h, w];
    ``shape``: the whole map's shape [n, C, H, W]."""

    values: Tensor
    node: str
    shape: Tuple[int, ...]


class IncrementalOcclusion:
    """Occluded logits of (image, window) pairs by incremental inference (module docstring).

    ``model`` and its ``graph`` (:func:`trace_model`); ``window_tops`` / ``window_lefts``: the
    windows' offsets (occlusion's placement); ``window``: their side; ``fill``: the occluded
    value. :meth:`prepare` plans, :meth:`allocate` and :meth:`store` fill the cache,
    :meth:`run_chunk` runs one chunk of (image slot, window) pairs."""

    def __init__(self, model: nn.Module, graph: fx.Graph, window_tops: Sequence[int], window_lefts: Sequence[int],
                 window: int, fill: float):
        self.model, self.graph = model, graph
        self.tops = np.asarray(window_tops, dtype=np.int64)
        self.lefts = np.asarray(window_lefts, dtype=np.int64)
        self.window, self.fill = window, float(fill)
        self.nodes = list(graph.nodes)
        self.last_use = _last_uses(graph)
        self.plans: Dict[str, NodePlan] = {}

    # ------------------------------------------------------------------ planning
    def prepare(self, image: Tensor) -> Any:
        """Plan from one image [1, C, H, W] (the shapes and constants of its clean pass; the plan
        depends on the shapes only); returns the clean pass's output."""
        output, values = clean_pass(self.graph, self.model, image)
        self.shapes = {name: tuple(v.shape) for name, v in values.items() if isinstance(v, Tensor)}
        self.consts = {}
        dynamic = self._dynamic()
        for node in self.nodes:
            if node.op not in ("placeholder", "output") and node.name not in dynamic:
                self.consts[node.name] = values[node.name]
        self.plans = plan_regions(self.graph, self.model, self.shapes, self.consts, self.tops, self.lefts, self.window)
        self.device = image.device
        self.tables: Dict[Any, CropTable] = {}
        return output

    def _dynamic(self) -> set:
        dynamic: set = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(n.name in dynamic for n in node.all_input_nodes):
                dynamic.add(node.name)
        return dynamic

    def planned_share(self) -> float:
        """Multiply-adds recomputed per window / multiply-adds of a full forward (planned)."""
        full = sum(p.macs for p in self.plans.values())
        done = sum(_planned_macs(p) for p in self.plans.values())
        return done / full if full else 1.0

    # ------------------------------------------------------------------ caches
    def allocate(self, slots: int, dtype: torch.dtype) -> None:
        """Cache buffers for ``slots`` images: each cached node's clean map as NHWC rows, per
        slot H * W rows then a row of zeros and a row of -inf (what crops read outside the map),
        [slots * (H * W + 2), C]: a crop is then one row gather."""
        self.slots = slots
        self.caches: Dict[str, Tensor] = {}
        for name, plan in self.plans.items():
            if plan.mode == "patch" and plan.cached:
                _, channels, height, width = plan.shape
                buffer = torch.empty(slots, height * width + 2, channels, dtype=dtype, device=self.device)
                buffer[:, -2] = 0.0
                buffer[:, -1] = -math.inf
                self.caches[name] = buffer.view(-1, channels)

    def store(self, slot: int, image: Tensor) -> Any:
        """Cache the clean maps of ``image`` [1, C, H, W] in ``slot``; returns its clean pass's
        output (a forward pass of that image alone)."""
        output, values = clean_pass(self.graph, self.model, image, keep=lambda name: name in self.caches)
        for name, buffer in self.caches.items():
            _, channels, height, width = self.plans[name].shape
            rows = buffer.view(self.slots, height * width + 2, channels)[slot, : height * width]
            rows.view(height, width, channels).copy_(values[name][0].permute(1, 2, 0))
        return output

    # ------------------------------------------------------------------ crops
    def table(self, key: Any, source: str, top: Optional[np.ndarray], left: Optional[np.ndarray], height: int,
              width: int, fill: Optional[float], patched: bool) -> "CropTable":
        """The :class:`CropTable` of crops of ``source``'s map at rows ``top[w] ..`` and columns
        ``left[w] ..`` (``height`` x ``width``) for every window ``w`` (None: the whole map, the
        same for all), built once per engine."""
        if key not in self.tables:
            _, _, map_h, map_w = self.plans[source].shape
            shared = top is None
            if shared:
                top, left = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
            rows = top[:, None] + np.arange(height)  # [W, height]
            cols = left[:, None] + np.arange(width)
            inside = ((rows >= 0) & (rows < map_h))[:, :, None] & ((cols >= 0) & (cols < map_w))[:, None, :]
            if fill is None and not inside.all():
                raise AssertionError(f"crop of {source} reaches outside its map")
            outside_row = map_h * map_w + (1 if fill is not None and fill < 0 else 0)
            index = np.where(inside, rows.clip(0, map_h - 1)[:, :, None] * map_w + cols.clip(0, map_w - 1)[:, None, :],
                             outside_row)
            target = None
            if patched:
                region = self.plans[source].region
                patch_h, patch_w = int(region.height[0]), int(region.width[0])
                at_rows = region.top[:, None] - (0 if shared else top[:, None]) + np.arange(patch_h)  # in the crop
                at_cols = region.left[:, None] - (0 if shared else left[:, None]) + np.arange(patch_w)
                within = ((at_rows >= 0) & (at_rows < height))[:, :, None] & ((at_cols >= 0) & (at_cols < width))[:, None, :]
                target = torch.as_tensor(np.where(within, at_rows[:, :, None] * width + at_cols[:, None, :], -1),
                                         device=self.device)
            self.tables[key] = CropTable(torch.as_tensor(index, device=self.device), target, height, width, shared)
        return self.tables[key]

    def crop(self, table: "CropTable", source: Any, slot: Tensor, window_index: Tensor) -> Tensor:
        """[n, C, height, width] (NHWC memory): item ``i``'s crop ``table`` describes of the map
        ``source`` describes: a :class:`Patch` (its node's clean map from cache ``slot[i]`` with
        the patch written in) or a node name (its clean map). One row gather from the cache, one
        row copy of the patch (its elements outside the crop go to a scratch row)."""
        patch = source if isinstance(source, Patch) else None
        node = patch.node if patch is not None else source
        _, channels, map_h, map_w = self.plans[node].shape
        cache = self.caches[node]
        n = window_index.shape[0]
        size = table.height * table.width
        offset = (slot * (map_h * map_w + 2))[:, None, None]
        index = (table.index.expand(n, -1, -1) if table.shared else table.index[window_index]) + offset
        out = torch.empty(n * size + 1, channels, dtype=cache.dtype, device=cache.device)
        torch.index_select(cache, 0, index.reshape(-1), out=out[:-1])
        if patch is not None:
            target = table.target[window_index]
            target = torch.where(target >= 0, target + (torch.arange(n, device=target.device) * size)[:, None, None],
                                 n * size)
            out.index_copy_(0, target.reshape(-1), patch.values.permute(0, 2, 3, 1).reshape(-1, channels))
        return out[:-1].view(n, table.height, table.width, channels).permute(0, 3, 1, 2)

    def materialize(self, value: Any, slot: Tensor, window_index: Tensor) -> Any:
        """The whole map [n, C, H, W] of a :class:`Patch` (other values unchanged)."""
        if not isinstance(value, Patch):
            return value
        _, _, height, width = value.shape
        table = self.table(("whole", value.node), value.node, None, None, height, width, None, True)
        return self.crop(table, value, slot, window_index)

    # ------------------------------------------------------------------ one chunk
    def run_chunk(self, window_index: Tensor, slot: Tensor) -> Any:
        """Output (logits [n, K]) of the occluded images: item ``i`` is the image cached in
        ``slot[i]`` occluded by window ``window_index[i]``."""
        env: Dict[str, Any] = {}
        output = None
        for position, node in enumerate(self.nodes):
            plan = self.plans[node.name]
            if plan.mode == "const":
                env[node.name] = self.consts[node.name]
            elif node.op == "placeholder":
                env[node.name] = self._occluded_input(node.name, plan, window_index, slot)
            elif node.op == "output":
                output = fx.node.map_arg(node.args[0], lambda a: self.materialize(env[a.name], slot, window_index))
                break
            elif plan.mode == "full":
                env[node.name] = self._run_full(node, env, slot, window_index)
            else:
                env[node.name] = self._run_patch(node, plan, env, window_index, slot)
            for name in self.last_use.get(position, ()):
                env.pop(name, None)
        return output

    def _occluded_input(self, name: str, plan: NodePlan, window_index: Tensor, slot: Tensor) -> Patch:
        region = plan.region
        height, width = int(region.height[0]), int(region.width[0])
        table = self.table(name, name, region.top, region.left, height, width, None, False)
        if ("covered", name) not in self.tables:  # the window's pixels within the region
            rows = region.top[:, None] + np.arange(height)
            cols = region.left[:, None] + np.arange(width)
            covered = ((rows >= self.tops[:, None]) & (rows < self.tops[:, None] + self.window))[:, :, None] \
                & ((cols >= self.lefts[:, None]) & (cols < self.lefts[:, None] + self.window))[:, None, :]
            self.tables[("covered", name)] = torch.as_tensor(covered, device=self.device)
        crop = self.crop(table, name, slot, window_index)
        covered = self.tables[("covered", name)][window_index][:, None]
        values = torch.where(covered, torch.full((), self.fill, dtype=crop.dtype, device=crop.device), crop)
        return Patch(values, name, (window_index.shape[0], *plan.shape[1:]))

    def _run_full(self, node: fx.Node, env: Dict[str, Any], slot: Tensor, window_index: Tensor) -> Any:
        if _shape_query(node):
            target = env[node.args[0].name]
            if isinstance(target, Patch):  # the whole map's shape, without building it
                shape = torch.Size(target.shape)
                if node.op == "call_function":
                    return shape
                if node.target == "dim":
                    return len(shape)
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                return shape if dim is None else shape[dim]
        args = fx.node.map_arg(node.args, lambda a: self.materialize(env[a.name], slot, window_index))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self.materialize(env[a.name], slot, window_index))
        return invoke(node, self.model, args, kwargs)

    def _run_patch(self, node: fx.Node, plan: NodePlan, env: Dict[str, Any], window_index: Tensor, slot: Tensor) -> Patch:
        spec = plan.spec
        shape = (window_index.shape[0], *plan.shape[1:])
        if spec.kind == "pointwise":
            args = fx.node.map_arg(node.args, lambda a: env[a.name].values if isinstance(env[a.name], Patch) else env[a.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda a: env[a.name])
            return Patch(invoke(node, self.model, args, kwargs), node.name, shape)
        if spec.kind == "pad":
            return Patch(env[node.args[0].name].values, node.name, shape)
        region = plan.region
        if spec.kind == "window":
            source = env[node.args[0].name]
            (crop_top, crop_h), (crop_left, crop_w) = plan.crop
            table = self.table(node.name, source.node, crop_top, crop_left, crop_h, crop_w,
                               spec.fill if plan.crop_outside else None, True)
            return Patch(spec.apply(self.crop(table, source, slot, window_index)), node.name, shape)
        # elementwise / concat: every image-dependent operand cropped to this node's region
        height, width = int(region.height[0]), int(region.width[0])
        crops: Dict[str, Tensor] = {}

        def operand(a: fx.Node) -> Any:
            value = env[a.name]
            if not isinstance(value, Patch):
                return value
            if a.name not in crops:
                table = self.table((node.name, value.node), value.node, region.top, region.left, height, width, None,
                                   True)
                crops[a.name] = self.crop(table, value, slot, window_index)
            return crops[a.name]

        args = fx.node.map_arg(node.args, operand)
        kwargs = fx.node.map_arg(node.kwargs, operand)
        return Patch(invoke(node, self.model, args, kwargs), node.name, shape)


@dataclass
class CropTable:
    """Precomputed gather of one kind of crop: ``index`` [W or 1, height, width] (cache row of
    each crop position within a slot: y * W_map + x, or the zero / -inf row for positions outside
    the map), ``target`` [W, h, w] (crop position of each patch element, -1 outside the crop;
    None for crops without a patch), ``shared``: one index for every window (whole maps)."""

    index: Tensor
    target: Optional[Tensor]
    height: int
    width: int
    shared: bool


def _planned_macs(plan: NodePlan) -> float:
    if plan.mode == "patch" and plan.region is not None and plan.spec is not None and plan.spec.macs_per_output:
        return plan.spec.macs_per_output * float(np.mean(plan.region.height * plan.region.width))
    return float(plan.macs)


# --------------------------------------------------------------------------- the analytic ceiling
@dataclass
class IncrementalCost:
    """Share of a forward pass's multiply-adds (convolutions and linear layers) that one window
    forces to be recomputed: ``exact`` (each window's own changed region: the bound of any exact
    incremental scheme) and ``planned`` (this engine: equal-size regions per node, full maps
    from where a region covers :data:`FULL_FORWARD_SHARE`), averaged over the windows;
    ``speedup_*`` = 1 / share; ``layers``: one row per convolution / linear node (name, full
    MACs, exact and planned MACs per window, mode, reason)."""

    exact: float
    planned: float
    full_macs: int
    layers: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def speedup_exact(self) -> float:
        return 1.0 / self.exact if self.exact > 0 else math.inf

    @property
    def speedup_planned(self) -> float:
        return 1.0 / self.planned if self.planned > 0 else math.inf


def incremental_cost(model: nn.Module, input_size: Tuple[int, int], window: int, stride: int,
                     channels: int = 3, device: Any = None) -> IncrementalCost:
    """The analytic ceiling of incremental occlusion for ``model`` on [1, ``channels``, H, W]
    inputs, windows of side ``window`` placed every ``stride`` pixels (occlusion's placement):
    :class:`IncrementalCost`. Runs one forward pass on zeros to learn the shapes."""
    from salbench.methods.occlusion import window_offsets

    graph = trace_model(model)
    height, width = input_size
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    tops = np.asarray(window_offsets(height, window, stride), dtype=np.int64)
    lefts = np.asarray(window_offsets(width, window, stride), dtype=np.int64)
    grid_tops, grid_lefts = np.repeat(tops, len(lefts)), np.tile(lefts, len(tops))
    with torch.no_grad():
        engine = IncrementalOcclusion(model, graph, grid_tops, grid_lefts, window, 0.0)
        engine.prepare(torch.zeros(1, channels, height, width, device=device))
    exact = plan_regions(graph, model, engine.shapes, engine.consts, grid_tops, grid_lefts, window, exact=True)
    rows, total, done_exact, done_planned = [], 0, 0.0, 0.0
    for name, plan in engine.plans.items():
        if not plan.macs:
            continue
        exact_plan = exact[name]
        if exact_plan.mode == "patch" and exact_plan.spec is not None and exact_plan.spec.macs_per_output:
            per_window = exact_plan.spec.macs_per_output * float(np.mean(exact_plan.region.height * exact_plan.region.width))
        else:
            per_window = float(exact_plan.macs)
        planned = _planned_macs(plan)
        rows.append({"node": name, "full_macs": plan.macs, "exact_macs": per_window, "planned_macs": planned,
                     "mode": plan.mode, "reason": plan.reason})
        total += plan.macs
        done_exact += per_window
        done_planned += planned
    return IncrementalCost(done_exact / total if total else 1.0, done_planned / total if total else 1.0, total, rows)
