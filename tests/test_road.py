"""ROAD (metrics/road.py): noisy linear imputation against hand-solved toys and a dense loop
reference, the noise's properties, an analytic model, the metric's plumbing, a job, option errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from salbench.metrics import create_metric
from salbench.metrics.road import (
    ImputationNotConverged,
    RemoveAndDebias,
    cg_linear_imputation,
    linear_imputation,
    neighbour_sum,
    noisy_linear_imputation,
    removed_counts,
    road_curves,
    road_curves_of_maps,
)

from helpers import model_explained, scores_of, tiny_net

D, G = 1.0 / 6.0, 1.0 / 12.0  # direct and diagonal neighbour weights


# --------------------------------------------------------------------------- references
def dense_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Independent loop reference: for each removed pixel i, x_i - sum_j (w_ij / W_i) x_j = 0
    over the in-image neighbours j (W_i: their total weight), solved densely per channel."""
    channels, height, width = image.shape
    unknown = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    index = {p: k for k, p in enumerate(unknown)}
    out = image.copy()
    if not unknown:
        return out
    for ch in range(channels):
        a = np.zeros((len(unknown), len(unknown)))
        b = np.zeros(len(unknown))
        for k, (r, c) in enumerate(unknown):
            neighbours = []
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (dr, dc) == (0, 0):
                        continue
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width:
                        neighbours.append(((rr, cc), D if dr == 0 or dc == 0 else G))
            total = sum(w for _, w in neighbours)
            a[k, k] = 1.0
            for (rr, cc), w in neighbours:
                if removed[rr, cc]:
                    a[k, index[(rr, cc)]] -= w / total
                else:
                    b[k] += w / total * image[ch, rr, cc]
        solution = np.linalg.solve(a, b)
        for k, (r, c) in enumerate(unknown):
            out[ch, r, c] = solution[k]
    return out


class BlobEvidenceModel(nn.Module):
    """logits = [mean of x over a fixed blob (all channels), 0]: the blob is the only evidence."""

    def __init__(self, blob: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", blob.float() / blob.sum())

    def forward(self, x):
        score = (x * self.weight).sum(dim=(1, 2, 3)) / x.shape[1]
        return torch.stack([score, torch.zeros_like(score)], dim=1)




# --------------------------------------------------------------------------- 1. hand toys
def test_interior_pixel_is_the_weighted_mean_of_its_eight_neighbours():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 3))
    removed = np.zeros((3, 3), dtype=bool)
    removed[1, 1] = True
    out = linear_imputation(image, removed)
    for ch in range(2):
        x = image[ch]
        direct = x[0, 1] + x[2, 1] + x[1, 0] + x[1, 2]
        diagonal = x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2]
        assert out[ch, 1, 1] == pytest.approx(D * direct + G * diagonal, abs=1e-14)  # weights sum to 1
    keep = ~removed
    assert np.array_equal(out[:, keep], image[:, keep])


def test_corner_pixel_renormalizes_the_weights_of_its_three_neighbours():
    image = np.arange(12, dtype=np.float64).reshape(1, 3, 4) ** 1.5
    for (r, c), direct, diagonal in [
        ((0, 0), [(0, 1), (1, 0)], [(1, 1)]),
        ((2, 3), [(2, 2), (1, 3)], [(1, 2)]),
    ]:
        removed = np.zeros((3, 4), dtype=bool)
        removed[r, c] = True
        x = image[0]
        # 1/6, 1/6, 1/12 over a total of 5/12: 2/5, 2/5, 1/5
        expected = 0.4 * sum(x[p] for p in direct) + 0.2 * sum(x[p] for p in diagonal)
        assert linear_imputation(image, removed)[0, r, c] == pytest.approx(expected, abs=1e-13)


def test_edge_pixel_renormalizes_over_five_neighbours():
    image = np.random.default_rng(1).standard_normal((1, 3, 3))
    removed = np.zeros((3, 3), dtype=bool)
    removed[0, 1] = True  # top edge: direct (0,0), (0,2), (1,1); diagonal (1,0), (1,2); total 2/3
    x = image[0]
    expected = (D * (x[0, 0] + x[0, 2] + x[1, 1]) + G * (x[1, 0] + x[1, 2])) / (3 * D + 2 * G)
    assert linear_imputation(image, removed)[0, 0, 1] == pytest.approx(expected, abs=1e-14)


def test_two_adjacent_removed_pixels_solve_the_two_by_two_system():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 4, 4))
    x = image[0]
    removed = np.zeros((4, 4), dtype=bool)
    removed[1, 1] = removed[1, 2] = True  # interior, horizontal neighbours: u = x[1,1], v = x[1,2]
    # u = s_u + v / 6 and v = s_v + u / 6 (each has full weight 1), s = weighted known neighbours
    s_u = D * (x[0, 1] + x[2, 1] + x[1, 0]) + G * (x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2])
    s_v = D * (x[0, 2] + x[2, 2] + x[1, 3]) + G * (x[0, 1] + x[0, 3] + x[2, 1] + x[2, 3])
    u = (36 * s_u + 6 * s_v) / 35
    v = (36 * s_v + 6 * s_u) / 35
    out = linear_imputation(image, removed)
    assert out[0, 1, 1] == pytest.approx(u, abs=1e-13) and out[0, 1, 2] == pytest.approx(v, abs=1e-13)


def test_every_pixel_removed_is_a_clear_error_and_counts_keep_one_pixel():
    with pytest.raises(ValueError, match="at least one kept pixel"):
        linear_imputation(np.zeros((1, 2, 2)), np.ones((2, 2), dtype=bool))
    assert removed_counts([0.1, 0.3, 0.5, 0.99], 10) == [1, 3, 5, 9]  # floor(f * HW + 0.5), at most HW - 1
    assert removed_counts([0.3], 100) == [30]  # 0.3 * 100 = 30.000000000000004: no off-by-one


# --------------------------------------------------------------------------- 2. dense reference
def masks_9x11():
    rng = np.random.default_rng(3)
    masks = {f"random-{p}": rng.random((9, 11)) < p for p in (0.1, 0.5, 0.9)}
    block = np.zeros((9, 11), dtype=bool)
    block[1:8, 2:10] = True  # large connected interior region
    masks["block"] = block
    corner = np.zeros((9, 11), dtype=bool)
    corner[:6, :7] = True  # connected region touching two borders
    masks["corner-region"] = corner
    one_kept = np.ones((9, 11), dtype=bool)
    one_kept[8, 10] = False  # everything but one pixel
    masks["one-kept"] = one_kept
    return masks


@pytest.mark.parametrize("name", list(masks_9x11()))
def test_imputation_equals_dense_loop_reference(name):
    removed = masks_9x11()[name]
    image = np.random.default_rng(4).standard_normal((3, 9, 11))
    expected = dense_reference(image, removed)
    np.testing.assert_allclose(linear_imputation(image, removed), expected, rtol=0, atol=1e-10)
    # the batched tensor path: float64 to 1e-10, float32 to 1e-5, noise off
    x64 = torch.from_numpy(image)[None]
    mask = torch.from_numpy(removed)[None]
    got64 = noisy_linear_imputation(x64, mask, noise=0.0)
    np.testing.assert_allclose(got64[0].numpy(), expected, rtol=0, atol=1e-10)
    x32 = x64.float()
    got32 = noisy_linear_imputation(x32, mask, noise=0.0)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32[0].double().numpy(), dense_reference(x32[0].double().numpy(), removed),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- 3. noise
def test_noise_has_the_std_on_imputed_pixels_only_and_is_seeded_per_image():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 48, 48, generator=generator)
    removed = torch.rand(3, 48, 48, generator=generator) < 0.5
    clean = noisy_linear_imputation(x, removed, noise=0.0, seeds=[10, 11, 12])
    noisy = noisy_linear_imputation(x, removed, noise=0.01, seeds=[10, 11, 12])
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(noisy[keep], x[keep]) and torch.equal(clean[keep], x[keep])  # untouched, bit for bit
    diff = (noisy - clean)[~keep].double()
    assert diff.numel() > 6000
    assert abs(diff.std().item() - 0.01) < 0.0005 and abs(diff.mean().item()) < 0.0005
    assert torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.01, seeds=[10, 11, 12]))
    other = noisy_linear_imputation(x, removed, noise=0.01, seeds=[10, 99, 12])
    assert torch.equal(other[0], noisy[0]) and not torch.equal(other[1], noisy[1])
    # image 1 alone, or first in another batch: the same numbers
    alone = noisy_linear_imputation(x[1:2], removed[1:2], noise=0.01, seeds=[11])
    assert torch.equal(alone[0], noisy[1])
    shuffled = noisy_linear_imputation(x[[2, 1]], removed[[2, 1]], noise=0.01, seeds=[12, 11])
    assert torch.equal(shuffled[1], noisy[1]) and torch.equal(shuffled[0], noisy[2])


def test_metric_curves_do_not_depend_on_batch_composition():
    net = tiny_net(1)
    generator = torch.Generator().manual_seed(6)
    x, maps = torch.randn(3, 3, 16, 16, generator=generator), torch.rand(3, 16, 16, generator=generator)
    options = dict(fractions=[0.2, 0.5, 0.8], seed=3)

    def curves(split: bool, seed: int = 3):
        metric = create_metric("road", **{**options, "seed": seed})
        if split:
            scores_of(metric, model_explained(net, x[2:], maps[2:], indices=[2]))
            scores_of(metric, model_explained(net, x[:2], maps[:2], indices=[0, 1]))
        else:
            scores_of(metric, model_explained(net, x, maps))
        return metric.tables()["curves"].sort_values(["curve", "image_id", "step"])["value"].to_numpy()

    whole = curves(split=False)
    np.testing.assert_array_equal(whole, curves(split=False))
    threaded = road_curves(net, x, maps, torch.zeros(3, dtype=torch.long), fractions=[0.2, 0.5, 0.8], workers=3)
    single = road_curves(net, x, maps, torch.zeros(3, dtype=torch.long), fractions=[0.2, 0.5, 0.8], workers=1)
    for order in ("morf", "lerf"):
        assert torch.equal(threaded[order], single[order])  # threads change the speed only
    np.testing.assert_allclose(curves(split=True), whole, rtol=0, atol=1e-6)
    assert np.abs(curves(split=False, seed=4) - whole).max() > 1e-7  # the seed reaches the noise


# --------------------------------------------------------------------------- 4. analytic model
def test_evidence_map_removes_the_evidence_under_morf_and_keeps_it_under_lerf():
    size = 24
    blob = torch.zeros(size, size)
    blob[6:14, 9:17] = 1.0
    model = BlobEvidenceModel(blob[None, None])
    generator = torch.Generator().manual_seed(7)
    x = 0.1 * torch.randn(2, 3, size, size, generator=generator) + 2.0 * blob  # evidence: the bright blob
    target = torch.zeros(2, dtype=torch.long)
    kwargs = dict(fractions=[0.1, 0.3, 0.5, 0.7, 0.9], score="logit", seeds=[0, 1])
    ideal = road_curves(model, x, blob.expand(2, size, size), target, **kwargs)
    inverse = road_curves(model, x, -blob.expand(2, size, size), target, **kwargs)
    clean = model(x)[:, 0]
    # MoRF removes the blob (10% = 58 of its 64 pixels first): the evidence is gone from 20% on
    assert bool((ideal["morf"][:, 1:].abs() < 0.05).all())
    # LeRF removes the background first; the kept blob is the imputation's boundary: unchanged
    torch.testing.assert_close(ideal["lerf"], clean[:, None].expand(2, 5), atol=0.05, rtol=0)
    ideal_gap = ideal["lerf"].mean(1) - ideal["morf"].mean(1)
    inverse_gap = inverse["lerf"].mean(1) - inverse["morf"].mean(1)
    assert bool((ideal_gap > 1.5).all()) and bool((inverse_gap < -1.0).all())
    for seed in range(4):
        random_map = torch.rand(2, size, size, generator=torch.Generator().manual_seed(100 + seed))
        other = road_curves(model, x, random_map, target, **kwargs)
        gap = other["lerf"].mean(1) - other["morf"].mean(1)
        assert bool((ideal["morf"].mean(1) < other["morf"].mean(1) - 0.5).all())
        assert bool((ideal_gap > gap + 1.0).all()) and bool((inverse_gap < gap).all())


# --------------------------------------------------------------------------- 5. metric and job
def test_metric_equals_its_definition_built_from_the_pieces():
    """Scores from create_metric('road') equal imputations built here (stable numpy ranking, the
    count rule, the metric's seeds) fed to the model one image at a time."""
    net = tiny_net(2)
    generator = torch.Generator().manual_seed(8)
    x, maps = torch.randn(2, 3, 12, 12, generator=generator), torch.rand(2, 12, 12, generator=generator)
    fractions = [0.3, 0.5, 0.7]  # 43.2, 72, 100.8 of 144 pixels: 43, 72, 101 removed
    metric = create_metric("road", fractions=fractions, seed=5, batch_size=4)
    out = scores_of(metric, model_explained(net, x, maps, indices=[7, 9]))
    predicted = net(x).argmax(1)
    for b, index in enumerate([7, 9]):
        for order, sign in (("morf", -1.0), ("lerf", 1.0)):
            ranking = np.argsort(sign * maps[b].flatten().numpy(), kind="stable")
            values = []
            for f in fractions:
                removed = np.zeros(144, dtype=bool)
                removed[ranking[: int(np.floor(f * 144 + 0.5))]] = True
                imputed = noisy_linear_imputation(x[b : b + 1], torch.from_numpy(removed.reshape(1, 12, 12)),
                                                  noise=0.01, seeds=[5 * 1_000_003 + index])
                with torch.no_grad():
                    values.append(float(net(imputed).softmax(1)[0, predicted[b]]))
            assert float(out[f"road_{order}_auc"][b]) == pytest.approx(np.mean(values), abs=1e-6)
    torch.testing.assert_close(out["road_gap"], out["road_lerf_auc"] - out["road_morf_auc"])


def test_metric_layout_protocol_scores_and_tables():
    net = tiny_net(3)
    generator = torch.Generator().manual_seed(9)
    x, maps = torch.randn(3, 3, 10, 10, generator=generator), torch.rand(3, 10, 10, generator=generator)
    maps[2, 4, 4] = float("nan")
    metric = create_metric("road", fractions=[0.2, 0.6], score="correct", target="label",
                           batch_size=5)
    labels = torch.tensor([0, 1, 2])
    out = scores_of(metric, model_explained(net, x, maps, labels=labels))
    assert set(out) == {"road_morf_auc", "road_lerf_auc", "road_gap"}
    assert all(v.shape == (3,) for v in out.values())
    assert torch.isnan(out["road_gap"][2]) and not torch.isnan(out["road_gap"][:2]).any()
    assert set(out["road_morf_auc"][:2].tolist()) <= {0.0, 0.5, 1.0}  # correct: 0/1 per fraction
    info = {s.name: s for s in metric.scores}
    assert not info["road_morf_auc"].higher_is_better and info["road_lerf_auc"].higher_is_better
    assert info["road_gap"].higher_is_better and info["road_morf_accuracy_20"].scope == "dataset"
    table = metric.tables()["curves"]
    assert list(table.columns) == ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
    assert len(table) == 3 * 2 * 2 and set(table.curve) == {"morf", "lerf"} and set(table.fraction) == {0.2, 0.6}
    dataset = metric.compute()["m"]
    assert set(dataset) == {f"road_{o}_accuracy_{p}" for o in ("morf", "lerf") for p in ("20", "60")}
    finite = table[table.image_id != "img2"]
    for (order, fraction), group in finite.groupby(["curve", "fraction"]):
        assert dataset[f"road_{order}_accuracy_{round(fraction * 100)}"] == pytest.approx(group.value.mean())
    protocol = metric.protocol()
    assert protocol["fractions"] == [0.2, 0.6] and protocol["noise"] == 0.01 and protocol["score"] == "correct"
    assert "mean" in protocol["auc"] and metric.preset == "custom" and metric.needs.maps == "label"
    json.dumps(protocol)
    default = RemoveAndDebias()
    assert default.preset == "road" and default.needs.maps == "predicted" and default.needs.model
    assert [s.name for s in default.scores] == ["road_morf_auc", "road_lerf_auc", "road_gap"]
    assert RemoveAndDebias(target="explained").needs.maps == "target"
    only = create_metric("road", orders=["lerf"], fractions=[0.5])
    assert set(scores_of(only, model_explained(net, x[:1], maps[:1]))) == {"road_lerf_auc"}
    # several methods in one update: each method's rows, and its own curves
    both = create_metric("road", fractions=[0.2, 0.6], score="correct", target="label", batch_size=5)
    pair = both.update(model_explained(net, x, {"a": maps, "b": maps.flip(-1)}, labels=labels))
    assert set(pair) == {"a", "b"} and set(both.compute()) == {"a", "b"}
    for key, value in pair["a"].items():
        torch.testing.assert_close(value, out[key], equal_nan=True)  # same as alone
    assert set(both.tables()["curves"].method) == {"a", "b"}


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_equal_removed_sets_are_imputed_once_and_give_the_same_curves(solver, monkeypatch):
    """A map, twice it and its square remove the same pixels at every fraction and order: each
    (image, removed set) is imputed and scored once, and every map's curves equal the map's own
    call exactly; a NaN map stays NaN and gives no value to the others."""
    import salbench.metrics.road as road

    net = tiny_net(6)
    generator = torch.Generator().manual_seed(12)
    x, base = torch.randn(2, 3, 8, 8, generator=generator), torch.rand(2, 8, 8, generator=generator)
    other = torch.rand(2, 8, 8, generator=generator)
    broken = base.clone()
    broken[1, 0, 0] = float("nan")
    maps = {"a": base, "twice": 2 * base, "square": base ** 2, "other": other, "broken": broken}
    options = dict(fractions=[0.25, 0.5, 0.75], seeds=[3, 4], batch_size=5, solver=solver, workers=1)
    imputed = []
    if solver == "direct":
        original = road._impute_one
        monkeypatch.setattr(road, "_impute_one", lambda *args: imputed.append(1) or original(*args))
    together = road_curves_of_maps(net, x, maps, torch.tensor([0, 1]), **options)
    if solver == "direct":
        # distinct (image, order, fraction) sets: base's and other's, 2 images x 2 orders x 3 fractions
        # each (unless other meets base); broken's image 0 equals base's, its image 1 is NaN
        assert len(imputed) <= 2 * 2 * 2 * 3 and len(imputed) >= 2 * 2 * 3
    for key, value in maps.items():
        alone = road_curves(net, x, value, torch.tensor([0, 1]), **options)
        for order in ("morf", "lerf"):
            torch.testing.assert_close(together[key][order], alone[order], rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(together["broken"]["morf"][1]).all() and not torch.isnan(together["broken"]["morf"][0]).any()


def test_metric_makes_no_tensor_off_the_input_device():
    net = tiny_net(4)
    generator = torch.Generator().manual_seed(10)
    x, maps = torch.randn(2, 3, 8, 8, generator=generator), torch.rand(2, 8, 8, generator=generator)
    explained = model_explained(net, x, maps)
    reference = scores_of(create_metric("road", fractions=[0.5]), explained)
    with torch.device("meta"):  # a factory call without device= would land on meta
        got = scores_of(create_metric("road", fractions=[0.5]), explained)
    for key, value in reference.items():
        assert got[key].device == x.device
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_job_through_the_runner_records_road(tmp_path, compose_config):
    import pandas as pd

    from salbench.harness.runner import run_job

    cfg = compose_config(["debug=fast", "model.pretrained=false", "method=[gradcam,random]", "metric=[road]",
                          "metric.road.fractions=[0.25,0.75]", "dataset.limit=4", "gallery_images=0"])
    out = tmp_path / "job"
    scores = run_job(cfg, out)
    road = scores[scores["metric"] == "road"]
    assert len(road) == 4 * 2 * 3 and set(road["score"]) == {"road_morf_auc", "road_lerf_auc", "road_gap"}
    assert (road["target_rule"] == "predicted").all() and (road["target"] == road["predicted"]).all()
    protocol = json.loads(road["protocol"].iloc[0])
    assert protocol["fractions"] == [0.25, 0.75] and protocol["noise"] == 0.01 and (road["preset"] == "custom").all()
    gap = road[road.score == "road_gap"].set_index(["method", "image_index"])["value"]
    morf = road[road.score == "road_morf_auc"].set_index(["method", "image_index"])["value"]
    lerf = road[road.score == "road_lerf_auc"].set_index(["method", "image_index"])["value"]
    np.testing.assert_allclose(gap, lerf - morf, atol=1e-6)
    assert road["value"].notna().all()
    curves = pd.read_parquet(out / "curves.parquet")  # one table for every method and metric
    assert len(curves) == 2 * 4 * 2 * 2 and set(curves.curve) == {"morf", "lerf"}
    assert set(curves.method) == {"gradcam", "random"} and set(curves.metric) == {"road"}


# --------------------------------------------------------------------------- 6. option errors
@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"fractions": [0.0, 0.5]}, r"fraction 0\.0 outside \(0, 1\)", id="fraction-zero"),
        pytest.param({"fractions": [0.5, 1.0]}, r"fraction 1\.0 outside \(0, 1\)", id="fraction-one"),
        pytest.param({"fractions": [1.5]}, r"fraction 1\.5 outside \(0, 1\)", id="fraction-above"),
        pytest.param({"fractions": []}, r"at least one removal fraction in \(0, 1\)", id="no-fraction"),
        pytest.param({"fractions": [0.5, 0.3]}, r"strictly increasing; got \[0\.5, 0\.3\]", id="decreasing"),
        pytest.param({"orders": ["morf", "middle"]}, r"unknown order 'middle'; valid: morf, lerf", id="order"),
        pytest.param({"orders": []}, r"at least one of morf, lerf", id="no-order"),
        pytest.param({"score": "prob"}, r"unknown score 'prob'; valid: softmax, logit, correct", id="score"),
        pytest.param({"target": "foo"}, r"unknown target 'foo'; valid: predicted, label, explained", id="target"),
        pytest.param({"tie_break": "middle"}, r"unknown tie_break 'middle'; valid: first, last", id="tie-break"),
        pytest.param({"noise": -0.1}, r"noise must be a finite std >= 0; got -0\.1", id="noise"),
        pytest.param({"autocast": "fp8"}, r"unknown autocast 'fp8'", id="autocast"),
        pytest.param({"batch_size": 0}, r"batch_size must be >= 1; got 0", id="batch-size"),
        pytest.param({"workers": 0}, r"workers must be >= 1; got 0", id="workers"),
        pytest.param({"solver": "lu"}, r"unknown solver 'lu'; valid: direct, cg", id="solver"),
        pytest.param({"solver": "cg", "cg_tol": 0.0}, r"cg_tol must be .* in \(0, 1\).*; got 0\.0", id="cg-tol-zero"),
        pytest.param({"cg_tol": -1e-6}, r"cg_tol must be .*; got -1e-06", id="cg-tol-negative"),
        pytest.param({"cg_tol": 1.0}, r"cg_tol must be .*; got 1\.0", id="cg-tol-one"),
        pytest.param({"cg_max_iter": 0}, r"cg_max_iter must be an integer >= 1.*; got 0", id="cg-max-iter-zero"),
        pytest.param({"cg_max_iter": -5}, r"cg_max_iter must be an integer >= 1.*; got -5", id="cg-max-iter-negative"),
        pytest.param({"cg_max_iter": 2.5}, r"cg_max_iter must be an integer >= 1.*; got 2\.5", id="cg-max-iter-float"),
        pytest.param({"cg_batch_size": 0}, r"cg_batch_size must be an integer >= 1 or null; got 0", id="cg-batch-size"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(options, message):
    with pytest.raises(ValueError, match=message):
        create_metric("road", **options)


def test_bad_solver_options_of_the_functions():
    x, removed = torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"unknown solver 'CG'; valid: direct, cg"):
        noisy_linear_imputation(x, removed, solver="CG")
    with pytest.raises(ValueError, match=r"cg_tol must be .*; got 0"):
        cg_linear_imputation(x, removed, tol=0)
    with pytest.raises(ValueError, match=r"cg_max_iter must be an integer >= 1.*; got 0"):
        road_curves(tiny_net(), x.expand(1, 3, 4, 4), torch.rand(1, 4, 4), torch.zeros(1, dtype=torch.long),
                    solver="cg", cg_max_iter=0)


# --------------------------------------------------------------------------- 7. solver: cg
# Measured: cg at the default cg_tol = 1e-7 differs from direct by at most 6e-7 on the imputed
# pixels of this file's 40 x 48 cases, 4.7e-6 at 224 px (docs); the tests allow 1e-4.
CG_ATOL = 1e-4


def smooth_map(height: int, width: int, seed: int) -> torch.Tensor:
    """[H, W]: a bicubic upsampling of 5 x 5 uniform noise (MoRF removes large contiguous regions)."""
    small = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0, 0]


def cg_masks(height: int = 40, width: int = 48):
    rng = np.random.default_rng(11)
    masks = {f"random-{p}": rng.random((height, width)) < p for p in (0.1, 0.5, 0.9)}
    ranking = torch.argsort(-smooth_map(height, width, 12).flatten(), stable=True).numpy()
    for f in (0.1, 0.5, 0.9):  # MoRF of a smooth map: contiguous regions, the slowest for cg
        removed = np.zeros(height * width, dtype=bool)
        removed[ranking[: int(f * height * width)]] = True
        masks[f"smooth-morf-{f}"] = removed.reshape(height, width)
    border = np.zeros((height, width), dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    masks["border-ring"] = border
    masks["all-but-border"] = ~border
    one_kept = np.ones((height, width), dtype=bool)
    one_kept[0, 0] = False  # everything but one corner pixel: the worst-conditioned system
    masks["one-kept-corner"] = one_kept
    masks["nothing-removed"] = np.zeros((height, width), dtype=bool)
    return masks


def test_neighbour_sum_is_the_zero_padded_3x3_convolution():
    v = torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(24))
    kernel = torch.tensor([[G, D, G], [D, 0.0, D], [G, D, G]], dtype=torch.float64).view(1, 1, 3, 3)
    expected = torch.nn.functional.conv2d(v.reshape(6, 1, 7, 9), kernel, padding=1).view(2, 3, 7, 9)
    torch.testing.assert_close(neighbour_sum(v), expected, rtol=0, atol=1e-15)
    weight_sums = neighbour_sum(torch.ones(1, 1, 3, 4, dtype=torch.float64))[0, 0]
    assert weight_sums[0, 0] == pytest.approx(5 / 12) and weight_sums[0, 1] == pytest.approx(2 / 3)
    assert weight_sums[1, 1] == pytest.approx(1.0)


def test_cg_equals_direct_on_masks_of_several_shapes_in_one_batch():
    masks = cg_masks()
    image = np.random.default_rng(13).standard_normal((3, 40, 48))
    image[2] = 0.5  # a constant channel: the solution is that constant
    x = torch.from_numpy(image)[None].expand(len(masks), -1, -1, -1)
    removed = torch.from_numpy(np.stack(list(masks.values())))
    got, iterations = cg_linear_imputation(x, removed)
    assert got.dtype == torch.float64 and iterations.shape == (len(masks), 3)
    for k, (name, mask) in enumerate(masks.items()):
        expected = linear_imputation(image, mask)
        difference = np.abs(got[k].numpy() - expected).max()
        assert difference <= CG_ATOL, (name, difference)
        assert np.array_equal(got[k].numpy()[:, ~mask], image[:, ~mask]), name  # kept pixels exactly
    assert (iterations[-1] == 0).all()  # nothing removed: b = 0, nothing to iterate
    names = list(masks)
    # contiguous regions take more iterations than scattered pixels of the same count
    assert iterations[names.index("smooth-morf-0.9")].max() > 2 * iterations[names.index("random-0.9")].max()


@pytest.mark.parametrize("name", list(masks_9x11()))
def test_cg_equals_the_dense_reference(name):
    removed = masks_9x11()[name]
    image = np.random.default_rng(4).standard_normal((3, 9, 11))
    got, _ = cg_linear_imputation(torch.from_numpy(image)[None], torch.from_numpy(removed)[None])
    np.testing.assert_allclose(got[0].numpy(), dense_reference(image, removed), rtol=0, atol=CG_ATOL)


def test_cg_reproduces_the_hand_toys():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 4, 4))
    x = image[0]
    cases = []
    interior = np.zeros((4, 4), dtype=bool)
    interior[1, 1] = True
    cases.append((interior, {(1, 1): D * (x[0, 1] + x[2, 1] + x[1, 0] + x[1, 2])
                             + G * (x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2])}))
    corner = np.zeros((4, 4), dtype=bool)
    corner[0, 0] = True
    cases.append((corner, {(0, 0): 0.4 * (x[0, 1] + x[1, 0]) + 0.2 * x[1, 1]}))
    edge = np.zeros((4, 4), dtype=bool)
    edge[0, 1] = True
    cases.append((edge, {(0, 1): (D * (x[0, 0] + x[0, 2] + x[1, 1]) + G * (x[1, 0] + x[1, 2])) / (3 * D + 2 * G)}))
    pair = np.zeros((4, 4), dtype=bool)
    pair[1, 1] = pair[1, 2] = True
    s_u = D * (x[0, 1] + x[2, 1] + x[1, 0]) + G * (x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2])
    s_v = D * (x[0, 2] + x[2, 2] + x[1, 3]) + G * (x[0, 1] + x[0, 3] + x[2, 1] + x[2, 3])
    cases.append((pair, {(1, 1): (36 * s_u + 6 * s_v) / 35, (1, 2): (36 * s_v + 6 * s_u) / 35}))
    removed = torch.from_numpy(np.stack([mask for mask, _ in cases]))
    got, iterations = cg_linear_imputation(torch.from_numpy(image)[None].expand(len(cases), -1, -1, -1), removed)
    for k, (_, expected) in enumerate(cases):
        for (r, c), value in expected.items():
            assert float(got[k, 0, r, c]) == pytest.approx(value, abs=1e-12)
    # one unknown: Jacobi-preconditioned CG is exact after one step; two: at most two
    assert iterations[:3].max() == 1 and iterations[3].max() <= 2


def test_cg_edge_cases_every_pixel_removed_and_empty_batch():
    with pytest.raises(ValueError, match="at least one kept pixel"):
        cg_linear_imputation(torch.zeros(2, 1, 3, 3), torch.tensor([[False] * 3] * 3 + [[True] * 3] * 3).view(2, 3, 3))
    got, iterations = cg_linear_imputation(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool))
    assert got.shape == (0, 3, 4, 4) and iterations.shape == (0, 3)


def test_cg_noisy_imputation_matches_direct_with_the_same_noise():
    generator = torch.Generator().manual_seed(14)
    x = torch.randn(3, 3, 32, 32, generator=generator)
    maps = torch.stack([smooth_map(32, 32, 15), torch.rand(32, 32, generator=generator), smooth_map(32, 32, 16)])
    ranks = maps.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)
    removed = (ranks < torch.tensor([[102], [512], [922]])).view(3, 32, 32)
    direct = noisy_linear_imputation(x, removed, noise=0.01, seeds=[3, 4, 5])
    cg = noisy_linear_imputation(x, removed, noise=0.01, seeds=[3, 4, 5], solver="cg")
    assert cg.dtype == x.dtype and cg.device == x.device
    keep = ~removed[:, None].expand_as(x)
    assert torch.equal(cg[keep], x[keep])
    assert (cg - direct).abs().max().item() <= CG_ATOL
    # the noise is the same field: cg's noise = direct's noise to float32 rounding
    noise_cg = cg - noisy_linear_imputation(x, removed, noise=0.0, seeds=[3, 4, 5], solver="cg")
    noise_direct = direct - noisy_linear_imputation(x, removed, noise=0.0, seeds=[3, 4, 5])
    assert (noise_cg - noise_direct).abs().max().item() <= 1e-6 and noise_cg[~keep].std().item() > 0.009


@pytest.mark.parametrize("score, atol", [pytest.param("softmax", 1e-5, id="softmax"),
                                         pytest.param("logit", 1e-4, id="logit")])
def test_metric_scores_with_cg_match_direct(score, atol):
    net = tiny_net(5)
    generator = torch.Generator().manual_seed(17)
    x = torch.randn(3, 3, 24, 24, generator=generator)
    maps = torch.stack([smooth_map(24, 24, 18), torch.rand(24, 24, generator=generator), smooth_map(24, 24, 19)])
    maps[2, 3, 3] = float("nan")
    explained = model_explained(net, x, maps, indices=[4, 5, 6])
    direct = create_metric("road", score=score, batch_size=16, seed=2)
    cg = create_metric("road", score=score, batch_size=16, seed=2, solver="cg", cg_batch_size=5)
    expected, got = scores_of(direct, explained), scores_of(cg, explained)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, equal_nan=True)
    assert torch.isnan(got["road_gap"][2])
    # measured: the curves differ by at most 3e-7 (softmax) here
    np.testing.assert_allclose(cg.tables()["curves"]["value"], direct.tables()["curves"]["value"], rtol=0, atol=atol)
    table = cg.tables()["curves"]
    assert list(table.columns) == ["image_id", "method", "metric", "curve", "step", "fraction", "value", "cg_iterations"]
    assert len(table) == 3 * 2 * 9 and (table[table.image_id == "img6"].cg_iterations == 0).all()
    finite = table[table.image_id != "img6"]
    assert (finite.cg_iterations > 0).all() and cg.cg_iterations_max == finite.cg_iterations.max()
    assert "cg_iterations" not in direct.tables()["curves"] and direct.cg_iterations_max is None
    protocol, reference = cg.protocol(), direct.protocol()
    assert protocol["solver"] == "cg" and protocol["cg_tol"] == 1e-7 and protocol["cg_max_iter"] == 5000
    assert "conjugate gradient" in protocol["imputation"] and "sparse LU" in reference["imputation"]
    assert reference["solver"] == "direct" and "cg_tol" not in reference
    assert cg.preset == direct.preset  # the same protocol, solved another way
    json.dumps(protocol)


def test_cg_stops_with_a_clear_error_when_it_does_not_converge():
    image = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(20))
    removed = torch.zeros(2, 24, 24, dtype=torch.bool)
    removed[0, 4:20, 4:20] = True  # 256 unknowns: not solved in 3 iterations
    removed[1, 10, 10] = True  # 1 unknown: solved in 1
    with pytest.raises(ImputationNotConverged, match=r"did not converge: 3 of 6 systems .* above cg_tol=1e-07 "
                                                     r"after cg_max_iter=3 iterations .* solver: direct"):
        cg_linear_imputation(image, removed, max_iter=3)
    _, iterations = cg_linear_imputation(image[1:], removed[1:], max_iter=1)
    assert iterations.tolist() == [[1, 1, 1]]
    net = tiny_net(6)
    metric = create_metric("road", fractions=[0.5], solver="cg", cg_max_iter=1)
    with pytest.raises(ImputationNotConverged, match="cg_max_iter=1"):
        scores_of(metric, model_explained(net, image, torch.rand(2, 24, 24)))
    with pytest.raises(RuntimeError):  # a RuntimeError for callers that catch those
        noisy_linear_imputation(image, removed, solver="cg", cg_max_iter=2)


def test_cg_makes_no_tensor_off_the_input_device():
    net = tiny_net(4)
    generator = torch.Generator().manual_seed(10)
    x, maps = torch.randn(2, 3, 8, 8, generator=generator), torch.rand(2, 8, 8, generator=generator)
    explained = model_explained(net, x, maps)
    reference = scores_of(create_metric("road", fractions=[0.5], solver="cg"), explained)
    with torch.device("meta"):
        got = scores_of(create_metric("road", fractions=[0.5], solver="cg"), explained)
    for key, value in reference.items():
        assert got[key].device == x.device
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cg_on_cuda_matches_direct_on_cpu():
    masks = cg_masks()
    image = np.random.default_rng(21).standard_normal((3, 40, 48))
    x = torch.from_numpy(image).float()[None].expand(len(masks), -1, -1, -1).contiguous()
    removed = torch.from_numpy(np.stack(list(masks.values())))
    seeds = list(range(len(masks)))
    expected = noisy_linear_imputation(x, removed, noise=0.01, seeds=seeds)
    got = noisy_linear_imputation(x.cuda(), removed.cuda(), noise=0.01, seeds=seeds, solver="cg")
    assert got.device.type == "cuda"
    assert (got.cpu() - expected).abs().max().item() <= CG_ATOL
    net = tiny_net(7)
    generator = torch.Generator().manual_seed(22)
    x, maps = torch.randn(3, 3, 32, 32, generator=generator), torch.rand(3, 32, 32, generator=generator)
    maps[0] = smooth_map(32, 32, 23)
    reference = scores_of(create_metric("road", batch_size=20), model_explained(net, x, maps))
    gpu_net = tiny_net(7).cuda()
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        got = scores_of(create_metric("road", batch_size=20, solver="cg"), 
            model_explained(gpu_net, x.cuda(), maps.cuda()))
    for key, value in reference.items():
        assert got[key].device.type == "cuda"
        torch.testing.assert_close(got[key].cpu(), value, rtol=0, atol=1e-4)  # as test_devices' road tolerance
