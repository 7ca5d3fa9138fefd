"""The perturbation engine: the model's forward passes over many perturbed inputs, for every
metric that perturbs images (``rise``'s deletion/insertion, ``road``'s imputations, the region,
confidence-change, correlation and infidelity metrics), per-image seeded random draws
(:func:`seeded_draws`), re-explanation of perturbed inputs in shared passes
(:func:`reexplain_in_chunks`, for the robustness and random-logit metrics) and the detection of
perturbed inputs that repeat an earlier one (:func:`distinct_prefixes`: the same image with the
same pixels changed, computed once by deletion/insertion, ROAD and region perturbation).

A metric describes its perturbed inputs as a flat sequence of ``count`` items (for example
(method, image, step) triples, method-major, so that all methods' inputs of one batch share the
forward batches) and gives two functions: ``build(start, stop)`` makes the inputs of items
``start..stop-1`` [n, C, H, W] on the model's device, and ``read(logits, start, stop)`` turns
their logits [n, K] (float32) into one value per item [n]. :func:`forward_in_chunks` runs the
model over chunks of exactly ``chunk`` inputs under ``torch.inference_mode`` (and
``torch.autocast`` when asked), the last chunk padded by repeating its last input, so every
forward pass has the same batch shape: CPU GEMM kernels (and cuDNN's algorithm choice) round a
sample differently at different batch sizes, while at one batch shape a sample's result does not
depend on the other samples. A fixed chunk (the metric's ``batch_size``) therefore makes the
values independent of how many images a job batch holds and of how many methods share the
passes: several methods packed together equal each method alone, bit for bit.

``batch_size: auto`` (opt-in, :func:`tune_chunk`): the chunk is chosen by measuring the
forward throughput at a few sizes on the first batch (bounded time and memory) and then kept for
the job; the choice is recorded (:class:`ChunkChoice`, in the component's protocol or options
and in run.json's ``forward_chunks``). What holds then: at one chunk size scores stay
bit-identical across job batch sizes; another chunk size rounds a sample differently, so scores
computed with different chosen chunks agree to float rounding only (about 1e-6,
tests/test_autotune.py), not bit for bit. The default stays a fixed size.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from salbench.metrics.base import check_choice

AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
READOUTS = ("softmax", "logit", "correct")


def autocast_scope(device: torch.device, autocast: Optional[str]) -> Any:
    """``torch.autocast`` to ``autocast`` (``bf16`` | ``fp16``) on ``device``, or no change (None)."""
    check_choice("autocast", autocast, tuple(AUTOCAST))
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[autocast])


def equal_chunk(per_image: int, batch_size: int) -> int:
    """Items per pass for ``per_image`` items of one image (masks, steps, samples, channels): the
    most equal split of them into chunks of at most ``batch_size``,
    ``ceil(n / ceil(n / batch_size))``. Pass a per-image count, never one that grows with the
    number of images: the chunk must not depend on the batch an image arrived in."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if per_image < 1:
        return 1
    return math.ceil(per_image / math.ceil(per_image / batch_size))


def image_aligned_chunk(per_image: int, batch_size: int) -> int:
    """Items per pass for ``per_image`` items of each image: whole images packed together
    (``per_image * floor(batch_size / per_image)``) when one image's items fit in ``batch_size``,
    else ``batch_size``. It does not depend on the number of images, so with padded passes an
    image's values do not depend on the batch it came in."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if per_image < 1:
        return 1
    return per_image * (batch_size // per_image) if per_image <= batch_size else batch_size


def capped_chunk(chunk: Optional[int], max_items: Optional[int]) -> Optional[int]:
    """The pass size of a metric that handles at most ``max_items`` items in the whole job
    (``max_images`` options): ``chunk``, or ``max_items`` when smaller, so a few kept images are
    not padded to a large pass. Both come from the config, never from the job's batches, so the
    values still do not depend on the batch an image came in. ``None`` for either: ``chunk``."""
    if chunk is None or max_items is None:
        return chunk
    return max(1, min(chunk, max_items))


def class_readout(logits: Tensor, tracked: Tensor, score: str) -> Tensor:
    """logits [n, K] float32, tracked [n] long -> [n]: the ``softmax`` probability, the ``logit``,
    or ``correct`` (1.0 when the top-1 class is the tracked class, else 0.0)."""
    check_choice("score", score, READOUTS)
    if score == "softmax":
        return logits.softmax(dim=1).gather(1, tracked[:, None])[:, 0]
    if score == "logit":
        return logits.gather(1, tracked[:, None])[:, 0]
    return (logits.argmax(dim=1) == tracked).float()


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x [n, ...] -> [rows, ...] (rows >= n): the last row repeated."""
    return x if x.shape[0] == rows else torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


def forward_in_chunks(
    model: nn.Module,
    count: int,
    build: Callable[[int, int], Tensor],
    read: Callable[[Tensor, int, int], Tensor],
    *,
    chunk: int,
    device: torch.device,
    autocast: Optional[str] = None,
) -> Tensor:
    """Values [count, ...] float32 on ``device``: ``read(model(build(a, b)).float(), a, b)`` over
    chunks ``[a, b)`` of ``chunk`` items (the last chunk's inputs padded to ``chunk`` by
    repeating its last input; the padding's logits are dropped before ``read``). ``read`` returns
    one value per item ([n]) or one row ([n, ...], e.g. the logits themselves)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    values: Optional[Tensor] = None
    with torch.inference_mode():
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            inputs = pad_rows(build(start, stop), chunk)
            with autocast_scope(device, autocast):
                logits = model(inputs)
            got = read(logits.float()[: stop - start], start, stop)
            if values is None:
                values = torch.empty((count, *got.shape[1:]), device=device, dtype=torch.float32)
            values[start:stop] = got
    return values if values is not None else torch.empty(0, device=device, dtype=torch.float32)


FINGERPRINT_BITS = 40  # per-pixel random weights below 2**40: a prefix sum of 2**23 pixels stays below 2**63


def distinct_prefixes(ranks: Tensor, changed: Tensor, groups: Tensor, *, curves_per_pass: int = 64) -> Tuple[Tensor, Tensor]:
    """Find the (curve, step) items whose perturbed inputs repeat an earlier item's.

    ranks: [C, P] long, each curve's step-order position of every pixel (a permutation of
    ``0..P-1``); changed: [S] long, the pixels changed at each step (item (c, s) changes the
    pixels with ``ranks[c] < changed[s]``); groups: [C] long, the curves whose inputs are built
    from the same image and substrate (items of different groups never share an input). Items
    are numbered ``c * S + s``.

    Returns ``(keep, source)``: ``keep`` [U] long, ascending, the items to compute (the first of
    each set of equal inputs), and ``source`` [C * S] long, the position in ``keep`` of the item
    whose input equals item n's. Equal changed-pixel sets are found by a 40-bit random fingerprint
    of each prefix (a prefix sum of per-pixel weights, seeded, so the same on every device) and
    then compared exactly; should two different sets ever share a fingerprint, every item is
    kept (no item is ever given another's value unless their inputs are equal)."""
    num_curves, num_pixels = ranks.shape
    steps = changed.shape[0]
    device = ranks.device
    if num_curves * steps == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    generator = torch.Generator(device="cpu").manual_seed(0)
    weights = torch.randint(0, 2 ** FINGERPRINT_BITS, (num_pixels,), generator=generator, dtype=torch.long,
                            device="cpu").to(device)
    fingerprints = torch.empty(num_curves, steps, dtype=torch.long, device=device)
    for begin in range(0, num_curves, curves_per_pass):  # [curves, P] int64 at a time, not [C, P]
        part = ranks[begin:begin + curves_per_pass]
        by_rank = torch.empty_like(part).scatter_(1, part, weights.expand_as(part))  # weight of the pixel at each rank
        prefix = torch.cat([torch.zeros_like(by_rank[:, :1]), by_rank.cumsum(1)], dim=1)  # [curves, P + 1]
        fingerprints[begin:begin + curves_per_pass] = prefix[:, changed]
    items = torch.arange(num_curves * steps, device=device)
    key = torch.stack([groups[:, None].expand(-1, steps).reshape(-1) * steps + items % steps, fingerprints.reshape(-1)], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), num_curves * steps, dtype=torch.long, device=device)
    first = first.scatter_reduce(0, inverse, items, reduce="amin")
    twin = first[inverse]  # [N] the first item with the same key
    repeated = (twin != items).nonzero()[:, 0]
    rows_per_pass = max(1, (1 << 22) // max(num_pixels, 1))  # [rows, P] int64 temporaries of at most 32 MiB
    for begin in range(0, repeated.shape[0], rows_per_pass):  # exact check of every repeat: the same changed pixels
        rows = repeated[begin:begin + rows_per_pass]
        limit = changed[rows % steps][:, None]
        if not torch.equal(ranks[rows // steps] < limit, ranks[twin[rows] // steps] < limit):
            return items, items  # a fingerprint collision: compute every item
    keep = torch.unique(twin)  # sorted
    return keep, torch.searchsorted(keep, twin)


def logits_in_chunks(model: nn.Module, x: Tensor, chunk: int) -> Tensor:
    """model(x) [B, K] float32 computed in forward passes of exactly ``chunk`` images (the last
    padded): the same numbers whatever the batch ``x`` belongs to."""
    return forward_in_chunks(model, x.shape[0], lambda a, b: x[a:b], lambda logits, a, b: logits, chunk=chunk,
                             device=x.device)


DRAWS = ("uniform", "normal")


def seeded_draws(seeds: Tensor, shape: Any, kind: str = "uniform", *, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, *shape] random values, row ``b`` drawn from a CPU generator seeded with ``seeds[b]``
    (``uniform``: U[0, 1); ``normal``: N(0, 1)), then copied to ``device``: a row's values depend
    neither on the batch it lands in nor on the device (CUDA generators give other numbers)."""
    check_choice("draw", kind, DRAWS)
    seeds = torch.as_tensor(seeds, device="cpu").tolist()
    shape = tuple(int(s) for s in shape)
    out = torch.empty((len(seeds), *shape), dtype=dtype, device="cpu")
    draw = torch.rand if kind == "uniform" else torch.randn
    for row, seed in enumerate(seeds):  # one generator per image (B calls, not elements)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        out[row] = draw(shape, generator=generator, dtype=dtype, device="cpu")
    return out.to(device)


def reexplain_in_chunks(
    explainers: Any,
    count: int,
    build: Callable[[int, int], Tuple[Tensor, Tensor]],
    read: Callable[[Dict[str, Tensor], int, int], None],
    *,
    chunk: int,
) -> None:
    """Re-explain ``count`` perturbed inputs with every explainer, the shareable ones in one
    shared pass per chunk (:func:`salbench.methods.shared.explain_all`): ``build(a, b)`` gives
    the inputs [n, C, H, W] and the explained classes [n] of items ``a..b-1``, ``read(maps, a, b)``
    consumes ``{method: [n, H, W]}``. Chunks of ``chunk`` items, the last padded by repeating its
    last input (every pass has the same batch shape, as :func:`forward_in_chunks`), so the maps
    need not all be held at once."""
    from salbench.methods.shared import explain_all

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        inputs, targets = build(start, stop)
        maps = explain_all(explainers, pad_rows(inputs, chunk), pad_rows(targets, chunk)).maps
        read({key: value[: stop - start].detach() for key, value in maps.items()}, start, stop)


# --------------------------------------------------------------------------- autotuned chunks
AUTO = "auto"
CHUNK_CANDIDATES = (8, 16, 32, 64, 128, 256)  # forward chunk sizes tried by batch_size: auto
TUNE_SECONDS = 20.0  # wall-clock budget of one tuning (sizes predicted to exceed it are not tried)
TUNE_MEMORY_SHARE = 0.7  # CUDA: a size predicted to need more than this share of the free memory is not tried
TUNE_TOLERANCE = 0.03  # the smallest size within 3% of the best throughput is chosen (less memory, less padding)


def check_batch_size(value: Any, name: str = "batch_size") -> Union[int, str]:
    """``value`` as a forward chunk option: an integer >= 1 or ``"auto"``; anything else is an
    error naming the valid values."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 or 'auto'; got {value!r}")
    return int(value)


@dataclass
class ChunkChoice:
    """One autotuning: ``chosen`` (items per forward chunk), ``throughput`` {size: items/s}
    measured, ``seconds`` spent, ``stopped`` (why larger sizes were not tried), ``key`` (what it
    was measured for, e.g. the input shape), ``device``."""

    chosen: int
    throughput: Dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str = ""
    key: str = ""
    device: str = ""

    def as_dict(self) -> Dict[str, Any]:
        """Plain data (run.json, checkpoints)."""
        out = asdict(self)
        out["throughput"] = {str(k): round(v, 3) for k, v in self.throughput.items()}
        out["seconds"] = round(self.seconds, 3)
        return out


def tune_chunk(run: Callable[[int], Any], device: Any, *, candidates: Optional[Sequence[int]] = None,
               budget_s: Optional[float] = None, memory_share: Optional[float] = None, repeats: int = 2,
               tolerance: Optional[float] = None, key: str = "") -> ChunkChoice:
    """Pick a forward chunk: ``run(size)`` runs one forward chunk of ``size`` items; sizes are
    tried in increasing order (one warm-up call, then the best of ``repeats`` timed calls,
    :class:`salbench.harness.timing.Stopwatch`) while the predicted time fits ``budget_s`` (from
    the best throughput so far), on CUDA while the predicted peak memory fits ``memory_share`` of
    the memory free at the start (linear in the size; an out-of-memory error also stops), and
    until the throughput drops below 90% of the best. The smallest size within ``tolerance`` of
    the best throughput is chosen. The first candidate is always measured. Unset bounds take
    the module's :data:`CHUNK_CANDIDATES`, :data:`TUNE_SECONDS`, :data:`TUNE_MEMORY_SHARE` and
    :data:`TUNE_TOLERANCE` (read at call time)."""
    from salbench.harness.timing import Stopwatch

    candidates = CHUNK_CANDIDATES if candidates is None else candidates
    budget_s = TUNE_SECONDS if budget_s is None else budget_s
    memory_share = TUNE_MEMORY_SHARE if memory_share is None else memory_share
    tolerance = TUNE_TOLERANCE if tolerance is None else tolerance
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    begin = time.perf_counter()
    throughput: Dict[int, float] = {}
    stopped = "all sizes tried"
    free = torch.cuda.mem_get_info(device)[0] if cuda else 0
    base = torch.cuda.memory_allocated(device) if cuda else 0
    last_size, last_peak = 0, 0
    for size in sorted(set(int(c) for c in candidates)):
        if throughput:
            predicted = size / max(throughput.values()) * (1 + repeats)
            if time.perf_counter() - begin + predicted > budget_s:
                stopped = f"size {size} predicted to exceed the {budget_s:g} s budget"
                break
            if cuda and last_size and (last_peak - base) * size / last_size > memory_share * free:
                stopped = f"size {size} predicted to exceed {memory_share:.0%} of the free memory"
                break
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            run(size)
            best = math.inf
            for _ in range(repeats):
                with Stopwatch(device) as watch:
                    run(size)
                best = min(best, watch.seconds)
            if cuda:
                last_size, last_peak = size, torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            stopped = f"size {size} ran out of memory"
            break
        throughput[size] = size / max(best, 1e-9)
        if throughput[size] < 0.9 * max(throughput.values()):
            stopped = f"throughput fell at size {size}"
            break
    top = max(throughput.values())
    chosen = min(size for size, value in throughput.items() if value >= (1 - tolerance) * top)
    return ChunkChoice(chosen, throughput, time.perf_counter() - begin, stopped, key, str(device))


class ChunkTuning:
    """The forward chunk of one component with a ``batch_size`` option (int or ``"auto"``):
    :meth:`resolve` returns the fixed size, or tunes once per ``key`` (e.g. the model and input
    shape) and keeps the choice. ``choices``: {key: :meth:`ChunkChoice.as_dict`} (plain data: a
    metric's attribute survives checkpoints, so a resumed job keeps its chunk)."""

    def __init__(self, batch_size: Union[int, str]):
        self.batch_size = check_batch_size(batch_size)
        self.choices: Dict[str, Dict[str, Any]] = {}

    def resolve(self, key: str, run: Callable[[int], Any], device: Any, **tune: Any) -> int:
        if self.batch_size != AUTO:
            return int(self.batch_size)
        if key not in self.choices:
            self.choices[key] = tune_chunk(run, device, key=key, **tune).as_dict()
        return int(self.choices[key]["chosen"])

    def chosen(self) -> Optional[int]:
        """The chunk in use: the fixed size, the last tuned choice, or None before tuning."""
        if self.batch_size != AUTO:
            return int(self.batch_size)
        return int(list(self.choices.values())[-1]["chosen"]) if self.choices else None

    def protocol(self) -> Dict[str, Any]:
        """What a metric's protocol records: nothing for a fixed size (as before), else
        ``{"batch_size": "auto", "batch_size_chosen": N}`` (None before the first batch)."""
        if self.batch_size != AUTO:
            return {}
        return {"batch_size": AUTO, "batch_size_chosen": self.chosen()}


def autotuned_chunks(components: Dict[str, Any]) -> Dict[str, Any]:
    """{component key: its tuned choices} of the components (explainers, metrics) whose
    ``chunk_tuning`` tuned anything: what run.json records as ``forward_chunks``."""
    out: Dict[str, Any] = {}
    for key, component in components.items():
        tuning = getattr(component, "chunk_tuning", None)
        if isinstance(tuning, ChunkTuning) and tuning.choices:
            out[key] = dict(tuning.choices)
    return out


def restore_chunks(components: Dict[str, Any], saved: Dict[str, Any]) -> None:
    """Give the components the choices :func:`autotuned_chunks` returned (a resumed job)."""
    for key, choices in saved.items():
        tuning = getattr(components.get(key), "chunk_tuning", None)
        if isinstance(tuning, ChunkTuning):
            tuning.choices.update(choices)


def forward_probe(model: nn.Module, example: Tensor, autocast: Optional[str] = None) -> Callable[[int], Any]:
    """``run(size)`` for :func:`tune_chunk`: one inference forward of ``size`` copies of
    ``example`` [1 or more, C, H, W] (its memory format kept), under ``autocast``."""
    device = example.device

    def run(size: int) -> Any:
        rows = torch.arange(size, device=device) % example.shape[0]
        inputs = example[rows]
        if example.is_contiguous(memory_format=torch.channels_last) and not example.is_contiguous():
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_scope(device, autocast):
            return model(inputs)

    return run
