"""The model bundle: a classifier and the facts a job needs to combine it with any dataset
(input size, normalization, class names, the default target layer), and the weights cache."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelBundle:
    """A classifier and the facts that travel with it.

    ``module`` maps normalized images [B, 3, H, W] to logits [B, K]; ``normalize`` maps [0, 1]
    RGB images to the module's input space.
    """

    name: str
    module: nn.Module
    input_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: List[str]
    target_layer: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> normalized model input on the same device."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype)[:, None, None]
        return (images - mean) / std

    def to(self, device: torch.device) -> "ModelBundle":
        self.module.to(device)
        return self

    def describe(self) -> Dict[str, Any]:
        """JSON-ready facts recorded in run.json."""
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "target_layer": self.target_layer,
            **self.info,
        }


def cache_dir() -> Path:
    """Where trained weights are cached: ``$SALBENCH_CACHE`` or ``~/.cache/salbench``."""
    return Path(os.environ.get("SALBENCH_CACHE", Path.home() / ".cache" / "salbench"))


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in the standard order (torchvision's weights metadata,
    available offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def traced_target_layer(module: nn.Module, size: Tuple[int, int]) -> str:
    """The feature map feeding the global pooling, found by one traced forward at ``size``."""
    from salbench.methods.hooks import default_target_layer

    module.eval()
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return default_target_layer(module, torch.zeros(1, 3, *size, device=device))
