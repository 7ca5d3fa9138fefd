"""Timing metric: positive finite figures, cost rows in scores.parquet, the Stopwatch helper.
No timed asserts: only that the numbers exist and are sane."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from salbench.harness.timing import Stopwatch, device_name, peak_memory_bytes


def test_stopwatch_cpu_measures_wall_clock():
    with Stopwatch("cpu") as watch:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert math.isfinite(watch.seconds) and watch.seconds > 0
    assert peak_memory_bytes("cpu") > 0
    assert "threads" in device_name("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stopwatch_cuda_events():
    x = torch.randn(512, 512, device="cuda")
    with Stopwatch("cuda") as watch:
        x @ x
    assert math.isfinite(watch.seconds) and watch.seconds > 0
    assert peak_memory_bytes("cuda") > 0


def test_explain_all_reports_each_methods_peak_memory(synthetic_bundle):
    import functools

    from salbench.methods import create_method
    from salbench.methods.shared import explain_all

    explainers = {name: create_method(name, synthetic_bundle) for name in ("gradcam", "saliency", "occlusion")}
    x = torch.randn(2, 3, 64, 64)
    costs = explain_all(explainers, x, torch.tensor([0, 1]), stopwatch=functools.partial(Stopwatch, "cpu", memory=True)).costs
    assert all(math.isfinite(cost["peak_memory_bytes"]) and cost["peak_memory_bytes"] > 0 for cost in costs.values())
    untimed = explain_all(explainers, x, torch.tensor([0, 1])).costs
    assert all("peak_memory_bytes" not in cost for cost in untimed.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stopwatch_memory_is_the_blocks_own_cuda_peak():
    held = torch.empty(2**26, dtype=torch.uint8, device="cuda")  # 64 MiB held before both blocks
    with Stopwatch("cuda", memory=True) as big:
        block = torch.empty(2**27, dtype=torch.uint8, device="cuda")  # 128 MiB inside
        del block
    with Stopwatch("cuda", memory=True) as small:
        torch.empty(16, device="cuda")
    assert big.peak_bytes >= held.numel() + 2**27
    assert held.numel() <= small.peak_bytes < big.peak_bytes - 2**26


def test_timing_metric_reads_the_loops_measured_costs():
    import dataclasses

    from salbench.metrics import BatchCosts, ExplainedBatch, create_metric

    metric = create_metric("timing")
    assert metric.needs.costs  # the loop hands it the batch's costs after every other metric
    explained = ExplainedBatch(batch=None, inputs=torch.zeros(2, 3, 8, 8), logits=torch.zeros(2, 3),
                               targets=torch.zeros(2), maps={"a": torch.zeros(2, 8, 8), "b": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match="timing"):
        metric.update(explained)
    costs = BatchCosts(explain={"a": {"seconds": 0.5, "peak_memory_bytes": 2**20, "shared_with": ["a", "b"]},
                                "b": {"seconds": 0.25, "shared_with": ["a", "b"]}},
                       metrics={"rise": 1.0}, device="test", clock="perf_counter")
    explained = dataclasses.replace(explained, costs=costs)
    first = metric.update(explained)  # warm-up batch: NaN per image
    assert torch.isnan(first["a"]["ms_per_image"]).all()
    second = metric.update(explained)
    assert torch.allclose(second["a"]["ms_per_image"], torch.full((2,), 250.0))
    assert torch.allclose(second["b"]["ms_per_image"], torch.full((2,), 125.0))
    # a metric's update covers both methods: each is charged half of it
    assert torch.allclose(second["a"]["rise_ms_per_image"], torch.full((2,), 250.0))
    figures = metric.compute()
    assert figures["a"]["images_per_second"] == pytest.approx(4.0)
    assert figures["a"]["peak_memory_mb"] == pytest.approx(1.0) and math.isnan(figures["b"]["peak_memory_mb"])
    assert figures["a"]["warmup_ms_per_image"] == pytest.approx(250.0)
    assert metric.score_info("rise_ms_per_image").category == "cost"
    table = metric.tables()["timing"]
    assert list(table["batch"]) == [0, 0, 1, 1] and list(table["method"]) == ["a", "b", "a", "b"]


def test_timing_rows_land_in_scores(compose_config, tmp_path):
    from salbench.harness.runner import run_job

    cfg = compose_config(["debug=fast", "metric=[cam_paper,timing]", "method=[gradcam,saliency,random]",
                          "model.pretrained=false", "device=cpu"])
    scores = run_job(cfg, tmp_path / "job")
    cost = scores[scores["category"] == "cost"]
    assert set(cost["method"]) == {"gradcam", "saliency", "random"}
    assert not cost["higher_is_better"].isna().any()
    image = cost[(cost["scope"] == "image") & cost["score"].isin(["ms_per_image", "cam_paper_ms_per_image"])]
    assert set(image["score"]) == {"ms_per_image", "cam_paper_ms_per_image"}
    timed = image["value"].dropna()
    assert len(timed) == 2 * 3 * 4  # 2 scores x 3 methods x the 4 images after the warm-up batch
    assert (timed > 0).all() and timed.map(math.isfinite).all()
    assert image["value"].isna().sum() == 2 * 3 * 4  # the warm-up batch
    dataset = cost[cost["scope"] == "dataset"].set_index(["method", "score"])["value"]
    for method in ("gradcam", "saliency", "random"):
        assert dataset[(method, "images_per_second")] > 0 and math.isfinite(dataset[(method, "images_per_second")])
        assert dataset[(method, "peak_memory_mb")] > 0
    protocol = json.loads(cost["protocol"].iloc[0])
    assert protocol["device"] and protocol["clock"] == "perf_counter"
    run = json.loads((tmp_path / "job" / "run.json").read_text())
    assert run["device"]["device_name"] and run["device"]["shared_passes"] is True
    table = pd.read_parquet(tmp_path / "job" / "timing.parquet")
    gradcam = table[table["method"] == "gradcam"]
    assert set(gradcam["shared_with"]) == {"gradcam,saliency"} and (gradcam["explain_seconds"] > 0).all()
    assert set(table["method"]) == {"gradcam", "saliency", "random"} and set(table["metric"]) == {"timing"}


def test_channels_last_job_matches_default(compose_config, tmp_path):
    from salbench.harness.runner import run_job

    base = ["debug=fast", "dataset.limit=4", "metric=[cam_paper]", "method=[gradcam]", "model.pretrained=false",
            "device=cpu"]
    default = run_job(compose_config(base), tmp_path / "default")
    nhwc = run_job(compose_config([*base, "channels_last=true"]), tmp_path / "nhwc")
    assert json.loads((tmp_path / "nhwc" / "run.json").read_text())["device"]["channels_last"] is True
    key = ["metric", "score", "image_index"]
    a, b = default.sort_values(key).reset_index(drop=True), nhwc.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    # NHWC kernels may round differently; box IoUs agree closely
    assert (a["value"].fillna(-1) - b["value"].fillna(-1)).abs().max() < 1e-3
