"""``batch_size: auto`` (metrics/perturbation.py ``tune_chunk`` / ``ChunkTuning``): the forward chunk
chosen by measuring throughput on the first batch, within the time and memory bounds, recorded in
the protocol / method options and run.json; scores then agree with any fixed chunk to float
rounding (about 1e-6), not bit for bit."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from salbench.methods import create_method
from salbench.metrics import create_metric
from salbench.metrics.perturbation import ChunkTuning, check_batch_size, tune_chunk

from helpers import model_explained, small_cnn


def test_batch_size_option_accepts_integers_and_auto_only():
    assert check_batch_size(8) == 8 and check_batch_size("auto") == "auto"
    for bad in (0, -3, 2.5, "fast", True, None):
        with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
            check_batch_size(bad)
    with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
        create_metric("rise", batch_size="big")
    with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
        create_method("occlusion", small_cnn(), batch_size=0)


def test_tuning_stops_at_the_time_budget_and_at_out_of_memory():
    sizes = []

    def run(size):
        sizes.append(size)

    choice = tune_chunk(run, "cpu", candidates=(4, 8, 16), budget_s=0.0)  # the first size is always measured
    assert set(choice.throughput) == {4} and choice.chosen == 4 and "budget" in choice.stopped

    def run_until_32(size):
        if size >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    choice = tune_chunk(run_until_32, "cpu", candidates=(8, 16, 32, 64), budget_s=60.0)
    assert set(choice.throughput) <= {8, 16} and 8 in choice.throughput and "out of memory" in choice.stopped
    assert choice.chosen in choice.throughput
    best = max(choice.throughput.values())
    assert choice.throughput[choice.chosen] >= 0.97 * best  # the smallest size within 3% of the best
    assert json.dumps(choice.as_dict())


def test_chunk_tuning_tunes_once_per_key_and_records_the_choice():
    calls = []
    fixed = ChunkTuning(12)
    assert fixed.resolve("k", lambda size: calls.append(size), "cpu") == 12 and not calls and fixed.protocol() == {}
    auto = ChunkTuning("auto")
    assert auto.protocol() == {"batch_size": "auto", "batch_size_chosen": None}
    chosen = auto.resolve("k", lambda size: calls.append(size), "cpu", candidates=(2, 4), budget_s=60.0)
    count = len(calls)
    assert chosen in (2, 4) and count >= 6  # warm-up + 2 timed calls per size
    assert auto.resolve("k", lambda size: calls.append(size), "cpu") == chosen and len(calls) == count
    assert auto.protocol() == {"batch_size": "auto", "batch_size_chosen": chosen}
    assert auto.choices["k"]["chosen"] == chosen and set(auto.choices["k"]["throughput"]) <= {"2", "4"}


def test_scores_agree_across_chunk_sizes_to_float_rounding(monkeypatch):
    """rise: fixed chunks 5, 24 and 64 and ``auto`` give the same AUCs to 1e-6 (not bit for bit:
    a sample is rounded differently at another batch shape); occlusion likewise, relative to the
    logits' scale."""
    monkeypatch.setattr("salbench.metrics.perturbation.CHUNK_CANDIDATES", (8, 16, 32))  # a quicker search
    torch.manual_seed(0)
    model, x = small_cnn(), torch.randn(4, 3, 32, 32)
    maps = {"a": torch.rand(4, 32, 32), "b": torch.rand(4, 32, 32)}
    explained = model_explained(model, x, maps)
    reference = create_metric("rise", n_steps=12, batch_size=24).update(explained)
    for batch_size in (5, 64, "auto"):
        metric = create_metric("rise", n_steps=12, batch_size=batch_size)
        scores = metric.update(explained)
        for method in maps:
            for score, values in scores[method].items():
                assert (values - reference[method][score]).abs().max() <= 1e-6
        if batch_size == "auto":
            assert metric.protocol()["batch_size_chosen"] in (8, 16, 32)
    target = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        scale = model(x).abs().max()
    for incremental in (False, True):
        fixed = create_method("occlusion", model, window=8, stride=4, batch_size=16, incremental=incremental)
        auto = create_method("occlusion", model, window=8, stride=4, batch_size="auto", incremental=incremental)
        assert auto.options()["batch_size"] == "auto"
        assert (auto.attribute(x, target) - fixed.attribute(x, target)).abs().max() <= 1e-6 * scale
        chosen = auto.options()["batch_size"]
        assert isinstance(chosen, int) and auto.chunk_tuning.choices  # the options now record the choice
        rebuilt = type(auto)(model, **{k: v for k, v in auto.options().items() if k != "method"})
        assert rebuilt.batch_size == chosen  # a copy built from the options (randomization) reuses it


def test_job_records_the_chosen_chunks(tmp_path, compose_config, synthetic_bundle, monkeypatch):
    from salbench.harness.runner import run_job

    monkeypatch.setattr("salbench.metrics.perturbation.CHUNK_CANDIDATES", (8, 16, 32))
    cfg = compose_config(["debug=fast", "method=[occlusion,gradcam]", "metric=[rise]", "gallery_images=0",
                          "method.occlusion.window=32", "method.occlusion.stride=16", "method.occlusion.batch_size=auto",
                          "metric.rise.n_steps=4", "metric.rise.batch_size=auto", "dataset.limit=4"])
    scores = run_job(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    tuned = info["forward_chunks"]
    occlusion_choice = next(iter(tuned["methods"]["occlusion"].values()))
    rise_choice = next(iter(tuned["metrics"]["rise"].values()))
    assert occlusion_choice["chosen"] in (8, 16, 32) and occlusion_choice["throughput"]
    assert info["components"]["methods"]["occlusion"]["options"]["batch_size"] == occlusion_choice["chosen"]
    assert info["config"]["method"]["occlusion"]["batch_size"] == "auto"
    rows = scores[(scores.method == "occlusion") & (scores.metric == "rise")]
    assert {json.loads(o)["batch_size"] for o in rows.method_options} == {occlusion_choice["chosen"]}
    assert {json.loads(p)["batch_size_chosen"] for p in rows.protocol} == {rise_choice["chosen"]}
    assert isinstance(scores, pd.DataFrame) and scores["value"].notna().all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tuning_on_cuda_measures_within_the_memory_bound():
    """On CUDA: the sizes measured stay under the memory share, and rise with batch_size auto
    agrees with a fixed chunk to float rounding."""
    import copy

    model = copy.deepcopy(small_cnn()).cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    choice = tune_chunk(lambda size: model(x[:1].expand(size, -1, -1, -1).contiguous()), "cuda", budget_s=30.0)
    assert choice.chosen in choice.throughput and choice.device.startswith("cuda")
    maps = {"a": torch.rand(4, 32, 32, device="cuda")}
    explained = model_explained(model, x, maps)
    auto = create_metric("rise", n_steps=8, batch_size="auto").update(explained)["a"]
    fixed = create_metric("rise", n_steps=8, batch_size=24).update(explained)["a"]
    for score in auto:
        assert (auto[score] - fixed[score]).abs().max() <= 1e-5
