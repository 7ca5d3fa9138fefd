"""Localization: thresholded heatmap -> box -> IoU against the ground-truth boxes.

Preset ``cam_paper`` (Zhou et al. 2016, CAM, section 4): keep pixels >= 20% of the map's max,
box around the largest connected component, correct when IoU >= 0.5 with a ground-truth box.
GT-known localization uses the map of the true class; top-1 localization also needs the top-1
prediction to be right; top-5 needs the true class among the top-5 predictions.

Boxes are ``(x0, y0, x1, y1)`` inclusive pixel indices (ILSVRC convention: width = x1 - x0 + 1).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from salbench.metrics.base import ExplainedBatch, Metric, ScoreInfo

CONNECTIVITIES = (4, 8)


def threshold_by_max(maps: Tensor, fraction: float) -> Tensor:
    """maps [B, H, W] -> mask [B, H, W]: pixels >= ``fraction`` x the map's max (per image).

    A map whose max is <= 0 (all-zero after ReLU) or that holds NaN gives an empty mask.
    """
    peak = maps.flatten(1).amax(dim=1)[:, None, None]
    valid = (peak > 0) & ~torch.isnan(maps).flatten(1).any(1)[:, None, None]
    return (maps >= fraction * peak) & valid


def largest_component_box(masks: Tensor, connectivity: int = 8) -> Tensor:
    """masks [B, H, W] bool -> boxes [B, 4] float: inclusive box of the largest connected
    component (ties: the component met first in row-major order); an empty mask gives
    ``[0, 0, 0, 0]``. Components are labelled on the CPU (scipy.ndimage.label)."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, mask in enumerate(masks.detach().cpu().numpy()):
        labels, count = ndimage.label(mask, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
        boxes[i] = (cols.min(), rows.min(), cols.max(), rows.max())
    return torch.from_numpy(boxes).to(masks.device)


def box_iou(boxes: Tensor, gt_boxes: Sequence[Tensor], inclusive: bool = True) -> Tensor:
    """Best IoU of each predicted box with its image's ground-truth boxes.

    boxes: [B, 4]; gt_boxes: B tensors [N_i, 4]; returns [B] in [0, 1] (NaN when N_i == 0).
    ``inclusive``: pixel-index boxes, width = x1 - x0 + 1.
    """
    extra = 1.0 if inclusive else 0.0
    best = torch.full((boxes.shape[0],), float("nan"), device=boxes.device)
    for i, gt in enumerate(gt_boxes):
        if len(gt) == 0:
            continue
        gt = gt.to(boxes.device, boxes.dtype)
        box = boxes[i]
        width = (torch.minimum(box[2], gt[:, 2]) - torch.maximum(box[0], gt[:, 0]) + extra).clamp_min(0)
        height = (torch.minimum(box[3], gt[:, 3]) - torch.maximum(box[1], gt[:, 1]) + extra).clamp_min(0)
        intersection = width * height
        area = (box[2] - box[0] + extra).clamp_min(0) * (box[3] - box[1] + extra).clamp_min(0)
        gt_area = (gt[:, 2] - gt[:, 0] + extra).clamp_min(0) * (gt[:, 3] - gt[:, 1] + extra).clamp_min(0)
        union = area + gt_area - intersection
        best[i] = torch.where(union > 0, intersection / union.clamp_min(1e-12), torch.zeros_like(union)).max()
    return best


class CamPaperLocalization(Metric):
    """Per-image box localization with the CAM paper's rule (preset ``cam_paper``).

    Scores: ``iou`` (best IoU with a GT box), ``gt_known_loc`` (IoU >= ``iou_threshold``),
    ``top1_loc`` and ``top5_loc`` (also the prediction right). Heatmaps must explain the
    ground-truth class (``target: label``), as in the paper's GT-known setting.
    """

    name = "cam_paper"
    category = "localization"
    preset = "cam_paper"
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
        preset: str = "cam_paper",
    ):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        if connectivity not in CONNECTIVITIES:
            raise ValueError(f"connectivity must be one of {CONNECTIVITIES}; got {connectivity}")
        self.threshold, self.connectivity = threshold, connectivity
        self.iou_threshold, self.inclusive_iou, self.preset = iou_threshold, inclusive_iou, preset

    def protocol(self) -> Dict[str, Any]:
        return {
            "threshold_rule": "fraction_of_max",
            "threshold": self.threshold,
            "component": "largest",
            "connectivity": self.connectivity,
            "iou_threshold": self.iou_threshold,
            "inclusive_iou": self.inclusive_iou,
            "map_class": "ground_truth",
        }

    def update(self, explained: ExplainedBatch) -> Dict[str, Tensor]:
        boxes = largest_component_box(threshold_by_max(explained.heatmaps, self.threshold), self.connectivity)
        iou = box_iou(boxes, explained.batch.boxes, inclusive=self.inclusive_iou)
        correct = (iou >= self.iou_threshold).float()
        correct = torch.where(torch.isnan(iou), iou, correct)
        labels = explained.batch.labels
        top5 = explained.logits.topk(min(5, explained.logits.shape[1]), dim=1).indices
        top1_right = (top5[:, 0] == labels).float()
        top5_right = (top5 == labels[:, None]).any(1).float()
        return {
            "iou": iou,
            "gt_known_loc": correct,
            "top1_loc": correct * top1_right,
            "top5_loc": correct * top5_right,
        }
