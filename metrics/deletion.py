"""Deletion and insertion curves (RISE, Petsiuk et al. 2018), batched on the input's device.

Deletion: start from the image and replace pixels, most relevant first, by a *substrate* (the
"deleted" value); the tracked class score should fall fast (low AUC is better). Insertion: start
from the substrate and put the image's pixels back, most relevant first; the score should rise
fast (high AUC is better). A pixel is all channels at one location.

Curve layout: ``step`` pixels change per step, ``n_steps = ceil(H * W / step)``, the curve has
``n_steps + 1`` points; point ``i`` is the score after ``min(i * step, H * W)`` pixels changed
(point 0: the untouched start), plotted at ``x_i = i / n_steps``. The AUC is the trapezoid rule
over those points on [0, 1], RISE's ``auc``: ``(sum(a) - a[0] / 2 - a[-1] / 2) / (len(a) - 1)``.

Pixel order: a stable sort of the map (``order="most_relevant_first"``: descending), so tied
pixels keep row-major order (``tie_break="first"``: lower flat index first) or the reverse
(``"last"``: what ``np.flip(np.argsort(map, kind="stable"))`` gives). RISE's own code uses
numpy's unstable default sort, which leaves the order of ties unspecified.

Preset ``rise`` (RISE's ``CausalMetric`` and its notebook): class predicted on the clean image,
softmax probability, ``step = ceil(H * W / 224)`` (224 pixels per step at 224 x 224, 225 points),
deletion to 0 in normalized input space, insertion from a Gaussian blur of the normalized image
(kernel 11, sigma 5, the kernel made by ``scipy.ndimage.gaussian_filter`` of a centred delta,
applied per channel with zero padding), trapezoid AUC.

All perturbed inputs of a batch ((image x step) pairs; with :func:`perturbation_curves`,
(method x image x step) triples for several maps of the same images) are built with tensor ops
(``where(rank < threshold, finish, start)``) on the input's device and fed to the model in
forward passes of exactly ``batch_size`` inputs (the last chunk padded by repeating its last
input; :mod:`salbench.metrics.perturbation`) under ``torch.inference_mode``, so memory is bounded
by one chunk and a sample's value does not depend on the batch it came in. Option ``autocast``
(``bf16`` | ``fp16``) runs the forward passes under ``torch.autocast`` (docs/benchmarks.md
records its effect on the scores).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, CurveKind, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice
from salbench.metrics.base import image_ids, image_seeds
from salbench.metrics.perturbation import AUTOCAST, ChunkTuning, class_readout, distinct_prefixes, forward_in_chunks, \
    forward_probe

CURVES = ("deletion", "insertion")
SUBSTRATES = ("zero", "mean", "blur", "noise")
SCORES = ("softmax", "logit")
ORDERS = ("most_relevant_first", "least_relevant_first")
TIE_BREAKS = ("first", "last")
RISE_STEPS = 224  # RISE: 224 pixels per step at 224 x 224, i.e. 224 steps


# --------------------------------------------------------------------------- substrates
def rise_gaussian_kernel(size: int = 11, sigma: float = 5.0) -> Tensor:
    """RISE's blur kernel [size, size] float32: ``scipy.ndimage.gaussian_filter`` (mode
    ``reflect``, truncate 4) applied to a ``size x size`` delta at the centre.

    Computed here in float64: the 1-D Gaussian of radius ``int(4 * sigma + 0.5)``, normalized,
    folded back into the ``size``-long window by half-sample reflection (period ``2 * size``);
    the 2-D kernel is the outer product (the filter is separable). Sums to 1.
    """
    if size < 1 or sigma <= 0:
        raise ValueError(f"blur kernel needs size >= 1 and sigma > 0; got {size}, {sigma}")
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device="cpu")
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    centre = size // 2
    kernel = torch.zeros(size, dtype=torch.float64, device="cpu")
    positions = torch.arange(size, device="cpu")
    for offset, weight in zip(range(-radius, radius + 1), weights):
        # output[i] += w[k] * ext[i - k]; ext is the delta reflected with period 2 * size
        source = (positions - offset) % (2 * size)
        source = torch.where(source >= size, 2 * size - 1 - source, source)
        kernel += weight * (source == centre).double()
    return torch.outer(kernel, kernel).float()


def gaussian_blur(x: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """x [B, C, H, W] -> blurred [B, C, H, W]: RISE's kernel per channel, zero padding."""
    kernel = rise_gaussian_kernel(kernel_size, sigma).to(x.device, x.dtype)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(x, weight, padding=kernel_size // 2, groups=channels)


def make_substrate(
    x: Tensor,
    kind: str,
    *,
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
    noise_std: float = 1.0,
    seeds: Optional[Tensor] = None,
) -> Tensor:
    """The "removed" image [B, C, H, W] for normalized inputs x [B, C, H, W].

    ``zero``: 0 in normalized space (the dataset mean colour); ``mean``: each image's own
    per-channel mean; ``blur``: :func:`gaussian_blur`; ``noise``: N(0, ``noise_std``) in
    normalized space, image ``b`` drawn from a CPU generator seeded with ``seeds[b]`` (default
    ``0..B-1``), so it depends neither on the batch it lands in nor on the device.
    """
    check_choice("substrate", kind, SUBSTRATES)
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return gaussian_blur(x, blur_kernel_size, blur_sigma)
    seeds = list(range(x.shape[0])) if seeds is None else torch.as_tensor(seeds, device="cpu").tolist()
    # drawn on the CPU (CUDA generators give other numbers for a seed), one copy to x's device
    noise = torch.empty(x.shape, dtype=x.dtype, device="cpu")
    for b, seed in enumerate(seeds):  # one generator per image (B calls, not pixels)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise[b] = torch.randn(x.shape[1:], generator=generator, device="cpu", dtype=x.dtype)
    return noise.to(x.device) * noise_std


# --------------------------------------------------------------------------- order and steps
def pixel_ranks(maps: Tensor, order: str = "most_relevant_first", tie_break: str = "first") -> Tensor:
    """maps [B, H, W] -> ranks [B, H * W] long: the step-order position of each pixel (0 = changed
    first). Stable sort; ties by flat row-major index (``first``: lower index first, ``last``:
    higher index first)."""
    check_choice("order", order, ORDERS)
    check_choice("tie_break", tie_break, TIE_BREAKS)
    flat = maps.flatten(1)
    if tie_break == "last":
        flat = flat.flip(1)
    perm = torch.sort(flat, dim=1, descending=order == "most_relevant_first", stable=True).indices
    if tie_break == "last":
        perm = flat.shape[1] - 1 - perm
    ranks = torch.empty_like(perm)
    positions = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return ranks.scatter_(1, perm, positions)


def resolve_step(num_pixels: int, step: Optional[int] = None, n_steps: Optional[int] = None) -> Tuple[int, int]:
    """(pixels per step, number of steps). ``step`` wins; else ``n_steps`` gives
    ``step = ceil(HW / n_steps)``; default: RISE's resolution, ``ceil(HW / 224)``.
    The number of steps is always ``ceil(HW / step)`` (the curve has one more point)."""
    if step is None:
        wanted = RISE_STEPS if n_steps is None else n_steps
        if wanted < 1:
            raise ValueError(f"n_steps must be >= 1; got {wanted}")
        step = math.ceil(num_pixels / wanted)
    if step < 1:
        raise ValueError(f"step must be >= 1 pixel; got {step}")
    return step, math.ceil(num_pixels / step)


def curve_auc(curves: Tensor) -> Tensor:
    """curves [B, N + 1] -> [B]: trapezoid rule over x in [0, 1] with uniform spacing (RISE's
    ``auc``)."""
    if curves.shape[-1] < 2:
        raise ValueError("a curve needs at least 2 points")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


# --------------------------------------------------------------------------- the curve
def perturbation_curve(model: nn.Module, x: Tensor, maps: Tensor, target: Tensor, **options: Any) -> Tensor:
    """The deletion or insertion curve of each image: :func:`perturbation_curves` of one map
    [B, H, W]; returns [B, n_steps + 1]."""
    return perturbation_curves(model, x, {"": maps}, target, **options)[""]


def perturbation_curves(
    model: nn.Module,
    x: Tensor,
    maps: Dict[str, Tensor],
    target: Tensor,
    *,
    mode: str = "deletion",
    substrate: Tensor,
    step: Optional[int] = None,
    n_steps: Optional[int] = None,
    score: str = "softmax",
    order: str = "most_relevant_first",
    tie_break: str = "first",
    batch_size: int = 256,
    autocast: Optional[str] = None,
    reuse_equal_inputs: bool = True,
) -> Dict[str, Tensor]:
    """Deletion or insertion curves of several maps of the same images at once.

    model: normalized [N, C, H, W] -> logits [N, K]; x: [B, C, H, W] normalized inputs; maps:
    ``{method: [B, H, W]}`` relevance; target: [B] tracked class; substrate: [B, C, H, W] the
    removed image (deletion's end, insertion's start). Returns ``{method: [B, n_steps + 1]}``
    float32 on x's device: the softmax probability (``score="softmax"``) or logit of the target
    class after ``i`` steps; a map holding NaN gives a NaN curve. All (method x image x step)
    perturbed inputs, method-major, go through the perturbation engine in forward chunks of at
    most ``batch_size``; each method's curves equal a call with that method alone (exactly, on
    devices whose kernels give a sample the same result whatever batch it lands in;
    tests/test_shared_passes.py). ``autocast``: ``None`` (full precision), ``"bf16"`` or
    ``"fp16"`` (the model's forward under ``torch.autocast``; softmax in float32).

    ``reuse_equal_inputs``: an input that equals another item's (the same image with the same
    pixels changed: every map's start and end points, and maps that order their top pixels alike,
    such as Grad-CAM, XGrad-CAM and HiResCAM on a model with global average pooling) is computed
    once (:func:`salbench.metrics.perturbation.distinct_prefixes`); its value is the one a
    forward pass of that input gives, so the curves are the same as without the reuse (bit for
    bit where a sample's result does not depend on its batch: tests/test_faithfulness.py)."""
    check_choice("mode", mode, CURVES)
    check_choice("score", score, SCORES)
    keys = list(maps)
    if not keys:
        return {}
    for key in keys:
        if x.ndim != 4 or maps[key].shape != (x.shape[0], *x.shape[-2:]) or substrate.shape != x.shape:
            raise ValueError(
                f"need x [B, C, H, W], maps [B, H, W], substrate like x; got {tuple(x.shape)}, "
                f"{tuple(maps[key].shape)}, {tuple(substrate.shape)}"
            )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    num_images, channels, height, width = x.shape
    num_maps = len(keys)
    num_pixels = height * width
    step, steps = resolve_step(num_pixels, step, n_steps)
    target = torch.as_tensor(target, device=x.device).long()
    start, finish = (x, substrate) if mode == "deletion" else (substrate, x)
    stacked = torch.stack([maps[key].to(x.device) for key in keys])  # [M, B, H, W]
    points = steps + 1
    with torch.inference_mode():
        ranks = pixel_ranks(stacked.flatten(0, 1), order, tie_break)  # [M * B, HW], map-major
        changed = (torch.arange(points, device=x.device) * step).clamp_max(num_pixels)  # [S]

    # items: (map, image, step) triples, map-major then image-major; item i is curve i // points
    # (a (map, image) pair) after changed[i % points] pixels; only the items in `keep` are computed
    count = num_maps * num_images * points
    if reuse_equal_inputs:
        with torch.inference_mode():
            images_of_curves = torch.arange(num_maps * num_images, device=x.device) % num_images
            keep, source = distinct_prefixes(ranks, changed, images_of_curves)
    else:
        keep = source = torch.arange(count, device=x.device)

    def build(begin: int, end: int) -> Tensor:
        item = keep[begin:end]
        curve, images = item // points, (item // points) % num_images
        mask = (ranks[curve] < changed[item % points][:, None]).view(-1, 1, height, width)
        return torch.where(mask, finish[images], start[images])

    def read(logits: Tensor, begin: int, end: int) -> Tensor:
        images = (keep[begin:end] // points) % num_images
        return class_readout(logits, target[images], score)

    values = forward_in_chunks(model, keep.shape[0], build, read, chunk=batch_size, device=x.device,
                               autocast=autocast)
    curves = values[source].view(num_maps, num_images, points)
    bad = torch.isnan(stacked).flatten(2).any(2)  # [M, B]
    curves = torch.where(bad[..., None], torch.full_like(curves, float("nan")), curves)
    return {key: curves[i].clone() for i, key in enumerate(keys)}


# --------------------------------------------------------------------------- the metric
RISE_PRESET: Dict[str, Any] = {
    "target": "predicted",
    "score": "softmax",
    "deletion_substrate": "zero",
    "insertion_substrate": "blur",
    "step": None,
    "n_steps": None,
    "order": "most_relevant_first",
    "tie_break": "first",
    "blur_kernel_size": 11,
    "blur_sigma": 5.0,
    "autocast": None,
}


@register_metric("rise")
class DeletionInsertion(TracksClass, Metric):
    """Per-image deletion AUC (lower is better) and insertion AUC (higher is better), with the
    full curves kept for :meth:`tables`. Registered as ``rise``; its defaults are the RISE
    preset (see the module docstring) and :attr:`preset` says ``rise`` only while every
    choice equals it (``custom`` otherwise).

    Options: ``curves`` (which of deletion/insertion to run); ``target`` (tracked class:
    ``predicted`` on the clean image, ``label``, or ``explained``: the map's class);
    ``score`` (``softmax`` | ``logit``); ``deletion_substrate`` / ``insertion_substrate``
    (``zero`` | ``mean`` | ``blur`` | ``noise``); ``step`` pixels per step or ``n_steps``
    (default ``ceil(HW / 224)`` pixels per step); ``order``; ``tie_break``; ``blur_*``,
    ``noise_std`` and ``seed`` (noise for image ``i`` of the dataset is seeded with
    ``seed * 1_000_003 + i``); ``batch_size``: model inputs per forward pass, or ``auto``
    (chosen on the first batch by measuring the throughput, then kept; recorded in the
    protocol as ``batch_size_chosen``: :class:`salbench.metrics.perturbation.ChunkTuning`).
    """

    name = "rise"
    category = "faithfulness"
    presets = {"rise": RISE_PRESET}
    table_kinds = ("curves",)
    curve_kinds = {
        "deletion": CurveKind(lower_is_better=True, x_label="fraction of pixels removed", summary="auc"),
        "insertion": CurveKind(lower_is_better=False, x_label="fraction of pixels inserted", summary="auc"),
    }
    scores = (
        ScoreInfo("deletion_auc", False, "faithfulness"),
        ScoreInfo("insertion_auc", True, "faithfulness"),
    )

    def __init__(
        self,
        curves: Sequence[str] = ("deletion", "insertion"),
        target: str = "predicted",
        score: str = "softmax",
        deletion_substrate: str = "zero",
        insertion_substrate: str = "blur",
        step: Optional[int] = None,
        n_steps: Optional[int] = None,
        order: str = "most_relevant_first",
        tie_break: str = "first",
        blur_kernel_size: int = 11,
        blur_sigma: float = 5.0,
        noise_std: float = 1.0,
        seed: int = 0,
        batch_size: Union[int, str] = 256,
        autocast: Optional[str] = None,
    ):
        curves = tuple(curves)
        if not curves:
            raise ValueError("curves must name at least one of deletion, insertion")
        for curve in curves:
            check_choice("curve", curve, CURVES)
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("substrate", deletion_substrate, SUBSTRATES)
        check_choice("substrate", insertion_substrate, SUBSTRATES)
        check_choice("order", order, ORDERS)
        check_choice("tie_break", tie_break, TIE_BREAKS)
        self.chunk_tuning = ChunkTuning(batch_size)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if step is not None and step < 1 or n_steps is not None and n_steps < 1:
            raise ValueError(f"step and n_steps must be >= 1; got {step}, {n_steps}")
        self.curves = curves
        self.target, self.score = target, score
        self.deletion_substrate, self.insertion_substrate = deletion_substrate, insertion_substrate
        self.step, self.n_steps, self.order, self.tie_break = step, n_steps, order, tie_break
        self.blur_kernel_size, self.blur_sigma = blur_kernel_size, blur_sigma
        self.noise_std, self.seed, self.batch_size = noise_std, seed, batch_size
        self.autocast = autocast
        self.scores = tuple(s for s in type(self).scores if s.name.split("_")[0] in curves)
        self._records: List[Dict[str, Any]] = []

    def protocol(self) -> Dict[str, Any]:
        return {
            "curves": list(self.curves),
            "target": self.target,
            "score": self.score,
            "deletion_substrate": self.deletion_substrate,
            "insertion_substrate": self.insertion_substrate,
            "step": self.step if self.step is not None else (
                f"ceil(H*W/{self.n_steps})" if self.n_steps is not None else f"ceil(H*W/{RISE_STEPS})"
            ),
            "order": self.order,
            "tie_break": self.tie_break,
            "blur": {"kernel_size": self.blur_kernel_size, "sigma": self.blur_sigma, "padding": "zero"},
            "noise_std": self.noise_std,
            "seed": self.seed,
            "auc": "trapezoid over x = i / n_steps in [0, 1]",
            "autocast": self.autocast,
            **self.chunk_tuning.protocol(),
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        """Every method's curves of the batch in shared forward batches (:func:`perturbation_curves`,
        the same inputs per method as one at a time); ``{method: {score: [N]}}``."""
        x = explained.inputs
        model = explained.classifier
        target = self.tracked_class(explained)
        seeds = image_seeds(explained, self.seed)
        chunk = self.chunk_tuning.resolve(f"{list(x.shape[1:])} autocast={self.autocast}",
                                          forward_probe(model, x[:1], self.autocast), x.device)
        out: Dict[str, Dict[str, Tensor]] = {method: {} for method in explained.maps}
        for curve in self.curves:
            kind = self.deletion_substrate if curve == "deletion" else self.insertion_substrate
            substrate = make_substrate(x, kind, blur_kernel_size=self.blur_kernel_size, blur_sigma=self.blur_sigma,
                                       noise_std=self.noise_std, seeds=seeds)
            values = perturbation_curves(
                model, x, dict(explained.maps), target, mode=curve, substrate=substrate, step=self.step,
                n_steps=self.n_steps, score=self.score, order=self.order, tie_break=self.tie_break,
                batch_size=chunk, autocast=self.autocast,
            )
            for method in explained.maps:
                out[method][f"{curve}_auc"] = curve_auc(values[method])
                self._record(explained, method, curve, values[method])
        return out

    def _record(self, explained: ExplainedBatch, method: str, curve: str, values: Tensor) -> None:
        self._records.append({
            "image_id": image_ids(explained),
            "method": method,
            "curve": curve,
            "values": values.cpu(),
        })

    def tables(self) -> Dict[str, Any]:
        """``curves``: one row per (image, method, curve, step) with columns image_id, method,
        metric, curve, step, fraction (``step / n_steps``), value."""
        import pandas as pd

        frames = []
        for record in self._records:
            values = record["values"]
            num_images, points = values.shape
            steps = torch.arange(points, device="cpu").repeat(num_images)
            frames.append(pd.DataFrame({
                "image_id": [i for i in record["image_id"] for _ in range(points)],
                "method": record["method"],
                "metric": self.name,
                "curve": record["curve"],
                "step": steps.numpy(),
                "fraction": (steps.double() / (points - 1)).numpy(),
                "value": values.flatten().double().numpy(),
            }))
        columns = ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
        if not frames:
            return {"curves": pd.DataFrame(columns=columns)}
        return {"curves": pd.concat(frames, ignore_index=True)[columns]}
