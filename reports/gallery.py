"""Heatmap gallery: images (rows) x methods (columns), heatmaps overlaid, ground-truth boxes drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch


def save_gallery(path: Path, gallery: Dict[str, List[torch.Tensor]], methods: Sequence[str],
                 class_names: Sequence[str]) -> None:
    """``gallery``: ``images`` ([3, H, W] in [0, 1]), ``boxes`` ([N, 4] inclusive), ``labels`` and one
    list of heatmaps [H, W] per method. Each heatmap is min-max scaled for display only."""
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
                heat = gallery[methods[col - 1]][row].float()
                heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
                ax.imshow(heat.numpy(), cmap="jet", alpha=0.5)
            for x0, y0, x1, y1 in gallery["boxes"][row].tolist():
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="white", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("image" if col == 0 else methods[col - 1], fontsize=9)
            if col == 0:
                label = gallery["labels"][row]
                ax.set_ylabel(class_names[label] if label < len(class_names) else str(label), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
