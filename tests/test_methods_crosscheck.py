"""Seed methods vs captum / pytorch-grad-cam on random-init torchvision models and the pretrained
EfficientNet-Lite0 (small seeded inputs), through salbench.harness.crosscheck.run_crosscheck.

Tolerance (float32): max|ours - ref| <= 1e-5 * max|ref| + 1e-6. Models have their BatchNorm
statistics calibrated on the inputs so activations and gradients are O(1), which keeps the
absolute term from hiding a mismatch.
"""
from __future__ import annotations

import warnings

import numpy as np

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


# --------------------------------------------------------------------------- the standard comparison set
STANDARD = ["gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "input_x_gradient", "scorecam", "ablationcam",
            "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad", "rise"]
STANDARD_ROWS = STANDARD + ["smoothgrad(inner=guided_backprop)"]


def assert_standard_rows_pass(table):
    """Every row of the standard set checked and within 1e-5 of max|ref| (no absolute slack)."""
    assert_rows_pass(table, STANDARD_ROWS)
    assert (table["rel_diff"] <= 1e-5).all(), table.to_string()
    assert (table["spearman"] > 0.999).all(), table.to_string()


def small_case():
    from helpers import small_cnn

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return small_cnn(), x, torch.tensor([1, 3])


def test_standard_set_matches_references_on_a_small_cnn():
    """Fast version: every new row on the test CNN (BatchNorm, in-place ReLU, ReLU6; layer "8", 16 channels)."""
    model, x, target = small_case()
    table = run_crosscheck(model, x, target, methods=STANDARD, method_options={"rise": {"n_masks": 50}})
    assert_standard_rows_pass(table)


@pytest.mark.slow
@pytest.mark.parametrize("arch, layer, size", [pytest.param("resnet18", "layer4", 48, id="resnet18"),
                                               pytest.param("vgg11", "features.19", 32, id="vgg11")])
def test_standard_set_matches_references_on_torchvision_models(arch, layer, size):
    model, x, target = torchvision_case(arch, size=size)
    table = run_crosscheck(model, x, target, methods=STANDARD, layer=layer, method_options={"rise": {"n_masks": 100}})
    assert_standard_rows_pass(table)


@pytest.mark.slow
def test_standard_set_matches_references_on_efficientnet_lite0(efficientnet_lite0):
    """Pretrained EfficientNet-Lite0, 64 px (2x2 feature maps: the min-max normalization of the
    CAM rows divides by small ranges, where float32 rounding of the references' own channel sums
    reaches about 7e-6)."""
    bundle = efficientnet_lite0
    x = bundle.normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        logits = bundle.module(x)
    target = torch.stack([logits[0].argmax(), logits[1].argmin()])
    table = run_crosscheck(bundle, x, target, methods=STANDARD, method_options={"rise": {"n_masks": 100}})
    assert_standard_rows_pass(table)


def _masks_without_aligned_corners(self, activation, size):
    upsampled = F.interpolate(activation[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low, high = upsampled.flatten(1).amin(1)[:, None, None], upsampled.flatten(1).amax(1)[:, None, None]
    return (upsampled - low) / (high - low + 1e-8)


def _broken_gradcampp(self, activation, gradients):
    squared = gradients.pow(2)
    alpha = squared / (3 * squared + activation.sum(dim=(2, 3), keepdim=True) * squared * gradients + 1e-6)
    return (gradients.clamp_min(0) * alpha).sum(dim=(2, 3))


@pytest.mark.parametrize(
    "method, target, attribute, replacement",
    [
        pytest.param("gradcampp", "salbench.methods.gradcampp.GradCAMPlusPlus", "channel_weights", _broken_gradcampp,
                     id="gradcampp-factor-3"),
        pytest.param("eigencam", "salbench.methods.eigencam", "first_component_projection",
                     lambda a: a.mean(dim=1), id="eigencam-channel-mean"),
        pytest.param("scorecam", "salbench.methods.scorecam.ScoreCAM", "masks", _masks_without_aligned_corners,
                     id="scorecam-align-corners"),
        pytest.param("ablationcam", "salbench.methods.ablationcam.AblationCAM", "fill_values",
                     lambda self, a: a.flatten(1).amin(1) - 1.0, id="ablationcam-fill"),
        pytest.param("integrated_gradients", "salbench.methods.integrated_gradients", "integration_rule",
                     lambda integration, n: (np.linspace(0, 1, n), np.full(n, 1.0 / n)), id="ig-rule"),
        pytest.param("smoothgrad", "salbench.methods.smoothgrad.SmoothGrad", "aggregate", "mean_square",
                     id="smoothgrad-squared"),
        pytest.param("vargrad", "salbench.methods.smoothgrad.VarGrad", "aggregate", "mean",
                     id="vargrad-mean"),
        pytest.param("rise", "salbench.methods.rise", "mirrored_linear_resize_matrix",
                     lambda n_in, n_out: F.interpolate(torch.eye(n_in, dtype=torch.float64)[None], size=n_out,
                                                       mode="linear", align_corners=False)[0].T, id="rise-clamped-edges"),
    ],
)
def test_crosscheck_flags_broken_standard_methods(monkeypatch, method, target, attribute, replacement):
    """Each new row can fail: a plausible bug in each method is caught."""
    model, x, target_classes = small_case()
    monkeypatch.setattr(f"{target}.{attribute}", replacement)
    table = run_crosscheck(model, x, target_classes, methods=[method], method_options={"rise": {"n_masks": 50}})
    assert (table["passed"] == False).any(), table.to_string()  # noqa: E712
