"""The random-logit check (Sixt et al. 2020) against Quantus 0.6 RandomLogit with the same class
draws: the same draw rule, the same other-class maps; Quantus compares the *flattened* maps with
a 1-D SSIM (a joint data range), salbench the 2-D maps (SSIM as skimage, Spearman as scipy), as
the model-randomization check."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from salbench.metrics import create_metric
from salbench.metrics.base import image_seeds
from salbench.metrics.functional import classes_from_draws, other_classes, random_logit_similarity
from salbench.metrics.randomization import minmax
from helpers import explained, explainer_case, synthetic_batch


def shared_case(method="saliency", images=4):
    return explainer_case(method, images)


def test_random_logit_equals_quantus_with_the_same_class_draws():
    quantus = pytest.importorskip("quantus")
    model, explainer, x, labels, maps, _ = shared_case()
    asked = []

    def explain(model, inputs, targets, **kwargs):
        asked.append(np.asarray(targets).copy())
        return explainer(torch.as_tensor(inputs), torch.as_tensor(targets).long()).detach().numpy()

    metric = quantus.RandomLogit(num_classes=5, seed=42, normalise=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=labels.numpy(),
                                      a_batch=maps.numpy()[:, None], explain_func=explain, device="cpu"))
    np.random.seed(42)  # Quantus' draws: j = randint(0, K - 1), then the j-th class without the label
    draws = torch.from_numpy(np.random.randint(0, 4, len(x)))
    others = classes_from_draws(draws, labels)
    assert others.tolist() == asked[-1].tolist() and (others != labels).all()
    other_maps = explainer(x, others)
    flat_a, flat_b = maps.flatten(1).double().numpy(), other_maps.flatten(1).double().numpy()
    flat_ssim = [structural_similarity(a, b, data_range=float(np.ptp(np.concatenate([a, b])))) for a, b in
                 zip(flat_a, flat_b)]
    np.testing.assert_allclose(reference, flat_ssim, atol=1e-6)  # Quantus: 1-D SSIM of flattened maps
    ours = random_logit_similarity(maps, other_maps)
    two_d = [structural_similarity(a, b, data_range=1.0) for a, b in
             zip(minmax(maps).numpy(), minmax(other_maps).numpy())]
    np.testing.assert_allclose(ours["ssim"].numpy(), two_d, atol=1e-6)
    assert np.abs(ours["ssim"].numpy() - reference).max() > 1e-3  # the deviation: 2-D vs flattened
    rho = [spearmanr(a, b).statistic for a, b in zip(flat_a, flat_b)]
    np.testing.assert_allclose(ours["spearman_signed"].numpy(), rho, atol=1e-6)


def test_random_logit_metric_re_explains_seeded_other_classes():
    model, explainer, x, labels, maps, case = shared_case("gradcam")
    metric = create_metric("random_logit", batch_size=3)
    got = metric.update(case)["gradcam"]
    others = other_classes(labels, 5, image_seeds(case, 0))
    assert (others != labels).all()
    expected = random_logit_similarity(maps, explainer(x, others))
    for key, value in expected.items():
        torch.testing.assert_close(got[f"random_logit_{key}"], value, rtol=1e-5, atol=1e-6, equal_nan=True)
    later = explained(synthetic_batch(2, start=2), case.maps["gradcam"][2:], inputs=x[2:])
    assert other_classes(labels[2:], 5, image_seeds(later, 0)).tolist() == others[2:].tolist()  # per image
    counts = np.bincount(other_classes(torch.zeros(4000, dtype=torch.long), 5, torch.arange(4000)).numpy(),
                         minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 900  # uniform over the other classes
