"""Device hygiene of every registered method and metric.

CPU (always run): channels_last models and inputs give the contiguous results; the meta-device
check (a tensor created without ``device=``) runs for every method and metric in
tests/test_components.py. (It is stricter than CUDA, which accepts 0-dim CPU tensors: code that
means the CPU says ``device="cpu"``.)

CUDA (skipped without a GPU): every registered method, the shared passes and every metric
preset run on CUDA and match their CPU results. Tolerances: heatmaps rtol 1e-3 and atol 1e-4 x
the map's largest value (float32 kernels differ in rounding; TF32 convolutions are switched off
for the comparison); metrics get the same heatmaps on both devices, so the localization scores
are exact, RISE AUCs agree to 1e-4 (model forwards on either device) and the randomization
similarities to 1e-3 (the randomized weights are drawn on the CPU, the maps on each device).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Dict

import pytest
import torch
from torch import nn

from salbench.harness.timing import Stopwatch
from salbench.methods import create_method, list_methods
from salbench.methods.shared import explain_all
from salbench.metrics import ExplainedBatch, create_metric, list_metrics

from helpers import SIZE, bundle_of, small_cnn
from test_components import make_method, make_metric, metric_case



def inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, SIZE, SIZE, generator=generator), torch.tensor([0, 3, 1, 4, 2][:batch])


def score(case: ExplainedBatch, name: str):
    """(per-row scores of the case's methods, dataset scores, tables) of a fresh metric ``name``."""
    metric = make_metric(name)
    per_row = metric.update(case)
    return per_row, metric.compute(), metric.tables()


def assert_same_dataset_scores(got: Dict[str, Dict[str, float]], expected: Dict[str, Dict[str, float]],
                               tol: float = 0.0) -> None:
    assert set(got) == set(expected)
    for method, values in expected.items():
        assert set(got[method]) == set(values)
        for key, value in values.items():
            assert (math.isnan(value) and math.isnan(got[method][key])) or abs(got[method][key] - value) <= tol, key


# --------------------------------------------------------------------------- CPU: channels_last
@pytest.mark.parametrize("name", list_methods())
def test_method_channels_last_matches_contiguous(name):
    model, (x, target) = small_cnn(), inputs()
    contiguous = make_method(name, model)(x, target)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    heatmaps = make_method(name, nhwc)(x.contiguous(memory_format=torch.channels_last), target)
    scale = contiguous.abs().max().item()
    torch.testing.assert_close(heatmaps, contiguous, rtol=1e-4, atol=1e-5 * max(scale, 1e-12))


def test_metrics_channels_last_match_contiguous():
    case, model = metric_case()
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    channels_last = dataclasses.replace(
        case, inputs=case.inputs.contiguous(memory_format=torch.channels_last), model=bundle_of(nhwc),
        explainers={key: create_method(key, nhwc) for key in case.maps})
    for name in ("rise", "road", "randomization"):
        got, expected = score(channels_last, name)[0], score(case, name)[0]
        for method in expected:
            for key in expected[method]:
                torch.testing.assert_close(got[method][key], expected[method][key], rtol=0, atol=1e-3, equal_nan=True)


# --------------------------------------------------------------------------- CUDA
@contextlib.contextmanager
def full_precision_cuda():
    """cuDNN without TF32 and with deterministic algorithms for the block (restored afterwards)."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield


def assert_maps_close(gpu: torch.Tensor, cpu: torch.Tensor, name: str) -> None:
    assert gpu.device.type == "cuda", name
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, name
    scale = max(cpu.abs().max().item(), 1e-12)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_method_on_cuda_matches_cpu(name, memory_format):
    model, (x, target) = small_cnn(), inputs()
    cpu = make_method(name, model)(x, target)
    gpu_model = copy.deepcopy(model).cuda().to(memory_format=memory_format)
    x_gpu = x.cuda().contiguous(memory_format=memory_format)
    with full_precision_cuda():
        explainer = make_method(name, gpu_model)
        attribution = explainer.attribute(x_gpu, target.cuda())
        gpu = explainer(x_gpu, target)  # a CPU target is moved to x's device
    assert attribution.device.type == "cuda"
    if explainer.baseline:  # drawn on the CPU / closed form: identical on every device
        assert torch.equal(gpu.cpu(), cpu)
    else:
        assert_maps_close(gpu, cpu, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shared_passes_on_cuda_match_cpu_and_one_at_a_time():
    model, (x, target) = small_cnn(), inputs()
    names = [n for n in list_methods() if n not in ("occlusion", "precomputed")]  # saved maps: need image ids
    cpu = explain_all({n: create_method(n, model) for n in names}, x, target).maps
    gpu_model = copy.deepcopy(model).cuda()
    explainers = {n: create_method(n, gpu_model) for n in names}
    with full_precision_cuda():
        explained = explain_all(explainers, x.cuda(), target.cuda(),
                                    stopwatch=lambda: Stopwatch(torch.device("cuda")))
        shared, costs = explained.maps, explained.costs
        alone = explain_all(explainers, x.cuda(), target.cuda(), shared=False).maps
    for name in names:
        assert_maps_close(shared[name], cpu[name], name)
        # cuDNN may pick other kernels per call: equal to rounding, not bit for bit (methods/shared.py)
        assert_maps_close(shared[name], alone[name].cpu(), name)
        assert costs[name]["seconds"] > 0


def _to_cuda(case: ExplainedBatch, model: nn.Module) -> ExplainedBatch:
    device = torch.device("cuda")
    return dataclasses.replace(
        case, batch=case.batch.to(device), inputs=case.inputs.to(device), logits=case.logits.to(device),
        targets=case.targets.to(device), maps={key: maps.to(device) for key, maps in case.maps.items()},
        model=bundle_of(model), explainers={key: create_method(key, model) for key in case.maps})


# metrics that run the model (or re-run the explainers) see CUDA's rounding; float64 reductions
# may round one float32 ulp apart; the others exact: same heatmaps on both devices
METRIC_TOLERANCE = {"rise": 1e-4, "road": 1e-4, "randomization": 1e-3, "confidence_change": 1e-4,
                    "region_perturbation": 1e-4, "faithfulness_correlation": 1e-3, "infidelity": 1e-4,
                    "sensitivity": 1e-3, "local_lipschitz": 1e-3, "random_logit": 1e-3, "complexity": 1e-6,
                    "mask_relevance": 1e-6}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list_metrics())
def test_metric_on_cuda_matches_cpu(name):
    case, model = metric_case()
    cpu = score(case, name)
    with full_precision_cuda():
        gpu = score(_to_cuda(case, copy.deepcopy(model).cuda()), name)
    tol = METRIC_TOLERANCE.get(name, 0.0)
    assert set(gpu[0]) == set(cpu[0])
    for method, values in gpu[0].items():
        for key, value in values.items():
            assert value.device.type == "cuda", key
            if key.endswith("ms_per_image"):
                continue  # measured times differ
            torch.testing.assert_close(value.cpu(), cpu[0][method][key], rtol=0, atol=tol, equal_nan=True)
    if name != "timing":
        assert_same_dataset_scores(gpu[1], cpu[1], tol)
    assert set(gpu[2]) == set(cpu[2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_rise_autocast_on_cuda_is_close_to_float32(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    case, model = metric_case()
    case = _to_cuda(case, copy.deepcopy(model).cuda())
    reference = create_metric("rise", n_steps=8).update(case)
    scores = create_metric("rise", n_steps=8, autocast=precision).update(case)
    for method, values in scores.items():
        for key, value in values.items():
            assert value.dtype == torch.float32 and value.device.type == "cuda"
            torch.testing.assert_close(value, reference[method][key], rtol=0, atol=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stopwatch_and_peak_memory_on_a_named_cuda_device():
    import time

    from salbench.harness.timing import device_name, peak_memory_bytes, reset_peak_memory

    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize(device)
    clock = time.perf_counter()
    with Stopwatch(device) as watch:
        torch.cuda._sleep(50_000_000)  # queued on the GPU: only a synchronized clock sees it
    wall = time.perf_counter() - clock
    assert 0 < watch.seconds <= wall * 1.05 + 1e-3
    assert watch.seconds >= 0.5 * wall  # the kernel's time, not the launch's
    reset_peak_memory(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    assert peak_memory_bytes(device) >= block.numel()
    del block
    assert device_name(device) == torch.cuda.get_device_name(device)
    with pytest.raises(ValueError), Stopwatch(device) as failed:
        raise ValueError("inside the block")
    assert math.isnan(failed.seconds)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["nchw", "nhwc"])
def test_cuda_job_matches_cpu_job(compose_config, tmp_path, channels_last):
    """The user's path: a job with device=cuda (every metric but randomization's long check on
    a random-init model) gives the CPU job's rows; per-image scores agree to 1e-3 on at least
    95% of the rows (a pixel at a threshold may flip between devices and move one box)."""
    import json

    import numpy as np

    from salbench.harness.runner import run_job

    base = ["debug=fast", "dataset.limit=4", "model.pretrained=false",
            "method=[cam,gradcam,guided_gradcam,saliency,occlusion,random,center]",
            "metric=[cam_paper,wsoleval,pxap,energy_pointing_game,pointing_game,rise,timing]",
            "metric.rise.n_steps=8", "metric.timing.warmup_batches=0"]
    with full_precision_cuda():
        cpu = run_job(compose_config([*base, "device=cpu"]), tmp_path / "cpu")
        gpu = run_job(compose_config([*base, "device=cuda", f"channels_last={str(channels_last).lower()}"]),
                      tmp_path / "cuda")
    key = ["method", "metric", "score", "image_index", "target"]
    cpu = cpu.sort_values(key).reset_index(drop=True)
    gpu = gpu.sort_values(key).reset_index(drop=True)
    assert cpu[key].equals(gpu[key])
    per_image = (cpu["scope"] == "image") & (cpu["category"] != "cost")
    a, b = cpu.loc[per_image, "value"].to_numpy(), gpu.loc[per_image, "value"].to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.mean(np.isclose(a, b, rtol=0, atol=1e-3, equal_nan=True)) >= 0.95
    cost = gpu[(gpu["metric"] == "timing") & gpu["score"].isin(["ms_per_image", "images_per_second", "peak_memory_mb"])]
    assert len(cost) and np.isfinite(cost["value"]).all() and (cost["value"] > 0).all()
    assert json.loads(gpu.loc[gpu["metric"] == "timing", "protocol"].iloc[0])["clock"] == "cuda_events"
    run = json.loads((tmp_path / "cuda" / "run.json").read_text())
    assert run["device"]["device_name"] == torch.cuda.get_device_name(0)


@pytest.mark.slow
def test_torch_components_beyond_2_pow_24_pixels_match_scipy():
    """The torch labelling (the default on CUDA) on a map with more pixels than float32 counts
    exactly (an image on disk of 4100 x 4100): labels past 2**24 stay exact (~20 s, 2 GB)."""
    from salbench.metrics.localization import label_components

    masks = torch.zeros(1, 4100, 4100, dtype=torch.bool)
    masks[0, 4095:4100, 4000:4100] = True  # first pixel's flat index + 1 > 2**24
    masks[0, 4096:4099, 10:20] = True
    assert torch.equal(label_components(masks, 8, "torch"), label_components(masks, 8, "scipy"))


def test_tf32_is_a_job_setting_recorded_in_run_json_and_restored(compose_config, tmp_path):
    """``tf32`` sets TF32 for CUDA matmuls and cuDNN convolutions during the job only (the flags
    are process-wide), and run.json records the numerics the job ran with."""
    import json

    from salbench.harness.runner import run_job

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    try:
        for tf32 in (True, False):
            out = tmp_path / str(tf32)
            run_job(compose_config(["debug=fast", "dataset.limit=2", "model.pretrained=false", "method=[random]",
                                    "metric=[cam_paper]", f"tf32={str(tf32).lower()}"]), out)
            device = json.loads((out / "run.json").read_text())["device"]
            assert device["tf32_matmul"] is tf32 and device["tf32_cudnn"] is tf32
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_batches_reach_the_gpu_unchanged():
    from salbench.datasets import collate, create_dataset

    dataset = create_dataset("synthetic", num_images=3)
    batch = collate([dataset[i] for i in range(3)])
    pinned = batch.pin_memory()
    assert pinned.images.is_pinned() and all(b.is_pinned() for b in pinned.boxes)
    moved = pinned.to(torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved.images.is_cuda and torch.equal(moved.images.cpu(), batch.images)
    back = moved.to(torch.device("cpu"))
    assert torch.equal(back.images, batch.images) and torch.equal(back.boxes[0], batch.boxes[0])
