"""Complexity (sparseness, complexity, effective complexity) and mask relevance (relevance mass,
relevance rank, mask AUC) against Quantus 0.6 and scikit-learn on shared seeded maps, float64
transcriptions of the papers' formulas, hand-computed toys, and Quantus' known deviations
(the +1e-7 of its Gini index, its max normalization over the whole batch)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from salbench.metrics import create_metric
from salbench.metrics.functional import (
    auc_mask,
    complexity,
    effective_complexity,
    relevance_mass,
    relevance_rank,
    sparseness,
)
from helpers import explained, scores_of, small_cnn, synthetic_batch

quantus = pytest.importorskip("quantus")


def shared_case(seed=0, batch=5, size=16):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    maps = torch.rand(batch, size, size, generator=generator) ** 3  # skewed, no ties
    masks = torch.rand(batch, size, size, generator=generator) > 0.7
    return x, maps, masks


def run_quantus(metric, x, maps, masks=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=small_cnn(), x_batch=x.numpy(), y_batch=np.zeros(len(x), dtype=int),
                     a_batch=maps.numpy()[:, None].copy(), s_batch=None if masks is None else masks.numpy()[:, None],
                     device="cpu")
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------- transcriptions
def gini_loop(a):
    values = np.sort(np.abs(np.asarray(a, np.float64)).ravel())
    n = len(values)
    return sum((2 * (i + 1) - n - 1) * v for i, v in enumerate(values)) / (n * values.sum())


def entropy_loop(a):
    p = np.abs(np.asarray(a, np.float64)).ravel()
    p = p / p.sum()
    return -sum(v * np.log(v) for v in p if v > 0)


def test_complexity_family_equals_float64_transcriptions_and_toys():
    _, maps, _ = shared_case()
    maps = maps - 0.2  # signed values: the absolute value counts
    np.testing.assert_allclose(sparseness(maps).numpy(), [gini_loop(m) for m in maps.numpy()], rtol=1e-12)
    np.testing.assert_allclose(complexity(maps).numpy(), [entropy_loop(m) for m in maps.numpy()], rtol=1e-12)
    assert effective_complexity(maps, 0.3).tolist() == [float((np.abs(m) > 0.3).sum()) for m in maps.numpy()]
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = 5.0
    uniform = torch.ones(1, 4, 4)
    assert sparseness(one_hot).item() == pytest.approx(1 - 1 / 16) and sparseness(uniform).item() == 0.0
    assert complexity(one_hot).item() == 0.0 and complexity(uniform).item() == pytest.approx(np.log(16))
    assert torch.isnan(sparseness(torch.zeros(1, 4, 4))).all() and torch.isnan(complexity(torch.zeros(1, 4, 4))).all()


def test_complexity_family_equals_quantus():
    x, maps, _ = shared_case()
    np.testing.assert_allclose(sparseness(maps).numpy(), run_quantus(quantus.Sparseness(), x, maps), atol=1e-6)
    np.testing.assert_allclose(complexity(maps).numpy(), run_quantus(quantus.Complexity(), x, maps), atol=1e-6)
    q = run_quantus(quantus.EffectiveComplexity(eps=0.1, normalise=False), x, maps)
    assert effective_complexity(maps, 0.1).numpy().tolist() == q.tolist()
    # one image per Quantus call: its batch-wide max normalization is then the per-image one
    metric = create_metric("complexity", normalize="max", eps=0.05)
    ours = scores_of(metric, explained(synthetic_batch(len(maps), size=16), maps * 7.0))["effective_complexity"]
    alone = [run_quantus(quantus.EffectiveComplexity(eps=0.05), x[i:i + 1], maps[i:i + 1] * 7.0)[0]
             for i in range(len(maps))]
    assert ours.tolist() == alone


def test_quantus_deviations_are_shown():
    """Quantus 0.6's Gini adds 1e-7 to every value (so a map of tiny magnitude scores near 0), and
    its normalise_by_max takes the max over the whole batch (an image's effective complexity
    changes with the other images of the batch). salbench is scale invariant and per image."""
    x, maps, _ = shared_case()
    tiny = maps * 1e-7
    q = run_quantus(quantus.Sparseness(normalise=False), x, tiny)
    assert np.abs(q - sparseness(tiny).numpy()).max() > 0.1  # Quantus: far from the Gini index
    np.testing.assert_allclose(sparseness(tiny).numpy(), sparseness(maps).numpy(), rtol=1e-6)  # float32 product
    loud = maps.clone()
    loud[0] *= 100.0  # one image with a large scale in the batch
    together = run_quantus(quantus.EffectiveComplexity(eps=0.05), x, loud)
    alone = run_quantus(quantus.EffectiveComplexity(eps=0.05), x[1:2], loud[1:2])
    assert together[1] != alone[0]  # Quantus: image 1's score depends on image 0
    metric = create_metric("complexity", eps=0.05)
    batch = synthetic_batch(len(maps), size=16)
    whole = scores_of(metric, explained(batch, loud))["effective_complexity"]
    assert whole[1].item() == alone[0]


def test_relevance_against_quantus_and_sklearn():
    x, maps, masks = shared_case(seed=1)
    q_mass = run_quantus(quantus.RelevanceMassAccuracy(normalise=False), x, maps, masks)
    q_rank = run_quantus(quantus.RelevanceRankAccuracy(normalise=False), x, maps, masks)
    q_auc = run_quantus(quantus.AUC(normalise=False), x, maps, masks)
    np.testing.assert_allclose(relevance_mass(maps, masks).numpy(), q_mass, atol=1e-6)
    np.testing.assert_allclose(relevance_rank(maps, masks).numpy(), q_rank, atol=1e-12)
    np.testing.assert_allclose(auc_mask(maps, masks).numpy(), q_auc, atol=1e-12)
    sk = [roc_auc_score(m.ravel(), a.ravel()) for m, a in zip(masks.numpy(), maps.numpy())]
    np.testing.assert_allclose(auc_mask(maps, masks).numpy(), sk, atol=1e-12)


def test_relevance_toys_ties_and_undefined():
    maps = torch.tensor([[[4.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]]])
    masks = torch.tensor([[[True, False], [False, True]], [[True, False], [False, False]],
                          [[False, False], [False, False]]])
    assert relevance_mass(maps, masks)[:2].tolist() == [5 / 6, 1 / 4]
    assert relevance_rank(maps, masks)[:2].tolist() == [0.5, 1.0]  # ties: row-major first
    auc = auc_mask(maps, masks)
    assert auc[0].item() == pytest.approx(roc_auc_score([1, 0, 0, 1], [4, 0, 1, 1]))  # a tie counts 1/2
    assert auc[1].item() == 0.5 and torch.isnan(auc[2]) and torch.isnan(relevance_mass(maps, masks)[2])
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    assert torch.isnan(auc_mask(maps[:1], full)).all() and relevance_rank(maps[:1], full).item() == 1.0


def test_mask_relevance_metric_positive_only_and_boxes():
    batch = synthetic_batch(3, size=32)
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(3, 32, 32, generator=generator)
    got = scores_of(create_metric("mask_relevance"), explained(batch, maps))
    np.testing.assert_allclose(got["relevance_mass"].numpy(),
                               relevance_mass(maps.clamp_min(0), batch.masks).float().numpy(), rtol=1e-6)
    assert got["auc_mask"].tolist() == auc_mask(maps, batch.masks).float().tolist()
    signed = scores_of(create_metric("mask_relevance", positive_only=False), explained(batch, maps))
    assert signed["relevance_mass"].tolist() != got["relevance_mass"].tolist()
    boxes = scores_of(create_metric("mask_relevance", ground_truth="boxes"), explained(batch, maps))
    from salbench.metrics.pointing import boxes_to_mask

    box_masks = torch.stack([boxes_to_mask(b, (32, 32)) for b in batch.boxes])
    assert boxes["relevance_rank"].tolist() == relevance_rank(maps.clamp_min(0), box_masks).float().tolist()
    batch.masks = None
    with pytest.raises(ValueError, match="ground_truth=boxes"):
        scores_of(create_metric("mask_relevance"), explained(batch, maps))
