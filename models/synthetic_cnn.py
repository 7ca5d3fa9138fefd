"""The synthetic-shapes CNN: a small GAP + linear classifier (so CAM applies) of the five shape
classes of :mod:`salbench.datasets.synthetic`.

Its trained weights ship inside the package (``models/weights/synthetic_cnn.pt``, about 250 KB),
so every machine evaluates the same network: CPUs of different families train to different
weights (floating-point rounding), and the demo's numbers would move with them. The file was
made by :mod:`salbench.models.training` with the default :class:`SyntheticTraining` recipe
(``python -m salbench.models.training --out models/weights/synthetic_cnn.pt``). Another recipe
(``seed``, ``epochs``, ``num_train``) is trained on first use and cached under
``$SALBENCH_CACHE`` (``train_if_missing``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from salbench.models import register_model
from salbench.models.bundle import ModelBundle, cache_dir, file_sha256

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "synthetic_cnn.pt"
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


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
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def shipped_recipe() -> Optional[SyntheticTraining]:
    """The recipe the shipped weights were trained with (None when the file is absent)."""
    if not SHIPPED_WEIGHTS.is_file():
        return None
    saved = torch.load(SHIPPED_WEIGHTS, map_location="cpu", weights_only=True)
    return SyntheticTraining(**saved["recipe"])


@register_model("synthetic_cnn")
def synthetic_cnn(
    weights: Optional[str] = None,
    train_if_missing: bool = True,
    seed: int = 0,
    epochs: int = 6,
    num_train: int = 6000,
    pretrained: bool = True,
) -> ModelBundle:
    """The synthetic-shapes CNN.

    ``weights``: a checkpoint file ``{"state_dict": ...}`` (as :mod:`salbench.models.training`
    writes) or a plain state dict; default: the shipped weights when the recipe (``seed``,
    ``epochs``, ``num_train``) is theirs, else the training cache, trained on first use when
    ``train_if_missing``. ``pretrained=False``: random init (cross-checks, timing).
    """
    from salbench.datasets.synthetic import CLASS_NAMES

    recipe = SyntheticTraining(seed=seed, epochs=epochs, num_train=num_train)
    module = SyntheticCNN(num_classes=len(CLASS_NAMES), width=recipe.width)
    info: Dict[str, Any] = {"pretrained": pretrained}
    if pretrained:
        if weights:
            path, source = Path(weights).expanduser(), "file"
            if not path.is_file():
                raise FileNotFoundError(f"synthetic_cnn weights not found at {path} (model.weights)")
        elif shipped_recipe() == recipe:
            path, source = SHIPPED_WEIGHTS, "shipped"
        else:
            path, source = cache_dir() / f"synthetic_cnn-{recipe.key()}.pt", "cache"
            if not path.exists():
                if not train_if_missing:
                    raise FileNotFoundError(
                        f"synthetic_cnn weights for the recipe {asdict(recipe)} not found at {path}; "
                        "set model.train_if_missing=true to train them (about 2 min on 2 cores) or pass "
                        "model.weights=PATH"
                    )
                from salbench.models.training import train_synthetic_cnn

                train_synthetic_cnn(recipe, path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        module.load_state_dict(state_dict)
        info.update(weights=str(path), weights_source=source, weights_sha256=file_sha256(path),
                    val_accuracy=checkpoint.get("val_accuracy") if isinstance(checkpoint, dict) else None,
                    recipe=asdict(recipe))
    return ModelBundle(
        name="synthetic_cnn",
        module=module,
        input_size=(recipe.image_size, recipe.image_size),
        mean=MEAN,
        std=STD,
        class_names=list(CLASS_NAMES),
        target_layer="features",
        info=info,
    )
