"""The perturbation engine: the model's forward passes over many perturbed inputs, for every
metric that perturbs images (``rise``'s deletion/insertion, ``road``'s imputations, and any
perturbation metric to come).

A metric describes its perturbed inputs as a flat sequence of ``count`` items (for example
(method, image, step) triples, method-major, so that all methods' inputs of one batch share the
forward batches) and gives two functions: ``build(start, stop)`` makes the inputs of items
``start..stop-1`` [n, C, H, W] on the model's device, and ``read(logits, start, stop)`` turns
their logits [n, K] (float32) into one value per item [n]. :func:`forward_in_chunks` runs the
model over equal chunks under ``torch.inference_mode`` (and ``torch.autocast`` when asked),
the last chunk padded by repeating its last input, so every forward pass has the same batch
shape: CPU GEMM kernels round a sample differently at different batch sizes, and a chunk size
that depends only on each map's inputs (:func:`equal_chunk`) makes the values of several
methods packed together equal those of each method alone, bit for bit.
"""
from __future__ import annotations

import contextlib
import math
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


def equal_chunk(per_map: int, batch_size: int) -> int:
    """Inputs per forward pass for ``per_map`` perturbed inputs of one map: the most equal split
    into chunks of at most ``batch_size``, ``ceil(n / ceil(n / batch_size))``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if per_map < 1:
        return 1
    return math.ceil(per_map / math.ceil(per_map / batch_size))


def class_readout(logits: Tensor, tracked: Tensor, score: str) -> Tensor:
    """logits [n, K] float32, tracked [n] long -> [n]: the ``softmax`` probability, the ``logit``,
    or ``correct`` (1.0 when the top-1 class is the tracked class, else 0.0)."""
    check_choice("score", score, READOUTS)
    if score == "softmax":
        return logits.softmax(dim=1).gather(1, tracked[:, None])[:, 0]
    if score == "logit":
        return logits.gather(1, tracked[:, None])[:, 0]
    return (logits.argmax(dim=1) == tracked).float()


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
    """Values [count] float32 on ``device``: ``read(model(build(a, b)).float(), a, b)`` over
    chunks ``[a, b)`` of ``chunk`` items (the last chunk's inputs padded to ``chunk`` by
    repeating its last input; the padding's logits are dropped before ``read``)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    values = torch.empty(count, device=device, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            inputs = build(start, stop)
            if stop - start < chunk:
                inputs = torch.cat([inputs, inputs[-1:].expand(chunk - (stop - start), *inputs.shape[1:])])
            with autocast_scope(device, autocast):
                logits = model(inputs)
            values[start:stop] = read(logits.float()[: stop - start], start, stop)
    return values
