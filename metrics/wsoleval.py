"""wsolevaluation (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization
Methods Right"): MaxBoxAcc, MaxBoxAccV2 and PxAP, preset ``wsoleval``.

Conventions reproduced from the authors' released code (github.com/clovaai/wsolevaluation,
``inference.py`` / ``evaluation.py``):

* the map of the ground-truth class is converted to float64 (their ``t2n`` casts to
  ``np.float``), resized to the evaluation frame with bicubic interpolation (cv2
  ``INTER_CUBIC`` on the float64 map; skipped when already at that size, where cv2 copies), then
  min-max normalized per image in float64; a constant map or one holding NaN becomes all zeros;
* boxes: the map is quantized ``uint8(map * 255)`` (float64 product, truncation); at threshold ``tau`` the
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
* PxAP: histograms of the normalized float64 map's values over foreground and background pixels
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

Float64 matters: a float32 map whose value sits on a uint8 level or a PxAP bin edge in float64
lands one level / bin lower in float32 (constructed cases: MaxBoxAcc 100 vs 50, PxAP 83.3 vs
100; tests/test_localization_wsoleval.py).

Beyond the per-dataset numbers (the full protocol):

* ``tau``: evaluate at one fixed tau (preset ``cvpr16``: MaxBoxAccV1 at 0.2, the CAM paper's
  threshold under wsolevaluation's box rule, pixels > ``int(0.2 * 255)``);
* ``tau_from=RUN_DIR``: the taus chosen on another split (their train-fullsup / validation
  protocol): read from the finished run's ``scores.parquet`` (``maxboxacc_tau`` and
  ``maxboxacc_v2_iouXX_tau`` of the same method and metric) and applied here;
* with a fixed tau (either way), per image ``gt_known_loc`` (the largest contour's box at the
  V1 tau has IoU >= ``iou_threshold``) and ``top1_loc`` (and the top-1 prediction is the label);
  always the dataset score ``maxboxacc_top1``: top-1 localization (percent) at the V1 tau;
* a bootstrap interval for the dataset scores: the ``tau_images`` table holds, per image, the
  correctness at every uint8 level (the box depends on tau only through ``int(tau * 255)``) for
  each IoU threshold, the top-1 flag and, for ``pxap``, the image's histograms;
  :func:`dataset_intervals` resamples images from it (the report's bootstrap protocol, paired
  with the per-image scores) and recomputes MaxBoxAcc (max over tau per resample), MaxBoxAccV2
  and PxAP.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo, image_positions
from salbench.metrics.localization import FRAMES

V2_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
LEVELS = 255  # the uint8 thresholds int(tau * 255) for tau in [0, 1): 0..254


def tau_grid(step: float = 0.001) -> np.ndarray:
    """The score-map thresholds ``np.arange(0, 1, step)`` (float64), as wsolevaluation builds them."""
    if not 0.0 < step < 1.0:
        raise ValueError(f"tau step must be in (0, 1); got {step}")
    return np.arange(0, 1, step)


def cubic_resize(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """maps [B, h, w] -> [B, H, W] float64 with cv2 ``INTER_CUBIC`` on the float64 maps
    (bit-exact with wsolevaluation; torch's bicubic differs by ~1e-7). CPU round-trip; no-op
    (a float64 copy) when at size, as cv2 copies."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.double()
    height, width = size
    resized = [cv2.resize(m, (width, height), interpolation=cv2.INTER_CUBIC)
               for m in maps.detach().double().cpu().numpy()]
    return torch.from_numpy(np.stack(resized)).to(maps.device)


def minmax_float64(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> per-image ``(m - min) / (max - min)`` in float64 (wsolevaluation's
    ``normalize_scoremap`` on ``np.float`` maps); a constant map or one holding NaN becomes zeros."""
    maps = maps.double()
    flat = maps.flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    bad = torch.isnan(flat).any(1)[:, None, None] | (low == high)
    return torch.where(bad, torch.zeros_like(maps), (maps - low) / torch.where(bad, torch.ones_like(high), high - low))


def wsol_scoremaps(maps: Tensor, size: Optional[Tuple[int, int]] = None) -> Tensor:
    """maps [B, h, w] -> score maps [B, H, W] float64 in [0, 1]: bicubic resize to ``size``
    (default: unchanged) then per-image min-max (constant / NaN map -> zeros), all in float64."""
    if size is not None:
        maps = cubic_resize(maps, size)
    return minmax_float64(maps)


def quantize(scoremaps: Tensor) -> Tensor:
    """score maps [B, H, W] in [0, 1] -> uint8 ``(m * 255)`` truncated, the product in float64."""
    return (scoremaps.double() * 255).to(torch.uint8)


def tau_levels(taus: np.ndarray) -> np.ndarray:
    """taus [T] -> the uint8 thresholds ``int(tau * 255)`` [T] int64 (pixels strictly above are
    kept; wsolevaluation's ``int(threshold * np.max(scoremap_image))`` with max 255, a zero map
    keeping nothing at any level)."""
    return np.floor(np.asarray(taus, dtype=np.float64) * 255.0).astype(np.int64)


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
    return _best_ious(quantized, gt_boxes, tau_levels(taus))


def wsol_level_ious(quantized: Tensor, gt_boxes: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """:func:`wsol_best_ious` at every uint8 threshold 0..254: ``(largest [B, 255], every
    [B, 255])`` float64; the value at tau is column ``int(tau * 255)``."""
    return _best_ious(quantized, gt_boxes, np.arange(LEVELS, dtype=np.int64))


def _best_ious(quantized: Tensor, gt_boxes: Sequence[Tensor], levels: np.ndarray) -> Tuple[Tensor, Tensor]:
    """(largest [B, L], every [B, L]) float64 best IoUs at the uint8 thresholds ``levels`` [L]."""
    maps = quantized.detach().cpu().numpy()
    largest = np.full((len(maps), len(levels)), np.nan)
    every = np.full((len(maps), len(levels)), np.nan)
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


def read_run_taus(run_dir: str, metric_name: str = "wsoleval") -> Dict[str, Dict[str, float]]:
    """The taus a finished run chose: ``{method: {score: tau}}`` from its ``scores.parquet``
    dataset rows ``maxboxacc_tau`` / ``maxboxacc_v2_iouXX_tau`` of the metric registered as
    ``metric_name`` (the run's config key may differ: run.json's declarations say which). A
    missing run, an unfinished run, or a run without such rows is a clear error."""
    import pandas as pd

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"wsoleval tau_from: no run directory {run}")
    info_path = run / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info and info.get("status") != "completed":
        raise ValueError(f"wsoleval tau_from: the run in {run} is not finished (status {info.get('status')!r})")
    scores_path = run / "scores.parquet"
    if not scores_path.exists():
        raise FileNotFoundError(f"wsoleval tau_from: {scores_path} not found (is {run} a salbench run directory?)")
    frame = pd.read_parquet(scores_path, columns=["method", "metric", "score", "value", "scope"])
    declared = (info.get("components") or {}).get("metrics") or {}
    keys = sorted(key for key, spec in declared.items() if spec.get("name") == metric_name) or [metric_name]
    rows = frame[(frame["scope"] == "dataset") & frame["metric"].isin(keys) & frame["score"].str.startswith("maxboxacc")
                 & frame["score"].str.endswith("_tau")]
    found = sorted(set(rows["metric"]))
    if not found:
        raise ValueError(f"wsoleval tau_from: {scores_path} holds no {metric_name} taus (maxboxacc_tau rows); "
                         f"metrics there: {', '.join(sorted(set(frame['metric']))) or 'none'}")
    if len(found) > 1:
        raise ValueError(f"wsoleval tau_from: {scores_path} holds taus of several {metric_name} metrics "
                         f"({', '.join(found)}); keep one in the source run")
    out: Dict[str, Dict[str, float]] = {}
    for method, score, value in zip(rows["method"], rows["score"], rows["value"]):
        out.setdefault(str(method), {})[str(score)] = float(value)
    return out


@register_metric("wsoleval")
class WsolEvalLocalization(MethodwiseMetric):
    """MaxBoxAcc and MaxBoxAccV2 with wsolevaluation's exact conventions (preset ``wsoleval``),
    the full protocol around them (module docstring: fixed ``tau``, ``tau_from``, top-1 and
    GT-known localization at the chosen tau, the per-image table for bootstrap intervals).

    Dataset scores: ``maxboxacc`` (largest contour, IoU >= ``iou_threshold``) and its
    ``maxboxacc_tau``; ``maxboxacc_top1`` (top-1 localization in percent at that tau: box right
    and top-1 prediction right); ``maxboxacc_v2`` (mean over ``v2_iou_thresholds`` of the max over
    tau, all contours) and per IoU threshold ``maxboxacc_v2_iou30`` ... with ``..._tau``. With a
    fixed tau (``tau`` or ``tau_from``) the accuracies are those at the applied taus, and per
    image ``gt_known_loc`` / ``top1_loc`` (1/0) come too. Per-image ``oracle_iou``: the best IoU
    over all taus and contours (an upper bound, for diagnostics). ``frame``: "input" (the map's
    own size, as wsolevaluation's 224 x 224 frame; ground-truth boxes are the original boxes
    scaled with truncation) or "original" (maps resized to each image's original size, original
    boxes). ``resize_to``: square side of the evaluation frame in "input" mode (None: the map's
    size). ``per_image_table``: write the ``tau_images`` table (the bootstrap's input, 32 bytes
    per image and IoU threshold).
    """

    name = "wsoleval"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"wsoleval": {"tau_step": 0.001, "iou_threshold": 0.5, "v2_iou_thresholds": V2_IOU_THRESHOLDS,
                            "frame": "input", "resize_to": None, "tau": None},
               "cvpr16": {"tau": 0.2, "iou_threshold": 0.5, "frame": "input", "resize_to": None}}
    table_kinds = ("tau_curves", "tau_images")

    def __init__(
        self,
        tau_step: float = 0.001,
        iou_threshold: float = 0.5,
        v2_iou_thresholds: Sequence[float] = V2_IOU_THRESHOLDS,
        frame: str = "input",
        resize_to: Optional[int] = None,
        tau: Optional[float] = None,
        tau_from: Optional[str] = None,
        per_image_table: bool = True,
    ):
        super().__init__()
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}; got {frame!r}")
        self.tau_step, self.iou_threshold = float(tau_step), float(iou_threshold)
        self.v2_iou_thresholds = tuple(float(t) for t in v2_iou_thresholds)
        if not self.v2_iou_thresholds:
            raise ValueError("v2_iou_thresholds must not be empty")
        if tau is not None and tau_from is not None:
            raise ValueError("set at most one of tau (a fixed tau) and tau_from (the taus of another run)")
        if tau is not None and not 0.0 <= float(tau) < 1.0:
            raise ValueError(f"tau must be in [0, 1); got {tau}")
        self.frame, self.resize_to = frame, resize_to
        self.tau = None if tau is None else float(tau)
        self.tau_from = None if tau_from is None else str(tau_from)
        self.per_image_table = bool(per_image_table)
        self.taus = tau_grid(self.tau_step)
        self.source_taus = read_run_taus(self.tau_from, self.name) if self.tau_from is not None else None
        tags = [_iou_tag(t) for t in self.v2_iou_thresholds]
        fixed = self.tau is not None or self.tau_from is not None
        self.scores = (
            ScoreInfo("oracle_iou", True, "localization"),
            *([ScoreInfo("gt_known_loc", True, "localization"), ScoreInfo("top1_loc", True, "localization")]
              if fixed else []),
            ScoreInfo("maxboxacc", True, "localization", "dataset"),
            ScoreInfo("maxboxacc_tau", True, "parameter", "dataset"),
            ScoreInfo("maxboxacc_top1", True, "localization", "dataset"),
            ScoreInfo("maxboxacc_v2", True, "localization", "dataset"),
            *[ScoreInfo(f"maxboxacc_v2_{t}", True, "localization", "dataset") for t in tags],
            *[ScoreInfo(f"maxboxacc_v2_{t}_tau", True, "parameter", "dataset") for t in tags],
        )

    def new_state(self) -> Dict[str, Any]:
        levels = np.arange(LEVELS)
        return {"v1": MaxBoxAccumulator(levels, (self.iou_threshold,)),
                "v1_top1": MaxBoxAccumulator(levels, (self.iou_threshold,)),
                "v2": MaxBoxAccumulator(levels, self.v2_iou_thresholds), "rows": []}

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "precision": "float64 (resize, min-max, uint8 quantization)",
            "resize": "cv2_inter_cubic",
            "frame": self.frame,
            "resize_to": self.resize_to,
            "normalize": "per_image_minmax_float64_constant_or_nan_to_zero",
            "quantize": "uint8_trunc_x255",
            "threshold_rule": "strictly_greater_than_int_tau_x255",
            "tau_grid": f"arange(0, 1, {self.tau_step})",
            "tau_step": self.tau_step,
            "tau": self.tau if self.tau is not None else ("from_run" if self.tau_from else "best_on_this_split"),
            "tau_from": self.tau_from,
            "source_taus": self.source_taus,
            "contours": "cv2_RETR_TREE_CHAIN_APPROX_SIMPLE",
            "box": "boundingRect_x1_eq_x_plus_w_clipped_to_W_minus_1",
            "empty_mask_box": [0, 0, 0, 0],
            "inclusive_iou": True,
            "gt_boxes": "original_scaled_truncated" if self.frame == "input" else "original",
            "maxboxacc": {"component": "largest_contour_area", "iou_threshold": self.iou_threshold},
            "maxboxacc_top1": "box right at the maxboxacc tau and top-1 prediction == label",
            "maxboxacc_v2": {"component": "all_contours", "iou_thresholds": list(self.v2_iou_thresholds),
                             "tau": "best_per_iou_threshold"},
        }

    def applied_taus(self, method: str) -> Optional[Tuple[float, List[float]]]:
        """(V1 tau, [V2 tau per IoU threshold]) when fixed, else None (best tau of this split)."""
        if self.tau is not None:
            return self.tau, [self.tau] * len(self.v2_iou_thresholds)
        if self.source_taus is None:
            return None
        if method not in self.source_taus:
            raise ValueError(f"wsoleval tau_from: the run {self.tau_from} has no taus of method {method!r}; "
                             f"methods there: {', '.join(sorted(self.source_taus))}")
        taus = self.source_taus[method]
        wanted = ["maxboxacc_tau"] + [f"maxboxacc_v2_{_iou_tag(t)}_tau" for t in self.v2_iou_thresholds]
        missing = [w for w in wanted if w not in taus]
        if missing:
            raise ValueError(f"wsoleval tau_from: the run {self.tau_from} has no {', '.join(missing)} for method "
                             f"{method!r} (its IoU thresholds differ?); it has {', '.join(sorted(taus))}")
        return taus["maxboxacc_tau"], [taus[w] for w in wanted[1:]]

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

    def level_ious(self, explained: MethodBatch) -> Tuple[Tensor, Tensor]:
        """(largest [B, 255], every [B, 255]) best IoUs at every uint8 threshold."""
        q, gt = self.prepare(explained)
        if isinstance(q, Tensor):
            return wsol_level_ious(q, gt)
        pairs = [wsol_level_ious(m[None], [g]) for m, g in zip(q, gt)]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def best_ious(self, explained: MethodBatch) -> Tuple[Tensor, Tensor]:
        """(largest [B, T], every [B, T]) best IoUs at the taus of the grid."""
        largest, every = self.level_ious(explained)
        levels = torch.from_numpy(tau_levels(self.taus))
        return largest[:, levels], every[:, levels]

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        largest, every = self.level_ious(explained)  # [B, 255] float64 on the CPU
        device = explained.heatmaps.device
        top1 = (explained.logits.argmax(1) == explained.batch.labels.to(explained.logits.device)).cpu()
        state = self.state(explained.method)
        state["v1"].update(largest)
        state["v2"].update(every)
        state["v1_top1"].update(torch.where(top1[:, None] | torch.isnan(largest), largest, -1.0))
        levels = torch.from_numpy(tau_levels(self.taus))
        out = {"oracle_iou": every[:, levels].amax(1).float().to(device)}
        applied = self.applied_taus(explained.method)
        if applied is not None:
            column = int(tau_levels(np.array([applied[0]]))[0])
            at_tau = largest[:, column]
            correct = torch.where(torch.isnan(at_tau), at_tau, (at_tau >= self.iou_threshold).double())
            out["gt_known_loc"] = correct.float().to(device)
            out["top1_loc"] = (correct * top1.double()).float().to(device)
        if self.per_image_table:
            self._keep_rows(explained, state, largest, every, top1, applied)
        return out

    def _keep_rows(self, explained: MethodBatch, state: Dict[str, Any], largest: Tensor, every: Tensor, top1: Tensor,
                   applied: Optional[Tuple[float, List[float]]]) -> None:
        ids = list(explained.batch.image_ids)
        positions = image_positions(explained).tolist()
        variants = [("maxboxacc", self.iou_threshold, largest, None if applied is None else applied[0])]
        variants += [("maxboxacc_v2", t, every, None if applied is None else applied[1][k])
                     for k, t in enumerate(self.v2_iou_thresholds)]
        for variant, threshold, ious, tau in variants:
            valid = ~torch.isnan(ious).any(1)
            packed = np.packbits((ious >= threshold).numpy(), axis=1)
            for i in torch.nonzero(valid).flatten().tolist():
                state["rows"].append({"image_id": ids[i], "image_index": positions[i], "variant": variant,
                                      "iou_threshold": threshold, "tau": np.nan if tau is None else tau,
                                      "tau_step": self.tau_step, "top1": bool(top1[i]),
                                      "correct": packed[i].tobytes(), "foreground": None, "background": None})

    def compute_state(self, state: Dict[str, Any]) -> Dict[str, float]:
        if state["v1"].count == 0:
            return {}
        method = state.get("method")
        applied = self.applied_taus(method) if method is not None else None
        levels = tau_levels(self.taus)
        acc1 = state["v1"].accuracies()[0]  # [255]
        top1 = state["v1_top1"].accuracies()[0]
        acc2 = state["v2"].accuracies()  # [n_iou, 255]
        if applied is None:
            curve1 = acc1[levels]
            best1 = int(curve1.argmax())
            v1, tau1, top = float(curve1[best1]), float(self.taus[best1]), float(top1[levels][best1])
            curves2 = acc2[:, levels]
            best2 = curves2.argmax(1)
            v2 = [float(curves2[k, b]) for k, b in enumerate(best2)]
            tau2 = [float(self.taus[b]) for b in best2]
        else:
            column = lambda tau: int(tau_levels(np.array([tau]))[0])  # noqa: E731
            tau1, tau2 = float(applied[0]), [float(t) for t in applied[1]]
            v1, top = float(acc1[column(tau1)]), float(top1[column(tau1)])
            v2 = [float(acc2[k, column(t)]) for k, t in enumerate(tau2)]
        out = {"maxboxacc": v1, "maxboxacc_tau": tau1, "maxboxacc_top1": top, "maxboxacc_v2": float(np.average(v2))}
        for threshold, acc, tau in zip(self.v2_iou_thresholds, v2, tau2):
            out[f"maxboxacc_v2_{_iou_tag(threshold)}"] = acc
            out[f"maxboxacc_v2_{_iou_tag(threshold)}_tau"] = tau
        return out

    def state(self, method: str) -> Any:
        state = super().state(method)
        state["method"] = method
        return state

    def tables(self) -> Dict[str, Any]:
        """``tau_curves``: box accuracy (percent) at every tau, per method, variant and IoU
        threshold (columns method, variant, iou_threshold, tau, box_accuracy); ``tau_images``:
        per (method, image, variant, IoU threshold) the correctness at the uint8 levels 0..254
        (``correct``: ``numpy.packbits`` bytes), the applied ``tau`` (NaN: best on the split),
        ``tau_step`` and the ``top1`` flag (:func:`dataset_intervals` reads it)."""
        import pandas as pd

        frames, images = [], []
        levels = tau_levels(self.taus)
        for method, state in self._states.items():
            if state["v1"].count == 0:
                continue
            for variant, acc in (("maxboxacc", state["v1"]), ("maxboxacc_v2", state["v2"])):
                values = acc.accuracies()[:, levels]
                for k, threshold in enumerate(acc.iou_thresholds):
                    frames.append(pd.DataFrame({"method": method, "variant": variant, "iou_threshold": threshold,
                                                "tau": self.taus, "box_accuracy": values[k]}))
            if state["rows"]:
                images.append(pd.DataFrame(state["rows"]).assign(method=method))
        out = {"tau_curves": pd.concat(frames, ignore_index=True)} if frames else {}
        if images:
            out["tau_images"] = _image_table(images)
        return out


IMAGE_COLUMNS = ["method", "image_id", "image_index", "variant", "iou_threshold", "tau", "tau_step", "top1", "correct",
                 "foreground", "background"]


def _image_table(frames: List[Any]) -> Any:
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    return table[IMAGE_COLUMNS]


def _iou_tag(threshold: float) -> str:
    return f"iou{int(round(threshold * 100))}"


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
    own histograms (NaN without foreground). Maps: float64, per-image min-max (constant/NaN ->
    zeros) at the masks' (input) resolution; ``ignore`` pixels that are not foreground are left
    out. ``per_image_table``: keep each image's histograms in the ``tau_images`` table (the
    bootstrap interval's input, :func:`dataset_intervals`; 16 bytes per bin and image).
    """

    name = "pxap"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"wsoleval": {"tau_step": 0.001}}
    table_kinds = ("tau_images",)
    scores = (
        ScoreInfo("pxap_image", True, "localization"),
        ScoreInfo("pxap", True, "localization", "dataset"),
    )

    def __init__(self, tau_step: float = 0.001, per_image_table: bool = True):
        super().__init__()
        self.tau_step = float(tau_step)
        self.taus = tau_grid(self.tau_step)
        self.per_image_table = bool(per_image_table)
        self._rows: Dict[str, List[Dict[str, Any]]] = {}

    def new_state(self) -> "PxAPAccumulator":
        return PxAPAccumulator(self.taus)

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "ground_truth",
            "precision": "float64 (resize, min-max, histogram)",
            "resize": "cv2_inter_cubic_to_mask_size",
            "normalize": "per_image_minmax_float64_constant_or_nan_to_zero",
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
        fg, bg = fg.cpu().numpy(), bg.cpu().numpy()
        if self.per_image_table:
            rows = self._rows.setdefault(explained.method, [])
            for image_id, position, f, b in zip(batch.image_ids, image_positions(explained).tolist(), fg, bg):
                rows.append({"image_id": image_id, "image_index": position, "variant": "pxap", "iou_threshold": np.nan,
                             "tau": np.nan, "tau_step": self.tau_step, "top1": None, "correct": None,
                             "foreground": f.astype(np.float64).tobytes(), "background": b.astype(np.float64).tobytes()})
        per_image = [pxap_from_histograms(f, b) for f, b in zip(fg, bg)]
        return {"pxap_image": torch.tensor(per_image, dtype=torch.float32, device=explained.heatmaps.device)}

    def compute_state(self, state: "PxAPAccumulator") -> Dict[str, float]:
        return {"pxap": state.compute()}

    def tables(self) -> Dict[str, Any]:
        """``tau_images``: per (method, image) the foreground / background histograms
        (``foreground`` / ``background``: float64 bytes, ``len(taus) + 2`` bins)."""
        import pandas as pd

        frames = [pd.DataFrame(rows).assign(method=method) for method, rows in self._rows.items() if rows]
        return {"tau_images": _image_table(frames)} if frames else {}


# --------------------------------------------------------------------------- bootstrap
def pxap_from_histogram_rows(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """:func:`pxap_from_histograms` of every row of fg, bg [R, n_bins] -> [R] (percent; NaN rows
    without foreground or prediction). Sums in row order (equal to the scalar version up to the
    last bits of numpy's pairwise sum)."""
    fg, bg = np.asarray(fg, dtype=np.float64), np.asarray(bg, dtype=np.float64)
    tp = fg[:, ::-1].cumsum(1)
    fp = bg[:, ::-1].cumsum(1)
    fn = fg.sum(1, keepdims=True) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        terms = np.where(((tp + fp) != 0)[:, 1:], precision[:, 1:] * np.diff(recall, axis=1), 0.0)
    undefined = ((tp + fn) <= 0).all(1) | ((tp + fp) <= 0).all(1)
    return np.where(undefined, np.nan, terms.sum(1) * 100)


class TauImages:
    """The ``tau_images`` rows of one (model, dataset, method, metric): the dataset scores as
    functions of per-image weights (a bootstrap resample is a vector of counts per image).

    Images are ordered by (``image_index``, ``image_id``), as the report orders per-image values,
    so the same resampled index draws pick the same images for every score."""

    def __init__(self, part: Any):
        part = part.sort_values(["image_index", "image_id"], kind="stable")
        images = list(dict.fromkeys(zip(part["image_index"], part["image_id"])))
        self.position = {key: i for i, key in enumerate(images)}
        self.n = len(images)
        self.boxes: Dict[Tuple[str, float], Dict[str, Any]] = {}
        self.histograms: Optional[Tuple[np.ndarray, np.ndarray]] = None
        index = [self.position[key] for key in zip(part["image_index"], part["image_id"])]
        part = part.assign(_row=index)
        for (variant, threshold), rows in part.groupby(["variant", "iou_threshold"], sort=False, dropna=False):
            order = rows["_row"].to_numpy()
            if variant == "pxap":
                fg = np.zeros((self.n, len(np.frombuffer(rows["foreground"].iloc[0], dtype=np.float64))))
                bg = np.zeros_like(fg)
                fg[order] = np.stack([np.frombuffer(b, dtype=np.float64) for b in rows["foreground"]])
                bg[order] = np.stack([np.frombuffer(b, dtype=np.float64) for b in rows["background"]])
                self.histograms = (fg, bg)
                continue
            correct = np.zeros((self.n, LEVELS), dtype=bool)
            bits = np.stack([np.frombuffer(b, dtype=np.uint8) for b in rows["correct"]])
            correct[order] = np.unpackbits(bits, axis=1, count=LEVELS).astype(bool)
            top1 = np.zeros(self.n, dtype=bool)
            top1[order] = rows["top1"].astype(bool).to_numpy()
            tau = float(rows["tau"].iloc[0])
            self.boxes[(str(variant), float(threshold))] = {
                "correct": correct, "top1": top1, "tau": tau, "levels": tau_levels(tau_grid(float(rows["tau_step"].iloc[0])))}

    def scores(self, weights: np.ndarray) -> Dict[str, np.ndarray]:
        """weights [R, n] (image counts of each resample) -> {score: [R]} (percent): maxboxacc
        and maxboxacc_top1 (at the best tau of each resample, or the applied tau), maxboxacc_v2
        and per IoU threshold, pxap."""
        weights = np.asarray(weights, dtype=np.float64)
        total = weights.sum(1, keepdims=True)
        out: Dict[str, np.ndarray] = {}
        v2 = []
        for (variant, threshold), part in self.boxes.items():
            accuracy = weights @ part["correct"] * 100.0 / total  # [R, 255]
            if np.isnan(part["tau"]):
                curve = accuracy[:, part["levels"]]
                best = curve.argmax(1)
                value = curve[np.arange(len(curve)), best]
                columns = part["levels"][best]
            else:
                columns = np.full(len(weights), int(tau_levels(np.array([part["tau"]]))[0]))
                value = accuracy[np.arange(len(accuracy)), columns]
            if variant == "maxboxacc":
                out["maxboxacc"] = value
                top1 = weights @ (part["correct"] & part["top1"][:, None]) * 100.0 / total
                out["maxboxacc_top1"] = top1[np.arange(len(top1)), columns]
            else:
                out[f"maxboxacc_v2_{_iou_tag(threshold)}"] = value
                v2.append(value)
        if v2:
            out["maxboxacc_v2"] = np.mean(np.stack(v2), axis=0)
        if self.histograms is not None:
            out["pxap"] = pxap_from_histogram_rows(weights @ self.histograms[0], weights @ self.histograms[1])
        return out


def bootstrap_weights(n: int, resamples: int, seed: int):
    """The report's bootstrap draws (:func:`salbench.reports.stats.bootstrap_means`: ``rng =
    default_rng(seed)``, blocks of ``rng.integers(0, n, size=(rows, n))``) as count matrices
    [rows, n], block by block."""
    from salbench.reports.stats import BLOCK_ELEMENTS

    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // n)
    left = resamples
    while left > 0:
        rows = min(block, left)
        index = rng.integers(0, n, size=(rows, n))
        keys = (np.arange(rows)[:, None] * n + index).ravel()
        yield np.bincount(keys, minlength=rows * n).reshape(rows, n).astype(np.float64)
        left -= rows


def dataset_intervals(table: Any, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Any:
    """Percentile-bootstrap intervals of the dataset-level scores from a ``tau_images`` table
    (one or several runs: shards pool their images): one row per (model, dataset, method,
    metric, score) with ``ci_low``, ``ci_high`` and ``n`` (images), resampling images with the
    report's draws (:func:`bootstrap_weights`), recomputing MaxBoxAcc (best tau per resample
    unless a tau was applied), top-1 localization, MaxBoxAccV2 and PxAP on each resample."""
    import pandas as pd

    columns = ["model", "dataset", "method", "metric", "score", "ci_low", "ci_high", "n"]
    if table is None or len(table) == 0:
        return pd.DataFrame(columns=columns)
    keys = [k for k in ("model", "dataset", "method", "metric") if k in table.columns]
    alpha = 1.0 - confidence
    rows = []
    for group, part in table.groupby(keys, sort=False, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        images = TauImages(part)
        if images.n < 2:
            continue
        samples: Dict[str, List[np.ndarray]] = {}
        for weights in bootstrap_weights(images.n, resamples, seed):
            for score, values in images.scores(weights).items():
                samples.setdefault(score, []).append(values)
        for score, values in samples.items():
            values = np.concatenate(values)
            values = values[np.isfinite(values)]
            low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2]) if len(values) else (np.nan, np.nan)
            rows.append({**dict(zip(keys, group)), "score": score, "ci_low": float(low), "ci_high": float(high),
                         "n": images.n})
    return pd.DataFrame(rows, columns=columns)
