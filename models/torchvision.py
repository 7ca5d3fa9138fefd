"""torchvision classifiers by ``arch`` name: ImageNet weights (torchvision's files, fetched by
torchvision's own download when the machine is online and they are not cached) or your own
checkpoint with any number of classes (``num_classes``, ``weights``: :mod:`salbench.models.weights`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from salbench.harness.registry import UnknownNameError
from salbench.models import register_model
from salbench.models.bundle import ModelBundle, class_names_from, traced_target_layer
from salbench.models.weights import download_allowed, load_weights


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
    num_classes: Optional[int] = None,
    class_names: Optional[Any] = None,
    state_dict_key: Optional[str] = None,
    download: bool = True,
) -> ModelBundle:
    """A torchvision classifier by ``arch`` name.

    Weights: ``weights`` (a state dict, a training checkpoint, a DataParallel dict or a
    ``.safetensors`` file: :func:`salbench.models.weights.load_weights`, strictly; ``state_dict_key``
    names the checkpoint's entry), else torchvision's file for ``weights_tag`` in the torch hub
    cache ``$TORCH_HOME/hub/checkpoints``; not there and online (``download``), torchvision's own
    download fetches it (hash checked) into that cache; offline, a FileNotFoundError names the
    file and the folder. ``pretrained=False``: random init (cross-checks, timing).

    ``num_classes``: the classifier's class count (default: the tag's, 1000); another count needs
    your checkpoint (``weights``). ``class_names``: a list or a text file (one name a line);
    default the tag's names for its class count, else ``"0"`` .. ``"K-1"``. Input size and
    mean/std come from the tag's preprocessing (the crop size and normalization of ImageNet
    training).
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
    categories = list(meta["categories"])
    classes = int(num_classes) if num_classes is not None else len(categories)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    module = get_model(arch, weights=None, num_classes=classes)
    info: Dict[str, Any] = {"pretrained": pretrained, "architecture": arch, "weights_tag": tag.name, "num_classes": classes}
    if pretrained:
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"torchvision {arch} weights not found at {path}")
        else:
            if classes != len(categories):
                raise ValueError(f"torchvision {arch}'s {tag.name} weights have {len(categories)} classes; with "
                                 f"num_classes={classes} give your checkpoint (model.weights=FILE) or pretrained=false")
            path = _hub_weights(arch, tag, download)
        load_weights(module, path, state_dict_key=state_dict_key, what=f"torchvision {arch} with {classes} classes",
                     num_classes=classes, remap=_remap_densenet_keys if arch.startswith("densenet") else None)
        info["weights"] = str(path)
    crop = preprocess.crop_size[0]
    target_layer = target_layer or _family_target_layer(arch) or traced_target_layer(module, (crop, crop))
    names = class_names_from(class_names, classes, categories if classes == len(categories) else None,
                             f"torchvision {arch}")
    return ModelBundle(
        name=f"torchvision.{arch}",
        module=module,
        input_size=(crop, crop),
        mean=tuple(preprocess.mean),
        std=tuple(preprocess.std),
        class_names=names,
        target_layer=target_layer,
        info={**info, "resize_size": list(preprocess.resize_size)},
    )


def _hub_weights(arch: str, tag: Any, download: bool) -> Path:
    """torchvision's file of ``tag`` in the torch hub cache, fetched by torchvision's download
    (``WeightsEnum.get_state_dict``, hash checked) when absent and the machine is online."""
    file_name = Path(tag.url).name
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / file_name
    if path.is_file():
        return path
    why = "offline or model.download=false: nothing was fetched"
    if download_allowed(tag.url, download):
        try:
            tag.get_state_dict(progress=True, check_hash=True)  # writes hub/checkpoints/<file_name>
        except Exception as error:  # network, disk or hash failures: the message below says where to put it
            why = f"the download failed: {type(error).__name__}: {error}"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"pretrained weights for torchvision {arch} ({tag.name}) not found: expected {path} ({why}). "
        f"Put {file_name} (from {tag.url}) into {hub} (the torch hub cache; set $TORCH_HOME to move it), "
        "or pass weights=PATH; pretrained=false gives a randomly initialized model."
    )
