"""Seeded random draws of the stochastic methods, independent of the batch and of the device.

A method does not know an image's dataset position, so an image's identity is its content:
:func:`content_keys` hashes each image's float32 bytes (CRC-32), and :func:`image_seeds` combines
the key with the method's ``seed`` (``seed * 1_000_003 + key``, the rule of the ``random``
baseline). The same image therefore gets the same draws in any batch, at any position, on any
device; two identical images get identical draws.

Two generators serve the methods:

* small draws (RISE's grids and shifts) come from a CPU ``torch.Generator`` seeded per image
  (:func:`cpu_generator`), the values identical on every device by construction;
* large draws (SmoothGrad's noise, one value per input element and sample) come from
  :func:`hashed_normal`, a counter-based generator computed on the input's device: the
  splitmix64 output function (Steele, Lea & Flood 2014) of ``key + (i + 1) * 0x9E3779B97F4A7C15``
  for element pair ``i`` of a stream ``key``, two 32-bit uniforms per output, Box-Muller in
  float64, rounded to float32. Integer steps are exact on every device (int64 arithmetic wraps
  mod 2^64 on the CPU and on CUDA); the float64 logarithm and sine/cosine of two math libraries
  may differ in their last bit, which survives the rounding to float32 for about one element in
  2^29. A CPU generator would cost a host-side draw and a host-to-device copy of every noise
  tensor, slower than the model's forward and backward passes on a GPU.
"""
from __future__ import annotations

import math
import zlib
from typing import List, Sequence

import torch
from torch import Tensor

SEED_STRIDE = 1_000_003  # seed * SEED_STRIDE + content key (the random baseline's rule)
_MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / golden ratio)
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed64(value: int) -> int:
    """``value`` mod 2^64 as a signed int64 (the bit pattern torch's int64 tensors hold)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def content_keys(x: Tensor) -> List[int]:
    """x: [B, ...] -> B CRC-32 keys of each image's float32 bytes (one device-to-host copy)."""
    return [zlib.crc32(image.numpy().tobytes()) for image in x.detach().to("cpu", torch.float32)]


def image_seeds(x: Tensor, seed: int) -> List[int]:
    """x: [B, ...] -> B seeds ``seed * 1_000_003 + content key`` (Python ints >= 0 for seed >= 0)."""
    return [seed * SEED_STRIDE + key for key in content_keys(x)]


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (``manual_seed``'s own rule in its range
    [-2^63, 2^64), else ``seed`` mod 2^64)."""
    if not -(1 << 63) <= seed <= _MASK64:
        seed &= _MASK64
    return torch.Generator(device="cpu").manual_seed(seed)


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's output function on int64 bit patterns (wrapping multiplication)."""
    z = (z ^ _shift_right(z, 30)) * _signed64(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed64(_MIX2)
    return z ^ _shift_right(z, 31)


def stream_keys(seeds: Sequence[int], counts: int, device: torch.device) -> Tensor:
    """Keys [len(seeds), counts] int64 on ``device``: stream ``j`` of seed ``s`` is
    ``mix64(mix64(s) + j)``, so every (seed, j) has its own stream."""
    base = mix64(torch.tensor([_signed64(s) for s in seeds], dtype=torch.int64, device=device))
    return mix64(base[:, None] + torch.arange(counts, dtype=torch.int64, device=device)[None])


def hashed_normal(keys: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """keys: [n] int64 -> standard normal draws [n, *shape] of ``dtype`` on the keys' device,
    element ``2i`` and ``2i + 1`` of stream ``key`` from the splitmix64 output
    ``mix64(key + (i + 1) * GOLDEN)``: its high 32 bits give u1 = (hi + 0.5) / 2^32 in (0, 1),
    its low 32 bits u2 = lo / 2^32, and Box-Muller ``sqrt(-2 ln u1) * (cos, sin)(2 pi u2)``."""
    numel = math.prod(shape)
    pairs = (numel + 1) // 2
    counter = torch.arange(1, pairs + 1, dtype=torch.int64, device=keys.device) * _signed64(GOLDEN)
    bits = mix64(keys[:, None] + counter[None])  # [n, pairs]
    high = _shift_right(bits, 32).double()
    low = (bits & 0xFFFFFFFF).double()
    radius = torch.sqrt(-2.0 * torch.log((high + 0.5) * 2.0 ** -32))
    angle = (2.0 * math.pi * 2.0 ** -32) * low
    normal = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(1)
    return normal[:, :numel].to(dtype).reshape(keys.shape[0], *shape)


__all__ = ["content_keys", "cpu_generator", "hashed_normal", "image_seeds", "mix64", "stream_keys"]
