"""wsolevaluation (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization
Methods Right"): MaxBoxAcc, MaxBoxAccV2 and PxAP, preset ``wsoleval``.

Conventions reproduced from the authors' released code (github.com/clovaai/wsolevaluation,
``inference.py`` / ``evaluation.py``):

* the map of the ground-truth class is resized to the evaluation frame with bicubic
  interpolation (cv2 ``INTER_CUBIC``; skipped when already at that size), then min-max
  normalized per image in float32; a constant map or one holding NaN becomes all zeros;
* boxes: the map is quantized ``uint8(map * 255)`` (truncation); at threshold ``tau`` the
  pixels strictly above ``int(tau * 255)`` are kept; cv2 contours (``RETR_TREE``, external and
  internal, ``CHAIN_APPROX_SIMPLE``); each contour's ``boundingRect`` (x, y, w, h) gives the box
  ``(x, y, min(x + w, W - 1), min(y + h, H - 1))``; no contour gives the box ``[0, 0, 0, 0]``;
* IoU on inclusive pixel coordinates (+1 on width and height), in float64; the best IoU over
  the image's ground-truth boxes counts; ground-truth boxes are scaled from the original image
  size to the frame with ``int(x * new_w / old_w)`` (``resize_bbox``);
* MaxBoxAcc: largest contour by ``cv2.contourArea`` (first on ties), IoU >= 0.5, accuracy at
  every tau, the max over tau (one tau for the dataset); MaxBoxAccV2: every contour's box, IoU
  thresholds {0.3, 0.5, 0.7}, max over tau separately per IoU threshold, then their mean;
* tau grid ``np.arange(0, 1, tau_step)``, ``tau_step = 0.001`` (their config; their standalone
  ``evaluation.py`` example uses 0.01);
* PxAP: histograms of the normalized float map's values over foreground and background pixels
  (pixels of the "ignore" region that are not foreground are left out), bin edges
  ``[taus..., 1, 2, 3]`` with numpy's half-open rule, precision and recall from the reversed
  cumulative counts, ``AP = 100 * sum_i P_i (R_i - R_{i-1})`` over thresholds in decreasing
  order, skipping thresholds with no positive prediction.

Cost: the contours are inherently per threshold, but the binary mask at ``int(tau*255)`` only
changes at the quantized values present in the map, so each image needs at most
min(256, #distinct uint8 values, #taus) cv2 calls (about 5-20 ms per 224x224 image on one CPU
core) however fine the tau grid; IoUs are computed once per distinct mask and broadcast to the
taus, and the counts are accumulated as one vectorized add per image ([n_iou, n_tau] int64).
PxAP is fully batched on the maps' device: one ``bucketize`` + ``bincount`` per batch,
O(B*H*W*log(n_tau)).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo
from salbench.metrics.localization import FRAMES, minmax_normalize

V2_IOU_THRESHOLDS = (0.3, 0.5, 0.7)


def tau_grid(step: float = 0.001) -> np.ndarray:
    """The score-map thresholds ``np.arange(0, 1, step)`` (float64), as wsolevaluation builds them."""
    if not 0.0 < step < 1.0:
        raise ValueError(f"tau step must be in (0, 1); got {step}")
    return np.arange(0, 1, step)


def cubic_resize(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """maps [B, h, w] -> [B, H, W] float32 with cv2 ``INTER_CUBIC`` (bit-exact with
    wsolevaluation; torch's bicubic differs by ~1e-7). CPU round-trip; no-op when at size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    height, width = size
    resized = [cv2.resize(m, (width, height), interpolation=cv2.INTER_CUBIC)
               for m in maps.detach().float().cpu().numpy()]
    return torch.from_numpy(np.stack(resized)).to(maps.device)


def wsol_scoremaps(maps: Tensor, size: Optional[Tuple[int, int]] = None) -> Tensor:
    """maps [B, h, w] -> score maps [B, H, W] float32 in [0, 1]: bicubic resize to ``size``
    (default: unchanged) then per-image min-max (constant / NaN map -> zeros)."""
    if size is not None:
        maps = cubic_resize(maps, size)
    return minmax_normalize(maps)


def quantize(scoremaps: Tensor) -> Tensor:
    """score maps [B, H, W] float32 in [0, 1] -> uint8 ``(m * 255)`` truncated."""
    return (scoremaps.float() * 255).to(torch.uint8)


def _contour_boxes(binary: np.ndarray) -> Tuple[np.ndarray, int]:
    """binary uint8 [H, W] -> (boxes int64 [n, 4] of every contour, index of the largest
    contour by area); no contour -> ([[0, 0, 0, 0]], 0).

    One cv2.findContours call; the bounding rects (min/max of the contour's points, as
    cv2.boundingRect) and the areas (shoelace formula, as cv2.contourArea, exact in int64) are
    computed for all contours at once with ``reduceat`` instead of a Python loop per contour.
    """
    height, width = binary.shape
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64), 0
    lengths = np.fromiter(map(len, contours), dtype=np.int64, count=len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    x, y = points[:, 0], points[:, 1]
    x0, y0 = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
    x1, y1 = np.maximum.reduceat(x, starts) + 1, np.maximum.reduceat(y, starts) + 1  # x + w, y + h
    following = np.arange(len(points)) + 1
    following[starts + lengths - 1] = starts  # each contour is closed
    twice_area = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts))
    boxes = np.stack([x0, y0, np.minimum(x1, width - 1), np.minimum(y1, height - 1)], 1)
    return boxes, int(np.argmax(twice_area))


def _iou_matrix(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Inclusive IoU [N, M] in float64 of integer boxes (wsolevaluation's formula)."""
    a, b = boxes[:, None, :].astype(np.int64), gt[None, :, :].astype(np.int64)
    inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
             * np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1))
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    return np.where(degenerate, 0.0, inter / np.where(degenerate, 1, union))


def wsol_best_ious(quantized: Tensor, gt_boxes: Sequence[Tensor], taus: np.ndarray) -> Tuple[Tensor, Tensor]:
    """Best IoU at every tau, for the largest contour and for all contours.

    quantized: [B, H, W] uint8; gt_boxes: B integer-valued tensors [N_i, 4] in the same frame;
    taus: [T] float64. Returns ``(largest [B, T], every [B, T])`` float64 (NaN rows where
    N_i == 0). One cv2 pass per distinct binary mask (see the module docstring for the cost).
    """
    levels = np.floor(taus * 255.0).astype(np.int64)  # int(tau * 255); uint8 max is 255 or the map is 0
    maps = quantized.detach().cpu().numpy()
    largest = np.full((len(maps), len(taus)), np.nan)
    every = np.full((len(maps), len(taus)), np.nan)
    for i, (q, gt) in enumerate(zip(maps, gt_boxes)):
        gt = gt.detach().cpu().numpy().astype(np.int64).reshape(-1, 4)
        if len(gt) == 0:
            continue
        values = np.unique(q)
        # pixels > level  <=>  pixels >= the first present value above level
        keys = np.searchsorted(values, levels, side="right")
        unique_keys, tau_to_key = np.unique(keys, return_inverse=True)
        chunks, biggest = [], []
        for key in unique_keys:
            if key >= len(values):
                boxes, big = np.zeros((1, 4), dtype=np.int64), 0
            else:
                boxes, big = _contour_boxes(((q >= values[key]) * np.uint8(255)).astype(np.uint8))
            chunks.append(boxes)
            biggest.append(big)
        counts = np.array([len(c) for c in chunks])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        ious = _iou_matrix(np.concatenate(chunks), gt).max(1)  # one IoU call per image
        best_largest = ious[starts + np.array(biggest)]
        best_every = np.maximum.reduceat(ious, starts)
        largest[i], every[i] = best_largest[tau_to_key], best_every[tau_to_key]
    return torch.from_numpy(largest), torch.from_numpy(every)


class MaxBoxAccumulator:
    """Dataset state of MaxBoxAcc: correct counts [n_iou, n_tau] int64 and the image count.

    ``update(best_iou [B, T])`` counts images whose best IoU >= each IoU threshold at each tau;
    ``accuracies() -> [n_iou, n_tau]`` in percent; ``compute()`` the max over tau, its tau.
    """

    def __init__(self, taus: np.ndarray, iou_thresholds: Sequence[float]):
        self.taus = np.asarray(taus, dtype=np.float64)
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.reset()

    def reset(self) -> None:
        self.correct = torch.zeros(len(self.iou_thresholds), len(self.taus), dtype=torch.int64, device="cpu")
        self.count = 0

    def update(self, best_iou: Tensor) -> None:
        best_iou = best_iou.detach().double().cpu()
        valid = ~torch.isnan(best_iou).any(1)
        best_iou = best_iou[valid]
        thresholds = torch.tensor(self.iou_thresholds, dtype=torch.float64, device="cpu")
        self.correct += (best_iou[None] >= thresholds[:, None, None]).sum(1)
        self.count += int(valid.sum())

    def accuracies(self) -> np.ndarray:
        return self.correct.numpy() * 100.0 / float(self.count)

    def compute(self) -> Tuple[np.ndarray, np.ndarray]:
        """(max accuracy per IoU threshold [n_iou] in percent, best tau per IoU threshold)."""
        if self.count == 0:
            nan = np.full(len(self.iou_thresholds), np.nan)
            return nan, nan
        acc = self.accuracies()
        best = acc.argmax(1)
        return acc.max(1), self.taus[best]


def _iou_tag(threshold: float) -> str:
    return f"iou{int(round(threshold * 100))}"


@register_metric("wsoleval")
class WsolEvalLocalization(MethodwiseMetric):
    """MaxBoxAcc and MaxBoxAccV2 with wsolevaluation's exact conventions (preset ``wsoleval``).

    Dataset scores: ``maxboxacc`` (largest contour, IoU >= ``iou_threshold``) and its
    ``maxboxacc_tau``; ``maxboxacc_v2`` (mean over ``v2_iou_thresholds`` of the max over tau,
    all contours) and per IoU threshold ``maxboxacc_v2_iou30`` ... with ``..._tau``. Per-image
    score ``oracle_iou``: the best IoU over all taus and contours (an upper bound, for
    diagnostics). ``frame``: "input" (the map's own size, as wsolevaluation's 224 x 224 frame;
    ground-truth boxes are the original boxes scaled with truncation) or "original" (maps
    resized to each image's original size, original boxes). ``resize_to``: square side of the
    evaluation frame in "input" mode (None: the map's size).
    """

    name = "wsoleval"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"wsoleval": {"tau_step": 0.001, "iou_threshold": 0.5, "v2_iou_thresholds": V2_IOU_THRESHOLDS,
                            "frame": "input", "resize_to": None}}
    table_kinds = ("tau_curves",)

    def __init__(
        self,
        tau_step: float = 0.001,
        iou_threshold: float = 0.5,
        v2_iou_thresholds: Sequence[float] = V2_IOU_THRESHOLDS,
        frame: str = "input",
        resize_to: Optional[int] = None,
    ):
        super().__init__()
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}; got {frame!r}")
        self.tau_step, self.iou_threshold = float(tau_step), float(iou_threshold)
        self.v2_iou_thresholds = tuple(float(t) for t in v2_iou_thresholds)
        if not self.v2_iou_thresholds:
            raise ValueError("v2_iou_thresholds must not be empty")
        self.frame, self.resize_to = frame, resize_to
        self.taus = tau_grid(self.tau_step)
        tags = [_iou_tag(t) for t in self.v2_iou_thresholds]
        self.scores = (
            ScoreInfo("oracle_iou", True, "localization"),
            ScoreInfo("maxboxacc", True, "localization", "dataset"),
            ScoreInfo("maxboxacc_tau", True, "parameter", "dataset"),
            ScoreInfo("maxboxacc_v2", True, "localization", "dataset"),
            *[ScoreInfo(f"maxboxacc_v2_{t}", True, "localization", "dataset") for t in tags],
            *[ScoreInfo(f"maxboxacc_v2_{t}_tau", True, "parameter", "dataset") for t in tags],
        )

    def new_state(self) -> Dict[str, "MaxBoxAccumulator"]:
        return {"v1": MaxBoxAccumulator(self.taus, (self.iou_threshold,)),
                "v2": MaxBoxAccumulator(self.taus, self.v2_iou_thresholds)}

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "resize": "cv2_inter_cubic",
            "frame": self.frame,
            "resize_to": self.resize_to,
            "normalize": "per_image_minmax_float32_constant_or_nan_to_zero",
            "quantize": "uint8_trunc_x255",
            "threshold_rule": "strictly_greater_than_int_tau_x255",
            "tau_grid": f"arange(0, 1, {self.tau_step})",
            "tau_step": self.tau_step,
            "contours": "cv2_RETR_TREE_CHAIN_APPROX_SIMPLE",
            "box": "boundingRect_x1_eq_x_plus_w_clipped_to_W_minus_1",
            "empty_mask_box": [0, 0, 0, 0],
            "inclusive_iou": True,
            "gt_boxes": "original_scaled_truncated" if self.frame == "input" else "original",
            "maxboxacc": {"component": "largest_contour_area", "iou_threshold": self.iou_threshold},
            "maxboxacc_v2": {"component": "all_contours", "iou_thresholds": list(self.v2_iou_thresholds),
                             "tau": "best_per_iou_threshold"},
        }

    def prepare(self, explained: MethodBatch) -> Tuple[Any, List[Tensor]]:
        """(uint8 maps: a [B, H, W] tensor, or B tensors [h_i, w_i] in the original frame;
        ground-truth boxes per image in the same frame)."""
        batch = explained.batch
        if self.frame == "input":
            size = explained.heatmaps.shape[-2:] if self.resize_to is None else (self.resize_to, self.resize_to)
            size = (int(size[0]), int(size[1]))
            q = quantize(wsol_scoremaps(explained.heatmaps, size))
            gt = [scale_gt(b, s, size) for b, s in zip(batch.orig_boxes, batch.orig_sizes)]
            return q, gt
        maps = [quantize(wsol_scoremaps(m[None], tuple(int(v) for v in s)))[0]
                for m, s in zip(explained.heatmaps, batch.orig_sizes)]
        return maps, [b.double().trunc() for b in batch.orig_boxes]

    def best_ious(self, explained: MethodBatch) -> Tuple[Tensor, Tensor]:
        q, gt = self.prepare(explained)
        if isinstance(q, Tensor):
            return wsol_best_ious(q, gt, self.taus)
        pairs = [wsol_best_ious(m[None], [g], self.taus) for m, g in zip(q, gt)]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        largest, every = self.best_ious(explained)
        state = self.state(explained.method)
        state["v1"].update(largest)
        state["v2"].update(every)
        return {"oracle_iou": every.amax(1).float().to(explained.heatmaps.device)}

    def compute_state(self, state: Dict[str, "MaxBoxAccumulator"]) -> Dict[str, float]:
        acc1, tau1 = state["v1"].compute()
        acc2, tau2 = state["v2"].compute()
        out = {"maxboxacc": float(acc1[0]), "maxboxacc_tau": float(tau1[0]),
               "maxboxacc_v2": float(np.average(acc2))}
        for threshold, acc, tau in zip(self.v2_iou_thresholds, acc2, tau2):
            out[f"maxboxacc_v2_{_iou_tag(threshold)}"] = float(acc)
            out[f"maxboxacc_v2_{_iou_tag(threshold)}_tau"] = float(tau)
        return out

    def tables(self) -> Dict[str, Any]:
        """``tau_curves``: box accuracy (percent) at every tau, per method, variant and IoU
        threshold (columns method, variant, iou_threshold, tau, box_accuracy)."""
        import pandas as pd

        frames = []
        for method, state in self._states.items():
            if state["v1"].count == 0:
                continue
            for variant, acc in (("maxboxacc", state["v1"]), ("maxboxacc_v2", state["v2"])):
                values = acc.accuracies()
                for k, threshold in enumerate(acc.iou_thresholds):
                    frames.append(pd.DataFrame({"method": method, "variant": variant, "iou_threshold": threshold,
                                                "tau": acc.taus, "box_accuracy": values[k]}))
        return {"tau_curves": pd.concat(frames, ignore_index=True)} if frames else {}


def scale_gt(boxes: Tensor, orig_size: Tuple[int, int], size: Tuple[int, int]) -> Tensor:
    """Original boxes [N, 4] -> the evaluation frame with wsolevaluation's ``resize_bbox``
    (``int(x * new_w / old_w)``), float64 [N, 4]."""
    from salbench.metrics.localization import scale_boxes

    return scale_boxes(boxes.reshape(-1, 4), (int(orig_size[0]), int(orig_size[1])), size, truncate=True)


# --------------------------------------------------------------------------- PxAP
def pxap_edges(taus: np.ndarray) -> np.ndarray:
    """Bin edges ``[taus..., 1, 2, 3]`` (wsolevaluation's MaskEvaluator)."""
    return np.append(np.asarray(taus, dtype=np.float64), [1.0, 2.0, 3.0])


def pxap_histograms(scoremaps: Tensor, masks: Tensor, ignore: Optional[Tensor], taus: np.ndarray) -> Tuple[Tensor, Tensor]:
    """Per-image score histograms over foreground and background pixels.

    scoremaps [B, H, W] float in [0, 1]; masks [B, H, W] bool (foreground); ignore [B, H, W]
    bool or None (pixels left out unless foreground). Returns ``(fg [B, n_bins], bg [B, n_bins])``
    float64 counts with numpy.histogram's rule (edges[i] <= v < edges[i+1], last bin closed),
    n_bins = len(taus) + 2. Fully batched on the maps' device.
    """
    edges = torch.from_numpy(pxap_edges(taus)).to(scoremaps.device)
    n_bins = len(edges) - 1
    values = scoremaps.double()
    index = torch.bucketize(values, edges, right=True) - 1
    index = torch.where(values == edges[-1], torch.full_like(index, n_bins - 1), index)  # last bin closed
    inside = (index >= 0) & (index < n_bins)
    masks = masks.bool()
    background = ~masks
    if ignore is not None:
        background &= ~(ignore.bool() & ~masks)
    batch = scoremaps.shape[0]
    key = (index.clamp(0, n_bins - 1) + torch.arange(batch, device=values.device)[:, None, None] * n_bins).flatten()
    # integer counts (pixels left out go to one extra bin): exact, and allowed under
    # torch.use_deterministic_algorithms on CUDA, which rejects bincount with weights
    spare = batch * n_bins
    fg = torch.bincount(torch.where((masks & inside).flatten(), key, spare), minlength=spare + 1)[:spare]
    bg = torch.bincount(torch.where((background & inside).flatten(), key, spare), minlength=spare + 1)[:spare]
    return fg.double().view(batch, n_bins), bg.double().view(batch, n_bins)


def pxap_from_histograms(fg: np.ndarray, bg: np.ndarray) -> float:
    """AP (percent) from foreground / background histograms [n_bins] (ascending bins):
    thresholds in decreasing order, ``100 * sum_i P_i (R_i - R_{i-1})`` over thresholds with
    a positive prediction. NaN when there is no foreground pixel or no positive prediction.
    The final sum is numpy's (pairwise), as in the published code."""
    fg, bg = np.asarray(fg, dtype=np.float64), np.asarray(bg, dtype=np.float64)
    tp = fg[::-1].cumsum()
    fp = bg[::-1].cumsum()
    fn = fg.sum() - tp
    if (tp + fn <= 0).all() or (tp + fp <= 0).all():
        return float("nan")
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


class PxAPAccumulator:
    """Dataset state of PxAP: summed foreground / background histograms."""

    def __init__(self, taus: np.ndarray):
        self.taus = np.asarray(taus, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.fg = np.zeros(len(self.taus) + 2)
        self.bg = np.zeros(len(self.taus) + 2)

    def update(self, fg: Tensor, bg: Tensor) -> None:
        self.fg += fg.sum(0).cpu().numpy()
        self.bg += bg.sum(0).cpu().numpy()

    def compute(self) -> float:
        return pxap_from_histograms(self.fg, self.bg)


@register_metric("pxap")
class PixelAveragePrecision(MethodwiseMetric):
    """PxAP (wsolevaluation, preset ``wsoleval``) for datasets with masks.

    Dataset score ``pxap`` (percent); per-image ``pxap_image``: the same AP from the image's
    own histograms (NaN without foreground). Maps: per-image min-max (constant/NaN -> zeros)
    at the masks' (input) resolution; ``ignore`` pixels that are not foreground are left out.
    """

    name = "pxap"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"wsoleval": {"tau_step": 0.001}}
    scores = (
        ScoreInfo("pxap_image", True, "localization"),
        ScoreInfo("pxap", True, "localization", "dataset"),
    )

    def __init__(self, tau_step: float = 0.001):
        super().__init__()
        self.tau_step = float(tau_step)
        self.taus = tau_grid(self.tau_step)

    def new_state(self) -> "PxAPAccumulator":
        return PxAPAccumulator(self.taus)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "resize": "cv2_inter_cubic_to_mask_size",
            "normalize": "per_image_minmax_float32_constant_or_nan_to_zero",
            "tau_grid": f"arange(0, 1, {self.tau_step})",
            "tau_step": self.tau_step,
            "bins": "[taus..., 1, 2, 3], numpy.histogram rule",
            "ignore": "ignore_region_minus_foreground_left_out",
            "ap": "100 * sum_i P_i (R_i - R_{i-1}), thresholds descending, skip no-prediction",
        }

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        batch = explained.batch
        if batch.masks is None:
            raise ValueError("pxap needs a dataset with masks (batch.masks is None)")
        scoremaps = wsol_scoremaps(explained.heatmaps, tuple(batch.masks.shape[-2:]))
        fg, bg = pxap_histograms(scoremaps, batch.masks, batch.ignore, self.taus)
        self.state(explained.method).update(fg, bg)
        per_image = [pxap_from_histograms(f, b) for f, b in zip(fg.cpu().numpy(), bg.cpu().numpy())]
        return {"pxap_image": torch.tensor(per_image, dtype=torch.float32, device=explained.heatmaps.device)}

    def compute_state(self, state: "PxAPAccumulator") -> Dict[str, float]:
        return {"pxap": state.compute()}
