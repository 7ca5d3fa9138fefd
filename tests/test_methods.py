"""Seed explainers: hand-computed toy cases, shapes, batching, determinism, model state."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salbench.methods import create_method, list_methods

from helpers import small_cnn

SEED_METHODS = ["cam", "gradcam", "counterfactual_gradcam", "guided_gradcam", "saliency", "guided_backprop",
                "deconvnet", "occlusion", "random", "center"]


class ToyGAP(nn.Module):
    """conv(1->2, 2x2 weights of ones / minus ones, no padding) -> ReLU -> GAP -> linear."""

    def __init__(self, relu: str = "module"):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight[0].fill_(1.0)
            self.conv.weight[1].fill_(-1.0)
        self.act = {"module": nn.ReLU(), "inplace": nn.ReLU(inplace=True), "relu6": nn.ReLU6(),
                    "functional": nn.Identity()}[relu]
        self.functional = relu == "functional"
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))

    def forward(self, x):
        a = self.conv(x)
        a = F.relu(a) if self.functional else self.act(a)
        return self.fc(F.adaptive_avg_pool2d(a, 1).flatten(1))


def toy_input():
    return torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)  # captum's toy input


def test_all_seed_methods_registered():
    assert set(SEED_METHODS) <= set(list_methods())


def test_toy_cam_gradcam_hand_computed():
    model, x = ToyGAP(), toy_input()
    # conv ch0 = sum of 2x2 windows of arange: [[10,14,18],[26,30,34],[42,46,50]]; ch1 = -that -> ReLU 0
    a0 = torch.tensor([[10.0, 14, 18], [26, 30, 34], [42, 46, 50]])
    cam = create_method("cam", model).attribute(x, torch.tensor([0]))
    torch.testing.assert_close(cam[0], 1.0 * a0)  # w[0] = (1, 2), channel 1 is 0
    gradcam = create_method("gradcam", model, layer="act").attribute(x, torch.tensor([0]))
    torch.testing.assert_close(gradcam[0], a0 / 9)  # alpha = w / Z, Z = 9
    counter = create_method("counterfactual_gradcam", model, layer="act").attribute(x, torch.tensor([1]))
    torch.testing.assert_close(counter[0], a0 / 9)  # class 1: w = (-1, .5) -> -alpha0 = 1/9
    # class 1: alpha0 = -1/9, so the raw map is negative everywhere and the heatmap's ReLU zeroes it
    gradcam_1 = create_method("gradcam", model, layer="act")
    torch.testing.assert_close(gradcam_1.attribute(x, torch.tensor([1]))[0], -a0 / 9)
    assert gradcam_1(x, torch.tensor([1])).abs().max() == 0


def test_toy_saliency_guided_deconv_hand_computed():
    model, x = ToyGAP(), toy_input()
    target = torch.tensor([1])  # w = (-1, 0.5): d y / d a0 = -1/9 at every position, ch1 is dead
    cover = F.conv_transpose2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))  # windows per pixel
    torch.testing.assert_close(create_method("saliency", model).attribute(x, target), -cover / 9)
    # guided: negative upstream gradient at the only live ReLU -> zero; deconvnet: both channels
    # get ReLU(upstream): ch0 ReLU(-1/9) = 0, ch1 ReLU(0.5/9) = 0.5/9, through weights -1
    assert create_method("guided_backprop", model).attribute(x, target).abs().max() == 0
    torch.testing.assert_close(create_method("deconvnet", model).attribute(x, target), -0.5 * cover / 9)
    # class 0: w = (1, 2): guided passes ch0 (x > 0 there), ch1 is dead
    torch.testing.assert_close(create_method("guided_backprop", model).attribute(x, torch.tensor([0])), cover / 9)


@pytest.mark.parametrize("relu", ["module", "inplace", "relu6", "functional"])
def test_guided_rules_cover_every_rectifier_form(relu):
    model, x = ToyGAP(relu), toy_input() / 10  # relu6 stays in its linear range (< 6)
    target = torch.tensor([1])
    cover = F.conv_transpose2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))
    assert create_method("guided_backprop", model).attribute(x, target).abs().max() == 0
    torch.testing.assert_close(create_method("deconvnet", model).attribute(x, target), -0.5 * cover / 9)


def test_relu6_upper_clip_blocks_guided_gradient():
    model, x = ToyGAP("relu6"), toy_input() / 4  # conv ch0 rows: [2.5 3.5 4.5], [6.5 ...], [10.5 ...]
    passes = torch.tensor([[1.0, 1, 1], [0, 0, 0], [0, 0, 0]])[None, None]  # 0 < a < 6 only in row 0
    expected = F.conv_transpose2d(passes, torch.ones(1, 1, 2, 2)) / 9
    for name in ("saliency", "guided_backprop"):
        torch.testing.assert_close(create_method(name, model).attribute(x, torch.tensor([0])), expected)


def test_occlusion_hand_computed():
    model, x = ToyGAP(), toy_input()
    occ = create_method("occlusion", model, window=2, stride=2, batch_size=3).attribute(x, torch.tensor([0]))
    assert occ.shape == (1, 1, 4, 4)
    clean = model(x)[0, 0]
    for top in (0, 2):
        for left in (0, 2):
            occluded = x.clone()
            occluded[..., top:top + 2, left:left + 2] = 0
            expected = clean - model(occluded)[0, 0]
            torch.testing.assert_close(occ[0, 0, top, left], expected.detach())


def test_cam_rejects_non_gap_models():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    with pytest.raises(ValueError, match="gradcam"):
        create_method("cam", model)(torch.randn(1, 3, 8, 8), torch.tensor([0]))
    relu_head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.ReLU()).eval()
    with pytest.raises(ValueError, match="differ by"):
        create_method("cam", relu_head)(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))


def test_cam_equals_gradcam_times_z_on_gap_model():
    model = small_cnn()  # layer "8" (its last ReLU6) feeds the global average pool
    x, target = torch.randn(2, 3, 12, 12), torch.tensor([1, 3])
    cam = create_method("cam", model).attribute(x, target)
    gradcam = create_method("gradcam", model, layer="8", relu=False).attribute(x, target)
    torch.testing.assert_close(cam, gradcam * 36, rtol=1e-5, atol=1e-5)  # Z = 6 x 6 after the max pool
