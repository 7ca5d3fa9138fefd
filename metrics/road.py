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

Cost: with ``solver: direct`` (the default) the imputation runs on the CPU (the input is copied
to the host once per batch, every imputed image back to the input's device in forward chunks).
One sparse LU per (image, fraction, order); its cost grows with the removed count (fill-in of a
2-D grid factorization: roughly n^1.5); ``workers`` threads impute in parallel (SuperLU releases
the GIL). ``solver: cg`` solves the same systems on the input's device instead, batched and
matrix-free (:func:`cg_linear_imputation`): for GPUs; its imputations differ from direct's by
at most about 5e-6 (measured). Measured on 2 shared CPU cores: docs/faithfulness.md. The model's forward passes are
batched (exactly ``batch_size`` imputed images per pass, the last chunk padded) under
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
import torch.nn.functional as F
from torch import Tensor, nn

from salbench.metrics import register_metric
from salbench.metrics.base import TRACKED, CurveKind, ExplainedBatch, Metric, ScoreInfo, TracksClass, check_choice
from salbench.metrics.base import image_ids, image_seeds
from salbench.metrics.deletion import TIE_BREAKS, pixel_ranks
from salbench.metrics.perturbation import AUTOCAST, class_readout, distinct_prefixes, forward_in_chunks

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
SOLVERS = ("direct", "cg")
CG_TOL, CG_MAX_ITER, CG_BATCH_SIZE = 1e-7, 5000, 64
CG_CHECK_EVERY = 16  # iterations between the host syncs that test whether every system has converged


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


# --------------------------------------------------------------------------- batched CG solver
class ImputationNotConverged(RuntimeError):
    """``solver: cg`` left some system above ``cg_tol`` after ``cg_max_iter`` iterations."""


def check_solver(solver: str, cg_tol: float, cg_max_iter: int, cg_batch_size: Optional[int] = CG_BATCH_SIZE) -> None:
    """Clear errors for the solver options (checked whatever the solver, so a typo surfaces early)."""
    check_choice("solver", solver, SOLVERS)
    if isinstance(cg_tol, bool) or not isinstance(cg_tol, (int, float)) or not (0.0 < cg_tol < 1.0):
        raise ValueError(f"cg_tol must be a relative residual ||r||/||b|| in (0, 1), e.g. 1e-7; got {cg_tol!r}")
    if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, int) or cg_max_iter < 1:
        raise ValueError(f"cg_max_iter must be an integer >= 1, e.g. {CG_MAX_ITER}; got {cg_max_iter!r}")
    if cg_batch_size is not None and (isinstance(cg_batch_size, bool) or not isinstance(cg_batch_size, int)
                                      or cg_batch_size < 1):
        raise ValueError(f"cg_batch_size must be an integer >= 1 or null; got {cg_batch_size!r}")


def neighbour_sum(v: Tensor) -> Tensor:
    """``W * v``: v [..., H, W] -> [..., H, W], each pixel's weighted sum of its 8 neighbours (1/6
    direct, 1/12 diagonal; zero padding: outside neighbours count 0).

    Written separably: W = ([1, 2, 1] outer [1, 2, 1]) / 12 - (centre 4/12 = 1/3), i.e. two
    3-tap passes and the centre taken off, which equals the 3x3 conv2d to rounding (1e-15) and
    runs about 4x faster than a float64 conv2d on the CPU (and needs no float64 conv kernel)."""
    padded = F.pad(v, (1, 1, 1, 1))
    rows = torch.add(padded[..., :, :-2], padded[..., :, 2:]).add_(padded[..., :, 1:-1], alpha=2.0)
    out = torch.add(rows[..., :-2, :], rows[..., 2:, :]).add_(rows[..., 1:-1, :], alpha=2.0)
    return out.mul_(DIAGONAL_WEIGHT).sub_(v, alpha=4.0 * DIAGONAL_WEIGHT)


def cg_linear_imputation(
    x: Tensor, removed: Tensor, tol: float = CG_TOL, max_iter: int = CG_MAX_ITER
) -> Tuple[Tensor, Tensor]:
    """Noise-free linear imputation of a batch by Jacobi-preconditioned conjugate gradient, in
    float64 on x's device, matrix-free and batched over images and channels.

    x: [N, C, H, W]; removed: [N, H, W] bool. Returns ``(imputed, iterations)``: imputed
    [N, C, H, W] float64 (kept pixels are x's values exactly), iterations [N, C] int64 (the
    iterations each (image, channel) system took).

    The system of :func:`imputation_system`, written on the pixel grid: with ``W * v`` the 3x3
    neighbour kernel applied with zero padding, ``d = W * 1`` (the in-image weight sums), ``M``
    the removed mask and ``k`` the image with its removed pixels zeroed,
    ``A u = M (d u - W * u)`` and ``b = M (W * k)``, u supported on M: the same equations as
    the direct solver, A symmetric positive definite on M while one pixel is kept. Jacobi
    preconditioner ``z = r / d`` on M. Each (image, channel) system runs its own CG and stops
    (frozen, no further change) once ``||r|| <= tol * ||b||`` (recurrence residual, 2-norm; a
    system with b = 0 has the solution 0 and takes 0 iterations).

    Raises ValueError when an image has every pixel removed, and
    :class:`ImputationNotConverged` when any system is still above ``tol`` after ``max_iter``
    iterations (a ROAD score over a half-solved imputation is not ROAD).
    """
    check_solver("cg", tol, max_iter)
    if x.ndim != 4 or removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"need x [N, C, H, W] and removed [N, H, W]; got {tuple(x.shape)}, {tuple(removed.shape)}")
    num, channels, height, width = x.shape
    image = x.detach().to(torch.float64)
    removed = removed.detach().to(device=x.device, dtype=torch.bool)
    iterations = torch.zeros((num, channels), dtype=torch.int64, device=x.device)
    if num == 0 or not bool(removed.any()):
        return image.clone(), iterations
    if bool(removed.flatten(1).all(dim=1).any()):
        raise ValueError("linear imputation needs at least one kept pixel; every pixel is removed")
    def dot(a: Tensor, b: Tensor) -> Tensor:  # [n, C]
        return (a * b).sum(dim=(2, 3))

    mask = removed[:, None].to(torch.float64)  # [N, 1, H, W]
    weight_sum = neighbour_sum(torch.ones((1, 1, height, width), dtype=torch.float64, device=x.device))  # d [1, 1, H, W]
    inverse_diagonal = mask / weight_sum
    residual = mask * neighbour_sum(image * (1.0 - mask))  # b [N, C, H, W], the residual of u = 0
    rhs_norm = residual.flatten(2).norm(dim=2)  # [N, C]
    threshold = tol * rhs_norm
    solution = torch.zeros_like(residual)
    direction = residual * inverse_diagonal
    rz = dot(residual, direction)
    active = residual.flatten(2).norm(dim=2) > threshold  # [N, C]
    # the working set: images with an unconverged channel; finished ones are written out and dropped
    out = image.clone()
    index = torch.arange(num, device=x.device)
    step = 0
    while True:
        if step % CG_CHECK_EVERY == 0 or step == max_iter:
            alive = active.any(dim=1)
            count = int(alive.sum())  # the host sync, once every CG_CHECK_EVERY iterations
            if count < len(index) or step == max_iter:
                done = ~alive
                out[index[done]] = torch.where(mask[done] > 0, solution[done], out[index[done]])
                if count == 0 or step == max_iter:
                    break
                mask, inverse_diagonal, solution, residual, direction = (
                    t[alive] for t in (mask, inverse_diagonal, solution, residual, direction))
                rz, active, threshold, index = rz[alive], active[alive], threshold[alive], index[alive]
        product = mask * (weight_sum * direction - neighbour_sum(direction))  # A p
        curvature = dot(direction, product)
        # converged systems take a zero step (their u and r stay as they are); curvature > 0 on active ones (SPD)
        alpha = torch.where(active, rz / torch.where(active, curvature, torch.ones_like(curvature)),
                            torch.zeros_like(rz))
        solution.addcmul_(alpha[..., None, None], direction)
        residual.addcmul_(alpha[..., None, None], product, value=-1.0)
        preconditioned = residual * inverse_diagonal
        rz_next = dot(residual, preconditioned)
        beta = torch.where(active, rz_next / torch.where(active, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        direction = preconditioned + beta[..., None, None] * direction  # unused by converged systems (alpha = 0)
        rz = rz_next
        iterations.index_add_(0, index, active.long())
        active = active & (residual.flatten(2).norm(dim=2) > threshold)
        step += 1
    if bool(active.any()):
        worst = float((residual.flatten(2).norm(dim=2) / rhs_norm[index])[active].max())
        raise ImputationNotConverged(
            f"cg imputation did not converge: {int(active.sum())} of {num * channels} systems (image x channel) "
            f"still have ||r||/||b|| above cg_tol={tol:g} after cg_max_iter={max_iter} iterations (worst "
            f"{worst:.3g}); raise cg_max_iter, loosen cg_tol, or use solver: direct")
    return out, iterations


def _impute_cg(x: Tensor, removed: Tensor, fields: Optional[Tensor], noise: float, tol: float,
               max_iter: int) -> Tuple[Tensor, Tensor]:
    """The cg twin of :func:`_impute_one`, batched: x [N, C, H, W], removed [N, H, W] bool,
    fields [N, C, H, W] float32 (or None) on x's device -> (imputed [N, C, H, W] in x's dtype,
    iterations [N] int64: the most any channel took). The noise is added in float64 as there."""
    filled, iterations = cg_linear_imputation(x, removed, tol, max_iter)
    if fields is not None and noise != 0:
        filled = filled + noise * fields.to(torch.float64)  # kept pixels are restored from x below
    return torch.where(removed[:, None], filled.to(x.dtype), x.detach()), iterations.amax(dim=1)


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


def noisy_linear_imputation(x: Tensor, removed: Tensor, noise: float = 0.01, seeds: Any = None, *,
                            solver: str = "direct", cg_tol: float = CG_TOL, cg_max_iter: int = CG_MAX_ITER) -> Tensor:
    """ROAD's noisy linear imputation of a batch.

    x: [B, C, H, W] (normalized model input); removed: [B, H, W] bool; ``noise``: the std of the
    Gaussian noise added to the imputed pixels; ``seeds`` [B] ints (default ``0..B-1``): image
    ``b``'s noise field comes from a CPU generator seeded with ``seeds[b]``. Returns
    [B, C, H, W] in x's dtype on x's device; kept pixels equal x exactly. ``solver: direct``
    solves the systems in float64 on the CPU, one image at a time (sparse LU); ``cg``: all at
    once on x's device (:func:`cg_linear_imputation`, ``cg_tol``, ``cg_max_iter``).
    """
    if x.ndim != 4 or removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"need x [B, C, H, W] and removed [B, H, W]; got {tuple(x.shape)}, {tuple(removed.shape)}")
    check_solver(solver, cg_tol, cg_max_iter)
    seeds = _seed_list(seeds, x.shape[0])
    if solver == "cg":
        fields = noise_fields(x.shape[1:], seeds).to(x.device) if noise != 0 else None
        return _impute_cg(x, removed.to(x.device), fields, noise, cg_tol, cg_max_iter)[0]
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


def road_curves(model: nn.Module, x: Tensor, maps: Tensor, target: Tensor, *,
                iterations: Optional[Dict[str, Tensor]] = None, **options: Any) -> Dict[str, Tensor]:
    """ROAD curves of each image for one map [B, H, W] (:func:`road_curves_of_maps`): ``{order:
    [B, F]}``; ``iterations`` (a dict) receives ``{order: [B, F]}``."""
    used: Dict[str, Dict[str, Tensor]] = {}
    curves = road_curves_of_maps(model, x, {"": maps}, target, iterations=used, **options)
    if iterations is not None:
        iterations.update(used[""])
    return curves[""]


def road_curves_of_maps(
    model: nn.Module,
    x: Tensor,
    maps: Dict[str, Tensor],
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
    solver: str = "direct",
    cg_tol: float = CG_TOL,
    cg_max_iter: int = CG_MAX_ITER,
    cg_batch_size: Optional[int] = CG_BATCH_SIZE,
    iterations: Optional[Dict[str, Dict[str, Tensor]]] = None,
) -> Dict[str, Dict[str, Tensor]]:
    """ROAD curves of each image for several maps of the same images: ``{method: {order: [B, F]}}``
    float32 on x's device.

    model: normalized [N, C, H, W] -> logits [N, K]; x: [B, C, H, W] normalized inputs; maps:
    ``{method: [B, H, W]}`` relevance; target: [B] tracked class. Entry ``[b, i]`` is the score
    (``softmax``, ``logit`` or ``correct``) of ``target[b]`` on image ``b`` with ``fractions[i]``
    of its pixels removed in ``order`` and imputed (:func:`noisy_linear_imputation`, ``seeds`` as
    there). A map holding NaN gives NaN curves (its image is not imputed). Every method's imputed
    images go through the perturbation engine in shared chunks of exactly ``batch_size``
    (method-major, then order, image, fraction; the chunk size depends on one map's imputations
    only). A chunk's imputations run on ``workers`` threads (default ``torch.get_num_threads()``;
    SuperLU releases the GIL); the results do not depend on it.

    ``solver: cg`` imputes each forward chunk on x's device instead, ``cg_batch_size`` imputed
    images per :func:`cg_linear_imputation` call (null: the whole chunk), to ``cg_tol`` in at
    most ``cg_max_iter`` iterations; ``workers`` is then unused. Noise, seeds, ranking and
    chunking are the same as ``direct``'s: only the solve differs. ``iterations``: when a dict
    is given, it receives ``{method: {order: [B, F] int64}}`` on the CPU, the CG iterations of
    each system (the most over its channels; 0 with ``direct`` and for NaN maps).
    """
    fractions = check_fractions(fractions)
    orders = tuple(orders)
    for order in orders:
        check_choice("order", order, ORDERS)
    check_choice("score", score, SCORES)
    check_choice("tie_break", tie_break, TIE_BREAKS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    workers = torch.get_num_threads() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    check_solver(solver, cg_tol, cg_max_iter, cg_batch_size)
    keys = list(maps)
    for key in keys:
        if x.ndim != 4 or maps[key].shape != (x.shape[0], *x.shape[-2:]):
            raise ValueError(f"need x [B, C, H, W] and maps [B, H, W]; got {tuple(x.shape)}, {tuple(maps[key].shape)}")
    num_images, channels, height, width = x.shape
    num_pixels = height * width
    seeds = _seed_list(seeds, num_images)
    counts = removed_counts(fractions, num_pixels)
    target = torch.as_tensor(target, device=x.device).long()
    stacked = torch.stack([maps[key].detach().to(x.device) for key in keys])  # [M, B, H, W]
    valid = ~torch.isnan(stacked).flatten(2).any(2)  # [M, B]
    shape = (len(keys), len(orders), num_images, len(fractions))
    used = torch.zeros(shape, dtype=torch.int64, device="cpu")
    with torch.inference_mode():
        ranks = torch.stack([torch.stack([pixel_ranks(stacked[m], _SORDER[order], tie_break) for order in orders])
                             for m in range(len(keys))])  # [M, O, B, HW]
        # one imputation per distinct (image, removed set) of a finite map: items (map, order, image,
        # fraction) in that order; an item removing the same pixels of the same image as an earlier
        # one (another map's or order's) takes that one's value (the same imputed image)
        curve_valid = valid[:, None, :].expand(-1, len(orders), -1).reshape(-1)  # [M * O * B]
        curve_index = torch.arange(curve_valid.shape[0], device=x.device)
        groups = torch.where(curve_valid, curve_index % num_images, num_images + curve_index)  # NaN maps: alone
        keep, source = distinct_prefixes(ranks.view(-1, num_pixels),
                                         torch.tensor(counts, dtype=torch.int64, device=x.device), groups)
        computed = curve_valid[keep // len(fractions)]
    jobs = np.stack(np.unravel_index(keep[computed].cpu().numpy(), shape), axis=1).tolist()  # [(m, o, b, i)]
    if solver == "cg":
        with torch.inference_mode():
            fields_on_device = noise_fields(x.shape[1:], seeds).to(x.device) if noise != 0 else None
        counts_on_device = torch.tensor(counts, dtype=torch.int64, device=x.device)

        def build(begin: int, end: int) -> Tensor:
            m, o, b, i = (torch.tensor(column, dtype=torch.int64, device=x.device) for column in zip(*jobs[begin:end]))
            removed = (ranks[m, o, b] < counts_on_device[i, None]).view(end - begin, height, width)
            step = cg_batch_size or (end - begin)
            pieces = []
            with torch.autocast(device_type=x.device.type, enabled=False):  # the solve stays float64
                for start in range(0, end - begin, step):
                    part = slice(start, start + step)
                    imputed, its = _impute_cg(x[b[part]], removed[part],
                                              None if fields_on_device is None else fields_on_device[b[part]],
                                              noise, cg_tol, cg_max_iter)
                    pieces.append(imputed)
                    used[m[part].cpu(), o[part].cpu(), b[part].cpu(), i[part].cpu()] = its.cpu()
            return torch.cat(pieces)
    else:
        host_ranks = ranks.cpu().numpy()
        images = x.detach().to(device="cpu", dtype=torch.float64).numpy()
        fields = noise_fields(x.shape[1:], seeds).double().numpy() if noise != 0 else None
        pool = ThreadPoolExecutor(max_workers=workers)

        def impute(job: Tuple[int, int, int, int]) -> Tensor:
            m, o, b, i = job
            return _impute_one(images[b], (host_ranks[m, o, b] < counts[i]).reshape(height, width),
                               None if fields is None else fields[b], noise, x.dtype)

        def build(begin: int, end: int) -> Tensor:
            chunk = jobs[begin:end]
            imputed = list(pool.map(impute, chunk)) if workers > 1 else [impute(job) for job in chunk]
            return torch.stack(imputed).to(x.device)

    def read(logits: Tensor, begin: int, end: int) -> Tensor:
        which = torch.tensor([b for _, _, b, _ in jobs[begin:end]], dtype=torch.long, device=x.device)
        return class_readout(logits, target[which], score)

    per_kept = torch.full((keep.shape[0],), float("nan"), dtype=torch.float32, device="cpu")
    try:
        if jobs:
            got = forward_in_chunks(model, len(jobs), build, read, device=x.device, autocast=autocast,
                                    chunk=batch_size)
            per_kept[computed.cpu()] = got.cpu()
    finally:
        if solver != "cg":
            pool.shutdown()
    source = source.cpu()
    values = per_kept[source].view(shape)
    used = used.view(-1)[keep.cpu()][source].view(shape)
    if iterations is not None:
        iterations.update({key: {order: used[m, o] for o, order in enumerate(orders)} for m, key in enumerate(keys)})
    return {key: {order: values[m, o].to(x.device) for o, order in enumerate(orders)} for m, key in enumerate(keys)}


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
    "autocast": None,
}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}".replace(".", "p")


@register_metric("road")
class RemoveAndDebias(TracksClass, Metric):
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
    the scores do not depend on it); ``solver`` (``direct``: sparse LU on the CPU | ``cg``:
    batched conjugate gradient on the input's device, :func:`cg_linear_imputation`, for GPUs;
    the same equations, imputations within about 1e-5 of ``direct``'s); ``cg_tol`` (relative
    residual at which a cg system stops), ``cg_max_iter`` (a system still above ``cg_tol`` then
    raises :class:`ImputationNotConverged`), ``cg_batch_size`` (imputed images per cg solve;
    null: the whole forward chunk). With ``cg`` the CG iterations of every system are kept:
    :attr:`cg_iterations_max` and ``tables()["cg_iterations"]``.
    """

    name = "road"
    category = "faithfulness"
    presets = {"road": ROAD_PRESET}
    table_kinds = ("curves",)
    curve_kinds = {
        "morf": CurveKind(lower_is_better=True, x_label="fraction removed, most relevant first (imputed)", summary="mean"),
        "lerf": CurveKind(lower_is_better=False, x_label="fraction removed, least relevant first (imputed)",
                          summary="mean"),
    }
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
        solver: str = "direct",
        cg_tol: float = CG_TOL,
        cg_max_iter: int = CG_MAX_ITER,
        cg_batch_size: Optional[int] = CG_BATCH_SIZE,
    ):
        self.fractions = check_fractions(fractions)
        orders = tuple(orders)
        if not orders:
            raise ValueError(f"orders must name at least one of {', '.join(ORDERS)}")
        for order in orders:
            check_choice("order", order, ORDERS)
        if len(set(orders)) != len(orders):
            raise ValueError(f"orders repeats an order: {list(orders)}")
        check_choice("target", target, TRACKED)
        check_choice("score", score, SCORES)
        check_choice("tie_break", tie_break, TIE_BREAKS)
        check_choice("autocast", autocast, tuple(AUTOCAST))
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise must be a finite std >= 0; got {noise!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        check_solver(solver, cg_tol, cg_max_iter, cg_batch_size)
        self.solver, self.cg_tol, self.cg_max_iter, self.cg_batch_size = solver, float(cg_tol), cg_max_iter, cg_batch_size
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
        self._records: List[Dict[str, Any]] = []

    def protocol(self) -> Dict[str, Any]:
        protocol = {
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
            "solver": self.solver,
        }
        if self.solver == "cg":  # the same equations; recorded with the tolerance they were solved to
            protocol["imputation"] = protocol["imputation"].replace(
                "(sparse LU, float64)", "(Jacobi-preconditioned conjugate gradient, float64, each channel until "
                                        "||r|| <= cg_tol * ||b||)")
            protocol.update(cg_tol=self.cg_tol, cg_max_iter=self.cg_max_iter)
        return protocol

    @property
    def cg_iterations_max(self) -> Optional[int]:
        """With ``solver: cg``: the most CG iterations any system took so far (None before any
        update, or with ``direct``)."""
        taken = [int(r["iterations"].max()) for r in self._records if r.get("iterations") is not None
                 and r["iterations"].numel()]
        return max(taken) if taken and self.solver == "cg" else None

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        """Every method's ROAD curves of the batch, in shared forward chunks; ``{method: {score: [N]}}``."""
        x = explained.inputs
        model = explained.classifier
        iterations: Dict[str, Dict[str, Tensor]] = {}
        curves = road_curves_of_maps(
            model, x, {m: maps.to(x.device) for m, maps in explained.maps.items()}, self.tracked_class(explained),
            fractions=self.fractions, orders=self.orders, score=self.score, noise=self.noise,
            seeds=image_seeds(explained, self.seed).tolist(), tie_break=self.tie_break, batch_size=self.batch_size,
            autocast=self.autocast, workers=self.workers, solver=self.solver, cg_tol=self.cg_tol,
            cg_max_iter=self.cg_max_iter, cg_batch_size=self.cg_batch_size, iterations=iterations,
        )
        ids = image_ids(explained)
        out: Dict[str, Dict[str, Tensor]] = {}
        for method, by_order in curves.items():
            scores: Dict[str, Tensor] = {}
            for order in self.orders:
                scores[f"road_{order}_auc"] = curve_mean(by_order[order])
                self._records.append({"image_id": list(ids), "method": method, "curve": order,
                                      "values": by_order[order].cpu(),
                                      "iterations": iterations[method][order] if self.solver == "cg" else None})
            if len(self.orders) == 2:
                scores["road_gap"] = scores["road_lerf_auc"] - scores["road_morf_auc"]
            out[method] = scores
        return out

    def compute(self) -> Dict[str, Dict[str, float]]:
        """With ``score: correct``: per method, the accuracy at each (order, fraction) over the
        images seen (images with a NaN map left out). Otherwise nothing."""
        if self.score != "correct":
            return {}
        out: Dict[str, Dict[str, float]] = {}
        for method in dict.fromkeys(r["method"] for r in self._records):
            scores = out.setdefault(method, {})
            for order in self.orders:
                values = [r["values"] for r in self._records if r["curve"] == order and r["method"] == method]
                accuracy = torch.cat(values).double().nanmean(dim=0)  # [F]
                for f, value in zip(self.fractions, accuracy.tolist()):
                    scores[f"road_{order}_accuracy_{_percent(f)}"] = value
        return out

    def tables(self) -> Dict[str, Any]:
        """``curves``: one row per (image, method, curve, step) with columns image_id, method,
        metric, curve (``morf`` | ``lerf``), step (index of the fraction), fraction, value; with
        ``solver: cg`` also ``cg_iterations`` (the CG iterations of that imputation, the most over
        its channels; 0 for a NaN map)."""
        import pandas as pd

        columns = ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
        columns += ["cg_iterations"] if self.solver == "cg" else []
        frames = []
        for record in self._records:
            values = record["values"]
            num_images, points = values.shape
            frame = pd.DataFrame({
                "image_id": [i for i in record["image_id"] for _ in range(points)],
                "method": record["method"],
                "metric": self.name,
                "curve": record["curve"],
                "step": np.tile(np.arange(points), num_images),
                "fraction": np.tile(np.asarray(self.fractions, dtype=np.float64), num_images),
                "value": values.flatten().double().numpy(),
            })
            if self.solver == "cg":
                frame["cg_iterations"] = record["iterations"].flatten().numpy()
            frames.append(frame)
        if not frames:
            return {"curves": pd.DataFrame(columns=columns)}
        return {"curves": pd.concat(frames, ignore_index=True)[columns]}
