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


class SelectOutput(nn.Module):
    """Wraps a module whose forward returns a tuple, list or dict: returns its item ``key`` (the
    logits [B, K]); the wrapped module is ``module`` (its layers are ``module.<name>``)."""

    def __init__(self, module: nn.Module, key: Any):
        super().__init__()
        self.module, self.key = module, key

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        try:
            picked = out[self.key] if not isinstance(out, (tuple, list)) else out[int(self.key)]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"model.output_key={self.key!r} is not an item of the model's {describe_output(out)}") from None
        if not isinstance(picked, Tensor):
            raise ValueError(f"model.output_key={self.key!r} picks a {type(picked).__name__}, not the logits tensor")
        return picked


def describe_output(out: Any) -> str:
    """A short description of a model's output, e.g. ``tuple of 2 (tensor [1, 1000], tensor [1, 1000])``."""
    def one(value: Any) -> str:
        return f"tensor {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__

    if isinstance(out, Tensor):
        return one(out)
    if isinstance(out, dict):
        return f"dict with keys {', '.join(repr(k) for k in list(out)[:8])} ({', '.join(one(v) for v in list(out.values())[:8])})"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)} ({', '.join(one(v) for v in out[:8])})"
    return type(out).__name__


def check_model_output(bundle: ModelBundle) -> None:
    """One forward pass of a zero image: the model must return logits [1, K] with K the bundle's
    class count; a tuple, list or dict output is an error naming its items and ``model.output_key``."""
    parameter = next(bundle.module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        out = bundle.module(torch.zeros(1, 3, *bundle.input_size, device=device))
    if isinstance(out, (tuple, list, dict)):
        raise ValueError(f"model {bundle.name!r} returns a {describe_output(out)}, not logits [B, K]; set "
                         f"model.output_key to the item that holds the logits (an index or a key)")
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise ValueError(f"model {bundle.name!r} returns {describe_output(out)}; need logits [B, K]")
    if out.shape[1] != bundle.num_classes:
        raise ValueError(f"model {bundle.name!r} returns {out.shape[1]} logits but names {bundle.num_classes} classes")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded with the scores: which weights were evaluated)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where trained weights are cached: ``$SALBENCH_CACHE`` or ``~/.cache/salbench``."""
    return Path(os.environ.get("SALBENCH_CACHE", Path.home() / ".cache" / "salbench"))


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in the standard order (torchvision's weights metadata,
    available offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def class_names_from(value: Any, num_classes: int, default: Optional[List[str]] = None,
                     what: str = "the model") -> List[str]:
    """The class names of a model with ``num_classes`` outputs: ``value`` a list of names or a
    text file (one name a line), else ``default``, else the indices ``"0"`` .. ``"K-1"``; a
    count that differs from ``num_classes`` is a ValueError."""
    if value is None:
        return list(default) if default is not None else [str(i) for i in range(num_classes)]
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"class names file not found: {path} (one class name a line)")
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    else:
        names = [str(v) for v in value]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {what}, which has {num_classes} classes")
    return names


def traced_target_layer(module: nn.Module, size: Tuple[int, int]) -> str:
    """The feature map feeding the global pooling, found by one traced forward at ``size``."""
    from salbench.methods.hooks import default_target_layer

    module.eval()
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return default_target_layer(module, torch.zeros(1, 3, *size, device=device))
