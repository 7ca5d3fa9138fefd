"""Cost of each method: time per image, throughput and peak memory (``timing``).

The runner measures, for every batch and method, the explainer call and every other metric's
``update`` with :class:`salbench.harness.timing.Stopwatch` (CUDA events around the call, synchronized,
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

from salbench.metrics import register_metric
from salbench.metrics.base import ExplainedBatch, Metric, Needs, ScoreInfo

SUFFIX = "_ms_per_image"


@register_metric("timing")
class Timing(Metric):
    """Scores. Per image: ``ms_per_image`` (the explainer's batch time / batch size, NaN in
    warm-up batches) and ``<metric>_ms_per_image`` for every other metric of the job. Per
    dataset: ``images_per_second`` (timed images / explainer seconds, warm-up excluded),
    ``peak_memory_mb`` (max over batches) and ``warmup_ms_per_image``.

    ``warmup_batches``: batches excluded from the figures (default 1; 0 keeps all)."""

    name = "timing"
    category = "cost"
    presets = {"timing": {}}
    needs = Needs(costs=True)
    table_kinds = ("timing",)
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
        self._records: List[Dict[str, Any]] = []

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

    def update(self, explained: ExplainedBatch) -> Dict[str, Dict[str, Tensor]]:
        costs = explained.costs
        if costs is None:
            raise ValueError("the timing metric needs the batch's measured costs (ExplainedBatch.costs, set by the job loop)")
        num_images = int(explained.inputs.shape[0])
        device = explained.inputs.device
        self.device, self.clock = self.device or costs.device, self.clock or costs.clock
        share = {metric: seconds / max(len(explained.maps), 1) for metric, seconds in costs.metrics.items()}
        out: Dict[str, Dict[str, Tensor]] = {}
        for method in explained.maps:
            cost = costs.explain[method]
            batch = sum(1 for r in self._records if r["method"] == method)
            warm = batch < self.warmup_batches
            record = {"batch": batch, "method": method, "warm": warm, "images": num_images, "seconds": float(cost["seconds"]),
                      "metric_seconds": dict(share),
                      "peak_memory_bytes": float(cost.get("peak_memory_bytes", float("nan"))),
                      "shared_with": list(cost.get("shared_with", [method]))}
            self._records.append(record)

            def per_image(seconds: float) -> Tensor:
                value = float("nan") if warm else 1000.0 * seconds / num_images
                return torch.full((num_images,), value, device=device)

            out[method] = {"ms_per_image": per_image(record["seconds"]),
                           **{f"{metric}{SUFFIX}": per_image(seconds) for metric, seconds in share.items()}}
        return out

    def compute(self) -> Dict[str, Dict[str, float]]:
        methods = dict.fromkeys(r["method"] for r in self._records)
        return {method: self._summary([r for r in self._records if r["method"] == method]) for method in methods}

    @staticmethod
    def _summary(records: List[Dict[str, Any]]) -> Dict[str, float]:
        timed = [r for r in records if not r["warm"]]
        warm = [r for r in records if r["warm"]]
        images = sum(r["images"] for r in timed)
        seconds = sum(r["seconds"] for r in timed)
        peaks = [r["peak_memory_bytes"] for r in records if math.isfinite(r["peak_memory_bytes"])]
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

        rows = [{"batch": r["batch"], "method": r["method"], "images": r["images"], "warmup": r["warm"],
                 "explain_seconds": r["seconds"], **{f"{k}_seconds": v for k, v in r["metric_seconds"].items()},
                 "peak_memory_mb": r["peak_memory_bytes"] / 2**20, "shared_with": ",".join(r["shared_with"]),
                 "device": self.device}
                for r in self._records]
        return {"timing": pd.DataFrame(rows)}
