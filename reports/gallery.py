"""Heatmap gallery: images (rows) x methods (columns), heatmaps overlaid, ground-truth boxes (white)
and each map's predicted box (cyan, dashed: the CAM-paper rule, pixels >= ``box_threshold`` x the
map's max, largest 8-connected component) drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch


def save_gallery(path: Path, gallery: Dict[str, Any], methods: Sequence[str],
                 class_names: Sequence[str], box_threshold: Optional[float] = 0.2) -> None:
    """``gallery``: ``images`` ([3, H, W] in [0, 1]), ``boxes`` ([N, 4] inclusive), ``labels`` and
    ``maps``: one list of heatmaps [H, W] per method. Each heatmap is min-max scaled for display only;
    ``box_threshold`` None: no predicted boxes."""
    from salbench.metrics.localization import largest_component_box, threshold_by_max

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = gallery["images"]
    cols = 1 + len(methods)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.9 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        for col in range(cols):
            ax = axes[row, col]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
            if col:
                raw = gallery["maps"][methods[col - 1]][row].float()
                heat = (raw - raw.min()) / (raw.max() - raw.min()).clamp_min(1e-12)
                ax.imshow(heat.numpy(), cmap="jet", alpha=0.5)
                if box_threshold is not None and torch.isfinite(raw).all():
                    x0, y0, x1, y1 = largest_component_box(threshold_by_max(raw[None], box_threshold))[0].tolist()
                    if x1 > x0 or y1 > y0:
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
    if box_threshold is not None:
        sep = "\n" if cols < 3 else "; "
        fig.text(0.5, 0.0, f"white: ground truth{sep}cyan dashed: largest region >= {box_threshold:g} x max",
                 ha="center", va="bottom", fontsize=7)
    bottom = (0.09 if cols < 3 else 0.045) / max(1, len(images)) ** 0.5 if box_threshold is not None else 0
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
