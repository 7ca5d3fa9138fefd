"""Heatmap gallery: images (rows) x methods (columns), heatmaps overlaid, ground-truth boxes (white)
and each map's predicted box (cyan, dashed: the CAM-paper rule, pixels >= ``box_threshold`` x the
map's max, largest 8-connected component) drawn.

Display scaling (:func:`display_scale`, shared with the report's per-image viewer): a map of a
pixel-space method (saliency, guided backprop, ...: heavy-tailed, a few pixels hold most of the
mass) is clipped at its ``clip_percentile`` (99th by default) before min-max scaling, so that it
does not look black; a layer-space map (the CAM family, smooth after upsampling) is min-max
scaled. Display only: no score reads these values."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

DEFAULT_CLIP_PERCENTILE = 99.0


def display_scale(heatmap: Any, space: str = "pixel", clip_percentile: Optional[float] = DEFAULT_CLIP_PERCENTILE
                  ) -> np.ndarray:
    """heatmap [H, W] (tensor or array) -> float array [H, W] in [0, 1] for display:
    ``(m - min) / (top - min)`` clipped to [0, 1], ``top`` = the map's ``clip_percentile``-th
    percentile (numpy's linear interpolation) for ``space == "pixel"``, its max otherwise (or
    when ``clip_percentile`` is None); non-finite values count as the minimum; a constant map is
    all zeros."""
    values = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape)
    low = values[finite].min()
    values = np.where(finite, values, low)
    top = (np.percentile(values, clip_percentile) if space == "pixel" and clip_percentile is not None
           else values.max())
    if not top > low:
        top = values.max()
    if not top > low:
        return np.zeros(values.shape)
    return np.clip((values - low) / (top - low), 0.0, 1.0)


def clip_caption(clip_percentile: Optional[float]) -> str:
    if clip_percentile is None or clip_percentile >= 100:
        return "every map min-max scaled"
    return (f"pixel-space maps clipped at their {clip_percentile:g}th percentile, "
            "layer-space (CAM family) maps min-max scaled")


def predicted_box(heatmap: torch.Tensor, box_threshold: float) -> Optional[list]:
    """The CAM paper's box of a heatmap [H, W]: pixels >= ``box_threshold`` x max, largest
    8-connected component -> [x0, y0, x1, y1] inclusive, or None (no pixel, non-finite map)."""
    from salbench.metrics.localization import largest_component_box, threshold_by_max

    if not torch.isfinite(heatmap).all():
        return None
    x0, y0, x1, y1 = largest_component_box(threshold_by_max(heatmap[None].float(), box_threshold))[0].tolist()
    return [x0, y0, x1, y1] if (x1 > x0 or y1 > y0) else None


def save_gallery(path: Path, gallery: Dict[str, Any], methods: Sequence[str],
                 class_names: Sequence[str], box_threshold: Optional[float] = 0.2,
                 spaces: Optional[Mapping[str, str]] = None,
                 clip_percentile: Optional[float] = DEFAULT_CLIP_PERCENTILE) -> None:
    """``gallery``: ``images`` ([3, H, W] in [0, 1]), ``boxes`` ([N, 4] inclusive), ``labels`` and
    ``maps``: one list of heatmaps [H, W] per method. Each heatmap is scaled for display only
    (:func:`display_scale` with the method's ``spaces`` entry, default ``"pixel"``);
    ``box_threshold`` None: no predicted boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    spaces = dict(spaces or {})
    images = gallery["images"]
    cols = 1 + len(methods)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for col in range(cols):
            ax = axes[row, col]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            if col:
                method = methods[col - 1]
                raw = gallery["maps"][method][row].float()
                heat = display_scale(raw, spaces.get(method, "pixel"), clip_percentile)
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                box = predicted_box(raw, box_threshold) if box_threshold is not None else None
                if box is not None:
                    x0, y0, x1, y1 = box
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                           color="cyan", lw=1.2, ls="--"))
            for x0, y0, x1, y1 in gallery["boxes"][row].tolist():
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="white", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("image" if col == 0 else methods[col - 1], fontsize=9)
            if col == 0:
                label = gallery["labels"][row]
                ax.set_ylabel(class_names[label] if label < len(class_names) else str(label), fontsize=8)
    sep = "\n" if cols < 3 else "; "
    note = clip_caption(clip_percentile)
    if box_threshold is not None:
        note = f"white: ground truth{sep}cyan dashed: largest region >= {box_threshold:g} x max{sep}{note}"
    fig.text(0.5, 0.0, note, ha="center", va="bottom", fontsize=7)
    lines = note.count("\n") + 1
    bottom = (0.045 * lines if cols < 3 else 0.05) / max(1, len(images)) ** 0.5
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
