"""The perturbation engine: the model's forward passes over many perturbed inputs, for every
metric that perturbs images (``rise``'s deletion/insertion, ``road``'s imputations, and any
perturbation metric to come).

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
from typing import Any, Callable, Optional

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
