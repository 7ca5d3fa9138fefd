"""Region perturbation: AOPC over patches (Samek et al. 2017) and IROF over superpixels
(Rieger & Hansen 2020), most (MoRF) or least (LeRF) relevant region first (registered
``region_perturbation``).

* AOPC, Samek et al. 2017 ("Evaluating the visualization of what a deep neural network has
  learned", IEEE TNNLS): the image is tiled into ``patch_size`` x ``patch_size`` patches, ordered
  by the map's sum over each patch; removing them one by one, cumulatively, gives the class
  scores ``f(x^(0)) .. f(x^(L))``; ``AOPC = 1/(L+1) sum_{k=0}^{L} (f(x^(0)) - f(x^(k)))`` with
  ``L = min(max_patches, number of patches)``. Samek et al. remove a region by uniform noise.
  Tiling: when the side is not a multiple of the patch size, the grid is shifted by
  ``floor(pad / 2)`` (the grid of the image padded symmetrically, as Quantus' RegionPerturbation).
* IROF, Rieger & Hansen 2020 ("IROF: a low resource evaluation metric for explanation
  methods", ICLR workshop): SLIC superpixels (scikit-image ``slic``, parameters recorded) ordered
  by the map's mean over each; removing all of them one by one gives ``y_k = f(x^(k)) / f(x^(0))``
  for ``k = 0..L``; ``IROF = 1 - trapezoid area of y over x_k = k / L`` (the area over the curve
  on [0, 1]).

Higher MoRF scores and lower LeRF scores are better. Ties in the region order: a stable sort
(lower region index first). Removed values (``*_baseline``): ``uniform`` (per pixel and channel,
U(min x, max x) of the image in normalized input space, drawn once per image from a CPU
generator seeded with ``seed * 1_000_003 + dataset position``), ``black`` (the image's minimum
over all channels, Quantus' "black"), ``zero`` (0 in normalized space, the dataset mean) or
``mean`` (the image's per-channel mean).

All (method, image, step) perturbed inputs of a batch go through the perturbation engine in
shared forward chunks; the superpixels are computed once per image on the CPU (skimage).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, CurveKind, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice
from salbench.metrics.base import image_ids, image_seeds
from salbench.metrics.perturbation import AUTOCAST, class_readout, distinct_prefixes, forward_in_chunks, seeded_draws

REGIONS = ("patches", "superpixels")
ORDERS = ("morf", "lerf")
BASELINES = ("uniform", "black", "zero", "mean")
REDUCTIONS = ("sum", "mean")
SCORES = ("softmax", "logit")
SLIC_INPUTS = ("image", "input")


# --------------------------------------------------------------------------- regions
def patch_labels(size: Tuple[int, int], patch_size: int, device: Optional[torch.device] = None) -> Tensor:
    """[H, W] long: the patch index of each pixel, row-major over a grid of ``patch_size``
    squares shifted by ``floor(pad / 2)`` where ``pad`` completes the side to a multiple."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1; got {patch_size}")
    height, width = (int(s) for s in size)

    def axis(length: int) -> Tuple[Tensor, int]:
        pad = (-length) % patch_size
        cells = (torch.arange(length, device=device) + pad // 2) // patch_size
        return cells, (length + pad) // patch_size

    rows, _ = axis(height)
    cols, n_cols = axis(width)
    return rows[:, None] * n_cols + cols[None, :]


def slic_labels(images: Tensor, n_segments: int = 100, compactness: float = 10.0, sigma: float = 0.0) -> Tensor:
    """images [B, C, H, W] -> [B, H, W] long on the images' device: scikit-image ``slic``
    superpixels (``start_label=0``, ``channel_axis=-1``, float64 input, Lab conversion for 3
    channels as skimage's default), relabelled 0..L-1 in order of first label. CPU, one image at
    a time (the file-boundary exception: skimage has no batched, device version)."""
    from skimage.segmentation import slic

    out = []
    for image in images.detach().double().cpu().numpy():
        segments = slic(np.moveaxis(image, 0, -1), n_segments=n_segments, compactness=compactness, sigma=sigma,
                        start_label=0, channel_axis=-1)
        out.append(np.unique(segments, return_inverse=True)[1].reshape(segments.shape))
    return torch.from_numpy(np.stack(out).astype(np.int64)).to(images.device)


def region_relevance(maps: Tensor, labels: Tensor, reduce: str = "sum") -> Tensor:
    """maps [B, H, W], labels [B, H, W] long (0..R-1) -> [B, R] float64: the map's sum or mean
    over each region; NaN for a label an image does not use."""
    check_choice("reduce", reduce, REDUCTIONS)
    count = int(labels.max()) + 1 if labels.numel() else 0
    flat, keys = maps.detach().double().flatten(1), labels.flatten(1)
    sums = torch.zeros(flat.shape[0], count, dtype=torch.float64, device=flat.device).scatter_add_(1, keys, flat)
    sizes = torch.zeros_like(sums).scatter_add_(1, keys, torch.ones_like(flat))
    values = sums / sizes.clamp_min(1) if reduce == "mean" else sums
    return torch.where(sizes > 0, values, torch.nan)


def region_ranks(relevance: Tensor, order: str = "morf") -> Tensor:
    """relevance [B, R] (NaN: no such region) -> [B, R] long: each region's removal step
    (0 = first); MoRF: descending relevance, LeRF: ascending; stable (ties: lower index first);
    absent regions last."""
    check_choice("order", order, ORDERS)
    missing = torch.isnan(relevance)
    fill = float("-inf") if order == "morf" else float("inf")
    keys = torch.where(missing, fill, relevance)
    permutation = torch.sort(keys, dim=1, descending=order == "morf", stable=True).indices
    positions = torch.arange(relevance.shape[1], device=relevance.device).expand_as(permutation)
    return torch.empty_like(permutation).scatter_(1, permutation, positions)


def removed_values(x: Tensor, kind: str, seeds: Optional[Tensor] = None) -> Tensor:
    """The value each pixel takes once its region is removed [B, C, H, W] (module docstring)."""
    check_choice("baseline", kind, BASELINES)
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    if kind == "black":
        return low.expand_as(x)
    high = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    seeds = torch.arange(x.shape[0]) if seeds is None else seeds
    return low + (high - low) * seeded_draws(seeds, x.shape[1:], "uniform", device=x.device, dtype=x.dtype)


def region_curves(model: nn.Module, x: Tensor, maps: Dict[str, Tensor], labels: Tensor, target: Tensor, *,
                  removed: Tensor, order: str = "morf", reduce: str = "sum", max_steps: Optional[int] = None,
                  score: str = "softmax", batch_size: int = 256, autocast: Optional[str] = None) -> Dict[str, Tensor]:
    """Class scores while regions are removed, most or least relevant first, for several maps of
    the same images at once.

    x [B, C, H, W] normalized input; maps {method: [B, H, W]}; labels [B, H, W] long region ids
    (0..R-1, per image); target [B]; removed [B, C, H, W] the removed pixels' values. Returns
    {method: [B, S + 1]} float32: the ``score`` of the target after ``k`` regions were removed,
    ``k = 0..S``, ``S = min(max_steps, R)``; NaN past an image's own number of regions (and for a
    map holding NaN). All (method, image, step) inputs, method-major, share the forward chunks;
    an input that removes the same regions of the same image as an earlier one (every map's first
    point, and maps that order the regions alike) is computed once
    (:func:`salbench.metrics.perturbation.distinct_prefixes`; the curves do not change)."""
    check_choice("score", score, SCORES)
    keys = list(maps)
    count, _, height, width = x.shape
    relevance = torch.stack([region_relevance(maps[k].to(x.device), labels, reduce) for k in keys])  # [M, B, R]
    ranks = region_ranks(relevance.flatten(0, 1), order)  # [M * B, R]
    per_image = (~torch.isnan(relevance[0])).sum(1)  # [B] regions each image has
    steps = int(per_image.max()) if max_steps is None else min(int(max_steps), int(per_image.max()))
    points = steps + 1
    flat_labels = labels.flatten(1)
    with torch.inference_mode():  # items (map, image, step): only the distinct inputs are computed
        images_of_curves = torch.arange(len(keys) * count, device=x.device) % count
        keep, source = distinct_prefixes(ranks, torch.arange(points, device=x.device), images_of_curves)

    def build(begin: int, end: int) -> Tensor:
        item = keep[begin:end]
        curve, images = item // points, (item // points) % count
        rank_of_pixel = ranks[curve].gather(1, flat_labels[images])  # [n, HW]
        mask = (rank_of_pixel < (item % points)[:, None]).view(-1, 1, height, width)
        return torch.where(mask, removed[images], x[images])

    def read(logits: Tensor, begin: int, end: int) -> Tensor:
        images = (keep[begin:end] // points) % count
        return class_readout(logits, target[images], score)

    values = forward_in_chunks(model, keep.shape[0], build, read, device=x.device, chunk=batch_size,
                               autocast=autocast)
    curves = values[source].view(len(keys), count, points)
    beyond = torch.arange(points, device=x.device)[None] > per_image[:, None]  # [B, S + 1]
    out = {}
    for i, key in enumerate(keys):
        bad = torch.isnan(maps[key].to(x.device)).flatten(1).any(1)[:, None] | beyond
        out[key] = torch.where(bad, torch.nan, curves[i])
    return out


def aopc(curves: Tensor) -> Tensor:
    """curves [B, S + 1] (scores after k removed regions, NaN past the end) -> [B] float64:
    ``mean_k (f_0 - f_k)`` over the defined points (Samek et al. 2017)."""
    drops = curves[:, :1].double() - curves.double()
    return drops.nanmean(1)


def irof(curves: Tensor) -> Tensor:
    """curves [B, S + 1] (scores after k removed regions, k = 0..L_b, NaN past L_b) -> [B]
    float64: ``1 - trapezoid(f_k / f_0 over k / L_b)`` (Rieger & Hansen 2020); NaN when
    ``L_b < 1`` or ``f_0 == 0``."""
    values = curves.double()
    ratio = values / values[:, :1]
    defined = ~torch.isnan(ratio)
    lengths = defined.sum(1) - 1  # L_b
    pairs = (ratio[:, 1:] + ratio[:, :-1]) / 2
    area = torch.where(defined[:, 1:], pairs, 0.0).sum(1) / lengths.clamp_min(1)
    return torch.where(lengths >= 1, 1 - area, torch.nan)


# --------------------------------------------------------------------------- the metric
PAPER_PRESET: Dict[str, Any] = {"patch_size": 9, "max_patches": 100, "patch_baseline": "uniform",
                                "n_segments": 100, "compactness": 10.0, "slic_sigma": 0.0, "slic_on": "image",
                                "superpixel_baseline": "mean", "score": "softmax"}


@register_metric("region_perturbation")
class RegionPerturbation(TracksClass, Metric):
    """AOPC over patches and IROF over superpixels, MoRF and LeRF (module docstring).

    Options: ``regions`` (``patches`` | ``superpixels``), ``orders`` (``morf`` | ``lerf``),
    ``target`` (tracked class), ``score`` (``softmax`` | ``logit``); patches: ``patch_size``,
    ``max_patches`` (L), ``patch_baseline``; superpixels: ``n_segments``, ``compactness``,
    ``slic_sigma``, ``slic_on`` (``image``: the [0, 1] image | ``input``: the normalized model
    input, as Quantus), ``superpixel_baseline``; ``seed`` (uniform removed values),
    ``batch_size`` (perturbed inputs per forward pass), ``autocast``. Scores ``aopc_morf``,
    ``aopc_lerf``, ``irof_morf``, ``irof_lerf``; the AOPC curves (``f_0 - f_k``) go to the
    ``curves`` table. Preset ``paper``: 9 x 9 patches, 100 steps, uniform noise (Samek et al.);
    SLIC with skimage's defaults on the image, regions set to the image mean (Rieger & Hansen).
    """

    name = "region_perturbation"
    category = "faithfulness"
    presets = {"paper": PAPER_PRESET}
    table_kinds = ("curves",)
    curve_kinds = {
        "aopc_morf": CurveKind(lower_is_better=False, x_label="fraction of the patch steps (most relevant first)",
                               summary="mean"),
        "aopc_lerf": CurveKind(lower_is_better=True, x_label="fraction of the patch steps (least relevant first)",
                               summary="mean"),
    }
    scores = (
        ScoreInfo("aopc_morf", True, "faithfulness"),
        ScoreInfo("aopc_lerf", False, "faithfulness"),
        ScoreInfo("irof_morf", True, "faithfulness"),
        ScoreInfo("irof_lerf", False, "faithfulness"),
    )

    def __init__(
        self,
        regions: Sequence[str] = REGIONS,
        orders: Sequence[str] = ORDERS,
        target: str = "predicted",
        score: str = "softmax",
        patch_size: int = 9,
        max_patches: Optional[int] = 100,
        patch_baseline: str = "uniform",
        n_segments: int = 100,
        compactness: float = 10.0,
        slic_sigma: float = 0.0,
        slic_on: str = "image",
        superpixel_baseline: str = "mean",
        seed: int = 0,
        batch_size: int = 256,
        autocast: Optional[str] = None,
    ):
        self.regions, self.orders = tuple(regions), tuple(orders)
        if not self.regions or not self.orders:
            raise ValueError("regions and orders must each name at least one choice")
        for value in self.regions:
            check_choice("region", value, REGIONS)
        for value in self.orders:
            check_choice("order", value, ORDERS)
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("patch_baseline", patch_baseline, BASELINES)
        check_choice("superpixel_baseline", superpixel_baseline, BASELINES)
        check_choice("slic_on", slic_on, SLIC_INPUTS)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if patch_size < 1 or n_segments < 1 or batch_size < 1 or (max_patches is not None and max_patches < 1):
            raise ValueError(f"patch_size, n_segments, batch_size and max_patches must be >= 1; got {patch_size}, "
                             f"{n_segments}, {batch_size}, {max_patches}")
        self.target, self.score = target, score
        self.patch_size, self.max_patches, self.patch_baseline = int(patch_size), max_patches, patch_baseline
        self.n_segments, self.compactness, self.slic_sigma = int(n_segments), float(compactness), float(slic_sigma)
        self.slic_on, self.superpixel_baseline = slic_on, superpixel_baseline
        self.seed, self.batch_size, self.autocast = int(seed), int(batch_size), autocast
        wanted = {f"{'aopc' if r == 'patches' else 'irof'}_{o}" for r in self.regions for o in self.orders}
        self.scores = tuple(s for s in type(self).scores if s.name in wanted)
        self._records: List[Dict[str, Any]] = []

    def protocol(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"regions": list(self.regions), "orders": list(self.orders), "target": self.target,
                               "score": self.score, "order_ties": "stable, lower region index first"}
        if "patches" in self.regions:
            out["aopc"] = {"patch_size": self.patch_size, "max_patches": self.max_patches,
                           "patch_relevance": "sum", "grid": "shifted by floor(pad / 2) (symmetric padding)",
                           "removed": self.patch_baseline, "formula": "mean_{k=0..L} (f_0 - f_k) (samek2017)"}
        if "superpixels" in self.regions:
            out["irof"] = {"segmentation": "skimage.segmentation.slic", "n_segments": self.n_segments,
                           "compactness": self.compactness, "sigma": self.slic_sigma, "start_label": 0,
                           "on": self.slic_on, "region_relevance": "mean", "removed": self.superpixel_baseline,
                           "formula": "1 - trapezoid(f_k / f_0 over k / L) (rieger2020)"}
        out["seed"] = self.seed
        out["autocast"] = self.autocast
        return out

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        x = explained.inputs
        model = explained.classifier
        target = self.tracked_class(explained)
        seeds = image_seeds(explained, self.seed)
        maps = {m: v.to(x.device) for m, v in explained.maps.items()}
        out: Dict[str, Dict[str, Tensor]] = {m: {} for m in maps}
        common = dict(score=self.score, batch_size=self.batch_size, autocast=self.autocast)
        if "patches" in self.regions:
            labels = patch_labels(x.shape[-2:], self.patch_size, x.device).expand(x.shape[0], -1, -1)
            removed = removed_values(x, self.patch_baseline, seeds)
            for order in self.orders:
                curves = region_curves(model, x, maps, labels, target, removed=removed, order=order, reduce="sum",
                                       max_steps=self.max_patches, **common)
                for method, values in curves.items():
                    out[method][f"aopc_{order}"] = aopc(values).float()
                    self._record(explained, method, f"aopc_{order}", values[:, :1] - values)
        if "superpixels" in self.regions:
            source = explained.images if self.slic_on == "image" else x
            labels = slic_labels(source, self.n_segments, self.compactness, self.slic_sigma).to(x.device)
            removed = removed_values(x, self.superpixel_baseline, seeds)
            for order in self.orders:
                curves = region_curves(model, x, maps, labels, target, removed=removed, order=order, reduce="mean",
                                       **common)
                for method, values in curves.items():
                    out[method][f"irof_{order}"] = irof(values).float()
        return out

    def _record(self, explained: ExplainedBatch, method: str, curve: str, values: Tensor) -> None:
        self._records.append({"image_id": image_ids(explained), "method": method, "curve": curve,
                              "values": values.detach().float().cpu()})

    def tables(self) -> Dict[str, Any]:
        """``curves``: the AOPC curves ``f_0 - f_k``, one row per (image, method, curve, step)
        with columns image_id, method, metric, curve, step, fraction (``step / L``), value."""
        import pandas as pd

        columns = ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
        frames = []
        for record in self._records:
            values = record["values"]
            count, points = values.shape
            steps = np.tile(np.arange(points), count)
            frames.append(pd.DataFrame({
                "image_id": [i for i in record["image_id"] for _ in range(points)], "method": record["method"],
                "metric": self.name, "curve": record["curve"], "step": steps,
                "fraction": steps / max(points - 1, 1), "value": values.flatten().double().numpy()}))
        return {"curves": pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)}


__all__ = ["aopc", "irof", "patch_labels", "region_curves", "region_ranks", "region_relevance", "removed_values",
           "slic_labels", "RegionPerturbation"]
