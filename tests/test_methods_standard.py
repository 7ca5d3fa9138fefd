"""The standard comparison set (Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Eigen-CAM, Input x
Gradient, Score-CAM, Ablation-CAM, RISE, Integrated Gradients, SmoothGrad / SmoothGrad^2 /
VarGrad): hand-computed toy cases, independent float64 transcriptions, the seeded draws, the
chunking, option errors. The references (pytorch-grad-cam, captum) are in
tests/test_methods_crosscheck.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from salbench.methods import create_method, list_methods
from salbench.methods.shared import explain_all

from helpers import small_cnn
from test_methods import ToyGAP, toy_input

STANDARD = ["gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "input_x_gradient", "scorecam", "ablationcam",
            "rise", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad"]
A0 = torch.tensor([[10.0, 14, 18], [26, 30, 34], [42, 46, 50]])  # ToyGAP's conv channel 0 on arange(16); channel 1 is 0
COVER = F.conv_transpose2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2))  # 2x2 windows covering each pixel


def test_all_registered_with_a_config():
    from pathlib import Path

    assert set(STANDARD) <= set(list_methods())
    conf = Path(__file__).resolve().parent.parent / "conf" / "method"
    assert all((conf / f"{name}.yaml").is_file() for name in STANDARD)


# --------------------------------------------------------------------------- gradient CAMs
class SpatialGate(nn.Module):
    """ToyGAP with a fixed spatial weight S between the ReLU and the pooling, so that
    d y / d A_ij = w_k S_ij / 9 varies over space (zero, negative and positive entries)."""

    S = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5], [0.0, 3.0, 1.0]])

    def __init__(self):
        super().__init__()
        self.toy = ToyGAP()

    def forward(self, x):
        a = self.toy.act(self.toy.conv(x))
        return self.toy.fc(F.adaptive_avg_pool2d(a * self.S, 1).flatten(1))


def test_toy_gradient_cams_hand_computed_constant_gradient():
    """ToyGAP, class 0: g = w / 9 = (1/9, 2/9) everywhere, A = (A0, 0)."""
    model, x, c0, c1 = ToyGAP(), toy_input(), torch.tensor([0]), torch.tensor([1])
    g = 1.0 / 9
    alpha = g ** 2 / (2 * g ** 2 + 270 * g ** 3 + 1e-6)  # sum A0 = 270; w0 = 9 * g * alpha
    torch.testing.assert_close(create_method("gradcampp", model, layer="act").attribute(x, c0)[0], 9 * g * alpha * A0)
    torch.testing.assert_close(create_method("xgradcam", model, layer="act").attribute(x, c0)[0], g * 270 / (270 + 1e-7) * A0)
    torch.testing.assert_close(create_method("layercam", model, layer="act").attribute(x, c0)[0], A0 / 9)
    torch.testing.assert_close(create_method("hirescam", model, layer="act").attribute(x, c0)[0], A0 / 9)
    # class 1: w = (-1, 0.5): LayerCAM keeps only positive gradients (channel 1, where A = 0)
    assert create_method("layercam", model, layer="act").attribute(x, c1).abs().max() == 0
    torch.testing.assert_close(create_method("hirescam", model, layer="act").attribute(x, c1)[0], -A0 / 9)
    # Grad-CAM++: no positive gradient on channel 0 -> weight 0
    assert create_method("gradcampp", model, layer="act").attribute(x, c1).abs().max() == 0


def test_toy_gradient_cams_hand_computed_spatial_gradient():
    model, x, target = SpatialGate(), toy_input(), torch.tensor([0])
    S, g = SpatialGate.S, SpatialGate.S / 9  # channel 0: w = 1
    total = 270.0
    alpha = torch.where(g != 0, g ** 2 / (2 * g ** 2 + total * g ** 3 + 1e-6), torch.zeros_like(g))
    expected = {
        "gradcampp": (g.clamp_min(0) * alpha).sum() * A0,
        "xgradcam": (g * A0).sum() / (total + 1e-7) * A0,
        "layercam": (S / 9).clamp_min(0) * A0,
        "hirescam": S / 9 * A0,
    }
    for name, value in expected.items():
        torch.testing.assert_close(create_method(name, model, layer="toy.act").attribute(x, target)[0], value, msg=name)
    gradcam = create_method("gradcam", model, layer="toy.act").attribute(x, target)[0]
    torch.testing.assert_close(gradcam, S.mean() / 9 * A0)  # HiResCAM differs from Grad-CAM here


def test_hirescam_equals_gradcam_on_a_gap_head():
    model = small_cnn()  # layer "8" feeds the global average pool: the gradient is constant over space
    x, target = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 4])
    hires = create_method("hirescam", model, layer="8").attribute(x, target)
    torch.testing.assert_close(hires, create_method("gradcam", model, layer="8").attribute(x, target), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- Eigen-CAM
def test_eigencam_toy_hand_computed_and_sign():
    model, x = ToyGAP(), toy_input()
    expected = A0 - 30  # channel 1 is 0: the first component is channel 0, centred
    for target in (0, 1):  # no gradient: the same for every class
        torch.testing.assert_close(create_method("eigencam", model, layer="act").attribute(x, torch.tensor([target]))[0], expected)


@pytest.mark.parametrize("extra_channels", [0, 12], ids=["hw>K", "hw<=K"])
def test_eigencam_projection_both_gram_branches(extra_channels):
    from salbench.methods.eigencam import first_component_projection

    # channel 1 = 60 - A0 / 2 (anti-correlated with channel 0), zero-filled extra channels:
    # the first component is (1, -1/2)/sqrt(1.25); the channel mean 30 + A0/4 (+0) correlates with +A0
    activation = torch.zeros(1, 2 + extra_channels, 3, 3)
    activation[0, 0], activation[0, 1] = A0, 60 - A0 / 2
    projection = first_component_projection(activation)
    torch.testing.assert_close(projection[0], (A0 - 30) * math.sqrt(1.25))
    flipped = first_component_projection(-activation)  # the channel mean flips too: the map follows it
    torch.testing.assert_close(flipped[0], -(A0 - 30) * math.sqrt(1.25))


def test_eigencam_matches_a_float64_svd():
    from salbench.methods.eigencam import first_component_projection

    activation = torch.randn(3, 7, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    projection = first_component_projection(activation)
    for image, got in zip(activation, projection):
        pixels = image.flatten(1).T.numpy()
        centred = pixels - pixels.mean(axis=0)
        _, _, vt = np.linalg.svd(centred)
        reference = centred @ vt[0]
        reference *= np.sign(np.dot(reference, pixels.mean(axis=1)))
        np.testing.assert_allclose(got.flatten().numpy(), reference, rtol=1e-10, atol=1e-10)


def test_eigencam_reads_activations_only():
    from salbench.methods.shared import PassRequest

    explainer = create_method("eigencam", small_cnn(), layer="8")
    request = explainer.pass_request(torch.randn(1, 3, 16, 16))
    assert request == PassRequest(activations=frozenset({"8"})) and not request.needs_backward


# --------------------------------------------------------------------------- Input x Gradient
def test_input_x_gradient_toy_hand_computed():
    model, x = ToyGAP(), toy_input()
    torch.testing.assert_close(create_method("input_x_gradient", model).attribute(x, torch.tensor([0])), x * COVER / 9)


def test_new_shared_pass_methods_share_one_pass_and_equal_one_at_a_time():
    model = small_cnn()
    x, target = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 2])
    names = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "saliency", "input_x_gradient"]
    explainers = {n: create_method(n, model) for n in names}
    explained = explain_all(explainers, x, target)
    for name in names:
        assert explained.costs[name]["shared_with"] == names
        assert torch.equal(explained.maps[name], explainers[name](x, target)), name


# --------------------------------------------------------------------------- Score-CAM
def test_scorecam_toy_hand_computed():
    model, target = ToyGAP(), torch.tensor([0, 0])
    x = torch.cat([toy_input(), 2 * toy_input()])  # image 1: A0 doubles, its normalized mask does not
    # A0 is linear over the 3x3 grid, so its align_corners=True upsampling to 4x4 is linear too:
    # min 10, max 50, normalized mask = arange(16) / 15 = x / 15. Channel 1 is 0: mask 0.
    masked = x * toy_input() / 15
    windows = F.conv2d(masked, torch.ones(1, 1, 2, 2))  # conv channel 0; channel 1 = -windows -> ReLU 0
    score_0 = windows.mean(dim=(1, 2, 3)) + 0.5  # class 0: w = (1, 2), bias 0.5
    score_1 = torch.full((2,), 0.5)  # an all-zero input: the bias
    weights = torch.stack([score_0, score_1], dim=1).softmax(dim=1)
    expected = weights[:, :1, None] * A0 * torch.tensor([1.0, 2.0])[:, None, None]
    torch.testing.assert_close(create_method("scorecam", model, layer="act").attribute(x, target), expected)
    # the authors' settings: softmax readouts, no softmax over channels
    probabilities = F.softmax(model(masked), dim=1)[:, 0].detach()
    got = create_method("scorecam", model, layer="act", score="softmax", channel_softmax=False).attribute(x, target)
    torch.testing.assert_close(got, probabilities[:, None, None] * A0 * torch.tensor([1.0, 2.0])[:, None, None])


def test_scorecam_masks_match_grad_cam_upsampling():
    explainer = create_method("scorecam", small_cnn(), layer="8")
    maps = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))
    masks = explainer.masks(maps, (9, 7))
    upsampled = nn.UpsamplingBilinear2d(size=(9, 7))(maps[:, None])[:, 0]
    low, high = upsampled.flatten(1).min(1)[0], upsampled.flatten(1).max(1)[0]
    torch.testing.assert_close(masks, (upsampled - low[:, None, None]) / (high - low + 1e-8)[:, None, None])
    assert masks.min() == 0 and (masks.flatten(1).amax(1) - 1).abs().max() < 1e-6


# --------------------------------------------------------------------------- Ablation-CAM
def test_ablationcam_toy_hand_computed():
    model, x, target = ToyGAP(), toy_input(), torch.tensor([0])
    clean = 30 + 0.5  # mean(A0) * 1 + mean(0) * 2 + 0.5
    # min A = 0: channels ablated to 0; channel 0 -> y = 0.5; channel 1 (already 0) -> y unchanged
    got = create_method("ablationcam", model, layer="act").attribute(x, target)[0]
    torch.testing.assert_close(got, (clean - 0.5) / clean * A0)
    # fill = 1: channel 0 -> 1 + 0.5; channel 1 -> 30 + 2 + 0.5 (weight -2/30.5, times A1 = 0)
    got = create_method("ablationcam", model, layer="act", fill=1.0).attribute(x, target)[0]
    torch.testing.assert_close(got, (clean - 1.5) / clean * A0)


def test_ablationcam_default_fill_rule():
    explainer = create_method("ablationcam", small_cnn())
    activation = torch.stack([torch.tensor([0.0, 2.0, 3.0]), torch.tensor([-1.5, 2.0, 3.0])]).view(2, 3, 1, 1)
    torch.testing.assert_close(explainer.fill_values(activation), torch.tensor([0.0, -1.5 - 1e7]))


def test_replaced_output_pads_checks_and_leaves_no_hook():
    from salbench.methods.hooks import replaced_output

    model = small_cnn()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        with replaced_output(model, "8") as slot:
            slot.output = torch.zeros(2, 16, 4, 4)
            padded = model(x)
            slot.output = torch.zeros(2, 15, 4, 4)
            with pytest.raises(ValueError, match="replacement has shape"):
                model(x)
        # rows 2 and 3 repeat row 1: the head's bias alone
        torch.testing.assert_close(padded, model[-1].bias.expand(3, -1))
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- RISE
@pytest.mark.parametrize("grid, size", [(8, 32), (7, 224), (3, 10), (5, 17), (1, 4)])
def test_rise_interpolation_matches_skimage_resize(grid, size):
    from skimage.transform import resize

    from salbench.methods.rise import mirrored_linear_resize_matrix

    cells = (grid + 1) * math.ceil(size / grid)
    values = np.random.default_rng(0).random((grid, grid)).astype(np.float32)
    matrix = mirrored_linear_resize_matrix(grid, cells).numpy()
    reference = resize(values, (cells, cells), order=1, mode="reflect", anti_aliasing=False)
    np.testing.assert_allclose(matrix @ values.astype(np.float64) @ matrix.T, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_rise_masks_match_the_authors_procedure():
    from salbench.harness.crosscheck import rise_reference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x, target = torch.randn(2, 3, 20, 13), torch.tensor([2, 0])
    explainer = create_method("rise", model, n_masks=40, grid=4, p1=0.3, batch_size=16)
    grids, rows, cols = explainer.draws(x)
    assert grids.shape == (2, 40, 4, 4) and rows.max() < 5 and cols.max() < 4  # ceil(20 / 4), ceil(13 / 4)
    reference = rise_reference(model, x, target, grids, rows, cols, 0.3)
    torch.testing.assert_close(explainer.attribute(x, target).double(), reference, rtol=1e-5, atol=1e-7)


def test_rise_all_kept_cells_give_the_clean_probability_everywhere():
    model, x = ToyGAP(), toy_input()
    explainer = create_method("rise", model, n_masks=10, grid=2, p1=1.0)
    expected = F.softmax(model(x), dim=1)[0, 2].detach()
    torch.testing.assert_close(explainer.attribute(x, torch.tensor([2]))[0], expected.expand(4, 4))


def test_rise_draws_follow_the_image_not_the_batch():
    model = small_cnn()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    explainer = create_method("rise", model, n_masks=6, grid=4)
    grids, rows, cols = explainer.draws(x)
    again = explainer.draws(x.flip(0))
    assert torch.equal(again[0], grids.flip(0)) and torch.equal(again[1], rows.flip(0)) and torch.equal(again[2], cols.flip(0))
    assert not torch.equal(grids[0], grids[1])
    shared = create_method("rise", model, n_masks=6, grid=4, per_image_masks=False).draws(x)
    assert all(torch.equal(part[0], part[2]) for part in shared)  # the authors' one set for every image
    assert not torch.equal(create_method("rise", model, n_masks=6, grid=4, seed=1).draws(x)[0], grids)


# --------------------------------------------------------------------------- Integrated Gradients
class Quadratic(nn.Module):
    """logits = [sum x^2, sum x] per image."""

    def forward(self, x):
        flat = x.flatten(1)
        return torch.stack([flat.pow(2).sum(1), flat.sum(1)], dim=1)


# (sum_j s_j, sum_j s_j a_j) of each rule with 4 nodes (Gauss-Legendre: 3, exact for this integrand)
RULES = {
    "gausslegendre": (3, 1.0, 0.5),
    "riemann_left": (4, 1.0, 3 / 8),
    "riemann_right": (4, 1.0, 5 / 8),
    "riemann_middle": (4, 1.0, 1 / 2),
    "riemann_trapezoid": (4, 3 / 4, 3 / 8),  # captum's trapezoid weights sum to (n - 1) / n
}


@pytest.mark.parametrize("integration", list(RULES))
def test_integrated_gradients_toy_hand_computed(integration):
    n_steps, weight_sum, weighted_alpha = RULES[integration]
    x = torch.linspace(-1.0, 2.0, 12).view(1, 3, 2, 2).repeat(2, 1, 1, 1)
    baseline = 0.5
    explainer = create_method("integrated_gradients", Quadratic(), n_steps=n_steps, integration=integration,
                              baseline=baseline, batch_size=5)
    # d/dx sum x^2 = 2 x at x' + a (x - x'): IG = (x - x') (2 x' sum s + 2 (x - x') sum s a)
    expected = (x - baseline) * (2 * baseline * weight_sum + 2 * (x - baseline) * weighted_alpha)
    torch.testing.assert_close(explainer.attribute(x, torch.tensor([0, 0])), expected)
    # the linear logit: IG = (x - x') * sum s
    torch.testing.assert_close(explainer.attribute(x, torch.tensor([1, 1])), (x - baseline) * weight_sum)


def test_integrated_gradients_toy_gap_equals_input_x_gradient_in_the_linear_region():
    model, x = ToyGAP(), toy_input()  # x >= 0: on the path a x the ReLUs do not switch
    ig = create_method("integrated_gradients", model, n_steps=7).attribute(x, torch.tensor([0]))
    torch.testing.assert_close(ig, x * COVER / 9)


def test_integration_rules_are_captums():
    from captum.attr._utils.approximation_methods import approximation_parameters

    from salbench.methods.integrated_gradients import INTEGRATIONS, integration_rule

    for integration in INTEGRATIONS:
        steps, alphas = approximation_parameters(integration)
        ours_alphas, ours_steps = integration_rule(integration, 9)
        np.testing.assert_array_equal(ours_alphas, alphas(9))  # bit for bit: a node one float32 step off
        np.testing.assert_array_equal(ours_steps, steps(9))  # can flip a ReLU gate on the path


# --------------------------------------------------------------------------- SmoothGrad
def test_hashed_normal_is_splitmix64_and_box_muller():
    from salbench.methods.draws import hashed_normal

    def splitmix64(state: int) -> int:
        z = state & (2 ** 64 - 1)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
        return z ^ (z >> 31)

    keys = [0, 1, -5, 2 ** 62 + 12345, -(2 ** 63)]
    got = hashed_normal(torch.tensor(keys, dtype=torch.int64), (5,), torch.float64)
    for key, row in zip(keys, got.tolist()):
        expected = []
        for pair in range(3):
            bits = splitmix64(key + (pair + 1) * 0x9E3779B97F4A7C15)
            u1, u2 = ((bits >> 32) + 0.5) / 2 ** 32, (bits & 0xFFFFFFFF) / 2 ** 32
            radius = math.sqrt(-2 * math.log(u1))
            expected += [radius * math.cos(2 * math.pi * u2), radius * math.sin(2 * math.pi * u2)]
        np.testing.assert_allclose(row, expected[:5], rtol=1e-13, atol=1e-13)


def test_hashed_normal_statistics():
    from salbench.methods.draws import hashed_normal, stream_keys

    draws = hashed_normal(stream_keys([7, 8], 50, torch.device("cpu")).flatten(), (2000,), torch.float64)
    assert abs(draws.mean().item()) < 0.01 and abs(draws.std().item() - 1) < 0.01
    assert abs(np.corrcoef(draws[0].numpy(), draws[1].numpy())[0, 1]) < 0.1  # streams independent


def test_smoothgrad_noise_scale_seeding_and_batch_independence():
    from salbench.methods.smoothgrad import smoothgrad_noise

    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[1] *= 4
    noise = smoothgrad_noise(x, 64, 0.2, seed=0)
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    torch.testing.assert_close(noise.flatten(1).std(1), 0.2 * spread, rtol=0.03, atol=0)
    assert torch.equal(smoothgrad_noise(x.flip(0), 64, 0.2, seed=0), noise.flip(0))
    assert torch.equal(smoothgrad_noise(x[1:2], 64, 0.2, seed=0), noise[1:2])
    assert not torch.equal(smoothgrad_noise(x, 64, 0.2, seed=1), noise)


def test_smoothgrad_variants_toy_hand_computed():
    from salbench.methods.smoothgrad import smoothgrad_noise

    x = torch.linspace(-1.0, 2.0, 12).view(1, 3, 2, 2).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(0)
    target = torch.tensor([0, 0])
    options = {"n_samples": 7, "noise_level": 0.3, "batch_size": 3}  # chunks across both images
    noise = smoothgrad_noise(x, 7, 0.3, seed=0)
    gradients = 2 * (x[:, None] + noise)  # d/dx sum x^2 at each noisy copy
    model = Quadratic()
    torch.testing.assert_close(create_method("smoothgrad", model, **options).attribute(x, target), gradients.mean(1))
    torch.testing.assert_close(create_method("smoothgrad_sq", model, **options).attribute(x, target), gradients.pow(2).mean(1))
    torch.testing.assert_close(create_method("vargrad", model, **options).attribute(x, target),
                               gradients.var(1, unbiased=False), rtol=1e-4, atol=1e-5)
    # around Input x Gradient: mean of (x + e) * 2 (x + e)
    inner = create_method("smoothgrad", model, inner="input_x_gradient", **options).attribute(x, target)
    torch.testing.assert_close(inner, ((x[:, None] + noise) * gradients).mean(1))


def test_smoothgrad_inner_method_and_postprocess_defaults():
    model = small_cnn()
    guided = create_method("smoothgrad", model, inner="guided_backprop")
    assert guided.postprocess == create_method("guided_backprop", model).postprocess
    around_cam = create_method("smoothgrad", model, inner="gradcam", inner_options={"layer": "8"}, n_samples=2)
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    assert around_cam.attribute(x, target).shape == (2, 8, 8) and around_cam(x, target).shape == (2, 16, 16)
    assert around_cam.postprocess.relu and around_cam.options()["inner_options"] == {"layer": "8"}
    with pytest.raises(ValueError, match="post-processing options"):
        create_method("smoothgrad", model, inner_options={"channel_reduction": "sum"})
    with pytest.raises(KeyError, match="saliency"):
        create_method("smoothgrad", model, inner="saliencyy")


# --------------------------------------------------------------------------- options and chunks
@pytest.mark.parametrize(
    "name, options, message",
    [
        ("scorecam", {"score": "prob"}, "valid: logit, softmax"),
        ("scorecam", {"batch_size": 0}, "batch_size"),
        ("ablationcam", {"batch_size": 0}, "batch_size"),
        ("rise", {"p1": 0.0}, r"p1 must be in \(0, 1\]"),
        ("rise", {"n_masks": 0}, "n_masks"),
        ("rise", {"score": "prob"}, "valid: softmax, logit"),
        ("integrated_gradients", {"integration": "simpson"}, "valid: gausslegendre, riemann_left"),
        ("integrated_gradients", {"integration": "riemann_left", "n_steps": 1}, "n_steps >= 2"),
        ("smoothgrad", {"noise_level": -0.1}, "noise_level"),
        ("vargrad", {"n_samples": 0}, "n_samples"),
    ],
)
def test_bad_options_are_clear_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        create_method(name, small_cnn(), **options)


def test_image_runs_cover_every_item_once():
    from salbench.methods.chunks import add_per_image, image_runs

    per_image, count = 5, 17
    seen = []
    for start in range(0, count, 4):
        stop = min(start + 4, count)
        seen += [(image, start + k) for image, first, last in image_runs(start, stop, per_image) for k in range(first, last)]
    assert seen == [(i // per_image, i) for i in range(count)]
    total = torch.zeros(4)
    values = torch.arange(count, dtype=torch.float32)
    for start in range(0, count, 4):
        add_per_image(total, values[start:start + 4], start, min(start + 4, count), per_image)
    torch.testing.assert_close(total, torch.tensor([10.0, 35, 60, 31]))


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "rise", "integrated_gradients", "smoothgrad"])
def test_batched_methods_do_not_depend_on_batch_size(name):
    model = small_cnn()
    x, target = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 4, 2])
    small = {"rise": {"n_masks": 12}, "integrated_gradients": {"n_steps": 5}, "smoothgrad": {"n_samples": 4}}.get(name, {})
    one = create_method(name, model, batch_size=1, **small).attribute(x, target)
    many = create_method(name, model, batch_size=1000, **small).attribute(x, target)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6 * many.abs().max().item())


@pytest.mark.parametrize("layer, images", [("layer2.0.conv2", 2), ("layer3.1.bn1", 1)])
def test_ablationcam_one_copy_passes_equal_full_passes_across_residual_connections(layer, images):
    """reuse_prefix: the layers before run on one copy; a residual connection around the layer
    broadcasts from it (ResNet-18's blocks), the same scores as full passes on copies."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([4, 1][:images])
    reuse = create_method("ablationcam", model, layer=layer, batch_size=64).attribute(x, target)
    full = create_method("ablationcam", model, layer=layer, batch_size=64, reuse_prefix=False).attribute(x, target)
    torch.testing.assert_close(reuse, full, rtol=1e-4, atol=1e-5 * full.abs().max().item())


class BatchSizeFromInput(nn.Module):
    """Reshapes after the conv with the batch size read from the input."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(x.shape[0], -1))


def test_ablationcam_one_copy_passes_fail_clearly_on_a_batch_size_dependent_model():
    model, x, target = BatchSizeFromInput().eval(), torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with pytest.raises(RuntimeError, match="use reuse_prefix=False"):  # n rows cannot take the input's batch size
        create_method("ablationcam", model, layer="conv", batch_size=2).attribute(x, target)
    assert create_method("ablationcam", model, layer="conv", reuse_prefix=False).attribute(x, target).shape == (2, 6, 6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_draws_on_cuda_match_the_cpu():
    """RISE's CPU draws are identical on CUDA; SmoothGrad's device noise agrees except, rarely,
    in the last float32 bit (float64 log / sin / cos of two math libraries)."""
    from salbench.methods.draws import hashed_normal, stream_keys

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cpu = hashed_normal(stream_keys([1, 2], 50, torch.device("cpu")).flatten(), (3, 64, 64))
    gpu = hashed_normal(stream_keys([1, 2], 50, torch.device("cuda")).flatten(), (3, 64, 64)).cpu()
    differ = cpu != gpu
    assert differ.sum() <= 4 and (cpu - gpu).abs().max() <= 1e-6 * cpu.abs().max()
    explainer = create_method("rise", small_cnn(), n_masks=20)
    for on_cpu, on_gpu in zip(explainer.draws(x), explainer.draws(x.cuda())):
        assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
