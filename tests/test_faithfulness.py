"""Deletion / insertion curves (metrics/deletion.py) against an independent loop reimplementation
of RISE's published CausalMetric, an analytic linear model, and invariances."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from salbench.metrics import create_metric
from salbench.metrics.deletion import (
    DeletionInsertion,
    curve_auc,
    gaussian_blur,
    make_substrate,
    perturbation_curve,
    perturbation_curves,
    pixel_ranks,
    resolve_step,
)
from salbench.metrics import perturbation
from salbench.metrics.perturbation import distinct_prefixes

from helpers import model_explained, scores_of, tiny_net


# --------------------------------------------------------------------------- references
def reference_blur(x: torch.Tensor, klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's substrate: gaussian_filter of a delta as kernel, a full 3 x 3 channel-diagonal
    conv2d with zero padding."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    k = gaussian_filter(delta, nsig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return nn.functional.conv2d(x, torch.from_numpy(kern.astype("float32")), padding=klen // 2)


def reference_causal_metric(model, image, explanation, mode, step, substrate_fn):
    """Loop transcription of RISE's CausalMetric.single_run for one image [1, 3, H, W]:
    softmax model output, class predicted on the clean image, in-place pixel replacement in
    order of decreasing saliency (np.flip of a stable argsort)."""
    height, width = image.shape[-2:]
    hw = height * width
    with torch.no_grad():
        c = int(model(image).softmax(1).argmax(1))
        n_steps = (hw + step - 1) // step
        if mode == "del":
            start, finish = image.clone(), substrate_fn(image)
        else:
            start, finish = substrate_fn(image), image.clone()
        start_np = start.numpy().reshape(1, 3, hw).copy()
        finish_np = finish.numpy().reshape(1, 3, hw)
        order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1, kind="stable"), axis=-1)
        scores = np.empty(n_steps + 1)
        for i in range(n_steps + 1):
            current = torch.from_numpy(start_np.reshape(1, 3, height, width))
            scores[i] = float(model(current).softmax(1)[0, c])
            if i < n_steps:
                coords = order[:, step * i : step * (i + 1)]
                start_np[0, :, coords] = finish_np[0, :, coords]
    return scores


def reference_auc(arr):
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)



class LinearPixelModel(nn.Module):
    """logits = [sum_{c,p} w_cp x_cp, 0]: a pixel's exact contribution is sum_c w_cp x_cp."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)



# --------------------------------------------------------------------------- RISE exactness
def test_blur_substrate_equals_rise_kernel_and_conv():
    x = torch.randn(2, 3, 16, 20)
    torch.testing.assert_close(gaussian_blur(x), reference_blur(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "size, step",
    [pytest.param((16, 16), None, id="16x16-default-step"), pytest.param((12, 16), 7, id="12x16-step7-ragged")],
)
@pytest.mark.parametrize("mode", ["del", "ins"])
def test_rise_preset_equals_loop_reference(size, step, mode):
    net = tiny_net()
    torch.manual_seed(1)
    x = torch.randn(3, 3, *size)
    maps = torch.rand(3, *size)  # continuous: no ties
    metric = create_metric("rise", step=step, batch_size=50)
    out = scores_of(metric, model_explained(net, x, maps))
    curves = metric.tables()["curves"]
    used_step = step if step is not None else resolve_step(size[0] * size[1])[0]
    substrate = (lambda t: torch.zeros_like(t)) if mode == "del" else reference_blur
    name = "deletion" if mode == "del" else "insertion"
    for b in range(3):
        expected = reference_causal_metric(net, x[b : b + 1], maps[b].numpy(), mode, used_step, substrate)
        got = curves[(curves.curve == name) & (curves.image_id == f"img{b}")].sort_values("step")["value"].to_numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert abs(float(out[f"{name}_auc"][b]) - reference_auc(expected)) < 1e-6
    clean = float(net(x[2:3]).detach().softmax(1).max())
    assert expected[0 if mode == "del" else -1] == pytest.approx(clean, abs=1e-6)  # untouched end


def test_ties_follow_stable_order_choice():
    net = tiny_net(3)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 10, 10)
    maps = torch.randint(0, 3, (2, 10, 10)).float()  # many ties
    zero = torch.zeros_like(x)
    got = perturbation_curve(net, x, maps, net(x).argmax(1), substrate=zero, step=3, tie_break="last")
    for b in range(2):
        expected = reference_causal_metric(net, x[b : b + 1], maps[b].numpy(), "del", 3, torch.zeros_like)
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-6, rtol=0)
    ranks = pixel_ranks(torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    assert ranks.tolist() == [[2, 0, 1, 3]]  # ties: lower flat index first


def test_rise_defaults_are_the_preset():
    metric = DeletionInsertion()
    assert metric.preset == "rise"
    assert resolve_step(224 * 224) == (224, 224)  # 224 px per step, 225 points at 224 x 224
    assert DeletionInsertion(score="logit").preset == "custom"
    assert [s.name for s in metric.scores] == ["deletion_auc", "insertion_auc"]
    assert [s.higher_is_better for s in metric.scores] == [False, True]
    assert curve_auc(torch.tensor([[1.0, 0.5, 0.0]])).item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- analytic model
def test_linear_model_ideal_map_is_steepest_and_reversed_shallowest():
    torch.manual_seed(0)
    height = width = 8
    weight = torch.randn(1, 3, height, width)
    model = LinearPixelModel(weight)
    x = torch.randn(2, 3, height, width)
    contribution = (x * weight).sum(1)  # [B, H, W]: the exact effect of deleting each pixel
    target = torch.zeros(2, dtype=torch.long)
    zero = torch.zeros_like(x)
    kwargs = dict(target=target, substrate=zero, step=4, score="logit")

    def deletion(maps, **extra):
        return perturbation_curve(model, x, maps, mode="deletion", **kwargs, **extra)

    ideal, reversed_ = deletion(contribution), deletion(-contribution)
    least_first = deletion(contribution, order="least_relevant_first")
    torch.testing.assert_close(least_first, reversed_)
    for seed in range(5):
        other = deletion(torch.rand(2, height, width, generator=torch.Generator().manual_seed(seed)))
        assert bool((ideal <= other + 1e-5).all()) and bool((other <= reversed_ + 1e-5).all())
    assert bool((curve_auc(ideal) < curve_auc(reversed_)).all())
    # the curve is the exact remaining sum of contributions
    ranked = torch.sort(contribution.flatten(1), dim=1, descending=True).values
    remaining = contribution.flatten(1).sum(1, keepdim=True) - torch.cat(
        [torch.zeros(2, 1), ranked.cumsum(1)[:, 3::4]], dim=1
    )
    torch.testing.assert_close(ideal, remaining, atol=1e-4, rtol=0)
    # insertion from the zero image: the ideal map rises fastest
    ins_ideal = perturbation_curve(model, x, contribution, mode="insertion", **kwargs)
    ins_rev = perturbation_curve(model, x, -contribution, mode="insertion", **kwargs)
    assert bool((ins_ideal >= ins_rev - 1e-5).all())
    assert bool((curve_auc(ins_ideal) > curve_auc(ins_rev)).all())


# --------------------------------------------------------------------------- invariances
def test_scores_do_not_depend_on_forward_batch_size():
    net = tiny_net(2)
    torch.manual_seed(5)
    x, maps = torch.randn(3, 3, 16, 16), torch.rand(3, 16, 16)
    results = []
    for batch_size in (1, 13, 10_000):
        metric = create_metric("rise", batch_size=batch_size, n_steps=40)
        results.append(scores_of(metric, model_explained(net, x, maps)))
    for other in results[1:]:
        for key in results[0]:
            torch.testing.assert_close(other[key], results[0][key], atol=1e-6, rtol=0)


def test_same_seed_identical_curves_and_batch_split_invariance():
    net = tiny_net(1)
    torch.manual_seed(6)
    x, maps = torch.randn(4, 3, 16, 16), torch.rand(4, 16, 16)
    options = dict(deletion_substrate="noise", insertion_substrate="mean", n_steps=16, seed=7)

    def curves(seed=7, split=False):
        metric = create_metric("rise", **{**options, "seed": seed})
        if split:
            scores_of(metric, model_explained(net, x[:1], maps[:1], indices=[0]))
            scores_of(metric, model_explained(net, x[1:], maps[1:], indices=[1, 2, 3]))
        else:
            scores_of(metric, model_explained(net, x, maps))
        table = metric.tables()["curves"]
        return table.sort_values(["curve", "image_id", "step"])["value"].to_numpy()

    first = curves()
    np.testing.assert_array_equal(first, curves())
    np.testing.assert_allclose(curves(split=True), first, atol=1e-6)
    assert np.abs(curves(seed=8) - first).max() > 1e-4


# --------------------------------------------------------------------------- equal inputs computed once
def test_distinct_prefixes_on_a_hand_made_case():
    """Two images, three curves each (map-major: curves 0-2 of image 0, 3-5 of image 1 would be
    image-major; here groups say which image). Curves 0 and 1 order their first two pixels alike
    ({2, 0}) but differ after; curve 2 is curve 0's image's other order; curve 3 has image 1 and
    curve 0's order; steps change 0, 2 and 4 pixels."""
    ranks = torch.tensor([[1, 3, 0, 2], [0, 2, 1, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
    changed = torch.tensor([0, 2, 4])
    groups = torch.tensor([0, 0, 0, 1])
    keep, source = distinct_prefixes(ranks, changed, groups)
    # items c * 3 + s: image 0's start (0, 3, 6) and end (2, 5, 8) once each; curve 1 step 1
    # ({0, 2}) equals curve 0 step 1 ({2, 0}); curve 2 step 1 ({3, 2}) is new; image 1 is apart
    assert keep.tolist() == [0, 1, 2, 7, 9, 10, 11]
    assert [int(keep[i]) for i in source] == [0, 1, 2, 0, 1, 2, 0, 7, 2, 9, 10, 11]


def test_a_fingerprint_collision_computes_every_item(monkeypatch):
    """With 0-bit weights every prefix of a step shares one fingerprint: the exact check finds the
    different sets and every item is computed."""
    monkeypatch.setattr(perturbation, "FINGERPRINT_BITS", 0)
    ranks = torch.tensor([[1, 3, 0, 2], [0, 2, 1, 3], [3, 2, 1, 0]])
    keep, source = distinct_prefixes(ranks, torch.tensor([0, 2, 4]), torch.zeros(3, dtype=torch.long))
    assert keep.tolist() == list(range(9)) and source.tolist() == list(range(9))


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_equal_inputs_computed_once_give_the_same_curves_bit_for_bit(mode):
    """Maps that order their pixels alike (a map, twice it, its square) and others share their
    inputs: the curves equal the computation of every input exactly, with fewer model inputs
    (counted: the start and end points once per image, the alike maps' steps once)."""
    net = tiny_net(3)
    torch.manual_seed(8)
    x = torch.randn(3, 3, 12, 12)
    base = torch.rand(3, 12, 12)
    maps = {"a": base, "twice": 2 * base, "square": base ** 2, "other": torch.rand(3, 12, 12),
            "flat": torch.ones(3, 12, 12)}
    seen = []

    def counting(inputs):
        seen.append(inputs.shape[0])
        return net(inputs)

    options = dict(mode=mode, substrate=make_substrate(x, "blur" if mode == "insertion" else "zero"), n_steps=9,
                   batch_size=7)
    reused = perturbation_curves(counting, x, maps, torch.tensor([0, 1, 2]), **options)
    reused_inputs = len(seen) * 7
    seen.clear()
    every = perturbation_curves(counting, x, maps, torch.tensor([0, 1, 2]), reuse_equal_inputs=False, **options)
    for key in maps:
        assert torch.equal(reused[key], every[key]), key
    points = 10
    assert len(seen) * 7 == -(-5 * 3 * points // 7) * 7  # every input: 150, padded to the chunk
    # distinct inputs per image: start and end once, the three alike maps' 8 inner steps once,
    # "other" and "flat" 8 each: 2 + 3 * 8 = 26 (unless "other" or "flat" meets another set)
    assert reused_inputs <= -(-3 * 26 // 7) * 7


def test_substrates_and_tables_layout():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(make_substrate(x, "zero"), torch.zeros_like(x))
    torch.testing.assert_close(make_substrate(x, "mean")[:, :, 3, 5], x.mean((2, 3)))
    noise = make_substrate(x, "noise", seeds=torch.tensor([3, 4]), noise_std=0.5)
    torch.testing.assert_close(noise[1], make_substrate(x[1:], "noise", seeds=torch.tensor([4]), noise_std=0.5)[0])
    with pytest.raises(ValueError, match="valid"):
        make_substrate(x, "gray")
    net = tiny_net()
    metric = create_metric("rise", curves=["deletion"], step=16)
    out = scores_of(metric, model_explained(net, x, torch.rand(2, 8, 8)))
    assert set(out) == {"deletion_auc"}
    table = metric.tables()["curves"]
    assert list(table.columns) == ["image_id", "method", "metric", "curve", "step", "fraction", "value"]
    assert len(table) == 2 * 5 and table.fraction.max() == 1.0 and set(table.curve) == {"deletion"}


def test_nan_map_gives_nan_auc():
    net = tiny_net()
    x = torch.randn(2, 3, 8, 8)
    maps = torch.rand(2, 8, 8)
    maps[1, 0, 0] = float("nan")
    out = scores_of(create_metric("rise"), model_explained(net, x, maps))
    assert not torch.isnan(out["deletion_auc"][0]) and torch.isnan(out["deletion_auc"][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net = tiny_net()
    x, maps = torch.randn(3, 3, 32, 32), torch.rand(3, 32, 32)
    cpu = scores_of(create_metric("rise"), model_explained(net, x, maps))
    net_cuda = tiny_net().cuda()
    gpu = scores_of(create_metric("rise"), model_explained(net_cuda, x.cuda(), maps.cuda()))
    for key in cpu:
        assert gpu[key].device.type == "cuda"
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=1e-4, rtol=0)
