"""Modified backward rules at rectifiers (ReLU, ReLU6), for guided backprop and deconvnet.

:func:`rectifier_backward` routes every rectifier call made during a forward pass through one
custom autograd function whose backward rule is read from a shared :class:`RectifierRule` at
backward time. It intercepts the *functions*, through a :class:`torch.overrides.TorchFunctionMode`
active for one forward pass, so it covers ``nn.ReLU``, ``nn.ReLU6`` (both in-place or not), a
module instance called many times per pass (EfficientNet-Lite's shared ``nn.ReLU6``), and the
functional forms ``F.relu``, ``F.relu_``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu(_)``,
``F.relu6`` and ``F.hardtanh(x, 0, max)``. No hook is registered and no module is touched.

Rules, for a rectifier y = clamp(x, 0, upper) with upstream gradient g:

* ``gradient``: g * 1[0 < x < upper] (the true derivative);
* ``guided`` (Springenberg et al. 2015): ReLU(g) * 1[0 < x < upper];
* ``deconvnet`` (Zeiler & Fergus 2014): ReLU(g), the forward sign ignored.

Not intercepted (left with their true gradient): ``torch.clamp(x, min=0)``, ``F.threshold``,
``F.hardtanh`` with a negative lower bound, and smooth activations (SiLU, GELU, ...).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

RULES = ("gradient", "guided", "deconvnet")


@dataclass
class RectifierRule:
    """The backward rule every rectifier recorded under :func:`rectifier_backward` applies;
    change ``rule`` between two backward passes over one graph to share the forward pass."""

    rule: str = "guided"
    calls: int = 0  # rectifier calls intercepted in the forward pass

    def __post_init__(self) -> None:
        check_rule(self.rule)


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rectifier rule {rule!r}; valid: {', '.join(RULES)}")


class _Rectifier(torch.autograd.Function):
    """y = clamp(x, 0, upper), optionally in place; backward by ``state.rule``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, upper: Optional[float], inplace: bool, state: RectifierRule) -> Tensor:
        passes = x > 0 if upper is None else (x > 0) & (x < upper)
        ctx.save_for_backward(passes)
        ctx.state = state
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=0.0, max=upper)
        return x.clamp(min=0.0, max=upper)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None]:
        (passes,) = ctx.saved_tensors
        rule = ctx.state.rule
        if rule == "gradient":
            out = grad * passes
        elif rule == "guided":
            out = grad.clamp_min(0) * passes
        else:  # deconvnet
            out = grad.clamp_min(0)
        return out, None, None, None


def _arg(args: Tuple[Any, ...], kwargs: Dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _parse_rectifier(func: Callable, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tuple[Tensor, Optional[float], bool]]:
    """(input, upper bound, in place) when ``func(*args, **kwargs)`` is a rectifier, else None."""
    if func in (F.relu, torch.relu, Tensor.relu):
        return args[0], None, bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
    if func in (F.relu_, torch.relu_, Tensor.relu_):
        return args[0], None, True
    if func is F.relu6:
        return args[0], 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh:
        lower = float(_arg(args, kwargs, 1, "min_val", -1.0))
        upper = float(_arg(args, kwargs, 2, "max_val", 1.0))
        if lower == 0.0 and upper > 0.0:  # ReLU6 and other clipped ReLUs
            return args[0], upper, bool(_arg(args, kwargs, 3, "inplace", False))
    return None


class _RectifierMode(TorchFunctionMode):
    def __init__(self, state: RectifierRule):
        super().__init__()
        self.state = state

    def __torch_function__(self, func: Callable, types: Any, args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        parsed = _parse_rectifier(func, args, kwargs)
        if parsed is None or not isinstance(parsed[0], Tensor) or not parsed[0].is_floating_point():
            return func(*args, **kwargs)
        x, upper, inplace = parsed
        self.state.calls += 1
        return _Rectifier.apply(x, upper, inplace, self.state)


@contextlib.contextmanager
def rectifier_backward(rule: str = "guided") -> Iterator[RectifierRule]:
    """Within the block, every rectifier call records the backward rule ``rule`` (changeable
    afterwards through the yielded :class:`RectifierRule`). Wrap only the forward pass."""
    state = RectifierRule(rule)
    with _RectifierMode(state):
        yield state
