"""The computations behind ``salbench inspect``, each against an independent reference:

* receptive fields: the closed forms of Araujo et al. (2019) on an analytic conv stack, the
  support of an input gradient (positive weights, no rectification: a unit's gradient is
  non-zero exactly on its receptive field), and torchvision resnet18's values derived by hand;
* maximally activating patches: the streamed top-k against a brute-force sort of all activations;
* Network Dissection: the streamed thresholds against ``numpy.percentile`` (the reference code's
  call) and the IoU against a plain per-image loop with PIL's bilinear resize (the reference's
  ``imresize(mode="F")``) on a toy model with hand-set weights;
* class model visualization: the closed-form gradient ascent of a linear score, the score rising
  on the trained synthetic CNN, seeding and the model left as it was;
* embeddings: neighbours against scikit-learn's ``NearestNeighbors``, agreement against a loop.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from salbench.inspection import class_model as cm
from salbench.inspection import dissection as nd
from salbench.inspection.embeddings import label_agreement, nearest_neighbours, pairwise_distances, pixel_vectors, tsne_map
from salbench.inspection.patches import TopActivations
from salbench.inspection.receptive_field import (AxisField, analytic_field, crop_box, crop_patch, receptive_fields)


# --------------------------------------------------------------------------- receptive fields
def analytic_stack() -> nn.Sequential:
    """conv 5x5/1 p2 -> maxpool 3/2 p1 -> conv 3x3/1 p2 dilation 2 -> avgpool 2/2 -> conv 3x3/2 p0."""
    return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.MaxPool2d(3, 2, padding=1),
                         nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.AvgPool2d(2, 2),
                         nn.Conv2d(4, 2, 3, stride=2)).eval()


# (kernel, stride, padding, dilation) of each layer of analytic_stack
STACK = [(5, 1, 2, 1), (3, 2, 1, 1), (3, 1, 2, 2), (2, 2, 0, 1), (3, 2, 0, 1)]


def gradient_support(model: nn.Module, layer_output, size: int, unit: tuple) -> tuple:
    """Inclusive box (x0, y0, x1, y1) of the input pixels where d unit / d input != 0, with every
    weight positive and the input positive (no cancellation, no rectifier blocks a path)."""
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = layer_output(model, x)
    out[0, 0, unit[0], unit[1]].backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def positive_weights(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.full_like(module.weight, 1.0 / module.weight[0].numel()))
                if module.bias is not None:
                    module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_(), module.running_var.fill_(1.0), module.weight.fill_(1.0), module.bias.zero_()
    return model.double().eval()


def test_analytic_stack_matches_the_closed_forms_and_the_gradient_support():
    model = analytic_stack()
    field = receptive_fields(model, (64, 64), ["4"])["4"]
    expected = analytic_field(STACK)
    # by hand, (k' - 1) * jump per layer: size 1 + 4*1 + 2*1 + 4*2 + 1*2 + 2*4 = 25; jump 1*2*1*2*2 = 8;
    # start -(2*1 + 1*1 + 2*2 + 0 + 0) = -7
    assert expected == AxisField(size=25, jump=8, start=-7)
    assert field.rows == field.cols == expected
    # the gradient's support is the field, for a unit whose field lies inside the image (a max pool
    # passes gradient to one element only: an average pool of the same geometry stands in for it)
    model[1] = nn.AvgPool2d(3, 2, padding=1)
    positive_weights(model)
    for unit in [(2, 2), (3, 4)]:
        box = gradient_support(model, lambda m, x: m(x), 64, unit)
        assert box == field.box(*unit)


def test_residual_branch_is_the_union_and_a_global_gate_covers_the_whole_input():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1))
            self.skip = nn.Conv2d(3, 4, 1, stride=2)
            self.out = nn.Identity()
            self.gated = nn.Identity()

        def forward(self, x):
            y = self.out(self.main(x) + self.skip(x))
            gate = torch.sigmoid(F.adaptive_avg_pool2d(y, 1))
            return self.gated(y * gate)

    fields = receptive_fields(Block().eval(), (32, 32), ["main", "skip", "out", "gated"])
    assert fields["main"].rows == AxisField(7, 2, -3)
    assert fields["skip"].rows == AxisField(1, 2, 0)
    assert fields["out"].rows == AxisField(7, 2, -3)  # the skip path's field lies inside the main one's
    assert fields["gated"].whole_input and crop_box(fields["gated"], 3, 3, (32, 32)) == (0, 0, 31, 31)


def test_an_untraceable_grid_change_is_unknown_never_a_wrong_crop():
    class Upsampler(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.up = nn.Upsample(scale_factor=2)

        def forward(self, x):
            return self.up(self.conv(x))

    field = receptive_fields(Upsampler().eval(), (16, 16), ["up"])["up"]
    assert not field.known
    with pytest.raises(ValueError, match="unknown"):
        field.box(0, 0)


# Receptive fields of torchvision's resnet18, derived by hand with the closed forms along the main
# path (the 1x1 stride-2 shortcuts' fields lie inside it): conv1 7x7/2 p3 (size 7, jump 2, start -3),
# maxpool 3/2 p1 (11, 4, -5); layer1: four 3x3/1 p1 convs, +2*4 each (43, 4, -21); layer2: 3x3/2
# then three 3x3/1 (51 -> 99, jump 8, start -25 -> -49); layer3 (115 -> 211, 16, -57 -> -105);
# layer4 (243 -> 435, 32, -121 -> -217). Unit i of layer4 is centred on pixel 32 i, the known
# value of 435 px at stride 32 (e.g. the receptive-field tables computed by Araujo et al.'s
# method for ResNets).
RESNET18 = {"conv1": (7, 2, -3), "maxpool": (11, 4, -5), "layer1": (43, 4, -21), "layer2": (99, 8, -49),
            "layer3": (211, 16, -105), "layer4": (435, 32, -217)}


def test_resnet18_fields_equal_the_hand_derived_values():
    import torchvision

    fields = receptive_fields(torchvision.models.resnet18().eval(), (64, 64), list(RESNET18))  # fields do not depend on the size
    for name, (size, jump, start) in RESNET18.items():
        assert fields[name].rows == fields[name].cols == AxisField(size, jump, start), name
    y0, y1 = fields["layer4"].rows.span(3)
    assert (y0 + y1) / 2 == 32 * 3


@pytest.mark.slow
def test_resnet18_layer4_field_is_the_support_of_its_gradient():
    """435 px measured: in a copy with positive constant weights, identity BatchNorms and the max
    pool replaced by an average pool of the same geometry, the gradient of layer4's unit (7, 7)
    at 448 px is non-zero exactly on [7, 441] x [7, 441] (= 32 * 7 -+ 217)."""
    import torchvision

    model = torchvision.models.resnet18()
    model.maxpool = nn.AvgPool2d(3, 2, padding=1)
    positive_weights(model)

    def layer4(m, x):
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    assert gradient_support(model, layer4, 448, (7, 7)) == (7, 7, 441, 441)


def test_crop_patch_fills_what_lies_outside_the_image():
    image = torch.arange(2 * 4 * 5, dtype=torch.float32).view(2, 4, 5)
    patch = crop_patch(image, (-1, 2, 1, 4))  # x0, y0, x1, y1
    assert patch.shape == (2, 3, 3)
    assert torch.isnan(patch[:, :, 0]).all() and torch.isnan(patch[:, 2]).all()
    assert torch.equal(patch[:, :2, 1:], image[:, 2:4, 0:2])


# --------------------------------------------------------------------------- patches
def brute_force_top(activations: torch.Tensor, units, k: int, distinct: bool):
    """Per unit, (value, position, row, col) of the k best, by plain Python sorting: value
    descending, then position, row, column ascending."""
    count, _, height, width = activations.shape
    out = []
    for unit in units:
        entries = []
        for position in range(count):
            cells = [(float(activations[position, unit, r, c]), position, r, c) for r in range(height) for c in range(width)]
            if distinct:
                cells = [min(cells, key=lambda e: (-e[0], e[2], e[3]))]
            entries += cells
        out.append(sorted(entries, key=lambda e: (-e[0], e[1], e[2], e[3]))[:k])
    return out


@pytest.mark.parametrize("distinct", [pytest.param(True, id="one-per-image"), pytest.param(False, id="every-position")])
@pytest.mark.parametrize("batch_size", [1, 4, 13])
def test_streamed_top_k_equals_brute_force(distinct, batch_size):
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(13, 5, 4, 6, generator=generator).relu()  # ReLU zeros: many ties
    activations[3, 2] = activations[7, 2] = 0.0  # whole maps tied at zero
    activations[5, 1, 0, 0] = activations[9, 1, 2, 3] = activations[5, 1, 1, 1] = 10.0  # tied maxima
    units, k = [1, 2, 4], 6
    top = TopActivations(units, k, distinct_images=distinct)
    for start in range(0, 13, batch_size):
        top.update(activations[start:start + batch_size], torch.arange(start, min(13, start + batch_size)))
    result = top.result()
    expected = brute_force_top(activations, units, k, distinct)
    for row, entries in enumerate(expected):
        got = [(float(result["values"][row, r]), int(result["positions"][row, r]), int(result["rows"][row, r]),
                int(result["cols"][row, r])) for r in range(k)]
        assert got == entries


def test_patches_of_a_toy_model_over_a_small_dataset_equal_brute_force():
    """Through the model: the winners of a conv layer over 10 synthetic images, streamed in
    batches of 3, against the brute-force sort of the activations computed in one go."""
    from salbench.datasets import collate, create_dataset
    from salbench.inspection.layers import capture_layers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.ReLU()).eval()
    dataset = create_dataset("synthetic", num_images=10, image_size=24)
    images = collate([dataset[i] for i in range(10)]).images
    with torch.no_grad(), capture_layers(model, ["4"]) as captured:
        model(images)
    everything = captured["4"].activation
    top = TopActivations([0, 1, 2, 3], 4)
    for start in range(0, 10, 3):
        with torch.no_grad(), capture_layers(model, ["4"]) as captured:
            model(images[start:start + 3])
        top.update(captured["4"].activation, torch.arange(start, min(10, start + 3)))
    result = top.result()
    for row, entries in enumerate(brute_force_top(everything, [0, 1, 2, 3], 4, True)):
        assert [int(p) for p in result["positions"][row]] == [e[1] for e in entries]
        assert torch.allclose(result["values"][row], torch.tensor([e[0] for e in entries]), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- dissection
@pytest.mark.parametrize("batch_size", [1, 6, 17])
def test_exact_quantile_equals_numpy_percentile_and_histogram_is_within_a_bin(batch_size):
    generator = torch.Generator().manual_seed(1)
    activations = torch.randn(17, 5, 6, 7, generator=generator).relu()
    activations[:, 4] = 0.0  # a dead unit: its level is 0 and nothing fires (strict >)
    exact = nd.ExactQuantile(0.005, 17)
    histogram = nd.HistogramQuantile(0.005, bins=512)
    for start in range(0, 17, batch_size):
        exact.update(activations[start:start + batch_size])
        histogram.observe_range(activations[start:start + batch_size])
    for start in range(0, 17, batch_size):
        histogram.observe_counts(activations[start:start + batch_size])
    reference = np.percentile(activations.transpose(0, 1).reshape(5, -1).double().numpy(), 99.5, axis=1)
    assert np.array_equal(exact.thresholds().numpy(), reference)
    width = histogram.bin_width().numpy()
    assert (np.abs(histogram.thresholds().numpy() - reference) <= width + 1e-12).all()
    assert exact.buffer.shape[1] == nd.top_count(17 * 42, 0.005) < 17 * 42 // 50


def test_float32_comparison_with_a_float64_level_is_exact():
    levels = torch.tensor([0.1, 1.0 / 3.0, -0.7, 2.0, 0.0], dtype=torch.float64)
    floors = nd.float32_floor(levels)
    near = torch.stack([torch.nextafter(floors, torch.full_like(floors, d)) for d in (-1e9, 1e9)] + [floors])
    values = torch.cat([near.flatten(), torch.randn(1000)])  # float32, including the neighbours of each level
    for level, floor in zip(levels, floors):
        assert torch.equal(values > floor, values.double() > level)


def test_exact_quantile_refuses_a_buffer_over_its_budget():
    quantile = nd.ExactQuantile(0.005, planned_maps=10**6, max_megabytes=1)
    with pytest.raises(ValueError, match="threshold=histogram"):
        quantile.update(torch.zeros(1, 64, 32, 32))


def square_images(count: int, size: int = 16, seed: int = 0):
    """Images with one square of class 0 (red) or class 1 (green) over a dim background, their
    labels and object masks."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.uniform(0, 0.2, size=(count, 3, size, size)).astype(np.float32))
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    labels = torch.tensor([i % 2 for i in range(count)])
    for i in range(count):
        side = int(rng.integers(4, 8))
        y, x = (int(v) for v in rng.integers(0, size - side, size=2))
        masks[i, y:y + side, x:x + side] = True
        images[i, int(labels[i]), masks[i]] = float(rng.uniform(0.7, 1.0))
    return images, labels, masks


def hand_set_model() -> nn.Module:
    """conv 2x2 stride 2 + ReLU; unit 0 = mean red - mean green, unit 1 = mean green - mean red,
    unit 2 = mean blue (responds to nothing in particular), unit 3 = 0 (dead: its level is 0, and
    the strict > lets nothing fire)."""
    conv = nn.Conv2d(3, 4, 2, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[0, 1] = 0.25, -0.25
        conv.weight[1, 1], conv.weight[1, 0] = 0.25, -0.25
        conv.weight[2, 2] = 0.25
    return nn.Sequential(conv, nn.ReLU()).eval()


def plain_dissection(activations: np.ndarray, labels: np.ndarray, masks: np.ndarray, quantile: float) -> np.ndarray:
    """The reference, one image and unit at a time: numpy.percentile level, PIL bilinear resize of
    the float map to the mask size (NetDissect-Lite's imresize(mode="F")), strict >, IoU summed."""
    count, units = activations.shape[:2]
    size = masks.shape[-1]
    iou = np.zeros((units, 2))
    for unit in range(units):
        level = np.percentile(activations[:, unit].reshape(-1).astype(np.float64), 100 * (1 - quantile))
        inter, fired_total, area = np.zeros(2), 0, np.zeros(2)
        for i in range(count):
            resized = Image.fromarray(activations[i, unit].astype(np.float32), mode="F").resize((size, size),
                                                                                               Image.BILINEAR)
            fired = np.asarray(resized, dtype=np.float64) > level
            fired_total += fired.sum()
            for concept in range(2):
                concept_mask = masks[i] if labels[i] == concept else np.zeros_like(masks[i])
                inter[concept] += (fired & concept_mask).sum()
                area[concept] += concept_mask.sum()
        iou[unit] = inter / (fired_total + area - inter)
    return iou


@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_dissection_iou_equals_a_plain_loop_on_a_hand_set_model(batch_size):
    from salbench.datasets.base import Batch

    images, labels, masks = square_images(24)
    model = hand_set_model()
    with torch.no_grad():
        activations = model(images)
    quantile = 0.05
    reference = plain_dissection(activations.numpy(), labels.numpy(), masks.numpy(), quantile)
    level = nd.ExactQuantile(quantile, 24)
    for start in range(0, 24, batch_size):
        level.update(activations[start:start + batch_size])
    accumulator = nd.IoUAccumulator(level.thresholds(), num_concepts=2)
    for start in range(0, 24, batch_size):
        part = slice(start, start + batch_size)
        count = len(labels[part])
        batch = Batch(images=images[part], labels=labels[part], boxes=[torch.zeros(0, 4)] * count,
                      box_labels=[torch.zeros(0, dtype=torch.long)] * count, difficult=[torch.zeros(0, dtype=torch.bool)] * count,
                      masks=masks[part], ignore=None, orig_sizes=[(16, 16)] * count, orig_boxes=[torch.zeros(0, 4)] * count,
                      image_ids=[str(i) for i in range(count)], indices=torch.arange(count))
        concept_masks, concepts, source = nd.concept_masks(batch, "auto")
        assert source == "mask"
        accumulator.update(activations[part], concept_masks, concepts)
    iou = accumulator.iou().numpy()
    np.testing.assert_allclose(iou, reference, rtol=0, atol=1e-12)
    # the hand-set units detect what they were built for
    assert iou[0].argmax() == 0 and iou[1].argmax() == 1 and iou[0, 0] > 0.04 and iou[1, 1] > 0.04
    assert (iou[3] == 0).all() and accumulator.activated[3] == 0
    table = nd.dissection_rows("conv", torch.from_numpy(iou), [0, 1], ["red square", "green square"])
    assert list(table.columns) == ["layer", "unit", "concept", "iou"] and len(table) == 8
    units = nd.unit_summary(table, {"conv": level.thresholds().numpy()}, 0.04)
    assert list(units["best_concept"][:2]) == ["red square", "green square"] and units["detector"][:2].all()


def test_concept_masks_from_boxes_fill_each_box_for_its_label():
    from salbench.datasets import collate

    sample = {"image": torch.zeros(3, 6, 8), "label": 3, "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 0.0, 7.0, 1.0]]),
              "box_labels": torch.tensor([3, 1]), "image_id": "a"}
    masks, concepts, source = nd.concept_masks(collate([sample]), "auto")
    assert source == "boxes" and concepts.tolist() == [1, 3]
    expected = torch.zeros(2, 6, 8, dtype=torch.bool)
    expected[1, 2:5, 1:4] = True
    expected[0, 0:2, 5:8] = True
    assert torch.equal(masks[0], expected)
    with pytest.raises(ValueError, match="valid: auto, class_masks, mask, boxes"):
        nd.concept_masks(collate([sample]), "segments")


# --------------------------------------------------------------------------- class model
class LinearScore(nn.Module):
    """S(I) = <W_c, I> for each class c (W fixed, seeded)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3 * 4 * 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def test_gradient_ascent_of_a_linear_score_follows_the_closed_form():
    """I_{t+1} = I_t + lr (W_c - 2 lambda I_t) from I_0 = 0 (Simonyan et al.'s objective, plain
    ascent): I_t = W_c (1 - (1 - 2 lr lambda)^t) / (2 lambda)."""
    model = LinearScore()
    lr, l2, steps = 0.1, 0.5, 7
    result = cm.class_model_visualization(model, [0, 2], (4, 4), steps=steps, lr=lr, l2=l2, optimizer="sgd")
    factor = (1 - (1 - 2 * lr * l2) ** steps) / (2 * l2)
    expected = model.weight.detach()[[0, 2]].view(2, 3, 4, 4) * factor
    torch.testing.assert_close(result.images, expected, rtol=1e-5, atol=1e-6)
    assert result.scores.shape == (steps + 1, 2) and torch.equal(result.scores[0], torch.zeros(2))
    scores = (result.images.flatten(1) * model.weight.detach()[[0, 2]]).sum(1)
    torch.testing.assert_close(result.scores[-1], scores)
    objective = scores - l2 * result.images.pow(2).flatten(1).sum(1)
    torch.testing.assert_close(result.objectives[-1], objective)


def test_gradient_ascent_raises_the_class_scores_of_the_synthetic_cnn_and_leaves_the_model_alone(synthetic_bundle):
    model = synthetic_bundle.module
    flags = [p.requires_grad for p in model.parameters()]
    options = dict(steps=6, lr=0.05, l2=1e-3, jitter=2, blur_sigma=0.5, blur_every=3, init="noise", seed=3,
                   optimizer="adam")
    result = cm.class_model_visualization(model, [0, 3, 4], (64, 64), **options)
    assert (result.scores[-1] > result.scores[0]).all(), result.scores
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert all(p.grad is None for p in model.parameters())
    again = cm.class_model_visualization(model, [0, 3, 4], (64, 64), **options)
    assert torch.equal(again.images, result.images)  # seeded
    other = cm.class_model_visualization(model, [0], (64, 64), steps=0, init="noise", seed=4)
    assert not torch.equal(other.images[0], result.images[0])


def test_class_model_options_are_checked():
    with pytest.raises(ValueError, match="valid: sgd, adam"):
        cm.class_model_visualization(LinearScore(), [0], (4, 4), optimizer="lbfgs")
    with pytest.raises(ValueError, match="valid: zero, noise"):
        cm.class_model_visualization(LinearScore(), [0], (4, 4), init="ones")


def test_display_images_min_max_per_image():
    images = torch.randn(2, 3, 5, 5)
    shown = cm.display_images(images, (0.5,) * 3, (0.25,) * 3, "minmax")
    assert torch.allclose(shown.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(shown.flatten(1).max(1).values, torch.ones(2))


# --------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_neighbours_equal_scikit_learn(metric):
    from sklearn.neighbors import NearestNeighbors

    points = torch.randn(60, 9, generator=torch.Generator().manual_seed(2))
    found, distances = nearest_neighbours(points, 4, metric=metric, block=7)
    reference = NearestNeighbors(n_neighbors=5, algorithm="brute", metric=metric).fit(points.double().numpy())
    ref_distances, ref_index = reference.kneighbors(points.double().numpy())
    np.testing.assert_array_equal(found.numpy(), ref_index[:, 1:])  # scikit-learn lists the point itself first
    np.testing.assert_allclose(distances.numpy(), ref_distances[:, 1:], atol=1e-9)


def test_neighbours_break_ties_by_index_and_never_return_the_query():
    points = torch.tensor([[0.0], [1.0], [1.0], [-1.0], [0.0]])
    found, _ = nearest_neighbours(points, 3)
    assert found[0].tolist() == [4, 1, 2] and found[4].tolist() == [0, 1, 2]
    assert all(i not in row for i, row in enumerate(found.tolist()))


def test_label_agreement_equals_a_loop():
    neighbours = torch.tensor([[1, 2], [0, 2], [3, 0], [2, 1]])
    labels = torch.tensor([0, 0, 1, 1])
    shares = [sum(labels[j] == labels[i] for j in row) / 2 for i, row in enumerate(neighbours.tolist())]
    assert label_agreement(neighbours, labels) == pytest.approx(float(np.mean(shares)))


def test_pixel_vectors_and_distances():
    images = torch.rand(3, 3, 8, 8)
    assert pixel_vectors(images).shape == (3, 192) and pixel_vectors(images, 4).shape == (3, 48)
    torch.testing.assert_close(pixel_vectors(images, 4)[0, :16].view(4, 4), F.avg_pool2d(images[:1, :1], 2)[0, 0].view(4, 4))
    assert torch.allclose(pairwise_distances(images.flatten(1), images.flatten(1)).diagonal(), torch.zeros(3, dtype=torch.float64),
                          atol=1e-6)


def test_tsne_is_seeded_and_caps_the_perplexity():
    features = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    first, settings = tsne_map(features, seed=1, perplexity=30, iterations=250)
    second, _ = tsne_map(features, seed=1, perplexity=30, iterations=250)
    assert first.shape == (12, 2) and np.array_equal(first, second)
    assert settings["perplexity"] == pytest.approx(11 / 3) and settings["requested_perplexity"] == 30
