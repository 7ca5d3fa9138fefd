"""Localization: heatmap -> mask -> connected components -> boxes -> IoU against ground truth.

Building blocks (pure batched functions, tensors in and out on the input's device):

* thresholds: :func:`threshold_by_max` (pixels >= fraction x the map's max),
  :func:`threshold_absolute` (pixels >= value on a per-image min-max normalized map);
* :func:`resize_maps` (to the image's own size: one map per original size) and
  :func:`scale_boxes` (between frames, optionally truncating to int like wsolevaluation);
* :func:`label_components` (4- or 8-connectivity; a GPU-friendly torch labelling or scipy on the
  CPU, identical labels), :func:`largest_component_box`, :func:`component_boxes`;
* :func:`pairwise_box_iou` / :func:`box_iou` (several ground-truth boxes per image: the best
  IoU counts), inclusive (+1) or continuous box coordinates.

Preset ``cam_paper`` (Zhou et al. 2016, CAM, section 4): keep pixels >= 20% of the map's max,
box around the largest connected component, correct when IoU >= 0.5 with a ground-truth box.
GT-known localization uses the map of the true class; top-1 localization also needs the top-1
prediction to be right; top-5 needs the true class among the top-5 predictions.

Boxes are ``(x0, y0, x1, y1)`` inclusive pixel indices (ILSVRC convention: width = x1 - x0 + 1).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo

CONNECTIVITIES = (4, 8)
CC_BACKENDS = ("auto", "torch", "scipy")
FRAMES = ("input", "original")
RESIZE_MODES = ("bilinear", "bicubic", "nearest")


# --------------------------------------------------------------------------- thresholds
def threshold_by_max(maps: Tensor, fraction: float) -> Tensor:
    """maps [B, H, W] -> mask [B, H, W]: pixels >= ``fraction`` x the map's max (per image).

    A map whose max is <= 0 (all-zero after ReLU) or that holds NaN gives an empty mask.
    """
    peak = maps.flatten(1).amax(dim=1)[:, None, None]
    valid = (peak > 0) & ~torch.isnan(maps).flatten(1).any(1)[:, None, None]
    return (maps >= fraction * peak) & valid


def minmax_normalize(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> per-image ``(m - min) / (max - min)`` in float32; a constant map or one
    holding NaN becomes all zeros (wsolevaluation's ``normalize_scoremap`` rule)."""
    maps = maps.float()
    flat = maps.flatten(1)
    low = flat.amin(1)[:, None, None]
    high = flat.amax(1)[:, None, None]
    bad = (torch.isnan(flat).any(1)[:, None, None]) | (low == high)
    span = torch.where(bad, torch.ones_like(high), high - low)
    return torch.where(bad, torch.zeros_like(maps), (maps - low) / span)


def threshold_absolute(maps: Tensor, value: float, normalize: bool = True, strict: bool = False) -> Tensor:
    """maps [B, H, W] -> mask [B, H, W]: pixels >= ``value`` (> when ``strict``) on the map,
    min-max normalized per image first when ``normalize`` (constant/NaN map: empty mask)."""
    maps = minmax_normalize(maps) if normalize else maps
    mask = maps > value if strict else maps >= value
    if normalize:  # an all-zero (constant) map never passes a threshold at 0
        mask &= maps.flatten(1).amax(1)[:, None, None] > 0
    return mask


# --------------------------------------------------------------------------- frames
def resize_maps(maps: Tensor, sizes: Sequence[Tuple[int, int]], mode: str = "bilinear") -> List[Tensor]:
    """maps [B, H, W] -> B maps [h_i, w_i] at each image's ``(height, width)`` (e.g. the
    original size), ``align_corners=False``; a map already at its size is returned as is."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}; got {mode!r}")
    out = []
    for heatmap, size in zip(maps, sizes):
        size = (int(size[0]), int(size[1]))
        if tuple(heatmap.shape) == size:
            out.append(heatmap)
            continue
        extra = {} if mode == "nearest" else {"align_corners": False}
        out.append(F.interpolate(heatmap[None, None].float(), size=size, mode=mode, **extra)[0, 0])
    return out


def scale_boxes(boxes: Tensor, from_size: Tuple[int, int], to_size: Tuple[int, int], truncate: bool = False) -> Tensor:
    """boxes [N, 4] (x0, y0, x1, y1) in a ``(height, width)`` frame -> the same boxes in
    ``to_size``: ``x * new_w / old_w`` in float64 (that order), truncated to int when
    ``truncate`` (wsolevaluation's ``resize_bbox``). Returns float64 [N, 4]."""
    (old_h, old_w), (new_h, new_w) = from_size, to_size
    b = boxes.double()
    scaled = torch.stack(
        [b[:, 0] * float(new_w) / float(old_w), b[:, 1] * float(new_h) / float(old_h),
         b[:, 2] * float(new_w) / float(old_w), b[:, 3] * float(new_h) / float(old_h)], dim=1)
    return scaled.trunc() if truncate else scaled


# --------------------------------------------------------------------------- components
def _neighbour_max(values: Tensor, connectivity: int) -> Tensor:
    """values [B, H, W] float -> max over each pixel's closed 4- or 8-neighbourhood."""
    x = values[:, None]
    if connectivity == 8:
        return F.max_pool2d(x, 3, stride=1, padding=1)[:, 0]
    rows = F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0))
    cols = F.max_pool2d(x, (1, 3), stride=1, padding=(0, 1))
    return torch.maximum(rows, cols)[:, 0]


def _label_torch(masks: Tensor, connectivity: int) -> Tensor:
    """Min-index propagation with pointer jumping: every foreground pixel ends labelled with
    the flat index + 1 of its component's first pixel in row-major order."""
    batch, height, width = masks.shape
    count = height * width
    # labels are float for max_pool2d: float32 holds every index up to 2**24 pixels exactly
    dtype = torch.float32 if count + 1 <= 2**24 else torch.float64
    index = torch.arange(1, count + 1, device=masks.device, dtype=dtype).view(1, height, width)
    background = float(count + 1)
    labels = torch.where(masks, index.expand_as(masks), torch.full_like(index, background).expand_as(masks))
    while True:
        previous = labels
        for _ in range(4):  # 4 steps between convergence checks (each check syncs the device)
            labels = torch.where(masks, -_neighbour_max(-labels, connectivity), labels)
            # pointer jumping: a label is a pixel of the same component whose label is <= it
            flat = labels.flatten(1)
            jumped = flat.gather(1, (flat.clamp(max=count) - 1).long())
            labels = torch.where(masks, torch.minimum(flat, jumped).view_as(labels), labels)
        if torch.equal(labels, previous):
            break
    return torch.where(masks, labels, torch.zeros_like(labels)).long()


def _label_scipy(masks: Tensor, connectivity: int) -> Tensor:
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    out = np.zeros(masks.shape, dtype=np.int64)
    flat_index = np.arange(1, masks.shape[1] * masks.shape[2] + 1).reshape(masks.shape[1:])
    for i, mask in enumerate(masks.detach().cpu().numpy()):
        labels, count = ndimage.label(mask, structure=structure)
        if count == 0:
            continue
        # relabel each component by the flat index + 1 of its first pixel (row-major)
        first = ndimage.minimum(flat_index, labels, index=np.arange(1, count + 1)).astype(np.int64)
        out[i] = np.concatenate([[0], first])[labels]
    return torch.from_numpy(out).to(masks.device)


def label_components(masks: Tensor, connectivity: int = 8, backend: str = "auto") -> Tensor:
    """masks [B, H, W] bool -> labels [B, H, W] long: 0 for background, else the flat index + 1
    of the component's first pixel in row-major order (so label order == scipy's raster order).

    ``backend``: "torch" (on the masks' device; min-label propagation with pointer jumping,
    O(HW) per step and a few x log(diameter) steps in practice, worst case O(diameter)),
    "scipy" (``ndimage.label`` on the CPU, one image at a time, O(HW) each, plus a device
    round-trip), "auto" (torch on CUDA, scipy on the CPU). Both give identical labels.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity}")
    if backend not in CC_BACKENDS:
        raise ValueError(f"backend must be one of {CC_BACKENDS}; got {backend!r}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be [B, H, W]; got shape {tuple(masks.shape)}")
    masks = masks.bool()
    if backend == "auto":
        backend = "torch" if masks.is_cuda else "scipy"
    return _label_torch(masks, connectivity) if backend == "torch" else _label_scipy(masks, connectivity)


def _component_stats(labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """labels [B, H, W] -> (size, box, key), each indexed by ``b * (H*W + 1) + label``:
    pixel count [B*(HW+1)], inclusive box [B*(HW+1), 4] (valid where size > 0)."""
    batch, height, width = labels.shape
    slots = height * width + 1
    key = (labels + torch.arange(batch, device=labels.device)[:, None, None] * slots).flatten()
    ys, xs = torch.meshgrid(torch.arange(height, device=labels.device), torch.arange(width, device=labels.device),
                            indexing="ij")
    xs, ys = xs.expand_as(labels).flatten(), ys.expand_as(labels).flatten()
    size = torch.bincount(key, minlength=batch * slots)
    big = height + width
    box = torch.stack([torch.full((batch * slots,), big, device=labels.device)] * 2
                      + [torch.full((batch * slots,), -1, device=labels.device)] * 2, 1)
    box[:, 0].scatter_reduce_(0, key, xs, "amin")
    box[:, 1].scatter_reduce_(0, key, ys, "amin")
    box[:, 2].scatter_reduce_(0, key, xs, "amax")
    box[:, 3].scatter_reduce_(0, key, ys, "amax")
    return size, box, key


def largest_component_box(masks: Tensor, connectivity: int = 8, backend: str = "auto") -> Tensor:
    """masks [B, H, W] bool -> boxes [B, 4] float: inclusive box of the largest connected
    component (ties: the component met first in row-major order); an empty mask gives
    ``[0, 0, 0, 0]``. Cost: one :func:`label_components` call plus O(B*H*W) scatter ops."""
    labels = label_components(masks, connectivity, backend)
    batch, height, width = labels.shape
    slots = height * width + 1
    size, box, _ = _component_stats(labels)
    size = size.view(batch, slots).clone()
    size[:, 0] = 0  # background
    best = size.argmax(1)  # first max == smallest label == first component in row-major order
    chosen = box.view(batch, slots, 4)[torch.arange(batch, device=labels.device), best]
    empty = size.amax(1) == 0
    return torch.where(empty[:, None], torch.zeros_like(chosen), chosen).float()


def component_boxes(masks: Tensor, connectivity: int = 8, backend: str = "auto") -> List[Tensor]:
    """masks [B, H, W] bool -> B tensors [N_i, 4] float: the inclusive box of every connected
    component, in row-major order of their first pixel; an empty mask gives ``[[0, 0, 0, 0]]``."""
    labels = label_components(masks, connectivity, backend)
    batch, height, width = labels.shape
    slots = height * width + 1
    size, box, _ = _component_stats(labels)
    size, box = size.view(batch, slots), box.view(batch, slots, 4)
    out = []
    for i in range(batch):
        present = size[i, 1:] > 0
        boxes = box[i, 1:][present].float()
        out.append(boxes if len(boxes) else torch.zeros(1, 4, device=masks.device))
    return out


# --------------------------------------------------------------------------- IoU
def pairwise_box_iou(boxes: Tensor, gt: Tensor, inclusive: bool = True) -> Tensor:
    """boxes [N, 4], gt [M, 4] -> IoU [N, M] in the boxes' dtype (use float64 for exact
    ratios). ``inclusive``: pixel-index boxes, width = x1 - x0 + 1. A degenerate union gives 0."""
    extra = 1.0 if inclusive else 0.0
    a, b = boxes[:, None, :], gt[None, :, :].to(boxes.dtype)
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + extra).clamp_min(0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + extra).clamp_min(0)
    intersection = width * height
    area_a = (a[..., 2] - a[..., 0] + extra) * (a[..., 3] - a[..., 1] + extra)
    area_b = (b[..., 2] - b[..., 0] + extra) * (b[..., 3] - b[..., 1] + extra)
    union = area_a + area_b - intersection
    return torch.where(union > 0, intersection / torch.where(union > 0, union, torch.ones_like(union)),
                       torch.zeros_like(union))


def box_iou(boxes: Tensor, gt_boxes: Sequence[Tensor], inclusive: bool = True) -> Tensor:
    """Best IoU of each predicted box with its image's ground-truth boxes.

    boxes: [B, 4]; gt_boxes: B tensors [N_i, 4]; returns [B] in [0, 1] (NaN when N_i == 0).
    ``inclusive``: pixel-index boxes, width = x1 - x0 + 1.
    """
    best = torch.full((boxes.shape[0],), float("nan"), device=boxes.device, dtype=boxes.dtype)
    for i, gt in enumerate(gt_boxes):
        if len(gt):
            best[i] = pairwise_box_iou(boxes[i : i + 1], gt.to(boxes.device), inclusive).max()
    return best


def best_box_iou(boxes: Sequence[Tensor], gt_boxes: Sequence[Tensor], inclusive: bool = True) -> Tensor:
    """Several predicted boxes per image: B tensors [K_i, 4] against B tensors [N_i, 4] ->
    [B] best IoU over all (predicted, ground-truth) pairs; NaN when N_i == 0."""
    out = []
    for pred, gt in zip(boxes, gt_boxes):
        if len(gt) == 0 or len(pred) == 0:
            out.append(torch.tensor(float("nan"), device=pred.device))
        else:
            out.append(pairwise_box_iou(pred.float(), gt.to(pred.device).float(), inclusive).max())
    return torch.stack(out) if out else torch.zeros(0, device="cpu")


# --------------------------------------------------------------------------- cam_paper
def class_boxes(boxes: Sequence[Tensor], box_labels: Sequence[Tensor], classes: Tensor) -> List[Tensor]:
    """Keep each image's boxes of class ``classes[i]``; an image whose boxes carry no class
    labels (empty ``box_labels``) keeps all its boxes."""
    out = []
    for box, labels, cls in zip(boxes, box_labels, classes.tolist()):
        if len(labels) == len(box) and len(box):
            box = box[labels.to(box.device) == cls]
        out.append(box)
    return out


@register_metric("cam_paper")
class CamPaperLocalization(MethodwiseMetric):
    """Per-image box localization with the CAM paper's rule (preset ``cam_paper``).

    Scores: ``iou`` (best IoU with a ground-truth box of the explained class), ``gt_known_loc``
    (IoU >= ``iou_threshold``), ``top1_loc`` and ``top5_loc`` (also the prediction right). The
    maps explain the ground-truth class (``Needs(maps="label")``), as in the paper's GT-known
    setting; on multi-label images only the boxes of that class count.

    ``frame``: "input" boxes the map at the model's input resolution against ``batch.boxes``;
    "original" first resizes each map to its image's original size (``resize_mode``) and boxes
    it against ``batch.orig_boxes`` (the image's own pixel coordinates).
    """

    name = "cam_paper"
    category = "localization"
    needs = Needs(maps="label")
    presets = {"cam_paper": {"threshold": 0.2, "connectivity": 8, "iou_threshold": 0.5, "inclusive_iou": True,
                             "frame": "input", "resize_mode": "bilinear"}}
    scores = (
        ScoreInfo("iou", True, "localization"),
        ScoreInfo("gt_known_loc", True, "localization"),
        ScoreInfo("top1_loc", True, "localization"),
        ScoreInfo("top5_loc", True, "localization"),
    )

    def __init__(
        self,
        threshold: float = 0.2,
        connectivity: int = 8,
        iou_threshold: float = 0.5,
        inclusive_iou: bool = True,
        frame: str = "input",
        resize_mode: str = "bilinear",
        backend: str = "auto",
    ):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        if connectivity not in CONNECTIVITIES:
            raise ValueError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity}")
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}; got {frame!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}")
        if backend not in CC_BACKENDS:
            raise ValueError(f"backend must be one of {CC_BACKENDS}; got {backend!r}")
        self.threshold, self.connectivity = threshold, connectivity
        self.iou_threshold, self.inclusive_iou = iou_threshold, inclusive_iou
        self.frame, self.resize_mode, self.backend = frame, resize_mode, backend

    def protocol(self) -> Dict[str, Any]:
        return {
            "threshold_rule": "fraction_of_max",
            "threshold": self.threshold,
            "component": "largest",
            "connectivity": self.connectivity,
            "iou_threshold": self.iou_threshold,
            "inclusive_iou": self.inclusive_iou,
            "frame": self.frame,
            "resize_mode": self.resize_mode if self.frame == "original" else None,
            "map_class": "ground_truth",
        }

    def boxes(self, explained: MethodBatch) -> Tuple[Tensor, List[Tensor]]:
        """(predicted boxes [B, 4], the explained class's ground-truth boxes per image) in the
        metric's frame."""
        batch = explained.batch
        if self.frame == "input":
            boxes = largest_component_box(threshold_by_max(explained.heatmaps, self.threshold),
                                          self.connectivity, self.backend)
            return boxes, class_boxes(batch.boxes, batch.box_labels, explained.targets)
        maps = resize_maps(explained.heatmaps, batch.orig_sizes, self.resize_mode)
        boxes = torch.cat([largest_component_box(threshold_by_max(m[None], self.threshold), self.connectivity,
                                                 self.backend) for m in maps])
        return boxes, class_boxes(batch.orig_boxes, batch.box_labels, explained.targets)

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        boxes, gt = self.boxes(explained)
        iou = box_iou(boxes, gt, inclusive=self.inclusive_iou)
        correct = (iou >= self.iou_threshold).float()
        correct = torch.where(torch.isnan(iou), iou, correct)
        labels = explained.batch.labels.to(explained.logits.device)
        top5 = explained.logits.topk(min(5, explained.logits.shape[1]), dim=1).indices
        top1_right = (top5[:, 0] == labels).float()
        top5_right = (top5 == labels[:, None]).any(1).float()
        return {
            "iou": iou,
            "gt_known_loc": correct,
            "top1_loc": correct * top1_right,
            "top5_loc": correct * top5_right,
        }
