"""Pointing games: the pointing game (Zhang et al., ECCV 2016 / IJCV 2018, "Top-down neural
attention by excitation backprop", with TorchRay's benchmark rules), the energy pointing game
(Wang et al., CVPR-W 2020, Score-CAM) and the grid pointing game (Böhle et al., CVPR 2022;
Rao et al., 2022).

Pointing game, preset ``pointing_game`` (TorchRay ``torchray.benchmark.pointing_game``):

* the map is resized to the original image size (bilinear, ``align_corners=False``);
* the point is the map's maximum (``argmax`` of the flattened map: the first maximum in
  row-major order; ``ties="any"`` accepts any maximal pixel, Quantus' rule);
* hit when a ground-truth pixel lies strictly within ``tolerance`` (15) pixels of the point
  (squared distance < tolerance**2; tolerance 0 means the point's own pixel);
* one score per (image, class present) (``classes="present"``, the protocol): the runner
  explains every class annotated in the image (the distinct box labels; with
  ``ground_truth="mask"`` the classes that have a mask), reusing the job's map where the
  class is the job's target; ``classes="explained"`` scores only the job's explained class;
* ground truth per (image, class): the union of the class's boxes (inclusive pixels) or its
  mask (``batch.extras["class_masks"]`` where the dataset has per-class masks, e.g. COCO; else
  the image mask, which belongs to the label's class); a (image, class) pair whose boxes are all PASCAL "difficult" is skipped, an empty
  ground truth is skipped (NaN) -- never a hit (Quantus 0.6 returns a hit there);
* accuracy = mean over classes of hits / (hits + misses); classes never evaluated are left out
  (``empty_class="skip"``) or count 0 (``"zero"``, TorchRay's ``clamp(min=1)``; identical on
  VOC07 test / COCO val2014 where every class occurs);
* difficult subset (Zhang et al.): the paper's rule, the class's ground truth covers < 1/4 of
  the image and another class is present (TorchRay's per-image difficult lists for VOC07/COCO
  are not shipped).

Cost: all batched on the maps' device except the resize to per-image original sizes (one
interpolate per image): the hit test is O(H*W) per image (``ties="first"``) or one
(2t+1)^2 max-pool dilation of the ground truth (``ties="any"``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from salbench.metrics import register_metric
from salbench.metrics.base import MethodBatch, MethodwiseMetric, Needs, ScoreInfo
from salbench.metrics.localization import FRAMES, RESIZE_MODES, resize_maps

GROUND_TRUTHS = ("boxes", "mask")
TIES = ("first", "any")
EMPTY_CLASS = ("skip", "zero")
CLASSES = ("present", "explained")


def boxes_to_mask(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """boxes [N, 4] inclusive (x0, y0, x1, y1) -> bool mask [H, W] of their union (clipped)."""
    height, width = int(size[0]), int(size[1])
    device = boxes.device
    if len(boxes) == 0:
        return torch.zeros(height, width, dtype=torch.bool, device=device)
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]
    b = boxes.float()[:, :, None, None]
    inside = (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
    return inside.any(0)


def max_points(maps: Tensor) -> Tensor:
    """maps [B, H, W] -> points [B, 2] long ``(x, y)`` of the first maximum in row-major order."""
    flat = maps.flatten(1).nan_to_num(nan=float("-inf")).argmax(1)
    width = maps.shape[-1]
    return torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], 1)


def _disk(tolerance: int, device: torch.device) -> Tensor:
    r = torch.arange(-tolerance, tolerance + 1, device=device, dtype=torch.float32)
    return (r[:, None] ** 2 + r[None, :] ** 2) < tolerance**2


def pointing_hits(maps: Tensor, masks: Tensor, tolerance: int = 15, ties: str = "first") -> Tensor:
    """maps [B, H, W], masks [B, H, W] bool -> hits [B] float: 1 when a ground-truth pixel lies
    at squared distance < ``tolerance**2`` from the map's maximum (tolerance 0: on the maximum's
    pixel), else 0; NaN for an empty mask or a map without a finite maximum.

    ``ties``: "first" (TorchRay: argmax, first maximum in row-major order) or "any" (Quantus:
    any maximal pixel counts).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}; got {ties!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0; got {tolerance}")
    masks = masks.bool()
    batch, height, width = maps.shape
    empty = ~masks.flatten(1).any(1)
    finite = torch.isfinite(maps.flatten(1)).any(1)
    if ties == "first":
        points = max_points(maps)
        if tolerance == 0:
            hit = masks[torch.arange(batch, device=maps.device), points[:, 1], points[:, 0]]
        else:
            ys = torch.arange(height, device=maps.device, dtype=torch.float32)[None, :, None]
            xs = torch.arange(width, device=maps.device, dtype=torch.float32)[None, None, :]
            d2 = (xs - points[:, 0, None, None].float()) ** 2 + (ys - points[:, 1, None, None].float()) ** 2
            hit = (masks & (d2 < tolerance**2)).flatten(1).any(1)
    else:
        safe = maps.nan_to_num(nan=float("-inf"))
        peak = safe.flatten(1).amax(1)[:, None, None]
        at_max = safe == peak
        reach = masks
        if tolerance > 0:  # dilate the ground truth by the acceptance disk
            kernel = _disk(tolerance, maps.device).float()[None, None]
            reach = F.conv2d(masks[:, None].float(), kernel, padding=tolerance)[:, 0] > 0.5
        hit = (at_max & reach).flatten(1).any(1)
    out = hit.float()
    return torch.where(empty | ~finite, torch.full_like(out, float("nan")), out)


def energy_pointing(maps: Tensor, masks: Tensor) -> Tensor:
    """maps [B, H, W], masks [B, H, W] bool -> [B]: share of the positive map mass inside the
    mask, sum(relu(m) * mask) / sum(relu(m)); NaN when the map has no positive mass or the
    mask is empty (Wang et al. 2020, Score-CAM, "energy-based pointing game")."""
    positive = maps.float().clamp_min(0).nan_to_num(0.0)
    total = positive.flatten(1).sum(1)
    inside = (positive * masks.float()).flatten(1).sum(1)
    undefined = (total <= 0) | ~masks.flatten(1).any(1)
    return torch.where(undefined, torch.full_like(total, float("nan")), inside / total.clamp_min(1e-30))


def grid_cell_bounds(size: int, grid: int) -> List[int]:
    """Cell edges along one axis: ``floor(i * size / grid)`` for i = 0..grid."""
    return [(i * size) // grid for i in range(grid + 1)]


def grid_pointing_score(maps: Tensor, grid: int, cells: Tensor) -> Tensor:
    """maps [B, H, W] of an n x n grid image, cells [B] long (row-major cell index of the
    explained class) -> [B]: positive attribution inside that cell / total positive attribution
    (a uniform map scores 1/n^2 when the cells are equal); NaN without positive mass."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1; got {grid}")
    batch, height, width = maps.shape
    rows, cols = grid_cell_bounds(height, grid), grid_cell_bounds(width, grid)
    row_of = torch.bucketize(torch.arange(height, device=maps.device), torch.tensor(rows[1:-1], device=maps.device),
                             right=True)
    col_of = torch.bucketize(torch.arange(width, device=maps.device), torch.tensor(cols[1:-1], device=maps.device),
                             right=True)
    cell_of = row_of[:, None] * grid + col_of[None, :]  # [H, W]
    in_cell = cell_of[None] == cells.to(maps.device)[:, None, None]
    return energy_pointing(maps, in_cell)


def difficult_by_rule(mask: Tensor, image_area: int, other_class_present: bool) -> bool:
    """Zhang et al.'s difficult rule: the class covers < 1/4 of the image and a distractor
    class is present."""
    return bool(other_class_present and int(mask.sum()) * 4 < image_area)


@register_metric("pointing_game")
class PointingGame(MethodwiseMetric):
    """Pointing game with TorchRay's rules (preset ``pointing_game``).

    Per (image, class) pair -- every class present with ``classes="present"`` (the runner
    explains each, see :attr:`map_target`), the explained class with ``"explained"``:
    ``pointing_hit`` 1/0, NaN when the class is absent, its ground truth is empty or all its
    boxes are difficult; ``pointing_hit_difficult`` the same on the difficult subset (NaN
    elsewhere). Dataset: ``pointing_acc`` and ``pointing_acc_difficult`` = mean over classes of
    hits / (hits + misses), in [0, 1].
    """

    name = "pointing_game"
    category = "localization"
    presets = {"pointing_game": {"tolerance": 15, "ties": "first", "ground_truth": "boxes", "frame": "original",
                                 "resize_mode": "bilinear", "skip_all_difficult": True, "empty_class": "skip",
                                 "classes": "present"}}
    scores = (
        ScoreInfo("pointing_hit", True, "localization"),
        ScoreInfo("pointing_hit_difficult", True, "localization"),
        ScoreInfo("pointing_acc", True, "localization", "dataset"),
        ScoreInfo("pointing_acc_difficult", True, "localization", "dataset"),
    )

    def __init__(
        self,
        tolerance: int = 15,
        ties: str = "first",
        ground_truth: str = "boxes",
        frame: str = "original",
        resize_mode: str = "bilinear",
        skip_all_difficult: bool = True,
        empty_class: str = "skip",
        classes: str = "present",
    ):
        super().__init__()
        for value, valid, what in ((classes, CLASSES, "classes"), (ties, TIES, "ties"),
                                   (ground_truth, GROUND_TRUTHS, "ground_truth"),
                                   (frame, FRAMES, "frame"), (resize_mode, RESIZE_MODES, "resize_mode"),
                                   (empty_class, EMPTY_CLASS, "empty_class")):
            if value not in valid:
                raise ValueError(f"{what} must be one of {valid}; got {value!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0; got {tolerance}")
        self.tolerance, self.ties, self.ground_truth, self.frame = int(tolerance), ties, ground_truth, frame
        self.resize_mode, self.skip_all_difficult, self.empty_class = resize_mode, skip_all_difficult, empty_class
        self.classes = classes
        self.num_classes: Optional[int] = None  # the model's, seen at the first update (empty_class="zero")

    @property
    def needs(self) -> Needs:
        """``present``: the loop scores one row per (image, class of :meth:`present_classes`)."""
        return Needs(maps="present" if self.classes == "present" else "target")

    def present_classes(self, batch: Any) -> List[List[int]]:
        """Per image, the classes to explain and score: the distinct box labels (without the
        classes whose boxes are all difficult, which are skipped anyway); with
        ``ground_truth="mask"`` the classes of the image's ``class_masks`` (else its label);
        the image label when the image has no boxes."""
        if self.ground_truth == "boxes":
            if self.skip_all_difficult:
                return super().present_classes(batch)
            return [sorted(set(labels.tolist())) or [int(label)] for labels, label in
                    zip(batch.box_labels, batch.labels.tolist())]
        per_class = (batch.extras or {}).get("class_mask_labels")
        return [sorted(set(per_class[i].tolist())) if per_class is not None and per_class[i] is not None
                and len(per_class[i]) else [int(label)] for i, label in enumerate(batch.labels.tolist())]

    def new_state(self) -> Dict[str, Dict[str, Dict[int, int]]]:
        """Per subset ("all", "difficult"): hits and misses per class."""
        return {"hits": {"all": {}, "difficult": {}}, "misses": {"all": {}, "difficult": {}}}

    def protocol(self) -> Dict[str, Any]:
        return {
            "map_class": "each_class_present" if self.classes == "present" else "explained_target",
            "frame": self.frame,
            "resize_mode": self.resize_mode if self.frame == "original" else None,
            "point": "argmax_first_row_major" if self.ties == "first" else "any_maximum",
            "tolerance_px": self.tolerance,
            "hit_rule": "gt_pixel_with_squared_distance_lt_tolerance_sq",
            "ground_truth": "union_of_class_boxes" if self.ground_truth == "boxes" else "mask",
            "skip_all_difficult": self.skip_all_difficult,
            "empty_ground_truth": "skipped_not_a_hit",
            "accuracy": "mean_over_classes_of_hits_over_hits_plus_misses",
            "empty_class": self.empty_class,
            "difficult_subset": "rule_area_lt_quarter_and_distractor",
        }

    def _ground_truth(self, explained: MethodBatch, sizes: Sequence[Tuple[int, int]]) -> Tuple[List[Tensor], List[bool], List[bool]]:
        """Per image: mask [h, w] of the target class, whether the pair is evaluated, whether
        it is in the difficult subset."""
        batch = explained.batch
        targets = explained.targets.tolist()
        boxes_all = batch.orig_boxes if self.frame == "original" else batch.boxes
        masks, evaluated, difficult = [], [], []
        for i, (cls, size) in enumerate(zip(targets, sizes)):
            labels = batch.box_labels[i].to(boxes_all[i].device)
            present = labels == cls
            if self.ground_truth == "boxes":
                mask = boxes_to_mask(boxes_all[i][present], size)
                ok = bool(present.any())
                if ok and self.skip_all_difficult and len(batch.difficult[i]):
                    ok = not bool(batch.difficult[i].to(labels.device)[present].all())
            else:
                mask = self._class_mask(batch, i, cls)
                if tuple(mask.shape) != tuple(size):
                    mask = F.interpolate(mask[None, None].float(), size=tuple(size), mode="nearest")[0, 0] > 0.5
                ok = True
            ok = ok and bool(mask.any())
            other = bool((labels != cls).any()) if len(labels) else False
            hard = difficult_by_rule(mask, int(size[0]) * int(size[1]), other)
            masks.append(mask)
            evaluated.append(ok)
            difficult.append(ok and hard)
        return masks, evaluated, difficult

    @staticmethod
    def _class_mask(batch: Any, i: int, cls: int) -> Tensor:
        """Image ``i``'s mask [H, W] of class ``cls`` (input frame): the union of its
        ``class_masks`` of that class when the dataset has them, else the image ``mask`` when
        ``cls`` is the image label; an empty mask (not evaluated) otherwise."""
        per_class = (batch.extras or {}).get("class_masks")
        if per_class is not None and per_class[i] is not None:
            labels = batch.extras["class_mask_labels"][i]
            return per_class[i][labels.to(per_class[i].device) == cls].any(0)
        if batch.masks is None:
            raise ValueError("ground_truth='mask' needs a dataset with masks")
        mask = batch.masks[i]
        return mask if cls == int(batch.labels[i]) else torch.zeros_like(mask)

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        batch = explained.batch
        device = explained.heatmaps.device
        if explained.model is not None:
            self.num_classes = explained.model.num_classes
        if self.frame == "original":
            maps = resize_maps(explained.heatmaps, batch.orig_sizes, self.resize_mode)
        else:
            maps = list(explained.heatmaps)
        sizes = [tuple(m.shape) for m in maps]
        masks, evaluated, difficult = self._ground_truth(explained, sizes)
        if len(set(sizes)) == 1:
            hits = pointing_hits(torch.stack(maps), torch.stack(masks).to(device), self.tolerance, self.ties)
        else:
            hits = torch.cat([pointing_hits(m[None], k[None].to(device), self.tolerance, self.ties)
                              for m, k in zip(maps, masks)])
        nan = torch.full_like(hits, float("nan"))
        hit_all = torch.where(torch.tensor(evaluated, device=device), hits, nan)
        hit_difficult = torch.where(torch.tensor(difficult, device=device), hits, nan)
        state = self.state(explained.method)
        for subset, values in (("all", hit_all), ("difficult", hit_difficult)):
            for cls, value in zip(explained.targets.tolist(), values.tolist()):
                if value != value:  # NaN: not evaluated
                    continue
                table = state["hits"] if value >= 0.5 else state["misses"]
                table[subset][cls] = table[subset].get(cls, 0) + 1
        return {"pointing_hit": hit_all, "pointing_hit_difficult": hit_difficult}

    @staticmethod
    def class_accuracies(state: Dict[str, Any], subset: str = "all") -> Dict[int, float]:
        """Per-class hits / (hits + misses) of one method's state, over the classes evaluated
        at least once."""
        hits, misses = state["hits"][subset], state["misses"][subset]
        return {c: hits.get(c, 0) / (hits.get(c, 0) + misses.get(c, 0)) for c in sorted(set(hits) | set(misses))}

    def accuracy(self, state: Dict[str, Any], subset: str = "all") -> float:
        """Mean over classes of hits / (hits + misses); with ``empty_class="zero"`` every class of
        the model counts (0 when never evaluated: TorchRay's ``clamp(min=1)``)."""
        per_class = self.class_accuracies(state, subset)
        if self.empty_class == "zero" and self.num_classes:
            return sum(per_class.values()) / self.num_classes
        return sum(per_class.values()) / len(per_class) if per_class else float("nan")

    def compute_state(self, state: Dict[str, Any]) -> Dict[str, float]:
        return {"pointing_acc": self.accuracy(state, "all"), "pointing_acc_difficult": self.accuracy(state, "difficult")}


@register_metric("energy_pointing_game")
class EnergyPointingGame(MethodwiseMetric):
    """Energy pointing game (preset ``energy_pointing_game``; Wang et al. 2020): per image, the
    share of the positive map mass inside the target class's boxes (union) or mask, in the
    input frame. Score ``energy`` in [0, 1]; NaN without positive mass or ground truth."""

    name = "energy_pointing_game"
    category = "localization"
    presets = {"energy_pointing_game": {"ground_truth": "boxes"}}
    scores = (ScoreInfo("energy", True, "localization"),)

    def __init__(self, ground_truth: str = "boxes"):
        super().__init__()
        if ground_truth not in GROUND_TRUTHS:
            raise ValueError(f"ground_truth must be one of {GROUND_TRUTHS}; got {ground_truth!r}")
        self.ground_truth = ground_truth

    def protocol(self) -> Dict[str, Any]:
        return {"map": "relu", "ground_truth": "union_of_class_boxes" if self.ground_truth == "boxes" else "mask",
                "frame": "input", "score": "positive_mass_inside_over_total_positive_mass"}

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        batch = explained.batch
        size = tuple(explained.heatmaps.shape[-2:])
        if self.ground_truth == "mask":
            if batch.masks is None:
                raise ValueError("ground_truth='mask' needs a dataset with masks")
            masks = batch.masks
        else:
            masks = torch.stack([boxes_to_mask(b[l.to(b.device) == c] if len(l) == len(b) else b, size)
                                 for b, l, c in zip(batch.boxes, batch.box_labels, explained.targets.tolist())])
        return {"energy": energy_pointing(explained.heatmaps, masks.to(explained.heatmaps.device))}


@register_metric("grid_pointing_game")
class GridPointingGame(MethodwiseMetric):
    """Grid pointing game (preset ``grid_pointing_game``; Böhle et al. 2022, Rao et al. 2022):
    on an n x n grid of images of different classes, the positive attribution inside the cell
    of the explained class over the total positive attribution (uniform map: the cell's share
    of the pixels, 1/n^2 for equal cells).

    The cell is the explained class's box: the ``grid`` dataset gives each cell as an inclusive
    box labelled with its class (:func:`grid_pointing_score` scores equal cells given by index).
    Score ``grid_score`` in [0, 1]; NaN without positive mass or cell.
    """

    name = "grid_pointing_game"
    category = "localization"
    presets = {"grid_pointing_game": {}}
    scores = (ScoreInfo("grid_score", True, "localization"),)

    def __init__(self, grid: int = 2):
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid must be >= 1; got {grid}")
        self.grid = int(grid)

    def protocol(self) -> Dict[str, Any]:
        return {"grid": self.grid, "map": "relu", "cell": "target_class_box",
                "score": "positive_mass_in_cell_over_total_positive_mass"}

    def update_method(self, explained: MethodBatch) -> Dict[str, Tensor]:
        batch = explained.batch
        maps = explained.heatmaps
        size = tuple(maps.shape[-2:])
        masks = torch.stack([boxes_to_mask(b[l.to(b.device) == c] if len(l) == len(b) else b, size)
                             for b, l, c in zip(batch.boxes, batch.box_labels, explained.targets.tolist())])
        return {"grid_score": energy_pointing(maps, masks.to(maps.device))}
