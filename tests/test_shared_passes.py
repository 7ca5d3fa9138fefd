"""Shared passes give exactly the one-method-at-a-time results (torch.equal): explainers from one
forward/backward pass (methods/shared.py) and deletion/insertion curves of several maps packed
into the same forward batches (metrics/deletion.py)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torchvision

from salbench.methods import create_method
from salbench.methods.shared import PassRequest, explain_all, plan, shared_pass

SHAREABLE = ["cam", "gradcam", "counterfactual_gradcam", "saliency", "guided_backprop", "deconvnet", "guided_gradcam"]
LAYERED = {"gradcam", "counterfactual_gradcam", "guided_gradcam"}


def _explainers(model, layer=None):
    return {n: create_method(n, model, **({"layer": layer} if layer and n in LAYERED else {})) for n in SHAREABLE}


def _alone(explainers, x, target):
    return {n: e(x.clone(), target) for n, e in explainers.items()}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _check_combinations(resnet, combos):
    x = torch.randn(2, 3, 64, 64)  # layer4 (CAM's feature map) is 2 x 2
    target = torch.tensor([1, 7])
    explainers = _explainers(resnet, layer="layer3")
    alone = _alone(explainers, x, target)
    for combo in combos:
        explained = explain_all({n: explainers[n] for n in combo}, x, target)
        heatmaps, costs = explained.maps, explained.costs
        for name in combo:
            assert torch.equal(heatmaps[name], alone[name]), (combo, name)
            assert costs[name]["shared_with"] == list(combo)


def test_all_leave_one_out_and_guided_pairs_equal_one_at_a_time_resnet18(resnet):
    combos = [tuple(SHAREABLE), *(tuple(n for n in SHAREABLE if n != m) for m in SHAREABLE)]
    combos += [("guided_gradcam", n) for n in SHAREABLE if n != "guided_gradcam"]
    _check_combinations(resnet, combos)


@pytest.mark.slow
def test_every_combination_equals_one_at_a_time_resnet18(resnet):
    combos = [c for size in range(2, len(SHAREABLE) + 1) for c in itertools.combinations(SHAREABLE, size)]
    assert len(combos) == 2 ** len(SHAREABLE) - len(SHAREABLE) - 1
    _check_combinations(resnet, combos)


def test_synthetic_cnn_all_and_leave_one_out():
    from salbench.models import create_model

    bundle = create_model("synthetic_cnn", pretrained=False)
    bundle.module.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, *bundle.input_size)
    target = torch.tensor([0, 3])
    explainers = _explainers(bundle)
    alone = _alone(explainers, x, target)
    for combo in [SHAREABLE, *(tuple(n for n in SHAREABLE if n != m) for m in SHAREABLE)]:
        heatmaps = explain_all({n: explainers[n] for n in combo}, x, target).maps
        for name in combo:
            assert torch.equal(heatmaps[name], alone[name]), (combo, name)


def test_unshareable_methods_run_alone_and_model_is_untouched(resnet):
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([0, 1])
    explainers = {"gradcam": create_method("gradcam", resnet, layer="layer4"),
                  "occlusion": create_method("occlusion", resnet, window=16, stride=16),
                  "saliency": create_method("saliency", resnet), "random": create_method("random", resnet)}
    groups, requests = plan(explainers, x)
    assert groups == [["gradcam", "saliency"], ["occlusion"], ["random"]]
    assert set(requests) == {"gradcam", "saliency"}
    flags = [p.requires_grad for p in resnet.parameters()]
    heatmaps = explain_all(explainers, x, target).maps
    alone = _alone(explainers, x, target)
    for name in explainers:
        assert torch.equal(heatmaps[name], alone[name]), name
    assert [p.requires_grad for p in resnet.parameters()] == flags
    assert all(p.grad is None for p in resnet.parameters())
    assert not resnet.training


def test_one_backward_per_rule(resnet, monkeypatch):
    calls = []
    original = torch.autograd.grad

    def counting(outputs, inputs, *args, **kwargs):
        calls.append(len(inputs) if isinstance(inputs, (list, tuple)) else 1)
        return original(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    x = torch.randn(2, 3, 32, 32)
    from salbench.methods.cam import HEAD_RECORDER

    request = PassRequest(layer_gradients=frozenset({"layer4", "layer3"}), input_rules=frozenset({"gradient", "guided"}),
                          recorders=frozenset({HEAD_RECORDER}))
    result = shared_pass(resnet, x, torch.tensor([0, 1]), request)
    assert calls == [3, 1]  # d/dx and both layers at once, then the guided rule
    assert set(result.input_gradients) == {"gradient", "guided"}
    assert set(result.layer_gradients) == {"layer3", "layer4"}
    assert result.recorded["head"].heads and result.recorded["head"].pooled_inputs  # CAM's recorder ran


# --------------------------------------------------------------------------- deletion / insertion
@pytest.mark.parametrize("batch_size", [7, 1000])
def test_shared_deletion_batches_equal_per_method(resnet, batch_size):
    from salbench.metrics.deletion import make_substrate, perturbation_curve, perturbation_curves

    torch.manual_seed(2)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([1, 2, 3])
    maps = {name: torch.rand(3, 16, 16) for name in ("a", "b", "c")}
    maps["c"][1, 0, 0] = float("nan")
    substrate = make_substrate(x, "blur")
    for mode in ("deletion", "insertion"):
        shared = perturbation_curves(resnet, x, maps, target, mode=mode, substrate=substrate, n_steps=12,
                                     batch_size=batch_size)
        for name, heatmap in maps.items():
            alone = perturbation_curve(resnet, x, heatmap, target, mode=mode, substrate=substrate, n_steps=12,
                                       batch_size=batch_size)
            assert torch.equal(shared[name], alone) if name != "c" else \
                torch.equal(shared[name].nan_to_num(-1), alone.nan_to_num(-1))
    assert torch.isnan(shared["c"][1]).all() and not torch.isnan(shared["c"][0]).any()


def test_one_update_of_several_methods_equals_each_method_alone(resnet):
    """rise packs every method's perturbed inputs into shared forward batches: each method's
    scores and curves equal those of an update with that method alone, bit for bit."""
    from types import SimpleNamespace

    from salbench.metrics import ExplainedBatch, create_metric

    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    logits = resnet(x).detach()
    batch = SimpleNamespace(indices=torch.tensor([4, 5]), image_ids=["p", "q"], labels=torch.tensor([0, 1]))
    maps = {m: torch.rand(2, 32, 32) for m in ("one", "two", "three")}

    def explained(methods):
        return ExplainedBatch(batch=batch, inputs=x, logits=logits, targets=torch.tensor([0, 1]),
                              maps={m: maps[m] for m in methods}, model=resnet)

    options = dict(n_steps=10, batch_size=9, deletion_substrate="noise")
    together = create_metric("rise", **options)
    shared = together.update(explained(list(maps)))
    curves = together.tables()["curves"]
    for method in maps:
        alone = create_metric("rise", **options)
        scores = alone.update(explained([method]))[method]
        for score, values in scores.items():
            assert torch.equal(shared[method][score], values), (method, score)
        mine = curves[curves.method == method].reset_index(drop=True)
        assert alone.tables()["curves"].equals(mine)


def test_runner_shared_and_unshared_scores_equal(compose_config, tmp_path):
    from salbench.harness.runner import run_job

    base = ["debug=fast", "dataset.limit=4", "metric=[cam_paper,rise]", "metric.rise.n_steps=8",
            "method=[cam,gradcam,saliency,guided_gradcam,random]", "model.pretrained=false", "device=cpu"]
    shared = run_job(compose_config(base), tmp_path / "shared")
    alone = run_job(compose_config([*base, "shared_passes=false"]), tmp_path / "alone")
    key = ["method", "metric", "score", "image_index"]
    shared = shared.sort_values(key).reset_index(drop=True)
    alone = alone.sort_values(key).reset_index(drop=True)
    assert shared[key].equals(alone[key])
    assert shared["value"].fillna(-9).equals(alone["value"].fillna(-9))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_shared_pass_cuda(resnet):
    model = torchvision.models.resnet18(num_classes=10).eval().cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    target = torch.tensor([1, 2], device="cuda")
    explainers = _explainers(model, layer="layer4")
    heatmaps = explain_all(explainers, x, target).maps
    alone = _alone(explainers, x, target)
    for name in explainers:
        torch.testing.assert_close(heatmaps[name], alone[name])  # cuDNN may pick other kernels per call


def test_clean_logits_of_the_shared_pass_equal_an_inference_forward(resnet):
    x = torch.randn(3, 3, 64, 64)
    explained = explain_all(_explainers(resnet, layer="layer4"), x, torch.tensor([1, 2, 3]))
    with torch.inference_mode():
        assert torch.equal(explained.logits, resnet(x))
    # occlusion alone shares no pass: the caller must run its own forward
    alone = explain_all({"occlusion": create_method("occlusion", resnet, window=16, stride=16)}, x, torch.tensor([1, 2, 3]))
    assert alone.logits is None


@pytest.mark.parametrize("target,forwards", [("label", 1), ("predicted", 2)])
def test_a_label_job_reuses_the_shared_pass_forward(compose_config, tmp_path, monkeypatch, target, forwards):
    """target=label: the batch costs one forward (the shared pass), not a separate one for logits."""
    import salbench.harness.runner as runner

    calls = []
    original = runner.create_model

    def counting(*args, **kwargs):
        bundle = original(*args, **kwargs)
        bundle.module.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
        return bundle

    monkeypatch.setattr(runner, "create_model", counting)
    # energy_pointing_game scores the job's own maps (cam_paper would ask for the label's maps)
    runner.run_job(compose_config(["debug=fast", "dataset.limit=4", "model.pretrained=false", "metric=[energy_pointing_game]",
                                   "method=[gradcam,saliency]", f"target={target}", "gallery_images=0", "forward_chunk=4"]),
                   tmp_path / target)
    assert calls == [1] + [4] * forwards  # the output check at build, then the batch


def test_a_caller_under_no_grad_still_gets_the_gradients(resnet):
    """captum and other libraries call explainers inside torch.no_grad(): the pass opens its own
    grad scope for the forward and the summed scores."""
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    explainers = _explainers(resnet, layer="layer4")
    expected = _alone(explainers, x, target)
    with torch.no_grad():
        got = _alone(explainers, x, target)
        shared = explain_all(explainers, x, target).maps
    for name in explainers:
        assert torch.equal(got[name], expected[name]) and torch.equal(shared[name], expected[name]), name
