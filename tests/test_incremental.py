"""Incremental occlusion (methods/incremental.py, Nakandala et al. SIGMOD 2019) against the full
forward of the occluded images, the full-forward occlusion path and captum's ``Occlusion``.

"Exact" means: the occluded logits of every (image, window) pair equal the model's forward of
the occluded image, in float64 to 1e-10 relative (max|diff| <= 1e-10 max|logits|: the algorithm
is exact) and in float32 to 1e-5 relative plus twice the float32 forward's own deviation from
float64 (calibrated mobilenet_v2's float32 forward is itself only 1.5e-5-accurate; resnet18, vgg11,
the synthetic CNN and EfficientNet-Lite0 meet 1e-5 with room), on every supported family
(random-init torchvision models with BatchNorm statistics calibrated on the inputs, so that
activations are O(1), the shipped synthetic CNN, the pretrained EfficientNet-Lite0) and on a model
made of the awkward cases (dilated, grouped, strided 1x1 and 'same' convolutions, ceil-mode max
pooling, padded average pooling, asymmetric zero padding, gating products, concatenation, and
operations the engine cannot bound), on non-square inputs with windows cropped at the border.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from salbench.methods import create_method
from salbench.methods.incremental import (
    IncrementalOcclusion, Untraceable, _window_axis, incremental_cost, plan_regions, trace_model,
)

from helpers import small_cnn
from test_methods_crosscheck import calibrated


# --------------------------------------------------------------------------- models
class Zoo(nn.Module):
    """Every kind of op the planner handles, plus ops it must run in full (GroupNorm, a
    squeeze-and-excitation product, an upsampling), in an order where full maps come late."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same")
        self.skip = nn.Conv2d(8, 8, 1, stride=2)  # reads every other position: regions can vanish
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 1, padding=1)
        self.pad = nn.ZeroPad2d((0, 1, 1, 0))
        self.valid = nn.Conv2d(16, 8, 2)
        self.gate = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.norm = nn.GroupNorm(2, 8)
        self.se = nn.Linear(8, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + F.leaky_relu(self.dilated(x), 0.1)
        x = torch.sigmoid(self.same(x)) * x * 0.5  # gating: a product of two changed maps and a number
        a = self.pool(x)
        b = self.skip(x)[..., : a.shape[-2], : a.shape[-1]]  # slicing: run in full
        x = torch.cat([self.avg(a), F.pad(a, (0, 0, 0, 0))], dim=1)
        x = self.bn(self.valid(self.pad(x)))
        x = F.relu6(x + self.gate(x), inplace=True)
        x = self.norm(x)  # statistics over the whole map: full from here on
        x = x * torch.sigmoid(self.se(x.mean((2, 3))))[:, :, None, None]
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") + 0.0 * b.mean()
        return self.head(x.mean((2, 3)))


class NegativePools(nn.Module):
    """Padded and ceil-mode max pooling of all-negative maps (the padding must act as -inf, not
    0) and padded average pooling (the padding counts as 0)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.bias.fill_(-8.0)

    def forward(self, x):
        x = F.max_pool2d(self.conv(x), 3, 2, padding=1)
        x = F.avg_pool2d(x, 3, 2, padding=1)
        x = nn.functional.max_pool2d(x, 2, 2, ceil_mode=True)
        return self.fc(x.mean((2, 3)))


class EarlyBarrier(nn.Module):
    """An op the engine cannot bound first: no node can be recomputed on a region."""

    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(self.norm(x)).mean((2, 3)))


class InPlace(nn.Module):
    """An in-place ReLU overwrites a map after another layer read it (the cache must keep the
    values that layer read); ``read_after``: the overwritten map is read again afterwards (the
    graph relies on the mutation: refused)."""

    def __init__(self, read_after: bool = False):
        super().__init__()
        self.read_after = read_after
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv2(a)
        c = F.relu(a, inplace=True)
        out = b + c + (a if self.read_after else 0.0)
        return self.fc(out.mean((2, 3)))


class DataDependent(nn.Module):
    """Control flow on the input's values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        if x.mean() > 10:
            x = x * 2
        return self.net(x)


def torchvision_model(arch: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    return calibrated(getattr(torchvision.models, arch)(weights=None, num_classes=10), x)


def inputs(size, batch: int = 2, seed: int = 1) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- exactness
def engine_and_reference(model: nn.Module, x: torch.Tensor, window: int, stride: int):
    """(engine, engine logits, full-forward logits) [B * n_windows, K] of every (image, window)
    pair, in x's dtype (the model is converted to it and back)."""
    occlusion = create_method("occlusion", model, window=window, stride=stride)
    height, width = x.shape[-2:]
    tops, lefts = occlusion.window_grid(height, width)
    masks = occlusion.window_masks(height, width, x.device)
    model.to(x.dtype)
    try:
        with torch.no_grad():
            engine = IncrementalOcclusion(model, trace_model(model), tops, lefts, window, 0.0)
            engine.prepare(x[:1])
            engine.allocate(x.shape[0], x.dtype)
            for i in range(x.shape[0]):
                engine.store(i, x[i:i + 1])
            pairs = torch.arange(x.shape[0] * len(tops))
            image, window_index = pairs // len(tops), pairs % len(tops)
            got = engine.run_chunk(window_index, image)
            occluded = torch.where(masks[window_index][:, None], torch.zeros((), dtype=x.dtype), x[image])
            expected = model(occluded)
    finally:
        model.float()
    return engine, got, expected


def assert_exact(model: nn.Module, x: torch.Tensor, window: int, stride: int):
    """Float64: 1e-10 relative; float32: 1e-5 relative + 2 x the float32 forward's own error."""
    engine, got, expected = engine_and_reference(model, x.double(), window, stride)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-10 * scale
    _, got32, expected32 = engine_and_reference(model, x, window, stride)
    floor = (expected32.double() - expected).abs().max().item()
    error = (got32.double() - expected32.double()).abs().max().item()
    assert error <= 1e-5 * scale + 2 * floor, (error, scale, floor)
    return engine


FAMILIES = [  # sizes where several layers are recomputed on regions before the maps are covered
    pytest.param("resnet18", 64, 16, 16, id="resnet18"),
    pytest.param("vgg11", 40, 12, 6, id="vgg11", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", 64, 16, 8, id="mobilenet_v2", marks=pytest.mark.slow),
    pytest.param("densenet121", 64, 16, 16, id="densenet121", marks=pytest.mark.slow),
]


def patched_convolutions(engine) -> int:
    return sum(plan.mode == "patch" and plan.macs > 0 for plan in engine.plans.values())


@pytest.mark.parametrize("arch, size, window, stride", FAMILIES)
def test_torchvision_families_are_exact(arch, size, window, stride):
    x = inputs(size, batch=1)
    model = torchvision_model(arch, x)
    engine = assert_exact(model, x, window, stride)
    assert patched_convolutions(engine) >= 3 and engine.planned_share() < 0.95  # not all in full


def test_synthetic_cnn_and_small_cnn_are_exact(synthetic_bundle):
    engine = assert_exact(synthetic_bundle.module.eval(), inputs(64), 16, 8)
    assert engine.planned_share() < 0.5
    assert_exact(small_cnn(), inputs((29, 37)), 7, 5)  # non-square, windows cropped at the border


@pytest.mark.slow  # the fast suite compares it with captum (tests/test_methods_crosscheck.py, incremental: auto)
def test_efficientnet_lite0_is_exact():
    """TF 'same' padding (an asymmetric ZeroPad2d before each strided convolution), depthwise
    convolutions, ReLU6, residual additions, through the wrapper's traced-through forward."""
    from salbench.models import create_model

    engine = assert_exact(create_model("efficientnet_lite0").module.eval(), inputs(64, batch=1), 16, 8)
    assert patched_convolutions(engine) >= 5


@pytest.mark.parametrize("size, window, stride", [((45, 38), 9, 4), ((40, 40), 16, 16), ((33, 50), 33, 17)])
def test_awkward_ops_are_exact(size, window, stride):
    torch.manual_seed(0)
    model = Zoo().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    engine = assert_exact(model, inputs(size), window, stride)
    modes = {name: plan.mode for name, plan in engine.plans.items()}
    assert modes["norm"] == "full" and modes["interpolate"] == "full" and modes["stem"] == "patch"


def test_padded_pooling_of_negative_maps_is_exact():
    torch.manual_seed(0)
    model = NegativePools().eval()
    engine = assert_exact(model, inputs((27, 31)), 6, 5)
    assert all(engine.plans[name].mode == "patch" for name in ("max_pool2d", "avg_pool2d", "max_pool2d_1"))
    assert engine.plans["max_pool2d"].crop_outside


def test_attribution_matches_the_full_path_and_captum(synthetic_bundle):
    """The shipped synthetic CNN in float64, where rounding cannot hide a difference (captum
    returns float32 attributions: compared at float32's resolution)."""
    import copy

    from captum.attr import Occlusion as CaptumOcclusion

    x = inputs(64).double()
    model = copy.deepcopy(synthetic_bundle.module).eval().double()
    target = torch.tensor([3, 1])
    incremental = create_method("occlusion", model, window=12, stride=10, batch_size=10, incremental=True).attribute(x, target)
    full = create_method("occlusion", model, window=12, stride=10, batch_size=10, incremental=False).attribute(x, target)
    reference = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(3, 12, 12), strides=(3, 10, 10), baselines=0.0,
                                                 target=target, perturbations_per_eval=16)
    with torch.no_grad():
        scale = model(x).abs().max().item()
    assert (incremental - full).abs().max().item() <= 1e-10 * scale
    assert (incremental - reference.double()).abs().max().item() <= 1e-6 * scale
    assert incremental.abs().max() > 1e-3 * scale  # the windows do change the scores


def test_incremental_is_independent_of_how_many_images_a_call_holds(synthetic_bundle):
    x = inputs(64, batch=3)
    occlusion = create_method("occlusion", synthetic_bundle.module.eval(), window=16, stride=12, batch_size=7,
                              incremental=True)
    target = torch.tensor([1, 2, 3])
    whole = occlusion.attribute(x, target)
    assert torch.equal(torch.cat([occlusion.attribute(x[:1], target[:1]), occlusion.attribute(x[1:], target[1:])]), whole)
    assert torch.equal(torch.cat([occlusion.attribute(x[i:i + 1], target[i:i + 1]) for i in range(3)]), whole)


# --------------------------------------------------------------------------- fallbacks
def test_untraceable_models_fall_back_under_auto_and_fail_under_true():
    model, x, target = DataDependent().eval(), inputs(32), torch.tensor([0, 1])
    with pytest.raises(Untraceable, match="cannot trace"):
        trace_model(model)
    auto = create_method("occlusion", model, window=8, stride=8).attribute(x, target)
    full = create_method("occlusion", model, window=8, stride=8, incremental=False).attribute(x, target)
    assert torch.equal(auto, full)
    with pytest.raises(ValueError, match="incremental=true, but torch.fx cannot trace"):
        create_method("occlusion", model, window=8, stride=8, incremental=True).attribute(x, target)
    with pytest.raises(ValueError, match="incremental must be one of auto, true, false"):
        create_method("occlusion", model, incremental="yes")


def test_in_place_ops_keep_the_cache_intact_or_are_refused():
    torch.manual_seed(0)
    model = InPlace().eval()
    engine = assert_exact(model, inputs(24), 8, 4)
    assert engine.plans["conv2"].mode == "patch" and engine.plans["conv1"].cached
    model.read_after = True
    with pytest.raises(Untraceable, match="relu overwrites conv1 in place, which add_1 read"):
        trace_model(model)
    x, target = inputs(24), torch.tensor([0, 1])
    assert torch.equal(create_method("occlusion", model, window=8, stride=4).attribute(x, target),
                       create_method("occlusion", model, window=8, stride=4, incremental=False).attribute(x, target))


def test_auto_runs_the_full_forward_where_the_plan_saves_nothing():
    model, x, target = EarlyBarrier().eval(), inputs(24), torch.tensor([0, 2])
    cost = incremental_cost(model, (24, 24), 8, 8)
    assert cost.planned == pytest.approx(1.0)
    assert {row["node"]: row["reason"] for row in cost.layers}["conv"] == "its input is recomputed in full"
    auto = create_method("occlusion", model, window=8, stride=8).attribute(x, target)
    assert torch.equal(auto, create_method("occlusion", model, window=8, stride=8, incremental=False).attribute(x, target))
    forced = create_method("occlusion", model, window=8, stride=8, incremental=True).attribute(x, target)
    with torch.no_grad():
        assert (forced - auto).abs().max() <= 1e-5 * model(x).abs().max()


def test_hooks_are_respected_or_refused():
    x, target = inputs(32), torch.tensor([0, 1])
    model = small_cnn()
    full = create_method("occlusion", model, window=8, stride=4, incremental=False)
    # a hook on a leaf module: that module runs in full, through its hook
    handle = model[4].register_forward_hook(lambda module, args, out: out * 3.0)
    try:
        expected = full.attribute(x, target)
        got = create_method("occlusion", model, window=8, stride=4, incremental=True).attribute(x, target)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert not torch.allclose(expected, create_method("occlusion", small_cnn(), window=8, stride=4).attribute(x, target))
    finally:
        handle.remove()
    # a hook on the traced-through model itself would be bypassed: refused
    handle = model.register_forward_hook(lambda module, args, out: out * 3.0)
    try:
        with pytest.raises(Untraceable, match="forward hooks"):
            trace_model(model)
        assert torch.equal(create_method("occlusion", model, window=8, stride=4).attribute(x, target),
                           full.attribute(x, target))
    finally:
        handle.remove()


# --------------------------------------------------------------------------- geometry and the ceiling
def test_window_axis_hand_computed():
    # 3x3 stride-2 padding-1 convolution, 8 outputs: input rows [4, 8) reach outputs 2..4 (row 4
    # is read by outputs 2 (rows 3-5) and ... 4 (rows 7-9 -> 7)); rows [0, 1) reach output 0 only
    first, count = _window_axis(np.array([4, 0, 15]), np.array([4, 1, 1]), 3, 2, 1, 1, 8)
    assert first.tolist() == [2, 0, 7] and count.tolist() == [3, 1, 1]
    # 1x1 stride-2: input row 3 is read by no output
    first, count = _window_axis(np.array([3, 2]), np.array([1, 2]), 1, 2, 0, 1, 4)
    assert count.tolist() == [0, 1] and first[1] == 1
    # dilation 2, kernel 3, padding 2: output o reads rows o-2, o, o+2; row 5 -> outputs 3..7
    first, count = _window_axis(np.array([5]), np.array([1]), 3, 1, 2, 2, 10)
    assert first.tolist() == [3] and count.tolist() == [5]


def test_incremental_cost_hand_computed():
    """conv 3x3 (padding 1, 1 -> 2 channels) on 8x8, GAP, linear 2 -> 3; windows 4 / stride 4:
    each window changes a 5x5 block of conv outputs (9 * 2 multiply-adds each); the linear layer
    is recomputed in full (6)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    cost = incremental_cost(model, (8, 8), 4, 4, channels=1)
    full = 64 * 18 + 6
    assert cost.full_macs == full
    assert cost.exact == pytest.approx((25 * 18 + 6) / full)
    assert cost.planned == pytest.approx((25 * 18 + 6) / full)
    assert cost.speedup_exact == pytest.approx(full / (25 * 18 + 6))
    # window 3 / stride 3 on 8x8: offsets 0, 3, 6 (the last cropped to 2 rows): exact extents
    # 4, 5, 3 per side; planned: every window 5 x 5
    cost = incremental_cost(model, (8, 8), 3, 3, channels=1)
    mean_area = np.mean([a * b for a in (4, 5, 3) for b in (4, 5, 3)])
    assert cost.exact == pytest.approx((mean_area * 18 + 6) / full)
    assert cost.planned == pytest.approx((25 * 18 + 6) / full)


def test_planned_regions_have_one_size_and_stay_inside_the_map():
    x = inputs(48, batch=1)
    model = torchvision_model("resnet18", x)
    occlusion = create_method("occlusion", model, window=16, stride=8)
    tops, lefts = occlusion.window_grid(48, 48)
    engine = IncrementalOcclusion(model, trace_model(model), tops, lefts, 16, 0.0)
    with torch.no_grad():
        engine.prepare(x)
    patched = [plan for plan in engine.plans.values() if plan.mode == "patch"]
    assert len(patched) > 5
    for plan in patched:
        region = plan.region
        assert len(set(region.height.tolist())) == 1 and len(set(region.width.tolist())) == 1
        assert region.top.min() >= 0 and (region.top + region.height).max() <= region.size[0]
        assert region.left.min() >= 0 and (region.left + region.width).max() <= region.size[1]
    exact = plan_regions(engine.graph, model, engine.shapes, engine.consts, tops, lefts, 16, exact=True)
    for name, plan in engine.plans.items():  # a planned region contains the window's own changed region
        if plan.mode == "patch" and exact[name].mode == "patch":
            mine, own = plan.region, exact[name].region
            has = own.height > 0
            assert np.all((mine.top <= own.top) | ~has) and np.all((mine.top + mine.height >= own.top + own.height) | ~has)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_incremental_on_cuda_matches_the_full_forward(memory_format):
    """On CUDA (TF32 off): the engine's occluded logits against the model's forward, float64 and
    float32, NCHW and channels_last models; the maps against the CPU's."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        x = inputs(64)
        model = torchvision_model("resnet18", x)
        gpu_model = copy.deepcopy(model).cuda().to(memory_format=memory_format)
        assert_exact(gpu_model, x.cuda().contiguous(memory_format=memory_format), 16, 16)
        target = torch.tensor([3, 7])
        cpu = create_method("occlusion", model, window=16, stride=16, incremental=True).attribute(x, target)
        gpu = create_method("occlusion", gpu_model, window=16, stride=16, incremental=True).attribute(
            x.cuda().contiguous(memory_format=memory_format), target.cuda())
        with torch.no_grad():
            scale = model(x).abs().max().item()
        assert gpu.is_cuda and (gpu.cpu() - cpu).abs().max().item() <= 1e-4 * scale
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
