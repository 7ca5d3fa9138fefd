"""torchvision classifiers by ``arch`` name, with weights from local files only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from salbench.harness.registry import UnknownNameError
from salbench.models import register_model
from salbench.models.bundle import ModelBundle, traced_target_layer


# Feature map that feeds the global pooling, per torchvision family (prefix of the arch name).
TORCHVISION_TARGET_LAYERS = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4",
    "vgg": "features", "alexnet": "features", "densenet": "features", "squeezenet": "features",
    "mobilenet": "features", "efficientnet": "features", "convnext": "features",
    "mnasnet": "layers", "regnet": "trunk_output", "shufflenet": "conv5",
    "googlenet": "inception5b", "inception": "Mixed_7c",
}


def _family_target_layer(arch: str) -> Optional[str]:
    for prefix in sorted(TORCHVISION_TARGET_LAYERS, key=len, reverse=True):
        if arch.startswith(prefix):
            return TORCHVISION_TARGET_LAYERS[prefix]
    return None


def _remap_densenet_keys(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The published DenseNet files name layers ``norm.1``; torchvision's modules ``norm1``."""
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state_dict.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


@register_model("torchvision")
def torchvision_model(
    arch: str = "resnet50",
    pretrained: bool = True,
    weights: Optional[str] = None,
    weights_tag: str = "IMAGENET1K_V1",
    target_layer: Optional[str] = None,
) -> ModelBundle:
    """A torchvision classifier by ``arch`` name.

    Weights: ``weights`` (a state-dict file), else the torch hub cache
    ``$TORCH_HOME/hub/checkpoints/<torchvision's file name for weights_tag>``. Nothing is ever
    downloaded: a missing file is a FileNotFoundError naming it. ``pretrained=False``: random init
    (cross-checks, timing). Input size, mean/std and class names come from the weights' metadata.
    """
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models as tv_models

    if arch not in tv_models(module=torchvision.models):
        raise UnknownNameError("torchvision classification model", arch, tv_models(module=torchvision.models))
    available = get_model_weights(arch)
    try:
        tag = available[weights_tag] if weights_tag != "DEFAULT" else available.DEFAULT
    except KeyError:
        raise ValueError(f"{arch} has no weights {weights_tag!r}; valid: {', '.join(w.name for w in available)}") from None
    meta, preprocess = tag.meta, tag.transforms()
    module = get_model(arch, weights=None, num_classes=len(meta["categories"]))
    info: Dict[str, Any] = {"pretrained": pretrained, "architecture": arch, "weights_tag": tag.name}
    if pretrained:
        file_name = Path(tag.url).name
        path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / file_name
        if not path.is_file():
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise FileNotFoundError(
                f"pretrained weights for torchvision {arch} ({tag.name}) not found: expected {path}. "
                f"Put {file_name} (from {tag.url}) into {hub} (the torch hub cache; set $TORCH_HOME to move it), "
                "or pass weights=PATH; pretrained=false gives a randomly initialized model."
            )
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if arch.startswith("densenet"):
            state_dict = _remap_densenet_keys(state_dict)
        module.load_state_dict(state_dict, strict=True)
        info["weights"] = str(path)
    crop = preprocess.crop_size[0]
    target_layer = target_layer or _family_target_layer(arch) or traced_target_layer(module, (crop, crop))
    return ModelBundle(
        name=f"torchvision.{arch}",
        module=module,
        input_size=(crop, crop),
        mean=tuple(preprocess.mean),
        std=tuple(preprocess.std),
        class_names=list(meta["categories"]),
        target_layer=target_layer,
        info={**info, "resize_size": list(preprocess.resize_size)},
    )
