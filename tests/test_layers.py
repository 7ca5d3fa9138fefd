"""The default target layer (the feature map feeding the global pooling) and the forward tracer."""
import pytest
import torch
import torchvision

from salbench.methods.hooks import default_target_layer, trace_forward


@pytest.mark.parametrize(
    "arch, expected",
    [("resnet18", "layer4"), ("vgg11", "features"), ("densenet121", "features"), ("mobilenet_v2", "features")],
)
def test_default_target_layer_of_torchvision_families(arch, expected):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=4).eval()
    assert default_target_layer(model, torch.randn(1, 3, 64, 64)) == expected


def test_trace_counts_shared_modules_and_leaves_no_hooks():
    model = torchvision.models.resnet18(num_classes=4).eval()
    trace = trace_forward(model, torch.randn(2, 3, 32, 32))
    assert trace.calls["layer1.0.relu"] == 2  # BasicBlock applies one ReLU module twice
    assert trace.started[:2] == ["conv1", "bn1"] and trace.started.index("layer4") < trace.started.index("fc")
    assert dict(trace.finished)["fc"] == (1, 4)  # traced on x[:1]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
