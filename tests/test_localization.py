"""Box localization building blocks and the cam_paper preset: hand-computed toy maps,
property tests, and the torch / scipy connected-component backends against each other."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salbench.metrics import create_metric
from salbench.metrics.localization import (
    box_iou,
    best_box_iou,
    component_boxes,
    label_components,
    largest_component_box,
    minmax_normalize,
    pairwise_box_iou,
    resize_maps,
    scale_boxes,
    threshold_absolute,
    threshold_by_max,
)

import helpers
from helpers import box_batch, scores_of


def explained(maps, boxes, labels=None, logits=None, orig_sizes=None, orig_boxes=None, masks=None, box_labels=None):
    """An ExplainedBatch of method "toy" from plain per-image lists (boxes: lists of [x0, y0, x1, y1])."""
    batch = box_batch(maps, boxes, labels, orig_sizes, orig_boxes, masks, box_labels)
    return helpers.explained(batch, maps, logits=logits, method="toy")


# --------------------------------------------------------------------------- thresholds
def test_threshold_by_max_toy():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 10.0]], [[0.0, 0.0], [0.0, 0.0]]])
    mask = threshold_by_max(maps, 0.2)
    assert mask[0].tolist() == [[False, False], [True, True]]
    assert not mask[1].any()  # an all-zero map gives an empty mask


def test_threshold_absolute_toy():
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    # normalized: 0, .25, .5, 1
    assert threshold_absolute(maps, 0.5)[0].tolist() == [[False, False], [True, True]]
    assert threshold_absolute(maps, 0.5, strict=True)[0].tolist() == [[False, False], [False, True]]
    assert not threshold_absolute(maps, 0.0)[1].any()  # constant map -> zeros -> nothing
    nan = torch.tensor([[[1.0, float("nan")], [0.0, 2.0]]])
    assert minmax_normalize(nan).eq(0).all()


# --------------------------------------------------------------------------- components
TOY_MASK = torch.tensor([
    [1, 1, 0, 0, 0, 0],
    [1, 1, 0, 0, 1, 0],
    [0, 0, 1, 0, 1, 0],
    [0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 1],
], dtype=torch.bool)[None]


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_components_toy(backend):
    # 8-connectivity: the 2x2 block joins the diagonal pixel (size 5), the column has 3
    assert largest_component_box(TOY_MASK, 8, backend)[0].tolist() == [0, 0, 2, 2]
    # 4-connectivity: the block alone (4 pixels) beats the column (3)
    assert largest_component_box(TOY_MASK, 4, backend)[0].tolist() == [0, 0, 1, 1]
    boxes = component_boxes(TOY_MASK, 4, backend)[0].tolist()
    assert boxes == [[0, 0, 1, 1], [4, 1, 4, 3], [2, 2, 2, 2], [0, 5, 0, 5], [5, 5, 5, 5]]
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert largest_component_box(empty, 8, backend)[0].tolist() == [0, 0, 0, 0]
    assert component_boxes(empty, 8, backend)[0].tolist() == [[0, 0, 0, 0]]


@pytest.mark.parametrize("backend", ["torch", "scipy"])
def test_components_tie_goes_to_first_in_row_major(backend):
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 3, 0:2] = True  # size 2, first pixel at flat index 15
    mask[0, 0, 3:5] = True  # size 2, first pixel at flat index 3 -> wins
    assert largest_component_box(mask, 8, backend)[0].tolist() == [3, 0, 4, 0]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_torch_and_scipy_labels_agree(connectivity):
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 33, 41, generator=generator) > torch.linspace(0.3, 0.8, 6)[:, None, None]
    spiral = torch.zeros(1, 33, 41, dtype=torch.bool)  # long geodesic paths
    spiral[0, ::2, :] = True
    spiral[0, 1::4, -1] = True
    spiral[0, 3::4, 0] = True
    masks = torch.cat([masks, spiral])
    assert torch.equal(label_components(masks, connectivity, "torch"), label_components(masks, connectivity, "scipy"))


# --------------------------------------------------------------------------- IoU and frames
def test_box_iou_toy():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    gt = [torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[10.0, 10.0, 12.0, 12.0], [0.0, 0.0, 1.0, 3.0]]),
          torch.zeros(0, 4)]
    iou = box_iou(boxes, gt)
    assert iou[0].item() == pytest.approx(1 / 7)  # inclusive: 1 px shared of 4 + 4 - 1
    assert iou[1].item() == pytest.approx(8 / 16)  # the best of the two GT boxes counts
    assert math.isnan(iou[2].item())
    continuous = box_iou(boxes[:1], gt[:1], inclusive=False)
    assert continuous.item() == 0.0  # touching corners, no area
    assert best_box_iou([torch.tensor([[5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 3.0]])], gt[1:2]).item() == 1.0


def test_scale_boxes_truncates_like_resize_bbox():
    boxes = torch.tensor([[10.0, 20.0, 99.0, 149.0]])
    scaled = scale_boxes(boxes, (150, 100), (224, 224), truncate=True)
    expected = [int(10 * 224 / 100), int(20 * 224 / 150), int(99 * 224 / 100), int(149 * 224 / 150)]
    assert scaled[0].tolist() == expected


def test_resize_maps_to_original_sizes():
    maps = torch.rand(2, 8, 8)
    out = resize_maps(maps, [(8, 8), (16, 12)], "bilinear")
    assert out[0] is maps[0] or torch.equal(out[0], maps[0])
    assert tuple(out[1].shape) == (16, 12)


box_strategy = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)).map(
    lambda b: [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])


@settings(max_examples=60, deadline=None)
@given(box_strategy, box_strategy, st.booleans())
def test_iou_symmetric_and_bounded(a, b, inclusive):
    a, b = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    ab, ba = pairwise_box_iou(a, b, inclusive), pairwise_box_iou(b, a, inclusive)
    assert ab.item() == ba.item()
    assert 0.0 <= ab.item() <= 1.0
    assert pairwise_box_iou(a, a, True).item() == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2**31 - 1), st.integers(3, 20), st.integers(3, 20), st.sampled_from([4, 8]))
def test_component_boxes_inside_image(seed, height, width, connectivity):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(2, height, width, generator=generator) > 0.6
    for boxes in component_boxes(masks, connectivity) + [largest_component_box(masks, connectivity)]:
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width - 1).all() and (boxes[:, 3] <= height - 1).all()
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()


# --------------------------------------------------------------------------- cam_paper
def test_cam_paper_toy_scores():
    maps = torch.zeros(2, 10, 10)
    maps[0, 2:6, 3:7] = 1.0  # box [3, 2, 6, 5]
    maps[0, 8, 8] = 0.1  # below 20% of the max
    maps[1, 0:2, 0:2] = 1.0  # box [0, 0, 1, 1]
    logits = torch.tensor([[5.0, 1, 0, 0, 0], [0.0, 5, 1, 1, 1]])
    ex = explained(maps, [[[3, 2, 6, 5]], [[0, 0, 3, 3]]], labels=[0, 2], logits=logits)
    out = scores_of(create_metric("cam_paper"), ex)
    assert out["iou"].tolist() == pytest.approx([1.0, 4 / 16])
    assert out["gt_known_loc"].tolist() == [1.0, 0.0]
    assert out["top1_loc"].tolist() == [1.0, 0.0]
    assert out["top5_loc"].tolist() == [1.0, 0.0]


def test_cam_paper_original_frame():
    maps = torch.zeros(1, 4, 4)
    maps[0, 1:3, 1:3] = 1.0
    ex = explained(maps, [[[1, 1, 2, 2]]], orig_sizes=[(8, 8)], orig_boxes=[[[2, 2, 5, 5]]])
    metric = create_metric("cam_paper", frame="original", resize_mode="nearest")
    assert scores_of(metric, ex)["iou"].item() == 1.0
    assert metric.protocol()["frame"] == "original"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_components_and_metrics_match_cpu():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 40, 48, generator=generator) > 0.5
    for connectivity in (4, 8):
        assert torch.equal(largest_component_box(masks.cuda(), connectivity).cpu(),
                           largest_component_box(masks, connectivity, "scipy"))
    maps = torch.rand(2, 16, 16, generator=generator)
    ex = explained(maps, [[[2, 2, 9, 9]], [[0, 0, 15, 15]]])
    cpu = scores_of(create_metric("cam_paper"), ex)
    ex = dataclasses.replace(ex, maps={"toy": maps.cuda()}, batch=ex.batch.to(torch.device("cuda")),
                             inputs=ex.inputs.cuda(), targets=ex.targets.cuda(), logits=ex.logits.cuda())
    gpu = scores_of(create_metric("cam_paper"), ex)
    for key in cpu:
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], equal_nan=True)


def test_cam_paper_matches_only_the_explained_class_boxes():
    """On a two-class image the map of class 0 must find class 0's box: a map on the class-1 box
    is no hit (it was, when every box of the image counted)."""
    maps = torch.zeros(2, 12, 12)
    maps[:, 7:11, 7:11] = 1.0  # exactly the class-1 box
    boxes = [[[0, 0, 3, 3], [7, 7, 10, 10]]] * 2
    ex = explained(maps, boxes, labels=[0, 1], box_labels=[[0, 1], [0, 1]])
    out = scores_of(create_metric("cam_paper"), ex)
    assert out["iou"][0].item() == 0.0 and out["gt_known_loc"][0].item() == 0.0  # class 0: its box is elsewhere
    assert out["iou"][1].item() == 1.0 and out["gt_known_loc"][1].item() == 1.0  # class 1: its own box
    assert create_metric("cam_paper").needs.maps == "label"  # GT-known: the maps of the true class


@pytest.mark.parametrize("name, options", [
    pytest.param("cam_paper", {"threshold": 0.5}, id="cam_paper-threshold"),
    pytest.param("cam_paper", {"iou_threshold": 0.3}, id="cam_paper-iou"),
    pytest.param("wsoleval", {"tau_step": 0.01}, id="wsoleval-tau-step"),
    pytest.param("pxap", {"tau_step": 0.01}, id="pxap-tau-step"),
    pytest.param("pointing_game", {"tolerance": 4}, id="pointing-tolerance"),
    pytest.param("energy_pointing_game", {"ground_truth": "mask"}, id="energy-mask"),
    pytest.param("rise", {"n_steps": 32}, id="rise-steps"),
    pytest.param("road", {"noise": 0.1}, id="road-noise"),
    pytest.param("randomization", {"mode": "cascading"}, id="randomization-mode"),
])
def test_the_preset_is_derived_from_the_values(name, options):
    default = create_metric(name)
    assert default.preset != "custom" and default.preset in type(default).presets
    assert create_metric(name, **options).preset == "custom"
    # the named preset's own values give its name back
    assert create_metric(name, **type(default).presets[default.preset]).preset == default.preset
