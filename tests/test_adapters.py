"""Adapters: ``method=captum`` returns exactly what captum's attribution class returns for the
same arguments, ``method=grad_cam_lib`` exactly what pytorch-grad-cam returns; their
post-processing is explicit and recorded; several instances of one method in a job carry labels."""
from __future__ import annotations

import json

import pytest
import torch

from salbench.harness.registry import UnknownNameError
from salbench.harness.runner import run_job
from salbench.harness.schema import options_of, validate_config
from salbench.methods import create_method

from helpers import ModelState, small_cnn

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture
def case():
    generator = torch.Generator().manual_seed(3)
    return small_cnn(), torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 4, 2])


def test_captum_integrated_gradients_is_captums_own_result(case, compose_config):
    """On the command line as in the issue; the raw attribution equals captum's bit for bit, and
    the heatmap is its channel sum (the recorded default post-processing), upsampled nowhere."""
    model, x, target = case
    cfg = compose_config(["method=[captum]", "method.captum.attribution=IntegratedGradients",
                          "+method.captum.kwargs.n_steps=32"])
    validate_config(cfg)
    explainer = create_method("captum", model, **options_of(cfg.method.captum, "method"))
    state = ModelState(model)
    ours = explainer.attribute(x, target)
    reference = captum_attr.IntegratedGradients(model).attribute(x, target=target, n_steps=32)
    assert torch.equal(ours, reference)
    assert torch.equal(explainer(x, target), reference.sum(1))
    state.assert_unchanged()
    assert explainer.options() == {"method": "captum", "relu": False, "channel_reduction": "sum",
                                   "upsample": "bilinear", "align_corners": False, "attribution": "IntegratedGradients",
                                   "layer": None, "init": {}, "kwargs": {"n_steps": 32}}
    from_python = create_method("captum", model, attribution="IntegratedGradients", init={"multiply_by_inputs": False},
                                kwargs={"n_steps": 32})
    assert torch.equal(from_python.attribute(x, target), captum_attr.IntegratedGradients(
        model, multiply_by_inputs=False).attribute(x, target=target, n_steps=32))


@pytest.mark.parametrize("attribution, init, kwargs", [
    pytest.param("Saliency", {}, {"abs": False}, id="saliency"),
    pytest.param("GuidedBackprop", {}, {}, id="guided-backprop"),
    pytest.param("Occlusion", {}, {"sliding_window_shapes": [3, 8, 8], "strides": [3, 4, 4]}, id="occlusion"),
    pytest.param("LayerGradCam", {}, {"relu_attributions": True}, id="layer-gradcam"),
])
def test_captum_attributions_equal_captum_called_directly(case, attribution, init, kwargs):
    model, x, target = case
    cls = getattr(captum_attr, attribution)
    layered = attribution.startswith("Layer")
    explainer = create_method("captum", model, attribution=attribution, init=init, kwargs=kwargs,
                              **({"layer": "4"} if layered else {}))
    built = cls(model, model[4], **init) if layered else cls(model, **init)
    tupled = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    assert torch.equal(explainer.attribute(x, target), built.attribute(x, target=target, **tupled))


def test_captum_layer_methods_default_to_the_bundles_target_layer_and_bad_options_are_clear(case):
    from helpers import bundle_of

    model, x, target = case
    bundle = bundle_of(model)
    bundle.target_layer = "8"
    assert create_method("captum", bundle, attribution="LayerGradCam").layer == "8"
    assert create_method("captum", bundle, attribution="Saliency").layer is None  # takes no layer
    with pytest.raises(UnknownNameError, match="unknown captum attribution 'IntegratedGradient'. Did you mean "
                                               "'IntegratedGradients'"):
        create_method("captum", model, attribution="IntegratedGradient")
    with pytest.raises(ValueError, match="captum Saliency takes no layer"):
        create_method("captum", model, attribution="Saliency", layer="4")
    with pytest.raises(ValueError, match="NoiseTunnel wraps an attribution"):
        create_method("captum", model, attribution="NoiseTunnel")
    tunnel = create_method("captum", model, attribution="NoiseTunnel", init={"attribution": "Saliency"},
                           kwargs={"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.1})
    torch.manual_seed(0)
    ours = tunnel.attribute(x, target)
    torch.manual_seed(0)
    reference = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, target=target, nt_type="smoothgrad", nt_samples=3, stdevs=0.1)
    assert torch.equal(ours, reference)


def test_pytorch_grad_cams_scorecam_is_the_librarys_own_result(case, compose_config):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, target = case
    cfg = compose_config(["method=[grad_cam_lib]", "method.grad_cam_lib.cam=ScoreCAM", "method.grad_cam_lib.layer='8'",
                          "+method.grad_cam_lib.init.batch_size=8"])
    explainer = create_method("grad_cam_lib", model, **options_of(cfg.method.grad_cam_lib, "method"))
    model[2].train()  # the library calls model.eval(): salbench restores every module's mode
    state = ModelState(model)
    ours = explainer(x, target)
    state.assert_unchanged()
    model.eval()
    library = ScoreCAM(model, target_layers=[model[8]])
    library.batch_size = 8
    reference = library(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    library.activations_and_grads.release()
    assert torch.equal(ours, torch.from_numpy(reference))
    options = explainer.options()
    assert options["cam"] == "ScoreCAM" and options["init"] == {"batch_size": 8}
    assert options["library_postprocess"].startswith("pytorch-grad-cam: ReLU, per-image min-max")
    with pytest.raises(UnknownNameError, match="Did you mean 'ScoreCAM'"):
        create_method("grad_cam_lib", model, cam="ScoreCam")


def test_several_instances_of_an_adapter_in_one_job_carry_their_labels(compose_config, tmp_path):
    """The label is the method's key in the scores; the same label twice is an error."""
    overrides = ["debug=fast", "dataset.limit=4", "gallery_images=0", "metric=[cam_paper]",
                 "method=[captum,gradcam]", "method.captum.label=ig8", "+method.captum.kwargs.n_steps=8",
                 "method.gradcam.label=gc",  # every packaged method YAML has the key: no '+' needed
                 "+method.sal={name: captum, attribution: Saliency, label: saliency_abs}"]
    scores = run_job(compose_config(overrides), tmp_path / "job")
    assert set(scores["method"]) == {"ig8", "gc", "saliency_abs"}
    options = {m: json.loads(o) for m, o in scores[["method", "method_options"]].drop_duplicates().itertuples(index=False)}
    assert options["ig8"]["attribution"] == "IntegratedGradients" and options["saliency_abs"]["attribution"] == "Saliency"
    info = json.loads((tmp_path / "job" / "run.json").read_text())
    assert info["components"]["methods"]["ig8"]["name"] == "captum"
    assert info["components"]["methods"]["gc"]["name"] == "gradcam"
    with pytest.raises(ValueError, match="methods 'captum' and 'sal' are both labelled 'twin'"):
        validate_config(compose_config(["method=[captum]", "method.captum.label=twin",
                                        "+method.sal={name: captum, label: twin}"]))
