"""Cost of each method: time per image, throughput and peak memory (``timing``).

The runner measures, for every batch and method, the explainer call and every other metric's
``update`` with :class:`salbench.timing.Stopwatch` (CUDA events around the call, synchronized,
on CUDA; ``time.perf_counter`` on CPU) and hands the durations to this metric through
``ExplainedBatch.timing``; the runner updates ``timing`` after the other metrics of a batch.

With shared passes (``shared_passes: true``, the default) methods computed from one
forward/backward pass are charged their own finishing step plus an equal share of the pass
(``shared_with`` in the timing table), so the methods' times sum to the batch's wall time; run
with ``shared_passes=false`` to time each method alone.

Warm-up: the first ``warmup_batches`` batches of a job (per method) pay one-off costs (CUDA
context and kernel selection, allocator growth, lazy imports); their per-image values are NaN
and they are reported separately as ``warmup_ms_per_image``.

Peak memory: CUDA, ``torch.cuda.max_memory_allocated`` of the run's device over the method's
own call (the allocator peak is reset before it; a method computed from a shared pass gets the
peak of that pass and of its finishing step); the memory already held (model, batch) is
included. CPU: the process's resident-set high-water mark (VmHWM via ``getrusage``), which
covers the whole process since start and never decreases.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from salbench.metrics.base import ExplainedBatch, Metric, ScoreInfo

SUFFIX = "_ms_per_image"


class Timing(Metric):
    """Scores. Per image: ``ms_per_image`` (the explainer's batch time / batch size, NaN in
    warm-up batches) and ``<metric>_ms_per_image`` for every other metric of the job. Per
    dataset: ``images_per_second`` (timed images / explainer seconds, warm-up excluded),
    ``peak_memory_mb`` (max over batches) and ``warmup_ms_per_image``.

    ``warmup_batches``: batches excluded from the figures (default 1; 0 keeps all)."""

    name = "timing"
    category = "cost"
    preset = "timing"
    wants_timing = True  # the runner fills ExplainedBatch.timing and updates this metric last
    scores = (
        ScoreInfo("ms_per_image", False, "cost"),
        ScoreInfo("images_per_second", True, "cost", scope="dataset"),
        ScoreInfo("peak_memory_mb", False, "cost", scope="dataset"),
        ScoreInfo("warmup_ms_per_image", False, "cost", scope="dataset"),
    )

    def __init__(self, warmup_batches: int = 1):
        if warmup_batches < 0:
            raise ValueError(f"warmup_batches must be >= 0; got {warmup_batches}")
        self.warmup_batches = warmup_batches
        self.device: Optional[str] = None
        self.clock: Optional[str] = None
        self.reset()

    def reset(self) -> None:
        self._records: List[Dict[str, Any]] = []

    def merge(self, other: "Timing") -> None:
        self._records.extend(other._records)
        self.device, self.clock = self.device or other.device, self.clock or other.clock

    def protocol(self) -> Dict[str, Any]:
        return {
            "warmup_batches": self.warmup_batches,
            "clock": self.clock or "cuda events (CUDA) | perf_counter (CPU)",
            "device": self.device,
            "memory": "torch.cuda.max_memory_allocated (CUDA) | process peak RSS, VmHWM (CPU)",
            "shared_passes": "a shared pass is split equally among the methods that share it",
        }

    def score_info(self, score: str) -> Optional[ScoreInfo]:
        if score.endswith(SUFFIX) and score != "warmup" + SUFFIX and score != "ms_per_image":
            return ScoreInfo(score, False, "cost")
        return super().score_info(score)

    def update(self, explained: ExplainedBatch) -> Dict[str, Tensor]:
        timing = getattr(explained, "timing", None)
        if not timing:
            raise ValueError("the timing metric needs ExplainedBatch.timing (set by the runner)")
        num_images = int(explained.heatmaps.shape[0])
        warm = sum(1 for r in self._records if r["method"] == explained.method) < self.warmup_batches
        self.device = self.device or timing.get("device")
        self.clock = self.clock or timing.get("clock")
        record = {"method": explained.method, "warm": warm, "images": num_images,
                  "seconds": float(timing["seconds"]), "metric_seconds": dict(timing.get("metric_seconds", {})),
                  "peak_memory_bytes": float(timing.get("peak_memory_bytes", float("nan"))),
                  "shared_with": list(timing.get("shared_with", [explained.method]))}
        self._records.append(record)
        device = explained.heatmaps.device

        def per_image(seconds: float) -> Tensor:
            value = float("nan") if warm else 1000.0 * seconds / num_images
            return torch.full((num_images,), value, device=device)

        out = {"ms_per_image": per_image(record["seconds"])}
        for metric, seconds in record["metric_seconds"].items():
            out[f"{metric}{SUFFIX}"] = per_image(seconds)
        return out

    def compute(self) -> Dict[str, float]:
        timed = [r for r in self._records if not r["warm"]]
        warm = [r for r in self._records if r["warm"]]
        images = sum(r["images"] for r in timed)
        seconds = sum(r["seconds"] for r in timed)
        peaks = [r["peak_memory_bytes"] for r in self._records if math.isfinite(r["peak_memory_bytes"])]
        return {
            "images_per_second": images / seconds if seconds > 0 else float("nan"),
            "peak_memory_mb": max(peaks) / 2**20 if peaks else float("nan"),
            "warmup_ms_per_image": 1000.0 * sum(r["seconds"] for r in warm) / sum(r["images"] for r in warm)
            if warm else float("nan"),
        }

    def tables(self) -> Dict[str, Any]:
        """``timing``: one row per (batch, method): images, warm-up flag, seconds of the explainer
        and of every metric, peak memory and the methods that shared the pass."""
        import pandas as pd

        rows = [{"batch": i, "method": r["method"], "images": r["images"], "warmup": r["warm"],
                 "explain_seconds": r["seconds"], **{f"{k}_seconds": v for k, v in r["metric_seconds"].items()},
                 "peak_memory_mb": r["peak_memory_bytes"] / 2**20, "shared_with": ",".join(r["shared_with"]),
                 "device": self.device}
                for i, r in enumerate(self._records)]
        return {"timing": pd.DataFrame(rows)}
