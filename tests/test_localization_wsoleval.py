"""The wsoleval preset (MaxBoxAcc, MaxBoxAccV2, PxAP) against a plain loop-based float64
reimplementation of the published code (Choe et al. 2020: their ``t2n`` casts maps to float64
before the cv2 resize, the min-max and the uint8 quantization), hand-computed toys, constructed
maps on a uint8 level or a PxAP bin edge (where float32 gives other numbers), monotonicity in
the IoU threshold, the fixed-tau / tau_from protocol and the bootstrap of the dataset scores."""
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
def ref_normalize(cam, dtype=np.float64):
    """wsolevaluation's normalize_scoremap on t2n's float64 map (dtype=float32: the old, wrong precision)."""
    cam = cam.astype(dtype).copy()
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def ref_boxes(scoremap, threshold, all_contours):
    """Boxes at one threshold: uint8 map, cv2.threshold (strictly greater), contours, rects."""
    height, width = scoremap.shape
    image = (scoremap * scoremap.dtype.type(255)).astype(np.uint8)
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


def ref_maxboxacc(maps, gt_boxes, orig_sizes, step, iou_thresholds, all_contours, dtype=np.float64):
    """Per IoU threshold: (max accuracy in percent, first best tau)."""
    taus = list(np.arange(0, 1, step))
    correct = {t: np.zeros(len(taus)) for t in iou_thresholds}
    count = 0
    for cam, boxes, orig in zip(maps, gt_boxes, orig_sizes):
        scoremap = ref_normalize(cam, dtype)
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


def ref_pxap(maps, masks, ignores, step, dtype=np.float64):
    taus = list(np.arange(0, 1, step))
    edges = np.append(taus, [1.0, 2.0, 3.0])
    fg_hist, bg_hist = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    for cam, mask, ignore in zip(maps, masks, ignores):
        scoremap = ref_normalize(cam, dtype)
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
    resized = [cv2.resize(m, (32, 32), interpolation=cv2.INTER_CUBIC) for m in maps.double().numpy()]
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
    assert set(curves["method"]) == {"toy"} and metric.table_kinds == ("tau_curves", "tau_images")


# --------------------------------------------------------------------------- float64 (constructed)
def float32_quantized(maps):
    """The old float32 pipeline: float32 min-max, float32 x 255, truncation."""
    flat = maps.float().flatten(1)
    low, high = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    return (((maps.float() - low) / (high - low)) * 255).to(torch.uint8)


def level_split(seed=1):
    """float32 (low, high, v) where float32 min-max-quantizes v one uint8 level above float64."""
    rng = np.random.default_rng(seed)
    while True:
        low = np.float32(rng.random() * 2 - 1)
        high = np.float32(low + np.float32(rng.random() * 3 + 0.1))
        k = int(rng.integers(20, 230))
        value = np.float32(low + np.float32(k / 255) * (high - low))
        q64 = int(((np.float64(value) - np.float64(low)) / (np.float64(high) - np.float64(low))) * 255)
        q32 = int(float32_quantized(torch.tensor([[[low, value, high]]]))[0, 0, 1])
        if q32 == q64 + 1:
            return float(low), float(high), float(value), q64


def test_maps_on_a_uint8_level_give_wsolevaluations_maxboxacc_100_vs_50_in_float32():
    """Image A is right while its block survives (level < its quantized value), image B only once
    its larger distractor (quantized to the same level k in both precisions) is gone: in float64
    the block sits one level lower, so no tau serves both (50); float32 would report 100."""
    low, high, value, k = level_split()
    maps = torch.full((2, 16, 16), low)
    maps[0, 4:10, 4:10] = value  # image A: the block, its peak inside
    maps[0, 6, 6] = high
    maps[1] = 0.0
    maps[1, 1:5, 1:5] = 1.0  # image B: the object, 4 x 4
    maps[1, 6:15, 6:15] = (k + 0.5) / 255  # the distractor: level k in both precisions
    boxes = [[[4, 4, 9, 9]], [[1, 1, 4, 4]]]
    assert float32_quantized(maps)[0, 5, 5] == k + 1 and quantize(wsol_scoremaps(maps))[0, 5, 5] == k
    assert quantize(wsol_scoremaps(maps))[1, 7, 7] == k == float32_quantized(maps)[1, 7, 7]
    ex = explained(maps, boxes, orig_sizes=[(16, 16)] * 2, orig_boxes=boxes)
    metric = create_metric("wsoleval", tau_step=0.001)
    metric.update(ex)
    got = metric.compute()["toy"]
    np_maps = [m.numpy() for m in maps]
    reference = ref_maxboxacc(np_maps, boxes, [(16, 16)] * 2, 0.001, [0.5], all_contours=False)
    as_float32 = ref_maxboxacc(np_maps, boxes, [(16, 16)] * 2, 0.001, [0.5], all_contours=False, dtype=np.float32)
    assert got["maxboxacc"] == reference[0.5][0] == 50.0
    assert as_float32[0.5][0] == 100.0  # what the float32 pipeline reported


def edge_split(seed=0):
    """float32 (low, high, v) with v's min-max value just below 0.5 in float64, 0.5 in float32."""
    rng = np.random.default_rng(seed)
    while True:
        low = np.float32(rng.random())
        high = np.float32(low + rng.random() + 0.01)
        value = np.float32(low + (high - low) / 2)
        r64 = (np.float64(value) - np.float64(low)) / (np.float64(high) - np.float64(low))
        r32 = (value - low) / (high - low)
        if r64 < 0.5 <= r32:
            return float(low), float(high), float(value)


def test_maps_on_a_pxap_bin_edge_give_wsolevaluations_pxap():
    """Foreground pixels whose min-max value is 0.5 in float32 but just below in float64 share the
    [0.25, 0.5) bin with background pixels in float64 (the reference), not in float32."""
    low, high, value = edge_split()
    maps = torch.full((1, 8, 8), low)
    maps[0, 0, 0] = high
    maps[0, 1:3, :] = value  # 16 foreground pixels on the edge
    maps[0, 4:5, :] = low + 0.3 * (high - low)  # 8 background pixels in [0.25, 0.5)
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[0, 1:3, :] = True
    ex = explained(maps, [[[0, 0, 1, 1]]], masks=list(masks))
    metric = create_metric("pxap", tau_step=0.25)
    metric.update(ex)
    got = metric.compute()["toy"]["pxap"]
    ignore = np.zeros((1, 8, 8), bool)
    reference = ref_pxap(maps.numpy(), masks.numpy(), ignore, 0.25)
    as_float32 = ref_pxap(maps.numpy(), masks.numpy(), ignore, 0.25, dtype=np.float32)
    assert got == reference and as_float32 == 100.0 and reference < 90.0


# --------------------------------------------------------------------------- the protocol around the scores
def toy_case(seed=3, batch=6, size=20):
    """Blobs on random boxes, some too wide, some too narrow (box accuracy varies with tau), a
    little noise; every third prediction wrong."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    maps, boxes = [], []
    for _ in range(batch):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        x1, y1 = x0 + int(rng.integers(5, size - x0)), y0 + int(rng.integers(5, size - y0))
        spread = float(rng.uniform(0.3, 1.5))
        sx, sy = spread * (x1 - x0 + 1) / 2, spread * (y1 - y0 + 1) / 2
        blob = torch.exp(-((xs - (x0 + x1) / 2) ** 2 / (2 * sx**2) + (ys - (y0 + y1) / 2) ** 2 / (2 * sy**2)))
        maps.append(blob + 0.05 * torch.rand(size, size, generator=generator))
        boxes.append([[x0, y0, x1, y1]])
    labels = [int(v) for v in rng.integers(0, 3, batch)]
    logits = torch.nn.functional.one_hot(torch.tensor([l if i % 3 else (l + 1) % 3 for i, l in enumerate(labels)]),
                                         5).float()  # every third prediction wrong
    return explained(torch.stack(maps), boxes, labels=labels, logits=logits, orig_sizes=[(size, size)] * batch,
                     orig_boxes=boxes)


def test_fixed_tau_gives_per_image_gt_known_and_top1_loc():
    ex = toy_case()
    metric = create_metric("wsoleval", tau=0.3)
    assert metric.preset == "custom" and create_metric("wsoleval", tau=0.2).preset == "cvpr16"
    out = scores_of(metric, ex)
    largest, _ = wsol_best_ious(quantize(wsol_scoremaps(ex.maps["toy"])), ex.batch.orig_boxes, np.array([0.3]))
    known = (largest[:, 0] >= 0.5).float()
    right = (ex.logits.argmax(1) == ex.batch.labels).float()
    assert out["gt_known_loc"].tolist() == known.tolist()
    assert out["top1_loc"].tolist() == (known * right).tolist()
    got = metric.compute()["toy"]
    assert got["maxboxacc"] == pytest.approx(100 * known.mean().item()) and got["maxboxacc_tau"] == 0.3
    assert got["maxboxacc_top1"] == pytest.approx(100 * (known * right).mean().item())


def test_top1_loc_at_the_best_tau():
    ex = toy_case(seed=5)
    metric = create_metric("wsoleval", tau_step=0.01)
    metric.update(ex)
    got = metric.compute()["toy"]
    largest, _ = wsol_best_ious(quantize(wsol_scoremaps(ex.maps["toy"])), ex.batch.orig_boxes, tau_grid(0.01))
    accuracy = (largest >= 0.5).double().mean(0) * 100
    best = int(accuracy.argmax())
    right = (ex.logits.argmax(1) == ex.batch.labels)
    assert got["maxboxacc"] == pytest.approx(accuracy[best].item()) and got["maxboxacc_tau"] == tau_grid(0.01)[best]
    assert got["maxboxacc_top1"] == pytest.approx(100 * ((largest[:, best] >= 0.5) & right).double().mean().item())


def finished_run(path, taus, status="completed", key="wsoleval", name="wsoleval"):
    """A run directory holding the dataset tau rows of one wsoleval metric."""
    import json

    import pandas as pd

    path.mkdir(parents=True, exist_ok=True)
    rows = [{"method": method, "metric": key, "score": score, "value": value, "scope": "dataset"}
            for method, values in taus.items() for score, value in values.items()]
    pd.DataFrame(rows).to_parquet(path / "scores.parquet")
    (path / "run.json").write_text(json.dumps({"status": status, "components": {"metrics": {key: {"name": name}}}}))
    return path


def test_tau_from_applies_another_runs_taus(tmp_path):
    taus = {"maxboxacc_tau": 0.3, "maxboxacc_v2_iou30_tau": 0.1, "maxboxacc_v2_iou50_tau": 0.3,
            "maxboxacc_v2_iou70_tau": 0.6, "maxboxacc": 55.0}
    run = finished_run(tmp_path / "val", {"toy": taus}, key="wsol_on_val")
    ex = toy_case()
    metric = create_metric("wsoleval", tau_from=str(run))
    assert metric.preset == "wsoleval" and metric.protocol()["tau_from"] == str(run)
    per_image = scores_of(metric, ex)
    fixed = create_metric("wsoleval", tau=0.3)
    assert per_image["gt_known_loc"].tolist() == scores_of(fixed, ex)["gt_known_loc"].tolist()
    got = metric.compute()["toy"]
    _, every = wsol_best_ious(quantize(wsol_scoremaps(ex.maps["toy"])), ex.batch.orig_boxes, np.array([0.1, 0.3, 0.6]))
    for k, (tag, threshold) in enumerate((("iou30", 0.3), ("iou50", 0.5), ("iou70", 0.7))):
        assert got[f"maxboxacc_v2_{tag}"] == pytest.approx(100 * (every[:, k] >= threshold).double().mean().item())
        assert got[f"maxboxacc_v2_{tag}_tau"] == taus[f"maxboxacc_v2_{tag}_tau"]
    assert got["maxboxacc"] == fixed.compute()["toy"]["maxboxacc"] and got["maxboxacc_tau"] == 0.3


def test_tau_from_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        create_metric("wsoleval", tau_from=str(tmp_path / "absent"))
    running = finished_run(tmp_path / "running", {"toy": {"maxboxacc_tau": 0.3}}, status="running")
    with pytest.raises(ValueError, match="not finished"):
        create_metric("wsoleval", tau_from=str(running))
    other = finished_run(tmp_path / "other", {"toy": {"deletion_auc": 0.3}}, key="rise", name="rise")
    with pytest.raises(ValueError, match="no wsoleval taus.*rise"):
        create_metric("wsoleval", tau_from=str(other))
    partial = finished_run(tmp_path / "partial", {"gradcam": {"maxboxacc_tau": 0.3}})
    metric = create_metric("wsoleval", tau_from=str(partial))
    with pytest.raises(ValueError, match="no taus of method 'toy'; methods there: gradcam"):
        metric.update(toy_case())
    metric = create_metric("wsoleval", tau_from=str(finished_run(tmp_path / "v1", {"toy": {"maxboxacc_tau": 0.3}})))
    with pytest.raises(ValueError, match="no maxboxacc_v2_iou30_tau"):
        metric.update(toy_case())
    with pytest.raises(ValueError, match="at most one"):
        create_metric("wsoleval", tau=0.2, tau_from=str(partial))


# --------------------------------------------------------------------------- bootstrap
def test_per_image_table_reproduces_the_dataset_scores(tmp_path):
    from salbench.metrics.wsoleval import TauImages

    ex = toy_case(seed=7, batch=8)
    metric = create_metric("wsoleval", tau_step=0.01)
    metric.update(ex)
    masks = smooth_maps(11, 8, 20, 20) > 0.5
    ex_masks = explained(ex.maps["toy"], [[[0, 0, 1, 1]]] * 8, masks=list(masks))
    pxap = create_metric("pxap", tau_step=0.01)
    pxap.update(ex_masks)
    table = pd_concat([metric.tables()["tau_images"].assign(metric="wsoleval"),
                       pxap.tables()["tau_images"].assign(metric="pxap")])
    table.to_parquet(tmp_path / "t.parquet")  # bytes columns survive parquet
    import pandas as pd

    table = pd.read_parquet(tmp_path / "t.parquet")
    got = TauImages(table[table["metric"] == "wsoleval"]).scores(np.ones((1, 8)))
    expected = metric.compute()["toy"]
    for score in ("maxboxacc", "maxboxacc_top1", "maxboxacc_v2", "maxboxacc_v2_iou30", "maxboxacc_v2_iou70"):
        assert got[score][0] == pytest.approx(expected[score], abs=1e-9), score
    assert TauImages(table[table["metric"] == "pxap"]).scores(np.ones((1, 8)))["pxap"][0] == pytest.approx(
        pxap.compute()["toy"]["pxap"], abs=1e-9)


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def test_dataset_interval_at_a_fixed_tau_is_the_reports_bootstrap_of_gt_known_loc():
    """At a fixed tau MaxBoxAcc is the mean of the per-image GT-known flags (x 100): its interval
    must be the report's bootstrap interval of those flags, draw for draw (paired resampling)."""
    from salbench.metrics.wsoleval import TauImages, bootstrap_weights, dataset_intervals
    from salbench.reports.stats import bootstrap_ci, bootstrap_means

    ex = toy_case(seed=9, batch=12)
    metric = create_metric("wsoleval", tau=0.25)
    known = scores_of(metric, ex)["gt_known_loc"].double().numpy() * 100
    table = metric.tables()["tau_images"].assign(metric="wsoleval")
    assert 0 < known.mean() < 100
    images = TauImages(table)
    draws = np.concatenate([images.scores(w)["maxboxacc"] for w in bootstrap_weights(images.n, 300, 4)])
    np.testing.assert_allclose(draws, bootstrap_means(known, 300, 4), rtol=0, atol=1e-9)
    for confidence in (0.5, 0.8, 0.9):
        intervals = dataset_intervals(table, resamples=300, confidence=confidence, seed=4)
        row = intervals[intervals["score"] == "maxboxacc"].iloc[0]
        low, high = bootstrap_ci(known, resamples=300, confidence=confidence, seed=4)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-9)
    assert set(intervals["score"]) >= {"maxboxacc", "maxboxacc_top1", "maxboxacc_v2", "maxboxacc_v2_iou50"}
    assert (intervals["ci_low"] <= intervals["ci_high"]).all()


def test_report_fills_dataset_score_intervals():
    import pandas as pd

    from salbench.reports.stats import fill_intervals

    summary = pd.DataFrame({"model": ["m"] * 2, "dataset": ["d"] * 2, "method": ["a"] * 2, "metric": ["w"] * 2,
                            "score": ["maxboxacc", "iou"], "ci_low": [np.nan, 0.1], "ci_high": [np.nan, 0.2],
                            "n": [1, 10]})
    intervals = pd.DataFrame({"model": ["m"], "dataset": ["d"], "method": ["a"], "metric": ["w"],
                              "score": ["maxboxacc"], "ci_low": [40.0], "ci_high": [60.0], "n": [10]})
    filled = fill_intervals(summary, intervals)
    assert filled["ci_low"].tolist() == [40.0, 0.1] and filled["ci_high"].tolist() == [60.0, 0.2]
    assert filled["n"].tolist() == [1, 10] and list(filled.columns) == list(summary.columns)
