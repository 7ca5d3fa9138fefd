"""Model-randomization sanity check (metrics/randomization.py): similarity measures against
scipy / skimage, the randomization protocol itself, and the known outcome on the synthetic CNN."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from salbench.methods import METHODS, create_method
from salbench.metrics import create_metric
from salbench.metrics.base import ExplainedBatch
from salbench.metrics.randomization import (
    default_layer_groups,
    minmax,
    randomization_check,
    spearman,
    ssim,
    summarize,
)


def norm_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()
    with torch.no_grad():  # a "trained" norm layer, so that re-initializing it changes it
        for tensor in (model[1].weight, model[1].bias, model[1].running_mean):
            tensor.uniform_(0.5, 1.5)
    return model


def input_energy(model: nn.Module):
    """A model-independent 'explainer': the summed |x| of each pixel."""
    return lambda x, target: x.abs().sum(1)


class ParameterSnapshot:
    """An 'explainer' factory that records which parameters differ from the original model."""

    def __init__(self, original: nn.Module):
        self.original = {k: v.clone() for k, v in original.state_dict().items()}
        self.changed = []

    def __call__(self, model: nn.Module):
        state = model.state_dict()
        changed = sorted({k.rsplit(".", 1)[0] for k, v in state.items() if not torch.equal(v, self.original[k])})
        self.changed.append(changed)
        return lambda x, target: x.abs().sum(1) + 0 * target[:, None, None]


# --------------------------------------------------------------------------- similarities
def test_spearman_matches_scipy_with_ties_and_nan_for_constant():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 6, 7), generator=generator).float()  # many ties
    b = torch.rand(3, 6, 7, generator=generator)
    got = spearman(a, b)
    for i in range(3):
        expected = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(got[i]) == pytest.approx(expected, abs=1e-6)
    assert torch.isnan(spearman(torch.zeros(1, 4, 4), b[:1, :4, :4])).all()


def test_ssim_matches_skimage():
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(2, 20, 23, generator=generator)
    b = (a + 0.3 * torch.rand(2, 20, 23, generator=generator)).clamp(0, 1)
    got = ssim(a, b)
    for i in range(2):
        expected = structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=1.0)
        assert float(got[i]) == pytest.approx(expected, abs=1e-6)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(minmax(torch.ones(1, 3, 3)), torch.zeros(1, 3, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- the protocol
def test_default_groups_top_first_conv_with_its_norm():
    model = norm_cnn()
    assert default_layer_groups(model, torch.randn(1, 3, 8, 8)) == [["7"], ["3"], ["0", "1"]]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_randomizes_a_copy_cumulatively_or_one_group_at_a_time(mode):
    model = norm_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = ParameterSnapshot(model)
    x, target = torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)
    rng_before = torch.get_rng_state()
    table = randomization_check(model, snapshot, x, target, mode=mode)
    # the user's model and the global RNG are untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    changed = snapshot.changed[1:]  # [0] is the original model
    if mode == "cascading":
        assert changed == [["7"], ["3", "7"], ["0", "1", "3", "7"]]
    else:
        assert changed == [["7"], ["3"], ["0", "1"]]
    # a model-independent map is identical after any randomization
    assert np.allclose(table["value"], 1.0, atol=1e-6)
    assert list(table["layer"].unique()) == ["7", "3", "0"]
    assert len(table) == 3 * 3 * 2  # depths x similarities x images


def test_same_seed_same_weights_in_both_modes_and_reproducible():
    model = norm_cnn(1)
    x, target = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    factory = lambda m: create_method("gradcam", m)  # noqa: E731
    both = randomization_check(model, factory, x, target, mode="both", seed=3)
    again = randomization_check(model, factory, x, target, mode="both", seed=3)
    np.testing.assert_array_equal(both["value"].to_numpy(), again["value"].to_numpy())
    first = both[both.depth == 1].pivot_table(index=["image", "similarity"], columns="mode", values="value")
    np.testing.assert_allclose(first["cascading"], first["independent"], equal_nan=True)


def test_metric_wrapper_tables_and_scores():
    model = norm_cnn(2)
    x = torch.randn(3, 3, 8, 8)
    explainer = create_method("gradcam", model)
    logits = model(x).detach()
    targets = logits.argmax(1)
    batch = SimpleNamespace(labels=targets, image_ids=["a", "b", "c"], indices=torch.arange(3))
    explained = ExplainedBatch(batch=batch, inputs=x, logits=logits, targets=targets,
                               maps={"gradcam": explainer(x, targets)}, model=SimpleNamespace(module=model),
                               explainers={"gradcam": explainer})
    metric = create_metric("randomization", max_images=2)
    assert metric.needs.explainers  # it re-runs the explainers: saved maps cannot serve it
    scores = metric.update(explained)["gradcam"]
    assert set(scores) == {"cascade_spearman_abs", "cascade_spearman_signed", "cascade_ssim"}
    assert scores["cascade_ssim"].shape == (3,) and torch.isnan(scores["cascade_ssim"][2])
    table = metric.tables()["randomization"]
    summary = summarize(table)
    assert set(table["image_id"]) == {"a", "b"} and set(table["mode"]) == {"cascading", "independent"}
    assert {"method", "mode", "depth", "layer", "similarity", "mean", "std", "count"} <= set(summary.columns)
    full = table[(table["mode"] == "cascading") & (table.depth == 3) & (table.similarity == "ssim")]
    np.testing.assert_allclose(full.sort_values("image_id")["value"], scores["cascade_ssim"][:2].numpy(), atol=1e-6)
    assert torch.isnan(metric.update(explained)["gradcam"]["cascade_ssim"]).all()  # max_images reached


# --------------------------------------------------------------------------- known outcome
@pytest.fixture(scope="module")
def synthetic_setup():
    from salbench.datasets import collate, create_dataset
    from salbench.models import create_model

    bundle = create_model("synthetic_cnn")  # the shipped weights
    dataset = create_dataset("synthetic", num_images=8, image_size=64)
    batch = collate([dataset[i] for i in range(8)])
    return bundle.module, bundle.normalize(batch.images), batch.labels


_CASCADES = {}


def cascade_summary(setup, method):
    """Mean similarity per cascading depth (rows) and similarity (columns), cached per method."""
    if method not in _CASCADES:
        model, x, labels = setup
        table = randomization_check(model, lambda m: create_method(method, m), x, labels, mode="cascading")
        _CASCADES[method] = summarize(table).pivot(index="depth", columns="similarity", values="mean")
    return _CASCADES[method]


def test_gradcam_and_saliency_decorrelate_under_cascading_randomization(synthetic_setup):
    for method in ("gradcam", "saliency"):
        if method not in METHODS:
            pytest.skip(f"{method} is not registered")
        summary = cascade_summary(synthetic_setup, method)
        full = summary.iloc[-1]
        assert full["spearman_abs"] < 0.45 and full["ssim"] < 0.3, (method, summary)
        assert summary["spearman_abs"].mean() < 0.4, (method, summary)


@pytest.mark.skipif("guided_backprop" not in METHODS, reason="guided_backprop is not registered")
def test_guided_backprop_stays_similar_when_top_layers_are_randomized(synthetic_setup):
    """Adebayo et al.: guided backprop barely changes when the top layers are random; Grad-CAM
    and saliency do. (On this 4-conv CNN guided backprop decorrelates too once the first conv
    layers are random: docs/faithfulness.md.)"""
    guided = cascade_summary(synthetic_setup, "guided_backprop")
    top = guided.loc[[1, 2]]  # logits layer, then the last conv block
    assert (top["spearman_abs"] > 0.6).all() and (top["ssim"] > 0.5).all(), guided
    for method in ("gradcam", "saliency"):
        other = cascade_summary(synthetic_setup, method)
        assert top["spearman_abs"].mean() > other.loc[[1, 2], "spearman_abs"].mean() + 0.2, (method, other)
        assert guided["spearman_abs"].mean() > other["spearman_abs"].mean() + 0.1, (method, other)
