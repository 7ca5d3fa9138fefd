"""The wsoleval preset (MaxBoxAcc, MaxBoxAccV2, PxAP) against a plain loop-based
reimplementation of the published definitions (Choe et al. 2020), hand-computed toys,
shard merging and monotonicity in the IoU threshold."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from salbench.metrics import create_metric
from salbench.metrics.wsoleval import (
    MaxBoxAccumulator,
    _contour_boxes,
    pxap_histograms,
    quantize,
    tau_grid,
    wsol_best_ious,
    wsol_scoremaps,
)
from helpers import scores_of
from test_localization import explained


# --------------------------------------------------------------------------- reference (loops)
def ref_normalize(cam):
    cam = cam.astype(np.float32).copy()
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def ref_boxes(scoremap, threshold, all_contours):
    """Boxes at one threshold: uint8 map, cv2.threshold (strictly greater), contours, rects."""
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    if not all_contours:
        best, best_area = None, -1.0
        for contour in contours:  # the first of the largest, as Python's max()
            area = cv2.contourArea(contour)
            if area > best_area:
                best, best_area = contour, area
        contours = [best]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def ref_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return 0.0 if union <= 0 else inter / union


def ref_resize_box(box, orig_hw, new_hw):
    (oh, ow), (nh, nw) = orig_hw, new_hw
    x0, y0, x1, y1 = map(float, box)
    return [int(x0 * nw / ow), int(y0 * nh / oh), int(x1 * nw / ow), int(y1 * nh / oh)]


def ref_maxboxacc(maps, gt_boxes, orig_sizes, step, iou_thresholds, all_contours):
    """Per IoU threshold: (max accuracy in percent, first best tau)."""
    taus = list(np.arange(0, 1, step))
    correct = {t: np.zeros(len(taus)) for t in iou_thresholds}
    count = 0
    for cam, boxes, orig in zip(maps, gt_boxes, orig_sizes):
        scoremap = ref_normalize(cam)
        gt = [ref_resize_box(b, orig, scoremap.shape) for b in boxes]
        for k, tau in enumerate(taus):
            best = max(ref_iou(p, g) for p in ref_boxes(scoremap, tau, all_contours) for g in gt)
            for t in iou_thresholds:
                if best >= t:
                    correct[t][k] += 1
        count += 1
    out = {}
    for t in iou_thresholds:
        acc = correct[t] * 100.0 / float(count)
        out[t] = (acc.max(), taus[int(acc.argmax())])
    return out


def ref_pxap(maps, masks, ignores, step):
    taus = list(np.arange(0, 1, step))
    edges = np.append(taus, [1.0, 2.0, 3.0])
    fg_hist, bg_hist = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    for cam, mask, ignore in zip(maps, masks, ignores):
        scoremap = ref_normalize(cam)
        gt = mask.astype(np.uint8) + 255 * (ignore & ~mask).astype(np.uint8)
        fg_hist += np.histogram(scoremap[gt == 1], bins=edges)[0]
        bg_hist += np.histogram(scoremap[gt == 0], bins=edges)[0]
    tp, fp = fg_hist[::-1].cumsum(), bg_hist[::-1].cumsum()
    fn = fg_hist.sum() - tp
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    total = 0.0
    terms = []
    for i in range(1, len(tp)):  # AP = sum_i P_i (R_i - R_{i-1}) over valid thresholds
        if nonzero[i]:
            terms.append(precision[i] * (recall[i] - recall[i - 1]))
    total = np.sum(np.array(terms))  # the published code reduces with numpy's sum
    return float(total * 100)


# --------------------------------------------------------------------------- inputs
def smooth_maps(seed, batch, height, width, low=5):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, low, low, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[:, 0]


def random_boxes(rng, height, width, count):
    boxes = []
    for _ in range(count):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        boxes.append([int(x0), int(y0), int(x1), int(y1)])
    return boxes


# --------------------------------------------------------------------------- toys
def test_contour_box_toy_uses_x_plus_w():
    binary = np.zeros((6, 6), dtype=np.uint8)
    binary[1:4, 1:3] = 255  # columns 1..2, rows 1..3
    boxes, big = _contour_boxes(binary)
    assert boxes.tolist() == [[1, 1, 3, 4]]  # x1 = x + w = 3, y1 = y + h = 4 (one past)
    binary[:, 4:] = 255  # clipped at W - 1 = 5 and H - 1 = 5
    boxes, big = _contour_boxes(binary)
    assert [4, 0, 5, 5] in boxes.tolist()
    assert boxes[big].tolist() == [4, 0, 5, 5]
    assert _contour_boxes(np.zeros((4, 4), dtype=np.uint8))[0].tolist() == [[0, 0, 0, 0]]


def test_wsol_toy_thresholds_and_empty_maps():
    maps = torch.zeros(3, 6, 6)
    maps[0, 1:4, 1:3] = 1.0
    maps[0, 1, 1] = 2.0  # normalized 1.0 -> 255; the block 0.5 -> 127
    maps[1] = 7.0  # constant -> zeros -> box [0, 0, 0, 0] at every tau
    maps[2, 0, 0] = float("nan")
    q = quantize(wsol_scoremaps(maps))
    assert q[0, 1, 1].item() == 255 and q[0, 2, 1].item() == 127
    taus = np.array([0.0, 0.49, 0.5, 0.999])  # levels 0, 124, 127, 254
    gt = [torch.tensor([[1.0, 1.0, 3.0, 4.0]]), torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])]
    largest, every = wsol_best_ious(q, gt, taus)
    # level 0 and 124: the block -> [1, 1, 3, 4], IoU 1; level 127 (strictly greater): the
    # single 255 pixel -> [1, 1, 2, 2] vs [1,1,3,4]: 4 / 12; level 254: same pixel
    assert largest[0].tolist() == pytest.approx([1.0, 1.0, 4 / 12, 4 / 12])
    assert largest[1].tolist() == [1.0] * 4  # empty mask box [0,0,0,0] == GT [0,0,0,0]
    assert largest[2].tolist() == pytest.approx([1 / 4] * 4)


def test_maxboxacc_toy_counts():
    acc = MaxBoxAccumulator(np.array([0.0, 0.5]), (0.3, 0.5, 0.7))
    acc.update(torch.tensor([[0.6, 0.8], [0.2, 0.75], [0.5, 0.1]], dtype=torch.float64))
    assert acc.correct.tolist() == [[2, 2], [2, 2], [0, 2]]
    best, taus = acc.compute()
    assert best.tolist() == pytest.approx([200 / 3, 200 / 3, 200 / 3])
    assert taus.tolist() == [0.0, 0.0, 0.5]


# --------------------------------------------------------------------------- reference
@pytest.mark.parametrize("step", [0.01, 0.001], ids=["step0.01", "step0.001"])
def test_wsoleval_equals_loop_reference(step):
    rng = np.random.default_rng(1)
    height, width = (28, 36) if step == 0.01 else (12, 14)
    batch = 6
    maps = smooth_maps(3, batch, height, width) + 0.3 * torch.rand(batch, height, width,
                                                                   generator=torch.Generator().manual_seed(4))
    maps[4] = 2.0  # constant
    maps[5, 3, 3] = float("nan")
    orig_sizes = [(int(rng.integers(20, 90)), int(rng.integers(20, 90))) for _ in range(batch)]
    orig_boxes = [random_boxes(rng, h, w, int(rng.integers(1, 4))) for h, w in orig_sizes]
    ex = explained(maps, [[[0, 0, 1, 1]]] * batch, orig_sizes=orig_sizes, orig_boxes=orig_boxes)
    metric = create_metric("wsoleval", tau_step=step)
    metric.update(ex)
    got = metric.compute()["toy"]
    np_maps = [m.numpy() for m in maps]
    v1 = ref_maxboxacc(np_maps, orig_boxes, orig_sizes, step, [0.5], all_contours=False)
    v2 = ref_maxboxacc(np_maps, orig_boxes, orig_sizes, step, [0.3, 0.5, 0.7], all_contours=True)
    assert got["maxboxacc"] == v1[0.5][0] and got["maxboxacc_tau"] == v1[0.5][1]
    for t, tag in ((0.3, "iou30"), (0.5, "iou50"), (0.7, "iou70")):
        assert got[f"maxboxacc_v2_{tag}"] == v2[t][0]
        assert got[f"maxboxacc_v2_{tag}_tau"] == v2[t][1]
    assert got["maxboxacc_v2"] == np.average([v2[t][0] for t in (0.3, 0.5, 0.7)])


def test_wsoleval_bicubic_resize_matches_cv2():
    maps = smooth_maps(5, 3, 7, 7)
    ex = explained(maps, [[[0, 0, 1, 1]]] * 3, orig_sizes=[(40, 40)] * 3,
                   orig_boxes=[[[4, 4, 30, 20]], [[0, 10, 39, 39]], [[5, 5, 10, 10]]])
    metric = create_metric("wsoleval", tau_step=0.01, resize_to=32)
    metric.update(ex)
    resized = [cv2.resize(m, (32, 32), interpolation=cv2.INTER_CUBIC) for m in maps.numpy()]
    ref = ref_maxboxacc(resized, [[[4, 4, 30, 20]], [[0, 10, 39, 39]], [[5, 5, 10, 10]]], [(40, 40)] * 3, 0.01,
                        [0.3, 0.5, 0.7], True)
    got = metric.compute()["toy"]
    assert [got["maxboxacc_v2_iou30"], got["maxboxacc_v2_iou50"], got["maxboxacc_v2_iou70"]] == [
        ref[t][0] for t in (0.3, 0.5, 0.7)]


def test_pxap_equals_loop_reference_with_ignore():
    generator = torch.Generator().manual_seed(7)
    batch, height, width = 5, 20, 24
    maps = smooth_maps(8, batch, height, width) + 0.2 * torch.rand(batch, height, width, generator=generator)
    maps[3] = 1.0  # constant -> zeros
    masks = smooth_maps(9, batch, height, width) > 0.55
    ignore = smooth_maps(10, batch, height, width) > 0.6
    ex = explained(maps, [[[0, 0, 1, 1]]] * batch, masks=list(masks))
    ex.batch.ignore = ignore
    for step in (0.01, 0.001):
        metric = create_metric("pxap", tau_step=step)
        per_image = scores_of(metric, ex)["pxap_image"]
        expected = ref_pxap(maps.numpy(), masks.numpy(), ignore.numpy(), step)
        assert metric.compute()["toy"]["pxap"] == expected
        assert per_image.shape == (batch,)
    # ignoring changes the result on these inputs (the ignore region is not background)
    plain = create_metric("pxap", tau_step=0.01)
    ex.batch.ignore = None
    plain.update(ex)
    assert plain.compute()["toy"]["pxap"] != ref_pxap(maps.numpy(), masks.numpy(), ignore.numpy(), 0.01)


def test_pxap_histograms_follow_numpy_rule():
    taus = tau_grid(0.25)  # edges 0, .25, .5, .75, 1, 2, 3
    values = torch.tensor([[[0.0, 0.25, 0.2499, 1.0], [0.75, 0.5, 0.9999, 0.5]]])
    fg, bg = pxap_histograms(values, torch.ones(1, 2, 4, dtype=torch.bool), None, taus)
    expected = np.histogram(values.numpy().ravel(), bins=np.append(taus, [1, 2, 3]))[0]
    assert fg[0].tolist() == expected.tolist() and bg.sum() == 0


# --------------------------------------------------------------------------- monotone
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_maxboxacc_monotone_in_iou_threshold(seed):
    rng = np.random.default_rng(seed)
    maps = smooth_maps(seed % 1000, 3, 16, 16)
    gt = [torch.tensor(random_boxes(rng, 16, 16, 2), dtype=torch.float64) for _ in range(3)]
    largest, every = wsol_best_ious(quantize(wsol_scoremaps(maps)), gt, tau_grid(0.02))
    assert (every >= largest).all()  # all contours include the largest
    acc = MaxBoxAccumulator(tau_grid(0.02), (0.1, 0.3, 0.5, 0.7, 0.9))
    acc.update(every)
    curves = acc.accuracies()
    assert (np.diff(curves, axis=0) <= 0).all()
    best, _ = acc.compute()
    assert (np.diff(best) <= 0).all()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 24), st.integers(4, 24))
def test_contour_boxes_inside_image(seed, height, width):
    binary = ((np.random.default_rng(seed).random((height, width)) > 0.5) * 255).astype(np.uint8)
    boxes, _ = _contour_boxes(binary)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width - 1).all() and (boxes[:, 3] <= height - 1).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()


def test_wsoleval_protocol_and_tables():
    metric = create_metric("wsoleval", tau_step=0.1)
    protocol = metric.protocol()
    assert protocol["tau_step"] == 0.1 and protocol["maxboxacc_v2"]["iou_thresholds"] == [0.3, 0.5, 0.7]
    assert {s.name for s in metric.scores if s.scope == "dataset"} >= {"maxboxacc", "maxboxacc_v2"}
    assert metric.compute() == {} and metric.tables() == {}  # no image yet
    ex = explained(smooth_maps(1, 2, 10, 10), [[[0, 0, 4, 4]]] * 2, orig_sizes=[(10, 10)] * 2,
                   orig_boxes=[[[0, 0, 4, 4]]] * 2)
    metric.update(ex)
    curves = metric.tables()["tau_curves"]
    assert len(curves) == 4 * 10 and set(curves["variant"]) == {"maxboxacc", "maxboxacc_v2"}
    assert set(curves["method"]) == {"toy"} and metric.table_kinds == ("tau_curves",)
