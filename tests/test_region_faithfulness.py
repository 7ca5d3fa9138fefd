"""Region perturbation (AOPC over patches, IROF over SLIC superpixels), faithfulness correlation
and infidelity against Quantus 0.6 (RegionPerturbation, IROF, FaithfulnessCorrelation) and
``captum.metrics.infidelity`` on shared inputs, with the references' known deviations shown:
Quantus' IROF fails on RGB inputs and reports an area that is not normalized by the number of
superpixels and omits the first step; its faithfulness correlation draws channel elements, not
pixels; captum's default infidelity is not scale invariant and its example perturbation is not
the authors' noisy baseline (captum issues #613, #1018)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from salbench.metrics import create_metric
from salbench.metrics.base import image_seeds
from salbench.metrics.functional import (
    aopc,
    attribution_dots,
    faithfulness_correlation,
    infidelity,
    infidelity_perturbations,
    irof,
    patch_labels,
    perturbation_seeds,
    random_pixel_subsets,
    region_curves,
    removed_values,
    slic_labels,
    subset_sums,
)
from helpers import bundle_of, explained, small_cnn, synthetic_batch

quantus = pytest.importorskip("quantus")


def grey_cnn() -> nn.Module:
    """A seeded 1-channel CNN (a pixel is one element: Quantus' channel conventions then agree)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 4))
        with torch.no_grad():
            model[-1].weight.mul_(6.0)
    return model.eval()


def case_of(model, channels=3, images=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, channels, size, size, generator=generator)
    maps = torch.rand(images, size, size, generator=generator)  # continuous: no ties in any order
    with torch.no_grad():
        logits = model(x)
    batch = synthetic_batch(images, size=size)
    bundle = bundle_of(model, size=size, num_classes=logits.shape[1])
    return x, maps, logits, explained(batch, {"m": maps}, inputs=x, logits=logits, model=bundle)


def call_quantus(metric, model, x, maps, target, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=maps.numpy()[:, None],
                                 device="cpu", **kwargs), dtype=np.float64)


# --------------------------------------------------------------------------- AOPC
@pytest.mark.parametrize("patch_size", [8, 7], ids=["tiles", "padded"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_patch_curves_equal_quantus_region_perturbation(patch_size, order):
    """Quantus' curve is y_0 - y_k for k = 1..R with the image's minimum ("black") removed; the
    grid of a side that is not a multiple of the patch is shifted by floor(pad / 2)."""
    model = small_cnn()
    x, maps, logits, _ = case_of(model)
    target = logits.argmax(1)
    regions = 6
    reference = call_quantus(quantus.RegionPerturbation(patch_size=patch_size, regions_evaluation=regions,
                                                        order=order, disable_warnings=True),
                             model, x, maps, target, softmax=True)
    labels = patch_labels(x.shape[-2:], patch_size).expand(len(x), -1, -1)
    curves = region_curves(model, x, {"m": maps}, labels, target, removed=removed_values(x, "black"), order=order,
                           max_steps=regions, score="softmax")["m"]
    np.testing.assert_allclose((curves[:, :1] - curves)[:, 1:].numpy(), reference, atol=1e-6)
    expected = np.concatenate([np.zeros((len(x), 1)), reference], 1).mean(1)  # AOPC: k = 0..L
    np.testing.assert_allclose(aopc(curves).numpy(), expected, atol=1e-6)


def test_patch_grid_toy():
    labels = patch_labels((5, 7), 3)  # rows padded by 1 (0 before), columns by 2 (1 before)
    assert labels[:, 0].tolist() == [0, 0, 0, 3, 3] and labels[0].tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_region_perturbation_metric_scores():
    model = small_cnn()
    x, maps, logits, case = case_of(model)
    metric = create_metric("region_perturbation", patch_size=8, max_patches=5, n_segments=12, patch_baseline="black",
                           slic_on="input", superpixel_baseline="zero", batch_size=16)
    assert metric.preset == "custom" and create_metric("region_perturbation").preset == "paper"
    got = metric.update(case)["m"]
    target = logits.argmax(1)
    labels = patch_labels((32, 32), 8).expand(3, -1, -1)
    for order in ("morf", "lerf"):
        curves = region_curves(model, x, {"m": maps}, labels, target, removed=removed_values(x, "black"), order=order,
                               max_steps=5)["m"]
        np.testing.assert_allclose(got[f"aopc_{order}"].numpy(), aopc(curves).float().numpy(), atol=1e-7)
    segments = slic_labels(x, 12)
    curves = region_curves(model, x, {"m": maps}, segments, target, removed=torch.zeros_like(x), order="morf",
                           reduce="mean")["m"]
    np.testing.assert_allclose(got["irof_morf"].numpy(), irof(curves).float().numpy(), atol=1e-7)
    table = metric.tables()["curves"]
    assert set(table["curve"]) == {"aopc_morf", "aopc_lerf"} and table["value"].notna().all()
    means = table[table["curve"] == "aopc_morf"].groupby("image_id", sort=False)["value"].mean().to_numpy()
    np.testing.assert_allclose(means, got["aopc_morf"].numpy(), atol=1e-6)  # the curve kind's "mean" summary


# --------------------------------------------------------------------------- IROF
def test_irof_against_quantus_and_its_deviations():
    """Quantus 0.6 IROF: an assertion error on RGB inputs (its mask has one channel); on one
    channel its value is ``L - trapz(y_1..y_L, dx=1)``: not divided by the number of superpixels
    L and without the untouched first point. salbench: ``1 - trapz(y_0..y_L)`` over [0, 1],
    so salbench = (quantus - 0.5 - 0.5 y_1) / L, checked per image."""
    np.trapz = getattr(np, "trapz", np.trapezoid)  # Quantus 0.6 calls np.trapz (gone in numpy 2.4)
    rgb = small_cnn()
    x, maps, logits, _ = case_of(rgb, images=1)
    with pytest.raises(AssertionError, match="mask shape"):
        call_quantus(quantus.IROF(disable_warnings=True), rgb, x, maps, logits.argmax(1), softmax=True)
    model = grey_cnn()
    x, maps, logits, _ = case_of(model, channels=1, images=3, seed=1)
    target = logits.argmax(1)
    for i in range(len(x)):  # one image per call: Quantus pads shorter segment lists with zeros
        reference = call_quantus(quantus.IROF(perturb_baseline=0.0, return_aggregate=False, disable_warnings=True),
                                 model, x[i:i + 1], maps[i:i + 1], target[i:i + 1], softmax=True)[0]
        segments = slic_labels(x[i:i + 1])  # skimage's defaults, on the model input, as Quantus
        curves = region_curves(model, x[i:i + 1], {"m": maps[i:i + 1]}, segments, target[i:i + 1],
                               removed=torch.zeros_like(x[i:i + 1]), reduce="mean")["m"].double()
        count = int(segments.max()) + 1
        first = (curves[0, 1] / curves[0, 0]).item()
        assert irof(curves)[0].item() == pytest.approx((reference - 0.5 - 0.5 * first) / count, abs=1e-6)
        assert abs(reference - irof(curves)[0].item()) > 1.0  # not the [0, 1] area


def test_irof_toy():
    curves = torch.tensor([[1.0, 0.5, 0.0], [0.8, 0.8, float("nan")]])
    assert irof(curves).tolist() == pytest.approx([1 - (0.75 + 0.25) / 2, 0.0])
    assert aopc(curves).tolist() == pytest.approx([0.5, 0.0])


# --------------------------------------------------------------------------- faithfulness correlation
def test_faithfulness_correlation_equals_quantus_with_its_subsets():
    """The subsets Quantus draws (read through its perturb_func) give salbench's correlation of
    the same sums and score drops (a 1-channel input: an element is a pixel)."""
    from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

    model = grey_cnn()
    x, maps, logits, _ = case_of(model, channels=1, images=3, seed=2)
    target = logits.argmax(1)
    runs, size = 8, 40
    chosen = []

    def spy(arr, indices, **kwargs):
        chosen.append(indices.copy())
        return batch_baseline_replacement_by_indices(arr, indices, **kwargs)

    reference = call_quantus(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, return_aggregate=False,
                                                             perturb_func=spy, disable_warnings=True),
                             model, x, maps, target, softmax=True)
    subsets = torch.from_numpy(np.stack(chosen, 1))  # [B, runs, size]
    black = removed_values(x, "black")
    with torch.no_grad():
        clean = model(x).softmax(1).gather(1, target[:, None])
        drops = torch.stack([clean[:, 0] - model(torch.where(
            torch.zeros(len(x), 32 * 32, dtype=torch.bool).scatter_(1, subsets[:, r], True).view(-1, 1, 32, 32),
            black, x)).softmax(1).gather(1, target[:, None])[:, 0] for r in range(runs)], 1)
    ours = faithfulness_correlation(subset_sums(maps, subsets), drops)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)


def test_quantus_faithfulness_correlation_draws_channel_elements_on_rgb():
    chosen = []

    def spy(arr, indices, **kwargs):
        chosen.append(indices.copy())
        return arr

    model = small_cnn()
    x, maps, logits, _ = case_of(model, images=1)
    call_quantus(quantus.FaithfulnessCorrelation(nr_runs=3, subset_size=50, perturb_func=spy, disable_warnings=True),
                 model, x, maps, logits.argmax(1), softmax=True)
    indices = np.concatenate(chosen, axis=None)
    assert indices.max() >= 32 * 32  # indices over C * H * W: single channel values, not pixels
    pixels = [len(np.unique(i % (32 * 32))) for i in chosen]
    assert all(p <= 50 for p in pixels)  # at most 50 elements, spread over the 3 channels


def test_faithfulness_correlation_metric_equals_a_float64_transcription():
    model = small_cnn()
    x, maps, logits, case = case_of(model, seed=4)
    metric = create_metric("faithfulness_correlation", subset_size=30, n_runs=7, batch_size=10)
    got = metric.update(case)["m"]["faithfulness_correlation"]
    target = logits.argmax(1)
    subsets = random_pixel_subsets(image_seeds(case, 0), 32 * 32, 30, 7)
    black = removed_values(x, "black")
    expected = []
    for b in range(len(x)):
        sums, drops = [], []
        for r in range(7):
            mask = torch.zeros(32 * 32, dtype=torch.bool)
            mask[subsets[b, r]] = True
            with torch.no_grad():
                clean = model(x[b:b + 1]).softmax(1)[0, target[b]].double()
                gone = model(torch.where(mask.view(1, 1, 32, 32), black[b:b + 1], x[b:b + 1])).softmax(1)[0, target[b]]
            sums.append(maps[b].double().flatten()[mask].sum().item())
            drops.append((clean - gone.double()).item())
        expected.append(np.corrcoef(sums, drops)[0, 1])
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------- infidelity
@pytest.mark.parametrize("preset", ["captum", "paper"])
def test_infidelity_equals_captum_with_the_same_perturbations(preset):
    """captum.metrics.infidelity with the perturbations salbench draws: ``captum`` preset =
    captum's default (normalize=False) with its example's Gaussian noise; ``paper`` = the
    authors' noisy baseline and optimal scaling (captum's normalize=True)."""
    from captum.metrics import infidelity as captum_infidelity

    model = small_cnn()
    x, maps, logits, case = case_of(model, seed=5)
    target = logits.argmax(1)
    options = create_metric("infidelity").presets[preset]
    count = 5
    metric = create_metric("infidelity", n_perturbations=count, batch_size=8, **options)
    assert metric.preset == preset
    got = metric.update(case)["m"]["infidelity"]
    rows = torch.arange(len(x)).repeat_interleave(count)
    perturbations = infidelity_perturbations(x[rows], perturbation_seeds(image_seeds(case, 0), count),
                                             options["perturbation"], options["noise_std"], case.model.normalize)

    def perturb(inputs):
        return perturbations, inputs - perturbations

    reference = captum_infidelity(model, perturb, x, maps[:, None].expand_as(x), target=target,
                                  n_perturb_samples=count, normalize=options["normalize"])
    # captum subtracts the logits and sums beta^2 E[dot^2] - 2 beta E[dot drop] + E[drop^2] in
    # float32 (cancellation: about 1e-5 relative with normalize=True); salbench in float64
    np.testing.assert_allclose(got.numpy(), reference.numpy(), rtol=1e-6 if preset == "captum" else 1e-4, atol=1e-7)
    # the same in float64 on both sides: equal to 1e-9
    double = small_cnn().double()
    reference64 = captum_infidelity(double, lambda inputs: (perturbations.double(), inputs - perturbations.double()),
                                    x.double(), maps[:, None].expand_as(x).double(), target=target,
                                    n_perturb_samples=count, normalize=options["normalize"])
    with torch.no_grad():
        drops = (double(x.double()).gather(1, target[:, None])[rows]
                 - double(x.double()[rows] - perturbations.double()).gather(1, target[rows][:, None]))[:, 0]
    ours64 = infidelity(attribution_dots(maps[rows], perturbations).view(len(x), count), drops.view(len(x), count),
                        options["normalize"])
    np.testing.assert_allclose(ours64.numpy(), reference64.numpy(), rtol=1e-9)


def test_infidelity_paper_preset_is_the_authors_formula_and_scale_invariant():
    """The authors' get_exp_infid: beta = mean(drop * dot) / mean(dot^2), infid = mean((drop -
    beta dot)^2); their perturbed input is the noisy baseline whatever x (captum #1018)."""
    model = small_cnn()
    x, maps, logits, case = case_of(model, seed=6)
    seeds = perturbation_seeds(image_seeds(case, 0), 4)
    rows = torch.arange(len(x)).repeat_interleave(4)
    normalize = case.model.normalize
    perturbation = infidelity_perturbations(x[rows], seeds, "noisy_baseline", 0.2, normalize)
    other = infidelity_perturbations(x[rows] + 1.0, seeds, "noisy_baseline", 0.2, normalize)
    torch.testing.assert_close(x[rows] - perturbation, x[rows] + 1.0 - other)  # x - I does not depend on x
    dots = attribution_dots(maps[rows], perturbation).view(len(x), 4).numpy()
    with torch.no_grad():
        target = logits.argmax(1)
        drops = (model(x).gather(1, target[:, None]).double()
                 - model(x[rows] - perturbation).gather(1, target[rows][:, None]).double().view(len(x), 4)).numpy()
    beta = (drops * dots).mean(1, keepdims=True) / (dots * dots).mean(1, keepdims=True)
    expected = ((drops - beta * dots) ** 2).mean(1)
    np.testing.assert_allclose(infidelity(torch.from_numpy(dots), torch.from_numpy(drops), True).numpy(), expected,
                               rtol=1e-12)
    scaled = infidelity(torch.from_numpy(dots * 1000), torch.from_numpy(drops), True).numpy()
    np.testing.assert_allclose(scaled, expected, rtol=1e-9)  # invariant to the map's scale
    raw = infidelity(torch.from_numpy(dots * 1000), torch.from_numpy(drops), False).numpy()
    assert (raw > 100 * expected).all()  # captum's default is not (issue #613)


@pytest.mark.parametrize("regions", ["patches", "superpixels"])
def test_equal_region_sets_are_computed_once_and_give_the_same_curves(regions):
    """A map and twice it remove the same regions at every step, and every map's first point is
    the clean image: those inputs are forwarded once, and each map's curve equals its own call
    exactly (a NaN map stays NaN)."""
    model = small_cnn()
    x, maps, logits, _ = case_of(model)
    target = logits.argmax(1)
    labels = patch_labels((32, 32), 8).expand(3, -1, -1) if regions == "patches" else slic_labels(x, 12)
    broken = maps.clone()
    broken[0, 0, 0] = float("nan")
    family = {"a": maps, "twice": 2 * maps, "other": torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4)),
              "broken": broken}
    forwarded = []

    def counting(inputs):
        forwarded.append(inputs.shape[0])
        return model(inputs)

    options = dict(removed=removed_values(x, "black"), order="morf", reduce="sum" if regions == "patches" else "mean",
                   max_steps=6, batch_size=5)
    together = region_curves(counting, x, family, labels, target, **options)
    points = together["a"].shape[1]
    # distinct inputs: per image the clean one, then a's steps (twice's and broken's equal them), other's steps
    assert len(forwarded) * 5 <= -(-3 * (1 + 2 * (points - 1)) // 5) * 5 < 4 * 3 * points
    for key, value in family.items():
        alone = region_curves(model, x, {key: value}, labels, target, **options)[key]
        torch.testing.assert_close(together[key], alone, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(together["broken"][0]).all() and not torch.isnan(together["broken"][1:, :2]).any()
