"""Cross-check of salbench's explainers against captum and pytorch-grad-cam.

:func:`run_crosscheck` runs each method and its reference on the same inputs and returns one row
per comparison: method, reference, max_abs_diff, rel_diff (= max_abs_diff / max|ref|), spearman
(mean over images of the rank correlation), passed (max|ours - ref| <= rtol * max|ref| + atol;
None when skipped) and note. :func:`main` is the ``salbench crosscheck`` job (config
``crosscheck``): prints the table, writes ``crosscheck.csv`` into the job directory and exits
non-zero when a comparison fails.

References (see docs/methods.md):
* saliency: captum ``Saliency(abs=False)``; heatmap vs ``Saliency(abs=True)`` + max over channels;
* guided_backprop / deconvnet: captum ``GuidedBackprop`` / ``Deconvolution`` on a copy of the model
  whose ``nn.ReLU6`` modules are replaced by an ``nn.ReLU`` subclass computing ReLU6 (captum hooks
  only ``nn.ReLU``); skipped when functional rectifiers remain that captum cannot see;
* gradcam: ``LayerGradCam(relu_attributions=True)``; heatmap vs ``pytorch_grad_cam.GradCAM``
  after grad-cam's normalization;
* counterfactual_gradcam: ``LayerGradCam(relu_attributions=True)`` on the negated model output;
* guided_gradcam: captum ``GuidedGradCam`` (same interpolation mode), on the ReLU6-swapped copy;
* cam: Grad-CAM without ReLU x h*w (the identity on a GAP + linear model);
* occlusion: captum ``Occlusion`` with window (C, w, w), strides (C, s, s), baseline ``fill``;
* gradcampp / xgradcam / layercam / hirescam / scorecam / ablationcam: heatmap vs
  ``pytorch_grad_cam.GradCAMPlusPlus`` / ``XGradCAM`` / ``LayerCAM`` / ``HiResCAM`` / ``ScoreCAM`` /
  ``AblationCAM`` after grad-cam's normalization;
* eigencam: heatmap vs ``pytorch_grad_cam.EigenCAM`` after grad-cam's normalization, ours taken
  with the sign of grad-cam's own projection (``get_2d_projection``: its SVD sign is arbitrary),
  and the raw map vs that signed projection;
* input_x_gradient: captum ``InputXGradient``; integrated_gradients: captum
  ``IntegratedGradients`` (Gauss-Legendre and trapezoid rules);
* smoothgrad / smoothgrad_sq / vargrad: captum ``NoiseTunnel(Saliency)`` (``abs=False``) with
  salbench's noise tensors supplied to it (:func:`captum_noise_tunnel`), and SmoothGrad of guided
  backprop vs ``NoiseTunnel(GuidedBackprop)`` on the hookable copy;
* rise: the authors' procedure (eclique/RISE) in float64, with masks from
  ``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)`` of the same grids and
  shifts.

Options of the costly methods (``n_steps``, ``n_samples``, ``n_masks``, batch sizes) come from
``method_options`` ({method: {option: value}}), the rest are the methods' defaults. The rows of
the pixel-space methods added with the standard set use a purely relative tolerance (atol 0):
their attributions can be far below the 1e-6 absolute term.
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CROSSCHECK_METHODS = (
    "saliency",
    "guided_backprop",
    "deconvnet",
    "gradcam",
    "counterfactual_gradcam",
    "guided_gradcam",
    "cam",
    "occlusion",
    "gradcampp",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "input_x_gradient",
    "scorecam",
    "ablationcam",
    "integrated_gradients",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "rise",
)
COLUMNS = ["method", "reference", "max_abs_diff", "rel_diff", "spearman", "passed", "note"]


class SkipComparison(Exception):
    """A comparison that does not apply to this model (the message says why)."""


# --------------------------------------------------------------------------- reference helpers
class ClippedReLU(nn.ReLU):
    """ReLU6-like clamp(x, 0, upper) as an ``nn.ReLU`` subclass, so captum's guided hooks see it."""

    def __init__(self, upper: float = 6.0):
        super().__init__()
        self.upper = upper

    def forward(self, x: Tensor) -> Tensor:
        return F.hardtanh(x, 0.0, self.upper)  # strict mask 0 < x < upper, as nn.ReLU6


def captum_hookable_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every ``nn.ReLU6`` (and ``nn.Hardtanh(0, m)``) replaced by :class:`ClippedReLU`
    and every ``nn.ReLU`` made non-inplace."""
    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Hardtanh) and child.min_val == 0.0:
                setattr(parent, child_name, ClippedReLU(child.max_val))
            elif type(child) is nn.ReLU:
                setattr(parent, child_name, nn.ReLU(inplace=False))
    return clone


def rectifier_coverage(model: nn.Module, x: Tensor) -> Tuple[int, int]:
    """(rectifier calls in one forward pass, calls made through ``nn.ReLU`` modules)."""
    from salbench.methods.rectifiers import rectifier_backward

    module_calls = [0]
    handles = [
        m.register_forward_hook(lambda *_: module_calls.__setitem__(0, module_calls[0] + 1))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.no_grad(), rectifier_backward("gradient") as rule:
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return rule.calls, module_calls[0]


def layer_overwritten_in_place(model: nn.Module, layer: nn.Module, x: Tensor) -> bool:
    """Whether an in-place op later in the forward pass modifies ``layer``'s output."""
    seen: List[Tuple[Tensor, int]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append((out, out._version)))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    return any(out._version != version for out, version in seen)


class NegatedOutput(nn.Module):
    """-model(x): LayerGradCam on it is counterfactual Grad-CAM."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return -self.model(x)


def gradcam_library_normalization(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """pytorch-grad-cam's post-processing of layer maps [B, h, w]: ReLU, per-image min-max
    (eps 1e-7), bilinear resize (align_corners=False), ReLU, min-max -> [B, H, W]."""

    def minmax(m: Tensor) -> Tensor:
        m = m - m.flatten(1).amin(1)[:, None, None]
        return m / (1e-7 + m.flatten(1).amax(1)[:, None, None])

    maps = minmax(maps.clamp_min(0))
    maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax(maps.clamp_min(0))


def pytorch_grad_cam_heatmap(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor, cam_class: str = "GradCAM",
                             **options: Any) -> Tensor:
    """pytorch-grad-cam's ``cam_class`` heatmaps [B, H, W] (its hooks live only in this call;
    ``options``: constructor options, e.g. AblationCAM's ``batch_size``; its progress bars off)."""
    from unittest import mock

    import pytorch_grad_cam
    import tqdm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    library_class = getattr(pytorch_grad_cam, cam_class)
    grads = {id(p): p.grad for p in model.parameters()}
    batch_size = options.pop("score_batch_size", None)
    with mock.patch.object(tqdm, "tqdm", lambda iterable, *args, **kwargs: iterable), \
            library_class(model=model, target_layers=[layer], **options) as cam:
        if batch_size is not None:
            cam.batch_size = batch_size  # ScoreCAM reads an attribute, not an option
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in target])
    for p in model.parameters():  # grad-cam calls .backward(): put the parameters' .grad back
        p.grad = grads[id(p)]
    return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def captum_noise_tunnel(attribution_method: Any, x: Tensor, target: Tensor, noise: Tensor, nt_type: str, **kwargs: Any) -> Tensor:
    """captum ``NoiseTunnel(attribution_method)`` with the noise [B, n, C, H, W] supplied (its
    ``_add_noise_to_input`` replaced: image b's sample j is input b + noise[b, j], all samples in
    one call, as NoiseTunnel orders them)."""
    from captum.attr import NoiseTunnel

    samples = noise.shape[1]

    class SuppliedNoiseTunnel(NoiseTunnel):
        def _add_noise_to_input(self, input: Tensor, stdev: float, nt_samples_partition: int) -> Tensor:  # type: ignore[override]
            assert nt_samples_partition == samples
            return input.repeat_interleave(samples, dim=0) + noise.flatten(0, 1)

    return SuppliedNoiseTunnel(attribution_method).attribute(x, nt_type=nt_type, nt_samples=samples, stdevs=1.0,
                                                               target=target, **kwargs)


def rise_reference(model: nn.Module, x: Tensor, target: Tensor, grids: Tensor, row_shifts: Tensor, col_shifts: Tensor,
                   p1: float, score: str = "softmax", batch_size: int = 100) -> Tensor:
    """RISE as the authors' ``explanations.py`` computes it, per image, the masks float64 from
    ``skimage.transform.resize(grid, (s + 1) * ceil(size / s), order=1, mode="reflect",
    anti_aliasing=False)`` cropped at the given shifts, multiplied with x in float32, readouts
    from the model in batches, the weighted sum in float64: [B, H, W] float64."""
    from skimage.transform import resize

    batch, _, height, width = x.shape
    n_masks, grid = grids.shape[1], grids.shape[-1]
    up_size = ((grid + 1) * math.ceil(height / grid), (grid + 1) * math.ceil(width / grid))
    out = []
    for b in range(batch):
        masks = np.empty((n_masks, height, width))
        for i in range(n_masks):
            r, c = int(row_shifts[b, i]), int(col_shifts[b, i])
            masks[i] = resize(grids[b, i].cpu().numpy().astype(np.float32), up_size, order=1, mode="reflect",
                              anti_aliasing=False)[r:r + height, c:c + width]
        stack = torch.from_numpy(masks).float().to(x.device)[:, None] * x[b]
        readouts = []
        with torch.no_grad():
            for start in range(0, n_masks, batch_size):
                logits = model(stack[start:start + batch_size]).float()
                values = logits.softmax(dim=1) if score == "softmax" else logits
                readouts.append(values[:, int(target[b])])
        weights = torch.cat(readouts).double().cpu().numpy()
        out.append(np.tensordot(weights, masks, axes=1) / n_masks / p1)
    return torch.from_numpy(np.stack(out)).to(x.device)


# --------------------------------------------------------------------------- comparison rows
def spearman(ours: Tensor, ref: Tensor) -> float:
    """Mean over images of the Spearman rank correlation of the flattened maps (NaN if constant)."""
    from scipy.stats import spearmanr

    values = []
    for a, b in zip(ours.detach().flatten(1).cpu().double().numpy(), ref.detach().flatten(1).cpu().double().numpy()):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            values.append(1.0 if np.allclose(a, b) else float("nan"))
        else:
            values.append(float(spearmanr(a, b).statistic))
    return float(np.mean(values))


def compare(method: str, reference: str, ours: Tensor, ref: Tensor, rtol: float = 1e-5, atol: float = 1e-6, note: str = "") -> Dict[str, Any]:
    """One table row; shapes must match."""
    if ours.shape != ref.shape:
        raise ValueError(f"{method} vs {reference}: shapes differ, {tuple(ours.shape)} vs {tuple(ref.shape)}")
    ours, ref = ours.detach().float(), ref.detach().float().to(ours.device)
    max_abs = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {
        "method": method,
        "reference": reference,
        "max_abs_diff": max_abs,
        "rel_diff": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
        "spearman": spearman(ours, ref),
        "passed": bool(max_abs <= rtol * scale + atol),
        "note": note or f"max|ref| = {scale:.3g}",
    }


def skipped(method: str, reference: str, why: str) -> Dict[str, Any]:
    return {"method": method, "reference": reference, "max_abs_diff": math.nan, "rel_diff": math.nan,
            "spearman": math.nan, "passed": None, "note": f"skipped: {why}"}


@dataclass
class CrossCheckInputs:
    model: nn.Module
    x: Tensor
    target: Tensor
    layer: str
    occlusion_window: int
    occlusion_stride: int
    occlusion_fill: float
    occlusion_batch_size: int
    method_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def options(self, method: str) -> Dict[str, Any]:
        return dict(self.method_options.get(method, {}))


def _hookable(inputs: CrossCheckInputs) -> nn.Module:
    hookable = captum_hookable_copy(inputs.model)
    calls, module_calls = rectifier_coverage(hookable, inputs.x)
    if calls != module_calls:
        raise SkipComparison(
            f"{calls - module_calls} of {calls} rectifier calls are functional (F.relu / torch.relu), "
            "which captum's guided hooks cannot see"
        )
    return hookable


def _check_saliency(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import Saliency as CaptumSaliency

    from salbench.methods import create_method

    explainer = create_method("saliency", i.model)
    ref = CaptumSaliency(i.model)
    return [
        compare("saliency", "captum.Saliency(abs=False)", explainer.attribute(i.x, i.target), ref.attribute(i.x, target=i.target, abs=False)),
        compare("saliency", "heatmap: captum.Saliency(abs=True).amax(channels)", explainer(i.x, i.target),
                ref.attribute(i.x, target=i.target, abs=True).amax(1)),
    ]


def _check_modified_relu(method: str) -> Callable[[CrossCheckInputs], List[Dict[str, Any]]]:
    def check(i: CrossCheckInputs) -> List[Dict[str, Any]]:
        from captum.attr import Deconvolution, GuidedBackprop

        from salbench.methods import create_method

        reference_class = GuidedBackprop if method == "guided_backprop" else Deconvolution
        reference = f"captum.{reference_class.__name__} (nn.ReLU6 -> nn.ReLU subclass)"
        try:
            hookable = _hookable(i)
        except SkipComparison as why:
            return [skipped(method, reference, str(why))]
        ours = create_method(method, i.model).attribute(i.x, i.target)
        return [compare(method, reference, ours, reference_class(hookable).attribute(i.x, target=i.target))]

    return check


def _check_gradcam(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import LayerGradCam

    from salbench.methods import create_method
    from salbench.methods.hooks import find_module

    explainer = create_method("gradcam", i.model, layer=i.layer)
    layer = find_module(i.model, i.layer)
    ours = explainer.attribute(i.x, i.target)
    rows = [compare("gradcam", f"captum.LayerGradCam({i.layer}) (attribute: before the ReLU)", ours,
                    LayerGradCam(i.model, layer).attribute(i.x, target=i.target, relu_attributions=False)[:, 0])]
    size = tuple(i.x.shape[-2:])
    if layer_overwritten_in_place(i.model, layer, i.x):
        rows.append(skipped("gradcam", "heatmap: pytorch_grad_cam.GradCAM", f"the output of {i.layer!r} is modified "
                            "in place downstream; pytorch-grad-cam then reads the overwritten values"))
        return rows
    rows.append(compare("gradcam", "heatmap: pytorch_grad_cam.GradCAM (its min-max normalization)",
                        gradcam_library_normalization(ours, size), pytorch_grad_cam_heatmap(i.model, layer, i.x, i.target)))
    return rows


def _check_counterfactual(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import LayerGradCam

    from salbench.methods import create_method
    from salbench.methods.hooks import find_module

    ours = create_method("counterfactual_gradcam", i.model, layer=i.layer).attribute(i.x, i.target)
    ref = LayerGradCam(NegatedOutput(i.model), find_module(i.model, i.layer)).attribute(i.x, target=i.target)
    return [compare("counterfactual_gradcam", f"captum.LayerGradCam(-model, {i.layer}) (attribute: before the ReLU)",
                    ours, ref[:, 0])]


def _check_guided_gradcam(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import GuidedGradCam

    from salbench.methods import create_method
    from salbench.methods.hooks import find_module

    rows = []
    for mode in ("nearest", "bilinear"):
        reference = f"captum.GuidedGradCam({i.layer}, interpolate_mode={mode!r})"
        try:
            hookable = _hookable(i)
        except SkipComparison as why:
            return [skipped("guided_gradcam", reference, str(why))]
        ours = create_method("guided_gradcam", i.model, layer=i.layer, upsample=mode).attribute(i.x, i.target)
        ref = GuidedGradCam(hookable, find_module(hookable, i.layer)).attribute(i.x, target=i.target, interpolate_mode=mode)
        rows.append(compare("guided_gradcam", reference, ours, ref))
    return rows


def _check_cam(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from salbench.methods import create_method

    reference = "gradcam(relu=False) x h*w on the global-pool input"
    try:
        ours = create_method("cam", i.model).attribute(i.x, i.target)
    except ValueError as error:
        return [skipped("cam", reference, str(error))]
    # Grad-CAM at the same feature map: the global-pool input, reached through a forward hook
    from salbench.methods.base import class_scores
    from salbench.methods.hooks import preserved_model_state, trace_head

    with preserved_model_state(i.model), torch.enable_grad(), trace_head(i.model) as trace:
        scores = class_scores(i.model(i.x.detach().requires_grad_(True)), i.target)
    head_input = trace.heads[-1][2]
    feature = head_input if head_input.ndim == 4 and head_input.shape[-1] * head_input.shape[-2] > 1 else trace.pooled_inputs[-1]
    (gradients,) = torch.autograd.grad(scores.sum(), feature)
    gradcam_map = torch.einsum("bk,bkhw->bhw", gradients.mean(dim=(2, 3)), feature.detach())
    z = feature.shape[-1] * feature.shape[-2]
    return [compare("cam", reference, ours, gradcam_map * z)]


def _check_occlusion(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import Occlusion as CaptumOcclusion

    from salbench.methods import create_method

    channels = i.x.shape[1]
    w, s = i.occlusion_window, i.occlusion_stride
    ours = create_method("occlusion", i.model, window=w, stride=s, fill=i.occlusion_fill,
                         batch_size=i.occlusion_batch_size).attribute(i.x, i.target)
    ref = CaptumOcclusion(i.model).attribute(i.x, sliding_window_shapes=(channels, w, w), strides=(channels, s, s),
                                             baselines=i.occlusion_fill, target=i.target)
    return [compare("occlusion", f"captum.Occlusion(window=({channels},{w},{w}), strides=({channels},{s},{s}), "
                                 f"baselines={i.occlusion_fill})", ours, ref)]


LIBRARY_CAMS = {"gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "hirescam": "HiResCAM",
                "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}


def _check_library_cam(method: str) -> Callable[[CrossCheckInputs], List[Dict[str, Any]]]:
    """Heatmap vs pytorch-grad-cam's class of the same method, after its normalization."""

    def check(i: CrossCheckInputs) -> List[Dict[str, Any]]:
        from salbench.methods import create_method
        from salbench.methods.hooks import find_module

        cam_class = LIBRARY_CAMS[method]
        reference = f"heatmap: pytorch_grad_cam.{cam_class} (its min-max normalization)"
        layer = find_module(i.model, i.layer)
        if layer_overwritten_in_place(i.model, layer, i.x):
            return [skipped(method, reference, f"the output of {i.layer!r} is modified in place downstream; "
                                               "pytorch-grad-cam then reads the overwritten values")]
        options = i.options(method)
        library_options: Dict[str, Any] = {}
        # the same forward batches as grad-cam (its defaults: 16 and 32 inputs of one image):
        # CPU kernels round a sample differently at other batch sizes
        if method == "scorecam":
            options.setdefault("batch_size", 16)
            library_options["score_batch_size"] = options["batch_size"]
        if method == "ablationcam":
            options.setdefault("batch_size", 32)
            library_options["batch_size"] = options["batch_size"]
        ours = create_method(method, i.model, layer=i.layer, **options).attribute(i.x, i.target)
        ref = pytorch_grad_cam_heatmap(i.model, layer, i.x, i.target, cam_class, **library_options)
        return [compare(method, reference, gradcam_library_normalization(ours, tuple(i.x.shape[-2:])), ref)]

    return check


def _check_eigencam(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from salbench.methods import create_method
    from salbench.methods.hooks import capture_layer, find_module, preserved_model_state

    reference = "heatmap: pytorch_grad_cam.EigenCAM (its min-max normalization; ours with its SVD sign per image)"
    layer = find_module(i.model, i.layer)
    if layer_overwritten_in_place(i.model, layer, i.x):
        return [skipped("eigencam", reference, f"the output of {i.layer!r} is modified in place downstream")]
    ours = create_method("eigencam", i.model, layer=i.layer).attribute(i.x, i.target)
    with preserved_model_state(i.model), torch.no_grad(), capture_layer(i.model, i.layer) as capture:
        i.model(i.x)
    projection = torch.from_numpy(get_2d_projection(capture.activation.cpu().numpy())).to(ours.device)
    sign = torch.where((ours * projection).flatten(1).sum(1) < 0, -1.0, 1.0)[:, None, None]
    flipped = f"grad-cam's sign opposite to ours on {int((sign < 0).sum())} of {len(sign)} images"
    heatmap = pytorch_grad_cam_heatmap(i.model, layer, i.x, i.target, "EigenCAM")
    return [
        compare("eigencam", "pytorch_grad_cam get_2d_projection (attribute, with its sign)", ours * sign, projection,
                note=flipped),
        compare("eigencam", reference, gradcam_library_normalization(ours * sign, tuple(i.x.shape[-2:])), heatmap,
                note=flipped),
    ]


def _check_input_x_gradient(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import InputXGradient

    from salbench.methods import create_method

    ours = create_method("input_x_gradient", i.model).attribute(i.x, i.target)
    return [compare("input_x_gradient", "captum.InputXGradient", ours, InputXGradient(i.model).attribute(i.x, target=i.target),
                    atol=0.0)]


def _check_integrated_gradients(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from captum.attr import IntegratedGradients

    from salbench.methods import create_method

    options = {"n_steps": 16, **i.options("integrated_gradients")}
    rows = []
    for integration in ("gausslegendre", "riemann_trapezoid"):
        explainer = create_method("integrated_gradients", i.model, **{**options, "integration": integration})
        ref = IntegratedGradients(i.model).attribute(i.x, baselines=explainer.baseline, target=i.target,
                                                     n_steps=explainer.n_steps, method=integration)
        rows.append(compare("integrated_gradients", f"captum.IntegratedGradients(method={integration!r}, "
                                                    f"n_steps={explainer.n_steps}, baselines={explainer.baseline})",
                            explainer.attribute(i.x, i.target), ref, atol=0.0))
    return rows


def _check_noise_tunnel(method: str) -> Callable[[CrossCheckInputs], List[Dict[str, Any]]]:
    nt_type = {"smoothgrad": "smoothgrad", "smoothgrad_sq": "smoothgrad_sq", "vargrad": "vargrad"}[method]

    def check(i: CrossCheckInputs) -> List[Dict[str, Any]]:
        from captum.attr import GuidedBackprop, Saliency

        from salbench.methods import create_method
        from salbench.methods.smoothgrad import smoothgrad_noise

        options = {"n_samples": 8, **i.options(method)}
        explainer = create_method(method, i.model, **options)
        noise = smoothgrad_noise(i.x, explainer.n_samples, explainer.noise_level, explainer.seed)
        ours = explainer.attribute(i.x, i.target)
        ref = captum_noise_tunnel(Saliency(i.model), i.x, i.target, noise, nt_type, abs=False)
        rows = [compare(method, f"captum.NoiseTunnel(Saliency, nt_type={nt_type!r}, abs=False), the same noise", ours, ref,
                        atol=0.0)]
        if method != "smoothgrad":
            return rows
        reference = "captum.NoiseTunnel(GuidedBackprop, nt_type='smoothgrad') (nn.ReLU6 -> nn.ReLU subclass), the same noise"
        try:
            hookable = _hookable(i)
        except SkipComparison as why:
            return rows + [skipped("smoothgrad(inner=guided_backprop)", reference, str(why))]
        guided = create_method(method, i.model, **{**options, "inner": "guided_backprop"}).attribute(i.x, i.target)
        ref = captum_noise_tunnel(GuidedBackprop(hookable), i.x, i.target, noise, nt_type)
        return rows + [compare("smoothgrad(inner=guided_backprop)", reference, guided, ref, atol=0.0)]

    return check


def _check_rise(i: CrossCheckInputs) -> List[Dict[str, Any]]:
    from salbench.methods import create_method

    options = {"n_masks": 200, **i.options("rise")}
    explainer = create_method("rise", i.model, **options)
    ours = explainer.attribute(i.x, i.target)
    grids, rows, cols = explainer.draws(i.x)
    ref = rise_reference(i.model, i.x, i.target, grids, rows, cols, explainer.p1, explainer.score, explainer.batch_size)
    return [compare("rise", f"RISE authors' procedure in float64 (skimage resize masks; N={explainer.n_masks}, "
                            f"s={explainer.grid}, p1={explainer.p1}, the same draws)", ours, ref, atol=0.0)]


CHECKS: Dict[str, Callable[[CrossCheckInputs], List[Dict[str, Any]]]] = {
    "saliency": _check_saliency,
    "guided_backprop": _check_modified_relu("guided_backprop"),
    "deconvnet": _check_modified_relu("deconvnet"),
    "gradcam": _check_gradcam,
    "counterfactual_gradcam": _check_counterfactual,
    "guided_gradcam": _check_guided_gradcam,
    "cam": _check_cam,
    "occlusion": _check_occlusion,
    **{method: _check_library_cam(method) for method in LIBRARY_CAMS},
    "eigencam": _check_eigencam,
    "input_x_gradient": _check_input_x_gradient,
    "integrated_gradients": _check_integrated_gradients,
    "smoothgrad": _check_noise_tunnel("smoothgrad"),
    "smoothgrad_sq": _check_noise_tunnel("smoothgrad_sq"),
    "vargrad": _check_noise_tunnel("vargrad"),
    "rise": _check_rise,
}


def run_crosscheck(
    model: Any,
    x: Tensor,
    target: Tensor,
    methods: Optional[Sequence[str]] = None,
    layer: Optional[str] = None,
    occlusion_window: int = 16,
    occlusion_stride: int = 8,
    occlusion_fill: float = 0.0,
    occlusion_batch_size: int = 64,
    method_options: Optional[Dict[str, Dict[str, Any]]] = None,
) -> pd.DataFrame:
    """Compare salbench's methods with their references on ``x`` [B, C, H, W] (model input
    space) and ``target`` [B]. ``model``: an ``nn.Module`` or a ModelBundle (its target layer is
    the default ``layer``). ``method_options``: {method: {option: value}} for the costly methods
    (e.g. ``{"scorecam": {"batch_size": 32}, "rise": {"n_masks": 100}}``). Returns a DataFrame
    with columns :data:`COLUMNS`."""
    from salbench.methods.hooks import default_target_layer

    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be an nn.Module or a ModelBundle; got {type(model).__name__}")
    methods = list(CROSSCHECK_METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in CHECKS]
    if unknown:
        raise ValueError(f"no cross-check for {unknown}; valid: {', '.join(CHECKS)}")
    layer = layer or getattr(model, "target_layer", None) or default_target_layer(module, x)
    target = torch.as_tensor(target, device=x.device).long()
    inputs = CrossCheckInputs(module, x, target, layer, occlusion_window, occlusion_stride, occlusion_fill, occlusion_batch_size,
                              {k: dict(v) for k, v in (method_options or {}).items()})
    rows: List[Dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        for method in methods:
            rows.extend(CHECKS[method](inputs))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- Hydra job
def crosscheck_inputs(cfg: Any, bundle: Any) -> Tuple[Tensor, Tensor]:
    """Images [B, 3, H, W] in the model's input space and targets [B] per ``cfg.images``:
    ``random`` (uniform [0, 1] pixels) or ``synthetic`` (the synthetic shapes); targets are the
    model's predicted classes (``predicted``), predicted for even and least likely for odd images
    (``mixed``), or ``cfg.target`` as a fixed class."""
    generator = torch.Generator().manual_seed(int(cfg.seed))
    height, width = (int(cfg.image_size),) * 2 if cfg.get("image_size") else tuple(bundle.input_size)
    if cfg.images == "random":
        images = torch.rand(int(cfg.batch_size), 3, height, width, generator=generator)
    elif cfg.images == "synthetic":
        from salbench.datasets import create_dataset

        dataset = create_dataset("synthetic", num_images=int(cfg.batch_size), seed=int(cfg.seed), image_size=height)
        images = torch.stack([dataset[k]["image"] for k in range(int(cfg.batch_size))])
    else:
        raise ValueError(f"unknown images {cfg.images!r}; valid: random, synthetic")
    x = bundle.normalize(images)
    if str(cfg.target) in ("predicted", "mixed"):
        with torch.no_grad():
            logits = bundle.module(x)
        target = logits.argmax(1)
        if str(cfg.target) == "mixed":  # odd images: the least likely class (counterfactual maps non-zero)
            target[1::2] = logits.argmin(1)[1::2]
    else:
        target = torch.full((x.shape[0],), int(cfg.target), dtype=torch.long)
    return x, target


def crosscheck_main(cfg: Any) -> pd.DataFrame:
    """``salbench crosscheck`` with the composed config ``crosscheck``: prints the table, writes
    ``crosscheck.csv`` into the job directory (``cfg.output_dir`` or Hydra's run dir) and exits
    with status 1 when any comparison fails."""
    from omegaconf import OmegaConf

    from salbench.models import create_model

    torch.manual_seed(int(cfg.seed))
    options = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(options, dict)
    bundle = create_model(options.pop("name"), **options)
    x, target = crosscheck_inputs(cfg, bundle)
    methods = list(cfg.methods) if cfg.get("methods") else None
    occlusion = cfg.occlusion
    table = run_crosscheck(bundle, x, target, methods=methods, layer=cfg.get("layer"),
                           occlusion_window=int(occlusion.window), occlusion_stride=int(occlusion.stride),
                           occlusion_fill=float(occlusion.fill), occlusion_batch_size=int(occlusion.batch_size),
                           method_options=OmegaConf.to_container(cfg.method_options, resolve=True) if cfg.get("method_options") else None)
    out_dir = Path(cfg.get("output_dir") or _hydra_output_dir() or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "crosscheck.csv", index=False)
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(f"cross-check: model {bundle.name}, {x.shape[0]} images {tuple(x.shape[-2:])}, layer {cfg.get('layer') or bundle.target_layer}")
        print(table.drop(columns=["note"]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    failed = table[table["passed"] == False]  # noqa: E712 (None = skipped)
    for _, row in table[table["passed"].isna()].iterrows():
        print(f"  {row['method']}: {row['note']}")
    print(f"wrote {out_dir / 'crosscheck.csv'}: {len(failed)} failed, {int(table['passed'].isna().sum())} skipped")
    if len(failed):
        sys.exit(1)
    return table


def _hydra_output_dir() -> Optional[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except Exception:  # not running under Hydra
        return None


main = crosscheck_main
