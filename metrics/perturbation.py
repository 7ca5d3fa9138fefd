"""The perturbation engine: the model's forward passes over many perturbed inputs, for every
metric that perturbs images (``rise``'s deletion/insertion, ``road``'s imputations, the region,
confidence-change, correlation and infidelity metrics), per-image seeded random draws
(:func:`seeded_draws`) and re-explanation of perturbed inputs in shared passes
(:func:`explain_in_chunks`, for the robustness and random-logit metrics).

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
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Optional, Tuple

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
