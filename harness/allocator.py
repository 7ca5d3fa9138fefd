"""The host (CPU) memory allocator's behaviour during a job: option ``malloc``.

glibc's malloc serves a large block (at or above its mmap threshold: 128 KiB at first, raised
adaptively up to 32 MiB) with freshly mapped pages and gives it back to the operating system when
it is freed, and it trims the top of the heap once more than the trim threshold lies free there.
A CNN forward pass on the CPU allocates its activations (megabytes each) anew on every call, so
under those rules every pass faults its activations' pages back in and the kernel zeroes them.
Measured on a 2-core AMD EPYC (the 64 px synthetic CNN, docs/benchmarks.md): a batch of 32 ran
at 581 us per image with about 16,000 page faults per pass at first and 290 us with none once
freed blocks stayed in the process; at batch 64 the faults never stopped under the adaptive
rules (507 us per image), which is what made batches of 64 look slower per image than 8.

``malloc: retain`` (the default) fixes both thresholds at :data:`RETAIN_BYTES`
(``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``), so freed blocks stay in the
process for the next pass. It changes no number, only time and memory: the setting is
process-wide and stays after the job, and the process's resident memory stays near its peak.
``malloc: system`` leaves the C library as it is. On other C libraries (macOS, Windows, musl)
``retain`` does nothing and says so in the record (run.json ``device.malloc``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any, Dict

MALLOC_CHOICES = ("retain", "system")
RETAIN_BYTES = 1 << 30  # 1 GiB: blocks below it come from the heap and stay there when freed
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def _glibc() -> Any:
    """The process's glibc, or None (another C library or platform)."""
    if platform.system() != "Linux":
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def check_malloc(choice: Any) -> str:
    """``choice`` if it is a valid ``malloc`` option, else an error naming the valid ones."""
    if choice not in MALLOC_CHOICES:
        raise ValueError(f"unknown malloc {choice!r}; valid: {', '.join(MALLOC_CHOICES)}")
    return str(choice)


def set_malloc(choice: str) -> Dict[str, Any]:
    """Apply option ``malloc`` (``retain`` | ``system``) to this process; returns what run.json
    records: ``{"malloc": choice, "applied": bool, "note": why not / what was set}``."""
    choice = check_malloc(choice)
    if choice == "system":
        return {"malloc": choice, "applied": False, "note": "the C library's own rules"}
    libc = _glibc()
    if libc is None:
        return {"malloc": choice, "applied": False, "note": f"not glibc ({platform.system()}): nothing to set"}
    done = [libc.mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES), libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES)]
    if not all(done):
        return {"malloc": choice, "applied": False, "note": f"mallopt refused the thresholds (returned {done})"}
    return {"malloc": choice, "applied": True, "note": f"glibc mmap and trim thresholds fixed at {RETAIN_BYTES} bytes"}
