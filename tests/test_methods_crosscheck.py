"""Seed methods vs captum / pytorch-grad-cam on random-init torchvision models and the pretrained
EfficientNet-Lite0 (small seeded inputs), through salbench.harness.crosscheck.run_crosscheck.

Tolerance (float32): max|ours - ref| <= 1e-5 * max|ref| + 1e-6. Models have their BatchNorm
statistics calibrated on the inputs so activations and gradients are O(1), which keeps the
absolute term from hiding a mismatch.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from salbench.harness.crosscheck import run_crosscheck

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running stats from one train-mode pass on ``x``, then eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def torchvision_case(arch: str, size: int = 64, batch: int = 2):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrated(model, x)
    return model, x, torch.tensor([3, 7])[:batch]


class DenseNetAllModules(nn.Module):
    """torchvision DenseNet with its final functional ReLU as an nn.ReLU module (same
    parameters): the reference captum can hook completely."""

    def __init__(self, densenet: nn.Module):
        super().__init__()
        self.features, self.relu, self.classifier = densenet.features, nn.ReLU(), densenet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.relu(self.features(x)), 1).flatten(1))


def assert_rows_pass(table, expected_methods):
    failed = table[table["passed"] == False]  # noqa: E712
    assert failed.empty, failed.to_string()
    checked = set(table.loc[table["passed"] == True, "method"])  # noqa: E712
    assert set(expected_methods) <= checked, table.to_string()


@pytest.mark.parametrize(
    "arch, layer, methods",
    [
        pytest.param("resnet18", "layer4", ["saliency", "guided_backprop", "deconvnet", "gradcam",
                                           "counterfactual_gradcam", "guided_gradcam", "cam", "occlusion"], id="resnet18"),
        pytest.param("vgg11", "features.19", ["saliency", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam"], id="vgg11"),
        pytest.param("mobilenet_v2", "features", ["saliency", "guided_backprop", "deconvnet", "gradcam",
                                                  "guided_gradcam", "cam"], id="mobilenet_v2-relu6"),
    ],
)
def test_torchvision_models_match_references(arch, layer, methods):
    model, x, target = torchvision_case(arch, size=48 if arch != "vgg11" else 32)
    table = run_crosscheck(model, x, target, methods=methods, layer=layer, occlusion_window=16, occlusion_stride=16,
                           occlusion_batch_size=7)
    assert_rows_pass(table, methods)


def test_densenet_functional_relu():
    """DenseNet's last ReLU is F.relu(inplace=True): salbench's guided rules cover it (captum's
    do not), checked against captum on a variant where that ReLU is a module."""
    from captum.attr import GuidedBackprop, LayerGradCam

    from salbench.methods import create_method

    model, x, target = torchvision_case("densenet121", size=64)
    table = run_crosscheck(model, x, target, methods=["guided_backprop", "cam", "gradcam"], layer="features")
    assert table.loc[table.method == "guided_backprop", "note"].str.startswith("skipped").all()
    assert_rows_pass(table, ["cam", "gradcam"])
    reference_model = DenseNetAllModules(model)
    ours = create_method("guided_backprop", model).attribute(x, target)
    ref = GuidedBackprop(reference_model).attribute(x, target=target)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6
    # Grad-CAM on "features" is taken before the in-place ReLU, as captum's LayerGradCam
    ours = create_method("gradcam", model, layer="features").attribute(x, target)
    ref = LayerGradCam(model, model.features).attribute(x, target=target)[:, 0]
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6


@pytest.fixture(scope="module")
def efficientnet_lite0():
    from salbench.models import create_model

    return create_model("efficientnet_lite0")


def test_efficientnet_lite0_matches_references(efficientnet_lite0):
    """Pretrained EfficientNet-Lite0: one nn.ReLU6 instance runs several times per forward."""
    bundle = efficientnet_lite0
    generator = torch.Generator().manual_seed(0)
    x = bundle.normalize(torch.rand(2, 3, 64, 64, generator=generator))
    with torch.no_grad():
        logits = bundle.module(x)
    target = torch.stack([logits[0].argmax(), logits[1].argmin()])
    methods = ["saliency", "guided_backprop", "deconvnet", "gradcam", "counterfactual_gradcam", "guided_gradcam", "cam"]
    table = run_crosscheck(bundle, x, target, methods=methods)
    assert_rows_pass(table, methods)
    assert (table.loc[table.method != "counterfactual_gradcam", "spearman"] > 0.999).all(), table.to_string()


def test_crosscheck_flags_a_wrong_method(monkeypatch):
    """The cross-check can fail: a Grad-CAM with the wrong sign is caught."""
    from salbench.methods.gradcam import GradCAM

    model, x, target = torchvision_case("resnet18", size=48)
    monkeypatch.setattr(GradCAM, "channel_weights", lambda self, a, g: -g.mean(dim=(2, 3)))
    table = run_crosscheck(model, x, target, methods=["gradcam"], layer="layer4")
    assert table["passed"].tolist() == [False, False], table.to_string()
