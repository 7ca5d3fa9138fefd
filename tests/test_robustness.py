"""Max- / avg-sensitivity and the local Lipschitz estimate against captum.metrics.sensitivity_max
and Quantus MaxSensitivity / AvgSensitivity / LocalLipschitzEstimate, fed the same perturbations
(salbench's per-image seeded draws) and the same explainers; seeding and shared re-explanation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from salbench.methods import create_method
from salbench.metrics import create_metric
from salbench.metrics.base import image_seeds
from salbench.metrics.functional import gaussian_noise, linf_ball_noise, local_lipschitz, perturbation_seeds, sensitivity
from helpers import bundle_of, explained, explainer_case, small_cnn, synthetic_batch


def shared_case(method="saliency", images=3):
    return explainer_case(method, images)


def deltas_of(case, count, kind, scale, seed=0):
    """The perturbations the metric draws: [B, count, C, H, W]."""
    x = case.inputs
    seeds = perturbation_seeds(image_seeds(case, seed), count)
    draw = linf_ball_noise if kind == "uniform" else gaussian_noise
    return draw(seeds, x.shape[1:], scale, x.device).view(x.shape[0], count, *x.shape[1:])


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_sensitivity_equals_captum_sensitivity_max_with_the_same_perturbations(method):
    from captum.metrics import sensitivity_max

    model, explainer, x, target, maps, case = shared_case(method)
    count, radius = 4, 0.05
    deltas = deltas_of(case, count, "uniform", radius)

    def perturb(inputs, perturb_radius):  # captum repeats each input count times, image-major
        return inputs + deltas.flatten(0, 1)

    def explain(inputs, target):  # captum hands over a tuple of inputs, under torch.no_grad
        with torch.enable_grad():  # salbench's shared pass sums the scores after its own grad scope
            if isinstance(inputs, tuple):  # a tuple in, a tuple out (captum's attribute convention)
                return (explainer(inputs[0], target),)
            return explainer(inputs, target)

    reference = sensitivity_max(explain, x, perturb_func=perturb,
                                perturb_radius=radius, n_perturb_samples=count, target=target)
    metric = create_metric("sensitivity", n_perturbations=count, radius=radius, batch_size=5)
    got = metric.update(case)[method]
    zero = maps.flatten(1).norm(dim=1) == 0  # Grad-CAM's ReLU leaves some maps all zero
    assert (method == "gradcam") == bool(zero.any()) and not zero.all()
    np.testing.assert_allclose(got["max_sensitivity"][~zero].numpy(), reference[~zero].numpy(), rtol=1e-5, atol=1e-6)
    perturbed = torch.stack([explainer(x + deltas[:, k], target) for k in range(count)], 1)
    functional = sensitivity(maps, perturbed)
    np.testing.assert_allclose(functional["max"][~zero].numpy(), reference[~zero].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["avg_sensitivity"].numpy(), functional["avg"].numpy(), rtol=1e-5, atol=1e-6)
    # the deviation: a zero map has no relative sensitivity (NaN); captum divides by 1 instead
    assert torch.isnan(got["max_sensitivity"][zero]).all()
    absolute = sensitivity(maps, perturbed, relative=False)["max"]
    np.testing.assert_allclose(reference[zero].numpy(), absolute[zero].numpy(), rtol=1e-5, atol=1e-7)


def quantus_explain(explainer):
    def explain(model, inputs, targets, **kwargs):
        return explainer(torch.as_tensor(inputs), torch.as_tensor(targets).long()).detach().numpy()
    return explain


def quantus_perturb(deltas):
    """Quantus calls perturb_func once per sample step on the whole batch [B, C*H*W]."""
    step = {"k": 0}

    def perturb(arr, indices, **kwargs):
        out = arr + deltas[:, step["k"]].flatten(1).numpy()
        step["k"] += 1
        return out
    return perturb


def test_sensitivity_equals_quantus_max_and_avg_sensitivity():
    quantus = pytest.importorskip("quantus")
    model, explainer, x, target, maps, case = shared_case("saliency")
    count, radius = 3, 0.2
    deltas = deltas_of(case, count, "uniform", radius)
    got = create_metric("sensitivity", n_perturbations=count, radius=radius).update(case)["saliency"]
    for name, score in (("MaxSensitivity", "max_sensitivity"), ("AvgSensitivity", "avg_sensitivity")):
        metric = getattr(quantus, name)(nr_samples=count, perturb_func=quantus_perturb(deltas), disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=maps.numpy()[:, None],
                               explain_func=quantus_explain(explainer), device="cpu")
        np.testing.assert_allclose(got[score].numpy(), np.asarray(reference), rtol=1e-5, atol=1e-6)


def test_local_lipschitz_equals_quantus_with_the_same_perturbations():
    """Quantus' LocalLipschitzEstimate: max over samples of ||a - a'||_2 / (||x - x'||_2 + 1e-10),
    Gaussian perturbations (std 0.1); its default normalise=True divides the maps by the max over
    the whole batch, so the comparison switches it off (docs/metrics.md)."""
    quantus = pytest.importorskip("quantus")
    model, explainer, x, target, maps, case = shared_case("saliency")
    count, std = 3, 0.1
    deltas = deltas_of(case, count, "gaussian", std)
    metric = quantus.LocalLipschitzEstimate(nr_samples=count, perturb_func=quantus_perturb(deltas), normalise=False,
                                            disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=maps.numpy()[:, None],
                           explain_func=quantus_explain(explainer), device="cpu")
    got = create_metric("local_lipschitz", n_perturbations=count, noise_std=std).update(case)["saliency"]
    np.testing.assert_allclose(got["local_lipschitz"].numpy(), np.asarray(reference), rtol=1e-5)
    perturbed = torch.stack([explainer(x + deltas[:, k], target) for k in range(count)], 1)
    functional = local_lipschitz(maps, perturbed, x, x[:, None] + deltas)
    np.testing.assert_allclose(functional.numpy(), np.asarray(reference), rtol=1e-5)


def test_draws_are_per_image_and_in_the_ball():
    _, _, x, _, _, case = shared_case(images=3)
    deltas = deltas_of(case, 4, "uniform", 0.02)
    assert deltas.abs().max() <= 0.02 and deltas.shape == (3, 4, *x.shape[1:])
    later = explained(synthetic_batch(2, start=1), case.maps["saliency"][1:], inputs=x[1:])
    assert torch.equal(deltas_of(later, 4, "uniform", 0.02), deltas[1:])  # image 1's draws do not move
    assert not torch.equal(deltas[0, 0], deltas[0, 1])


def test_all_methods_share_the_re_explanation_passes(monkeypatch):
    """Every method's perturbed maps come from one explain_all call per chunk; equal to each
    method alone."""
    import salbench.methods.shared as shared

    model = small_cnn()
    batch = synthetic_batch(2)
    bundle = bundle_of(model)
    x = bundle.normalize(batch.images)
    explainers = {k: create_method(k, model) for k in ("saliency", "gradcam", "guided_backprop")}
    maps = {k: e(x, batch.labels) for k, e in explainers.items()}
    with torch.no_grad():
        logits = model(x)
    case = explained(batch, maps, inputs=x, logits=logits, model=bundle, explainers=explainers)
    calls = []
    original = shared.explain_all
    monkeypatch.setattr(shared, "explain_all", lambda e, *a, **k: calls.append(len(e)) or original(e, *a, **k))
    together = create_metric("sensitivity", n_perturbations=3, batch_size=6).update(case)
    assert calls == [3]  # 2 images x 3 perturbations in one chunk, all methods at once
    for key in explainers:
        alone = explained(batch, {key: maps[key]}, inputs=x, logits=logits, model=bundle,
                          explainers={key: explainers[key]})
        single = create_metric("sensitivity", n_perturbations=3, batch_size=6).update(alone)[key]
        for score, value in single.items():
            torch.testing.assert_close(together[key][score], value, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_max_images_scores_the_first_images_only():
    _, _, x, _, _, case = shared_case("saliency", images=3)
    from helpers import split_rows

    whole = create_metric("sensitivity", n_perturbations=2).update(case)["saliency"]["max_sensitivity"]
    metric = create_metric("sensitivity", n_perturbations=2, max_images=2)
    parts = [metric.update(part)["saliency"]["max_sensitivity"] for part in split_rows(case, [[0], [1, 2]])]
    got = torch.cat(parts)
    assert torch.isnan(got[2]) and torch.equal(got[:2], whole[:2])
    lipschitz = create_metric("local_lipschitz", n_perturbations=2, max_images=0).update(case)["saliency"]
    assert torch.isnan(lipschitz["local_lipschitz"]).all()
    logit = create_metric("random_logit", max_images=1).update(case)["saliency"]
    assert torch.isnan(logit["random_logit_ssim"][1:]).all() and not torch.isnan(logit["random_logit_ssim"][0])
