"""Timing helpers: CUDA events on CUDA (with synchronization), ``time.perf_counter`` on CPU,
and the process's peak memory (CUDA allocator peak, or the resident set's high-water mark).

    with Stopwatch(device) as watch:
        heatmaps = explainer(x, target)
    watch.seconds  # elapsed; on CUDA synchronized at both ends
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any, Optional

import torch


def _is_cuda(device: Any) -> bool:
    return torch.device(device).type == "cuda" if device is not None else False


class Stopwatch:
    """Context manager measuring one block on ``device``: CUDA events recorded on ``device``'s
    current stream around the block (the device synchronized first, so earlier work is not
    counted, and the end event waited for, so queued kernels are), or wall clock
    (``perf_counter``) on CPU. ``seconds`` holds the elapsed time after the block (NaN when the
    block raised: nothing is measured, so a CUDA error is not raised a second time).

    ``memory=True``: ``peak_bytes`` holds the block's peak (:func:`peak_memory_bytes`; on CUDA
    the allocator peak is reset on entry, so it is the block's own peak, the memory already held
    included; on CPU the process's high-water mark)."""

    def __init__(self, device: Any = "cpu", memory: bool = False):
        self.cuda = _is_cuda(device) and torch.cuda.is_available()
        self.device = torch.device(device)
        self.memory = memory
        self.seconds: float = float("nan")
        self.peak_bytes: float = float("nan")

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if self.memory:
                reset_peak_memory(self.device)
            # the stream of the timed device, not of the current device (they differ for cuda:N)
            self._stream = torch.cuda.current_stream(self.device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record(self._stream)
        else:
            self._clock = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            return
        if self.cuda:
            self._end.record(self._stream)
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._clock
        if self.memory:
            self.peak_bytes = peak_memory_bytes(self.device)


def reset_peak_memory(device: Any) -> None:
    """Start a new CUDA allocator peak (no-op on CPU: the RSS high-water mark cannot be reset)."""
    if _is_cuda(device) and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_bytes(device: Any) -> float:
    """CUDA: ``torch.cuda.max_memory_allocated`` since the last :func:`reset_peak_memory`.
    CPU: the process's peak resident set size (VmHWM, from ``getrusage``; whole process, since
    start, so it only grows)."""
    if _is_cuda(device) and torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated(torch.device(device)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def device_name(device: Optional[Any]) -> str:
    """``NVIDIA H100 ...`` on CUDA, else the CPU's name with the thread count."""
    if _is_cuda(device) and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"
