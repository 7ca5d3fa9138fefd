"""Shared passes: several explainers of one batch from the fewest forward/backward passes.

CAM, Grad-CAM, counterfactual Grad-CAM, saliency, guided backprop, deconvnet and Guided
Grad-CAM all read the same few tensors of one forward pass: the logits, some layers'
activations (and, for CAM, what a recorder saw of the model's head), and gradients of the summed target scores
with respect to those activations and to the input under a rectifier rule. An explainer states
what it needs through :meth:`Explainer.pass_request` (``None``: it cannot share, e.g. occlusion)
and builds its attribution from a :class:`PassResult` through :meth:`Explainer.from_pass`.

:func:`shared_pass` runs **one** forward pass (capturing every requested layer, running the
requested recorders, e.g. CAM's head trace, and recording the rectifiers when a guided/deconvnet rule is asked for) and **one backward per
rectifier rule**: the true-gradient pass gives d y / d x and every d y / d A at once; guided
backprop and deconvnet each add one backward over the same graph. So CAM + Grad-CAM +
counterfactual Grad-CAM + saliency cost 1 forward + 1 backward, and adding guided backprop and
Guided Grad-CAM (which reuses the guided gradients and the Grad-CAM layer gradients) costs one
more backward. On the CPU the heatmaps equal the one-method-at-a-time results exactly
(tests/test_shared_passes.py); on CUDA they agree to float rounding only, since cuDNN may pick
other convolution algorithms per call and some CUDA backward kernels accumulate with atomics in
a varying order (tests/test_devices.py compares with a tolerance).

:func:`explain_all` is what the runner calls: it groups the shareable explainers of one model,
runs the pass once, finishes each explainer, and calls the others one by one.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, FrozenSet, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from salbench.methods.base import Explainer, check_inputs, class_scores
from salbench.methods.hooks import capture_layer, preserved_model_state
from salbench.methods.rectifiers import RULES, rectifier_backward


Recorder = Tuple[str, Callable[[nn.Module], ContextManager[Any]]]


@dataclass(frozen=True)
class PassRequest:
    """What one explainer needs from the shared pass.

    ``layer_gradients``: layers whose activation and d y / d activation are needed;
    ``activations``: layers whose activation alone is needed; ``input_rules``: rectifier rules
    (``gradient`` | ``guided`` | ``deconvnet``) for which d y / d x is needed; ``recorders``:
    ``(name, factory)`` pairs, ``factory(model)`` a context manager active during the forward
    pass whose value lands in ``PassResult.recorded[name]`` (CAM records the model's head)."""

    layer_gradients: FrozenSet[str] = frozenset()
    activations: FrozenSet[str] = frozenset()
    input_rules: FrozenSet[str] = frozenset()
    recorders: FrozenSet[Recorder] = frozenset()

    def __or__(self, other: "PassRequest") -> "PassRequest":
        return PassRequest(self.layer_gradients | other.layer_gradients, self.activations | other.activations,
                           self.input_rules | other.input_rules, self.recorders | other.recorders)

    @property
    def needs_backward(self) -> bool:
        return bool(self.layer_gradients or self.input_rules)


@dataclass
class PassResult:
    """Tensors of one shared pass over ``x`` [B, C, H, W] for ``target`` [B]: ``logits`` [B, K],
    ``activations[layer]`` [B, K, h, w], ``layer_gradients[layer]`` (d sum_b y_b / d A, same
    shape), ``input_gradients[rule]`` [B, C, H, W], ``recorded[name]`` (what each recorder of
    the request recorded)."""

    x: Tensor
    target: Tensor
    logits: Tensor
    activations: Dict[str, Tensor] = field(default_factory=dict)
    layer_gradients: Dict[str, Tensor] = field(default_factory=dict)
    input_gradients: Dict[str, Tensor] = field(default_factory=dict)
    recorded: Dict[str, Any] = field(default_factory=dict)


def shared_pass(model: nn.Module, x: Tensor, target: Tensor, request: PassRequest) -> PassResult:
    """One forward pass and one backward per requested rectifier rule (true gradient first).
    Parameters get no ``.grad`` and the model is left exactly as it was."""
    target = check_inputs(x, target)
    for rule in request.input_rules:
        if rule not in RULES:
            raise ValueError(f"unknown rectifier rule {rule!r}; valid: {', '.join(RULES)}")
    layers = sorted(request.layer_gradients | request.activations)
    modified_rules = [r for r in RULES if r != "gradient" and r in request.input_rules]
    backward = request.needs_backward
    with preserved_model_state(model):
        if backward:
            for param in model.parameters():
                param.requires_grad_(False)  # only d/dx and d/dA are needed; restored on exit
        leaf = x.detach().requires_grad_(True) if backward else x.detach()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad() if backward else torch.no_grad())
            captures = {name: stack.enter_context(capture_layer(model, name)) for name in layers}
            recorded = {name: stack.enter_context(factory(model)) for name, factory in sorted(request.recorders, key=lambda r: r[0])}
            rule = stack.enter_context(rectifier_backward("gradient")) if modified_rules else None
            logits = model(leaf)
            # summed inside the grad scope: a caller under torch.no_grad() still gets its gradients
            total = class_scores(logits, target).sum() if backward else None
        activations: Dict[str, Tensor] = {}
        for name, capture in captures.items():
            if capture.activation is None or capture.activation.ndim != 4:
                raise ValueError(f"layer {name!r} gave no [B, K, h, w] output in the forward pass")
            activations[name] = capture.activation
        result = PassResult(x, target, logits.detach(), recorded=recorded)
        if backward:
            # images are independent in eval mode: the gradient of the summed scores is each
            # image's own gradient
            grad_layers = sorted(request.layer_gradients)
            wanted: List[Tensor] = ([leaf] if "gradient" in request.input_rules else []) + [
                activations[name] for name in grad_layers]
            if wanted:
                grads = torch.autograd.grad(total, wanted, retain_graph=bool(modified_rules))
                if "gradient" in request.input_rules:
                    result.input_gradients["gradient"], grads = grads[0], grads[1:]
                result.layer_gradients = dict(zip(grad_layers, grads))
            for i, name in enumerate(modified_rules):
                rule.rule = name
                (result.input_gradients[name],) = torch.autograd.grad(
                    total, leaf, retain_graph=i + 1 < len(modified_rules))
        result.activations = {name: a.detach() for name, a in activations.items()}
    return result


def plan(explainers: Mapping[str, Explainer], x: Tensor) -> Tuple[List[List[str]], Dict[str, PassRequest]]:
    """Groups of explainer keys that share one pass (same model; each group's request is the
    union of its members'), and every shareable explainer's own request. Keys not in any
    multi-member group run alone."""
    requests: Dict[str, PassRequest] = {}
    groups: Dict[int, List[str]] = {}
    alone: List[List[str]] = []
    for key, explainer in explainers.items():
        request = explainer.pass_request(x)
        if request is None:
            alone.append([key])
            continue
        requests[key] = request
        groups.setdefault(id(explainer.model), []).append(key)
    return [*groups.values(), *alone], requests


@dataclass
class Explanations:
    """What :func:`explain_all` returns: ``maps`` {key: heatmap [B, H, W]}, ``costs`` {key:
    {"seconds", "shared_with", ["peak_memory_bytes"]}} and ``logits`` [B, K] of the first shared
    pass's forward (detached; None when no pass was shared), which a caller can use instead of
    running its own forward."""

    maps: Dict[str, Tensor]
    costs: Dict[str, Dict[str, Any]]
    logits: Optional[Tensor] = None


def explain_all(
    explainers: Mapping[str, Explainer],
    x: Tensor,
    target: Tensor,
    *,
    shared: bool = True,
    stopwatch: Optional[Any] = None,
    image_ids: Optional[List[str]] = None,
) -> Explanations:
    """Heatmaps [B, H, W] of every explainer for ``x`` [B, C, H, W] and ``target`` [B].

    ``shared``: compute the shareable ones from one :func:`shared_pass` per model (else each
    explainer alone). ``stopwatch``: a factory ``() -> context manager with .seconds`` (e.g.
    ``functools.partial(salbench.harness.timing.Stopwatch, device)``) to time each call.
    ``image_ids``: the B images' ids, passed to the explainers that declare ``needs_image_ids``.

    A cost holds ``seconds`` (the explainer's own time; for a shared pass, its finishing step
    plus an equal share of the pass), ``shared_with`` (the keys that shared its pass, itself
    included) and, when the stopwatch measures memory (``peak_bytes``), ``peak_memory_bytes``:
    the peak of its own call, or of the shared pass and its finishing step."""
    target = check_inputs(x, target)
    size = tuple(x.shape[-2:])
    timer = stopwatch or _NoClock
    heatmaps: Dict[str, Tensor] = {}
    costs: Dict[str, Dict[str, Any]] = {}
    logits: Optional[Tensor] = None
    groups, requests = plan(explainers, x) if shared else ([[k] for k in explainers], {})
    for group in groups:
        if len(group) == 1:
            key = group[0]
            explainer = explainers[key]
            ids = {"image_ids": image_ids} if getattr(explainer, "needs_image_ids", False) else {}
            with timer() as watch:
                heatmaps[key] = explainer(x.clone(), target, **ids).detach()
            costs[key] = {"seconds": watch.seconds, "shared_with": [key], **_peak(watch)}
            continue
        request = PassRequest()
        for key in group:
            request = request | requests[key]
        with timer() as watch:
            result = shared_pass(explainers[group[0]].model, x.clone(), target, request)
        if logits is None:
            logits = result.logits.detach()
        share = watch.seconds / len(group)
        for key in group:
            explainer = explainers[key]
            with timer() as own:
                heatmaps[key] = explainer.postprocess(explainer.from_pass(result), size).detach()
            costs[key] = {"seconds": own.seconds + share, "shared_with": list(group), **_peak(watch, own)}
    return Explanations({key: heatmaps[key] for key in explainers}, {key: costs[key] for key in explainers}, logits)


def _peak(*watches: Any) -> Dict[str, float]:
    """``{"peak_memory_bytes": max over the watches}`` when they measure memory, else ``{}``."""
    peaks = [getattr(w, "peak_bytes", float("nan")) for w in watches]
    finite = [p for p in peaks if p == p]
    return {"peak_memory_bytes": max(finite)} if finite else {}


class _NoClock:
    seconds = float("nan")

    def __enter__(self) -> "_NoClock":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def explain_in_chunks(explainer: Any, x: Tensor, target: Tensor, chunk: Optional[int]) -> Tensor:
    """``explainer(x, target)`` [B, H, W] computed on chunks of exactly ``chunk`` images (the last
    padded by repeating its last image), as the job loop explains: the maps do not depend on how
    many images the call holds. ``chunk=None``: one call."""
    if chunk is None:
        return explainer(x, target)
    target = check_inputs(x, target)
    pieces = []
    for start in range(0, x.shape[0], chunk):
        part = slice(start, start + chunk)
        real = x[part].shape[0]
        rows = torch.arange(start, start + real, device=x.device)
        rows = torch.cat([rows, rows[-1:].expand(chunk - real)])
        pieces.append(explainer(x[rows], target[rows])[:real])
    return torch.cat(pieces)
