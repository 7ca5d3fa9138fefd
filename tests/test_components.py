"""The method and metric testers: every registered method and metric through the invariants.

Parametrized over ``list_methods()`` and ``list_metrics()``, so a new component is covered as soon
as it is registered (its own file then adds its reference case). Invariants:

* outputs: shapes, dtypes, on the input's device; with torch's default device set to ``meta``
  a tensor created without ``device=`` lands on ``meta`` and the first op that mixes it with the
  input's CPU tensors raises (the bug that mixes CPU and CUDA tensors on a GPU);
* batch-size invariance: the whole batch equals its rows scored in smaller batches;
* determinism: two runs give the same values;
* the model is left exactly as it was (mode, ``requires_grad``, ``.grad``, hooks, weights), also
  after a forward pass that raised;
* declarations: scores, tables and needs are declared and JSON-ready, and a bad option is a
  clear error naming the valid ones.
"""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import torch
from torch import nn

from salbench.metrics import BatchCosts, create_metric, list_metrics
from salbench.metrics.base import MAP_CLASSES
from salbench.methods import create_method, list_methods

from helpers import (SAVED_MAP_IDS, SIZE, ById, ModelState, assert_same_values, bundle_of, explained, saved_maps_root,
                     small_cnn, split_rows, synthetic_batch)

# small settings of the costly components; every other option is the registered default
METHOD_OPTIONS: Dict[str, Dict[str, Any]] = {
    "occlusion": {"window": 8, "stride": 4, "batch_size": 16},
    "scorecam": {"batch_size": 12},  # chunks that span two images
    "ablationcam": {"batch_size": 12},
    "rise": {"n_masks": 48, "batch_size": 20},
    "integrated_gradients": {"n_steps": 6, "batch_size": 8},
    "smoothgrad": {"n_samples": 5, "batch_size": 8},
    "smoothgrad_sq": {"n_samples": 5, "batch_size": 8},
    "vargrad": {"n_samples": 5, "batch_size": 8},
    "captum": {"kwargs": {"n_steps": 8}},
    "grad_cam_lib": {"cam": "GradCAMPlusPlus"},
}
# options that point at files made when the tests run
METHOD_FILES = {"precomputed": lambda: {"root": saved_maps_root(), "classes": "any"}}
METRIC_OPTIONS: Dict[str, Dict[str, Any]] = {
    "rise": {"n_steps": 8, "batch_size": 24},
    "road": {"fractions": [0.3, 0.7], "batch_size": 8},
    "randomization": {"max_images": 2},
    "sensitivity": {"n_perturbations": 3, "batch_size": 8},
    "local_lipschitz": {"n_perturbations": 3, "batch_size": 8},
    "region_perturbation": {"patch_size": 8, "max_patches": 6, "n_segments": 12, "batch_size": 32},
    "faithfulness_correlation": {"subset_size": 32, "n_runs": 6, "batch_size": 24},
    "infidelity": {"n_perturbations": 6, "batch_size": 24},
    "random_logit": {"batch_size": 4},
}
IMAGES = 4


def method_inputs(images: int = IMAGES):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(images, 3, SIZE, SIZE, generator=generator), torch.tensor([0, 3, 1, 4, 2, 1][:images])


def make_method(name: str, model: nn.Module) -> Any:
    """``create_method`` with the testers' options; a method that looks maps up by image id is
    called with the id of each input row (:class:`helpers.ById`)."""
    options = {**METHOD_OPTIONS.get(name, {}), **(METHOD_FILES[name]() if name in METHOD_FILES else {})}
    explainer = create_method(name, model, **options)
    return ById(explainer, _REFERENCE_INPUTS) if explainer.needs_image_ids else explainer


_REFERENCE_INPUTS = method_inputs(SAVED_MAP_IDS)[0]


# --------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", list_methods())
def test_method_outputs_on_the_input_device_and_creates_no_tensor_elsewhere(name):
    model, (x, target) = small_cnn(), method_inputs()
    reference = make_method(name, model)(x, target)
    with torch.device("meta"):  # a factory call without device= now makes a meta tensor
        explainer = make_method(name, model)
        attribution = explainer.attribute(x, target)
        heatmaps = explainer(x, target)
    assert attribution.device == x.device and heatmaps.device == x.device
    assert attribution.shape[0] == x.shape[0] and attribution.ndim in (3, 4)
    assert heatmaps.dtype == torch.float32 and heatmaps.shape == (x.shape[0], SIZE, SIZE)
    assert torch.equal(heatmaps, reference)


@pytest.mark.parametrize("name", list_methods())
def test_method_is_deterministic_and_batch_size_invariant(name):
    model, (x, target) = small_cnn(), method_inputs()
    explainer = make_method(name, model)
    whole = explainer(x, target)
    assert torch.equal(explainer(x, target), whole)
    pieces = torch.cat([explainer(x[:1], target[:1]), explainer(x[1:], target[1:])])
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6 * max(whole.abs().max().item(), 1e-12))


class Exploding(nn.Module):
    """Wraps a model; raises after its forward pass while ``armed``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.armed = model, False

    def forward(self, x):
        out = self.model(x)
        if self.armed:
            raise RuntimeError("boom")
        return out


@pytest.mark.parametrize("name", list_methods())
def test_method_leaves_the_model_exactly_as_it_was_also_after_a_raise(name):
    inner = small_cnn()
    model = Exploding(inner).eval()
    inner[2].train()  # a ReLU: its mode changes no output (a train-mode BatchNorm would update its statistics)
    inner[0].weight.requires_grad_(False)
    inner[4].weight.grad = torch.ones_like(inner[4].weight)
    x, target = method_inputs(2)
    explainer = make_method(name, model)
    for armed in (False, True):
        state = ModelState(model)
        model.armed = armed
        try:
            explainer(x, target)
        except RuntimeError as error:
            assert armed and "boom" in str(error)
        state.assert_unchanged()
    assert not torch.overrides._get_current_function_mode_stack()  # no function mode left behind


@pytest.mark.parametrize("name", list_methods())
def test_method_option_errors_name_the_valid_options(name):
    with pytest.raises(TypeError, match="valid options"):
        create_method(name, small_cnn(), no_such_option=1, **(METHOD_FILES[name]() if name in METHOD_FILES else {}))
    options = make_method(name, small_cnn()).options()
    assert options["method"] == name and json.dumps(options, default=str)


# --------------------------------------------------------------------------- metrics
def metric_case(images: int = IMAGES, start: int = 0):
    """An ExplainedBatch with all a metric may declare: synthetic images (boxes, masks), the
    model's logits, two methods' maps, the explainers and measured costs."""
    model = small_cnn()
    batch = synthetic_batch(images, start=start)
    bundle = bundle_of(model)
    x = bundle.normalize(batch.images)
    explainers = {"saliency": create_method("saliency", model), "gradcam": create_method("gradcam", model)}
    with torch.no_grad():
        logits = model(x)
    maps = {key: e(x, batch.labels) for key, e in explainers.items()}
    costs = BatchCosts(explain={key: {"seconds": 0.25, "shared_with": list(explainers)} for key in explainers},
                       metrics={"rise": 0.5}, device="test", clock="perf_counter")
    return explained(batch, maps, inputs=x, logits=logits, model=bundle, explainers=explainers, costs=costs), model


def make_metric(name: str):
    return create_metric(name, **METRIC_OPTIONS.get(name, {}))


def run_metric(name: str, batches):
    metric = make_metric(name)
    per_row = [metric.update(b) for b in batches]
    return metric, per_row, metric.compute(), metric.tables()


def measured(metric, score: str) -> bool:
    """Scores that depend on measured time or memory (cost), not on the inputs."""
    info = metric.score_info(score)
    return info is not None and info.category == "cost"


@pytest.mark.parametrize("name", list_metrics())
def test_metric_outputs_every_method_on_the_input_device_and_creates_no_tensor_elsewhere(name):
    case, _ = metric_case()
    metric, (reference,), dataset, tables = run_metric(name, [case])
    with torch.device("meta"):
        _, (per_row,), _, _ = run_metric(name, [case])
    assert set(per_row) == set(case.maps)
    for method, values in per_row.items():
        for score, value in values.items():
            assert metric.score_info(score) is not None, f"{score} is not declared"
            assert value.device == case.inputs.device and value.shape == (len(case.targets),), score
            if not measured(metric, score):
                torch.testing.assert_close(value, reference[method][score], rtol=0, atol=0, equal_nan=True)
    assert set(dataset) <= set(case.maps)
    for method, values in dataset.items():
        assert all(metric.score_info(s) is not None and metric.score_info(s).scope == "dataset" for s in values)
    assert set(tables) <= set(metric.table_kinds)
    for kind, table in tables.items():
        assert "method" in table.columns and set(table["method"]) <= set(case.maps), kind


@pytest.mark.parametrize("name", list_metrics())
def test_metric_is_deterministic_and_batch_size_invariant(name):
    case, _ = metric_case()
    _, (whole,), whole_dataset, _ = run_metric(name, [case])
    _, (again,), again_dataset, _ = run_metric(name, [case])
    metric, halves, halves_dataset, _ = run_metric(name, split_rows(case, [[0, 1], [2, 3]]))
    for method in case.maps:
        keep = [s for s in whole[method] if not measured(metric, s)]
        assert_same_values({s: again[method][s] for s in keep}, {s: whole[method][s] for s in keep})
        joined = {s: torch.cat([h[method][s] for h in halves]) for s in keep}
        # forward passes of other batch shapes round differently (about 1e-7 in float32)
        assert_same_values(joined, {s: whole[method][s] for s in keep}, rtol=1e-5, atol=1e-5)
        for score, value in whole_dataset.get(method, {}).items():
            if not measured(metric, score):
                assert again_dataset[method][score] == value or value != value, score
                assert halves_dataset[method][score] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), score


@pytest.mark.parametrize("name", list_metrics())
def test_metric_leaves_the_model_exactly_as_it_was(name):
    case, model = metric_case()
    state = ModelState(model)
    run_metric(name, [case])
    state.assert_unchanged()


@pytest.mark.parametrize("name", list_metrics())
def test_metric_declarations_are_complete_and_bad_options_are_clear_errors(name):
    metric = make_metric(name)
    described = metric.describe()
    json.dumps(described)
    json.dumps(metric.protocol(), default=str)
    assert described["name"] == name and metric.category and metric.scores
    assert metric.needs.maps in MAP_CLASSES
    assert isinstance(metric.preset, str) and metric.preset
    default = create_metric(name)
    assert default.preset in (*type(default).presets, "custom")
    for kind, curve in metric.curve_kinds.items():
        assert "curves" in metric.table_kinds and curve.summary in ("auc", "mean"), kind
    with pytest.raises(TypeError, match="valid options"):
        create_metric(name, no_such_option=1)


def test_the_meta_device_check_catches_a_tensor_made_without_device():
    """The device checks above can fail: an op mixing a tensor made without device= with a CPU one."""
    x = torch.randn(2, 3)
    with torch.device("meta"), pytest.raises(RuntimeError, match="device"):
        torch.where(x > 0, x, torch.zeros(2, 3))
