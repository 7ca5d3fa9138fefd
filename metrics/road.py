"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods").

Removing pixels by a constant (deletion to 0, blur) leaves the *shape* of the removed set in the
image, and the model can read the class from that shape (the paper's "class information
leakage"); MoRF and LeRF then disagree on the ranking of methods. ROAD removes a pixel by *noisy
linear imputation* instead, which leaves little trace of the mask, and needs no retraining.

Noisy linear imputation of one image x [C, H, W] with removed set R (one mask for all channels):
every removed pixel i takes the weighted mean of its 8 neighbours,

    sum_{j in N(i)} w_ij (x_i - x_j) = 0,   w_ij = 1/6 (4 direct), 1/12 (4 diagonal),

where N(i) holds the neighbours inside the image (the others are dropped, which renormalizes the
weights of the rest). Removed neighbours are unknowns as well, so the equations of all removed
pixels of an image are solved jointly: a sparse system A u = b with A [n, n] (n = |R|; diagonal
sum_{j in N(i)} w_ij, off-diagonal -w_ij between removed neighbours) and b [n, C] (the weighted
known neighbours, one column per channel). A is symmetric positive definite whenever at least one
pixel is kept (a graph Laplacian with the kept pixels as boundary), so one LU factorization with
diagonal pivots (scipy's SuperLU, symmetric mode, minimum-degree ordering of A + A^T) serves all
channels. Then N(0, ``noise``^2) noise is added to the removed pixels only; kept pixels are
returned unchanged (bit for bit).

Space: the imputation works on the model's normalized input (``ExplainedBatch.inputs``). The
weighted mean commutes with the per-channel affine normalization (the weights sum to 1), so
only the noise's unit depends on the space: ``noise = 0.01`` is 0.01 normalized units, i.e.
0.01 * std_c in [0, 1] pixel units (0.0023 for ImageNet's red channel).

Noise: one N(0, 1) field [C, H, W] per image, drawn in float32 from a CPU generator seeded with
``seed * 1_000_003 + index`` (``index``: the image's dataset position), scaled by ``noise`` and
added wherever that image is imputed; the same field serves every fraction and order (common
random numbers: the curves differ by the removed sets only), and the numbers are the same on
every device and whatever batch the image arrives in.

Curves: for each order (``morf``: most relevant first removed; ``lerf``: least relevant first)
and each fraction f in ``fractions`` (default 0.1, 0.2, ..., 0.9), the first
``k = min(floor(f * H * W + 0.5), H * W - 1)`` pixels of the order are removed and imputed, and the
model scores the tracked class on the result: ``softmax`` probability, ``logit``, or ``correct``
(1 when the imputed image's top-1 class is the tracked class, else 0: with ``target: label``,
ROAD's accuracy curves). Pixel order: :func:`salbench.metrics.deletion.pixel_ranks` (a stable
sort; ties by row-major index, ``tie_break``). Per image: ``road_morf_auc`` and ``road_lerf_auc``
are the *mean of the curve values over the fractions* (no end points added), and
``road_gap = road_lerf_auc - road_morf_auc`` (higher is better: a faithful map destroys the
evidence fast when its top pixels go and slowly when its bottom pixels go).

Cost: the imputation runs on the CPU (the input is copied to the host once per batch, every
imputed image back to the input's device in forward chunks). One sparse LU per (image, fraction,
order); its cost grows with the removed count (fill-in of a 2-D grid factorization: roughly
n^1.5); ``workers`` threads impute in parallel (SuperLU releases the GIL). Measured on 2
shared CPU cores: docs/faithfulness.md. The model's forward passes are
batched (``batch_size`` imputed images per pass, equal chunks, the last padded) under
``torch.inference_mode``, optionally under ``torch.autocast``.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor, nn

from salbench.metrics.base import ExplainedBatch, Metric, ScoreInfo
from salbench.metrics.deletion import AUTOCAST, TIE_BREAKS, TRACKED, _autocast_scope, _check_choice, pixel_ranks

ORDERS = ("morf", "lerf")
SCORES = ("softmax", "logit", "correct")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DIRECT_WEIGHT, DIAGONAL_WEIGHT = 1.0 / 6.0, 1.0 / 12.0
# (row offset, column offset, weight) of the 8 neighbours
NEIGHBOURS = (
    (-1, 0, DIRECT_WEIGHT), (1, 0, DIRECT_WEIGHT), (0, -1, DIRECT_WEIGHT), (0, 1, DIRECT_WEIGHT),
    (-1, -1, DIAGONAL_WEIGHT), (-1, 1, DIAGONAL_WEIGHT), (1, -1, DIAGONAL_WEIGHT), (1, 1, DIAGONAL_WEIGHT),
)
_SORDER = {"morf": "most_relevant_first", "lerf": "least_relevant_first"}


# --------------------------------------------------------------------------- imputation
def imputation_system(image: np.ndarray, removed: np.ndarray) -> Tuple[Any, np.ndarray, np.ndarray]:
    """The linear system of one image: ``(A, b, unknown)``.

    image: [C, H, W] float64; removed: [H, W] bool. ``unknown`` [n]: flat (row-major) indices of
    the removed pixels, the order of the unknowns; ``A`` [n, n] scipy CSC, symmetric:
    ``A_ii = sum_{j in N(i)} w_ij``, ``A_ij = -w_ij`` for removed neighbours; ``b`` [n, C]:
    ``sum_{j in N(i), kept} w_ij x_j``.
    """
    channels, height, width = image.shape
    flat_removed = removed.reshape(-1)
    unknown = np.flatnonzero(flat_removed)
    n = unknown.size
    position = np.full(height * width, -1, dtype=np.int64)
    position[unknown] = np.arange(n)
    rows, cols = np.divmod(unknown, width)
    pixels = image.reshape(channels, -1)
    diagonal = np.zeros(n)
    rhs = np.zeros((channels, n))
    entry_rows, entry_cols, entry_values = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = np.flatnonzero((r >= 0) & (r < height) & (c >= 0) & (c < width))
        diagonal[inside] += weight
        neighbour = r[inside] * width + c[inside]
        is_unknown = flat_removed[neighbour]
        entry_rows.append(inside[is_unknown])
        entry_cols.append(position[neighbour[is_unknown]])
        entry_values.append(np.full(int(is_unknown.sum()), -weight))
        # one offset reaches each unknown at most once: no repeated indices in this update
        rhs[:, inside[~is_unknown]] += weight * pixels[:, neighbour[~is_unknown]]
    entry_rows.append(np.arange(n))
    entry_cols.append(np.arange(n))
    entry_values.append(diagonal)
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate(entry_values), (np.concatenate(entry_rows), np.concatenate(entry_cols))), shape=(n, n)
    )
    return matrix, rhs.T, unknown


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """image [C, H, W] float64, removed [H, W] bool -> [C, H, W] float64: the removed pixels
    replaced by the joint solution of the 8-neighbour equations (noise-free); kept pixels copied.

    Needs at least one kept pixel (else the system is singular: a ValueError)."""
    out = np.array(image, dtype=np.float64, copy=True)
    if not removed.any():
        return out
    if removed.all():
        raise ValueError("linear imputation needs at least one kept pixel; every pixel is removed")
    matrix, rhs, unknown = imputation_system(out, removed)
    # SPD: diagonal pivots are stable; symmetric mode + minimum degree on A + A^T keeps the fill low
    factor = scipy.sparse.linalg.splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                      options={"SymmetricMode": True})
    solution = factor.solve(np.ascontiguousarray(rhs))  # [n, C]
    out.reshape(out.shape[0], -1)[:, unknown] = solution.T
    return out


def noise_fields(shape: Sequence[int], seeds: Sequence[int]) -> Tensor:
    """N(0, 1) fields [len(seeds), *shape] float32 on the CPU: field ``b`` from a CPU generator
    seeded with ``seeds[b]`` (the same numbers on every device, whatever the batch)."""
    fields = torch.empty((len(seeds), *shape), dtype=torch.float32, device="cpu")
    for b, seed in enumerate(seeds):
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        fields[b] = torch.randn(tuple(shape), generator=generator, dtype=torch.float32, device="cpu")
    return fields


def _seed_list(seeds: Any, count: int) -> List[int]:
    if seeds is None:
        return list(range(count))
    seeds = seeds.tolist() if isinstance(seeds, Tensor) else list(seeds)
    if len(seeds) != count:
        raise ValueError(f"need one seed per image: {count} images, {len(seeds)} seeds")
    return [int(s) for s in seeds]


def _impute_one(image: np.ndarray, removed: np.ndarray, field: Optional[np.ndarray], noise: float,
                dtype: torch.dtype) -> Tensor:
    """One imputed image [C, H, W] on the CPU in ``dtype``; kept pixels are the input's values."""
    filled = linear_imputation(image, removed)
    if field is not None and noise != 0:
        filled[:, removed] += noise * field[:, removed]
    out = torch.from_numpy(image).to(dtype)
    keep = torch.from_numpy(~removed)
    return torch.where(keep, out, torch.from_numpy(filled).to(dtype))


def noisy_linear_imputation(x: Tensor, removed: Tensor, noise: float = 0.01, seeds: Any = None) -> Tensor:
    """ROAD's noisy linear imputation of a batch.

    x: [B, C, H, W] (normalized model input); removed: [B, H, W] bool; ``noise``: the std of the
    Gaussian noise added to the imputed pixels; ``seeds`` [B] ints (default ``0..B-1``): image
    ``b``'s noise field comes from a CPU generator seeded with ``seeds[b]``. Returns
    [B, C, H, W] in x's dtype on x's device; kept pixels equal x exactly. The systems are solved
    in float64 on the CPU, one image at a time.
    """
    if x.ndim != 4 or removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"need x [B, C, H, W] and removed [B, H, W]; got {tuple(x.shape)}, {tuple(removed.shape)}")
    seeds = _seed_list(seeds, x.shape[0])
    images = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    masks = removed.detach().to(device="cpu", dtype=torch.bool).numpy()
    fields = noise_fields(x.shape[1:], seeds).double().numpy() if noise != 0 else [None] * len(seeds)
    out = torch.stack([_impute_one(images[b], masks[b], fields[b], noise, x.dtype) for b in range(x.shape[0])])
    return out.to(x.device)


def removed_counts(fractions: Sequence[float], num_pixels: int) -> List[int]:
    """Pixels removed at each fraction: ``min(floor(f * HW + 0.5), HW - 1)`` (at least one pixel
    stays, so the imputation is defined)."""
    return [min(int(math.floor(f * num_pixels + 0.5)), num_pixels - 1) for f in fractions]


# --------------------------------------------------------------------------- the curves
def check_fractions(fractions: Sequence[float]) -> Tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if not fractions:
        raise ValueError("fractions must hold at least one removal fraction in (0, 1)")
    for f in fractions:
        if not (0.0 < f < 1.0):
            raise ValueError(f"fraction {f!r} outside (0, 1); fractions are shares of pixels removed, "
                             f"strictly between 0 and 1 (e.g. [0.1, 0.2, ..., 0.9])")
    if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"fractions must be strictly increasing; got {list(fractions)}")
    return fractions


def road_curves(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    orders: Sequence[str] = ORDERS,
    score: str = "softmax",
    noise: float = 0.01,
    seeds: Any = None,
    tie_break: str = "first",
    batch_size: int = 256,
    autocast: Optional[str] = None,
    workers: Optional[int] = None,
) -> Dict[str, Tensor]:
    """ROAD curves of each image: ``{order: [B, F]}`` float32 on x's device.

    model: normalized [N, C, H, W] -> logits [N, K]; x: [B, C, H, W] normalized inputs; maps:
    [B, H, W] relevance; target: [B] tracked class. Entry ``[b, i]`` is the score (``softmax``,
    ``logit`` or ``correct``) of ``target[b]`` on image ``b`` with ``fractions[i]`` of its pixels
    removed in ``order`` and imputed (:func:`noisy_linear_imputation`, ``seeds`` as there). A
    map holding NaN gives NaN curves (its image is not imputed). Imputed images reach the model
    in equal chunks of at most ``batch_size`` (order-major, then image, then fraction). A
    chunk's imputations run on ``workers`` threads (default ``torch.get_num_threads()``;
    SuperLU releases the GIL); the results do not depend on it.
    """
    fractions = check_fractions(fractions)
    orders = tuple(orders)
    for order in orders:
        _check_choice("order", order, ORDERS)
    _check_choice("score", score, SCORES)
    _check_choice("tie_break", tie_break, TIE_BREAKS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    workers = torch.get_num_threads() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if x.ndim != 4 or maps.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"need x [B, C, H, W] and maps [B, H, W]; got {tuple(x.shape)}, {tuple(maps.shape)}")
    num_images, channels, height, width = x.shape
    num_pixels = height * width
    seeds = _seed_list(seeds, num_images)
    counts = removed_counts(fractions, num_pixels)
    target = torch.as_tensor(target, device=x.device).long()
    maps = maps.detach()
    valid = ~torch.isnan(maps).flatten(1).any(1)  # [B]
    valid_list = valid.tolist()
    with torch.inference_mode():
        ranks = {order: pixel_ranks(maps, _SORDER[order], tie_break).cpu().numpy() for order in orders}
    images = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    fields = noise_fields(x.shape[1:], seeds).double().numpy() if noise != 0 else None
    jobs = [(o, b, i) for o in range(len(orders)) for b in range(num_images) if valid_list[b]
            for i in range(len(fractions))]
    values = torch.full((len(orders), num_images, len(fractions)), float("nan"), dtype=torch.float32, device="cpu")
    if jobs:
        # equal chunks (the last padded by repeating its last input), as the rise metric does
        rows = math.ceil(len(jobs) / math.ceil(len(jobs) / batch_size))
        def impute(job: Tuple[int, int, int]) -> Tensor:
            o, b, i = job
            return _impute_one(images[b], (ranks[orders[o]][b] < counts[i]).reshape(height, width),
                               None if fields is None else fields[b], noise, x.dtype)

        with ThreadPoolExecutor(max_workers=workers) as pool, torch.inference_mode(), \
                _autocast_scope(x.device, autocast):
            for begin in range(0, len(jobs), rows):
                chunk = jobs[begin : begin + rows]
                inputs = torch.stack(list(pool.map(impute, chunk)) if workers > 1 else [impute(j) for j in chunk])
                if len(chunk) < rows:
                    inputs = torch.cat([inputs, inputs[-1:].expand(rows - len(chunk), -1, -1, -1)])
                inputs = inputs.to(x.device, non_blocking=False)
                logits = model(inputs).float()[: len(chunk)]
                which = torch.tensor([b for _, b, _ in chunk], dtype=torch.long, device=x.device)
                tracked = target[which]
                if score == "softmax":
                    got = logits.softmax(dim=1).gather(1, tracked[:, None])[:, 0]
                elif score == "logit":
                    got = logits.gather(1, tracked[:, None])[:, 0]
                else:
                    got = (logits.argmax(dim=1) == tracked).float()
                got = got.cpu()
                for (o, b, i), value in zip(chunk, got.tolist()):
                    values[o, b, i] = value
    return {order: values[o].to(x.device) for o, order in enumerate(orders)}


def curve_mean(curves: Tensor) -> Tensor:
    """curves [B, F] -> [B]: ROAD's summary here, the mean of the curve values over the fractions."""
    return curves.mean(dim=-1)


# --------------------------------------------------------------------------- the metric
ROAD_PRESET: Dict[str, Any] = {
    "fractions": DEFAULT_FRACTIONS,
    "orders": ORDERS,
    "target": "predicted",
    "score": "softmax",
    "noise": 0.01,
    "tie_break": "first",
}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}".replace(".", "p")


class RemoveAndDebias(Metric):
    """ROAD (registered as ``road``): per image, the mean MoRF curve (``road_morf_auc``, lower is
    better), the mean LeRF curve (``road_lerf_auc``, higher is better) and their difference
    ``road_gap = lerf - morf`` (higher is better), under noisy linear imputation (module
    docstring). With ``score: correct`` the dataset-level accuracy at each fraction comes from
    :meth:`compute` (``road_morf_accuracy_10`` = accuracy with 10% removed, ...).

    Options: ``fractions`` (strictly increasing, each in (0, 1)); ``orders`` (``morf``,
    ``lerf``; the gap needs both); ``target`` (tracked class: ``predicted`` on the clean image,
    ``label``, or ``explained``: the map's class; with ``predicted``/``label`` the maps scored
    are of that class, :attr:`map_target`); ``score`` (``softmax`` | ``logit`` | ``correct``);
    ``noise`` (std in normalized input space); ``seed`` (image ``i`` of the dataset draws its
    noise with seed ``seed * 1_000_003 + i``); ``tie_break`` (``first`` | ``last``, as ``rise``);
    ``batch_size`` (imputed images per forward pass); ``autocast`` (``null`` | ``bf16`` |
    ``fp16``); ``workers`` (threads imputing in parallel; null: ``torch.get_num_threads()``;
    the scores do not depend on it).
    """

    name = "road"
    category = "faithfulness"
    scores = (
        ScoreInfo("road_morf_auc", False, "faithfulness"),
        ScoreInfo("road_lerf_auc", True, "faithfulness"),
        ScoreInfo("road_gap", True, "faithfulness"),
    )

    def __init__(
        self,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        orders: Sequence[str] = ORDERS,
        target: str = "predicted",
        score: str = "softmax",
        noise: float = 0.01,
        seed: int = 0,
        tie_break: str = "first",
        batch_size: int = 256,
        autocast: Optional[str] = None,
        workers: Optional[int] = None,
    ):
        self.fractions = check_fractions(fractions)
        orders = tuple(orders)
        if not orders:
            raise ValueError(f"orders must name at least one of {', '.join(ORDERS)}")
        for order in orders:
            _check_choice("order", order, ORDERS)
        if len(set(orders)) != len(orders):
            raise ValueError(f"orders repeats an order: {list(orders)}")
        _check_choice("target", target, TRACKED)
        _check_choice("score", score, SCORES)
        _check_choice("tie_break", tie_break, TIE_BREAKS)
        _check_choice("autocast", autocast, tuple(AUTOCAST))
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite std >= 0; got {noise!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        self.orders = orders
        self.workers = workers
        self.target, self.score, self.noise, self.seed = target, score, float(noise), int(seed)
        self.tie_break, self.batch_size, self.autocast = tie_break, batch_size, autocast
        infos = [s for s in type(self).scores if s.name.split("_")[1] in orders]
        if len(orders) == 2:
            infos = list(type(self).scores)
        if score == "correct":
            infos += [ScoreInfo(f"road_{order}_accuracy_{_percent(f)}", order == "lerf", "faithfulness", "dataset")
                      for order in orders for f in self.fractions]
        self.scores = tuple(infos)
        same = all(
            (tuple(getattr(self, k)) if isinstance(v, tuple) else getattr(self, k)) == v for k, v in ROAD_PRESET.items()
        )
        self.preset = "road" if same and autocast is None else "custom"
        self.reset()

    def protocol(self) -> Dict[str, Any]:
        return {
            "fractions": list(self.fractions),
            "orders": list(self.orders),
            "removed_pixels": "min(floor(fraction * H * W + 0.5), H * W - 1), first in the order",
            "target": self.target,
            "score": self.score,
            "tie_break": self.tie_break,
            "imputation": "linear: each removed pixel = weighted mean of its in-image 8 neighbours "
                          "(1/6 direct, 1/12 diagonal, renormalized), all removed pixels solved jointly "
                          "(sparse LU, float64)",
            "space": "normalized model input",
            "noise": self.noise,
            "seed": self.seed,
            "noise_draw": "one N(0,1) float32 field per image from a CPU generator seeded with "
                          "seed * 1_000_003 + dataset index, shared by every fraction and order",
            "auc": "mean of the curve values over the fractions",
            "gap": "road_lerf_auc - road_morf_auc",
            "autocast": self.autocast,
        }

    def reset(self) -> None:
        self._records: List[Dict[str, Any]] = []

    def merge(self, other: "RemoveAndDebias") -> None:
        self._records.extend(other._records)

    @property
    def map_target(self) -> Optional[str]:
        """The tracked class is also the class the maps must explain; ``target: explained``
        scores the job's maps as they are (as the ``rise`` metric)."""
        return self.target if self.target in ("predicted", "label") else None

    def tracked_class(self, explained: ExplainedBatch) -> Tensor:
        if self.target == "predicted":
            return explained.logits.argmax(dim=1)
        if self.target == "label":
            return explained.batch.labels.to(explained.inputs.device)
        return explained.targets.to(explained.inputs.device)

    def update(self, explained: ExplainedBatch) -> Dict[str, Tensor]:
        x = explained.inputs
        model = getattr(explained.model, "module", explained.model)
        indices = getattr(explained.batch, "indices", None)
        indices = torch.arange(x.shape[0], device="cpu") if indices is None \
            else torch.as_tensor(indices, device="cpu")
        seeds = (self.seed * 1_000_003 + indices).tolist()
        curves = road_curves(
            model, x, explained.heatmaps.to(x.device), self.tracked_class(explained), fractions=self.fractions,
            orders=self.orders, score=self.score, noise=self.noise, seeds=seeds, tie_break=self.tie_break,
            batch_size=self.batch_size, autocast=self.autocast, workers=self.workers,
        )
        ids = getattr(explained.batch, "image_ids", None) or [str(i) for i in indices.tolist()]
        out: Dict[str, Tensor] = {}
        for order in self.orders:
            out[f"road_{order}_auc"] = curve_mean(curves[order])
            self._records.append({"image_id": list(ids), "method": explained.method, "curve": order,
                                  "values": curves[order].cpu()})
        if len(self.orders) == 2:
            out["road_gap"] = out["road_lerf_auc"] - out["road_morf_auc"]
        return out

    def compute(self) -> Dict[str, float]:
        """With ``score: correct``: the accuracy at each (order, fraction) over the images seen
        (images with a NaN map left out). Otherwise nothing."""
        if self.score != "correct" or not self._records:
            return {}
        out: Dict[str, float] = {}
        for order in self.orders:
            values = [r["values"] for r in self._records if r["curve"] == order]
            stacked = torch.cat(values).double()  # [N, F]
            accuracy = stacked.nanmean(dim=0)
            for f, value in zip(self.fractions, accuracy.tolist()):
                out[f"road_{order}_accuracy_{_percent(f)}"] = value
        return out

    def tables(self) -> Dict[str, Any]:
        """``curves``: one row per (image, method, curve, step) with columns image_id, method,
        metric, curve (``morf`` | ``lerf``), step (index of the fraction), fraction, value."""
        import pandas as pd

        columns = ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
        frames = []
        for record in self._records:
            values = record["values"]
            num_images, points = values.shape
            frames.append(pd.DataFrame({
                "image_id": [i for i in record["image_id"] for _ in range(points)],
                "method": record["method"],
                "metric": self.name,
                "curve": record["curve"],
                "step": np.tile(np.arange(points), num_images),
                "fraction": np.tile(np.asarray(self.fractions, dtype=np.float64), num_images),
                "value": values.flatten().double().numpy(),
            }))
        if not frames:
            return {"curves": pd.DataFrame(columns=columns)}
        return {"curves": pd.concat(frames, ignore_index=True)[columns]}
