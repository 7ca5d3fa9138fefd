"""timm classifiers by ``arch`` name (optional extra ``timm``): pretrained weights from timm's caches
(fetched by timm's own download when missing and the machine is online) or your own checkpoint with
any number of classes (``num_classes``, ``weights``: :mod:`salbench.models.weights`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from salbench.harness.registry import UnknownNameError
from salbench.models import register_model
from salbench.models.bundle import ModelBundle, class_names_from, imagenet_class_names, traced_target_layer
from salbench.models.weights import download_allowed, load_weights


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


@register_model("timm")
def timm_model(
    arch: str = "resnet50",
    pretrained: bool = True,
    weights: Optional[str] = None,
    target_layer: Optional[str] = None,
    num_classes: Optional[int] = None,
    class_names: Optional[Any] = None,
    state_dict_key: Optional[str] = None,
    download: bool = True,
) -> ModelBundle:
    """A timm classifier by ``arch`` name, optionally with a pretrained tag ("resnet18.a1_in1k";
    optional extra: ``pip install salbench[timm]``).

    Weights: ``weights`` (a state dict in timm's layout, a training checkpoint, a DataParallel
    dict or a ``.safetensors`` file, e.g. the ``model.safetensors`` of the arch's hub repo; loaded
    strictly by :func:`salbench.models.weights.load_weights`), else timm's local caches (the
    Hugging Face hub cache, then the torch hub cache); not cached and online (``download``),
    timm's own download fetches them into its cache; offline, a FileNotFoundError names where
    the file is expected. ``pretrained=False``: random init. ``num_classes``: the classifier's
    class count (default: the pretrained config's); another count needs your checkpoint.
    ``class_names``: a list or a text file. Input size, mean/std and crop come from timm's
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
    if num_classes is not None and int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    info: Dict[str, Any] = {"pretrained": pretrained, "architecture": arch}
    extra = {} if num_classes is None else {"num_classes": int(num_classes)}
    if pretrained and weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"timm {arch} weights not found at {path}")
        module = timm.create_model(arch, pretrained=False, **extra)
        load_weights(module, path, state_dict_key=state_dict_key, num_classes=int(module.num_classes),
                     what=f"timm {arch} with {module.num_classes} classes")
        info["weights"] = str(path)
    elif pretrained:
        cfg = _timm_pretrained_cfg(timm, arch)
        if num_classes is not None and int(num_classes) != cfg.num_classes:
            raise ValueError(f"timm {arch}'s pretrained weights have {cfg.num_classes} classes; with "
                             f"num_classes={num_classes} give your checkpoint (model.weights=FILE) or pretrained=false")
        path = _cached_or_downloaded(timm, arch, cfg, download)
        # timm's own loader (its key filters, strict) reads exactly this file: "file" outranks
        # the hub and the URL in timm's source resolution, so no request is made.
        module = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path), "source": None})
        info["weights"] = str(path)
    else:
        module = timm.create_model(arch, pretrained=False, **extra)
    cfg_name = ".".join(str(module.pretrained_cfg[k]) for k in ("architecture", "tag") if module.pretrained_cfg.get(k))
    config = timm.data.resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    target_layer = target_layer or traced_target_layer(module, (height, width))
    classes = int(getattr(module, "num_classes", 1000))
    if num_classes is not None:
        info["num_classes"] = classes
    return ModelBundle(
        name=f"timm.{arch}",
        module=module,
        input_size=(height, width),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        class_names=class_names_from(class_names, classes, _timm_class_names(timm, module, classes), f"timm {arch}"),
        target_layer=target_layer,
        # the timm config that gave input size, mean/std and crop (e.g. resnet18.a1_in1k)
        info={**info, "pretrained_cfg": cfg_name, "crop_pct": config.get("crop_pct"), "interpolation": config.get("interpolation")},
    )


def _cached_or_downloaded(timm: Any, arch: str, cfg: Any, download: bool) -> Path:
    """timm's cached weights file of ``cfg``; when absent and the machine is online, fetched
    first by timm's own download (``timm.create_model(arch, pretrained=True)``: the Hugging Face
    hub, else the URL, into timm's caches)."""
    import os

    path, searched = _timm_cached_weights(cfg)
    if path is not None:
        return path
    source = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hf_hub_id else (cfg.url or "")
    why = "offline or model.download=false: nothing was fetched"
    if download_allowed(source, download):
        try:
            timm.create_model(arch, pretrained=True)
        except Exception as error:  # network or disk failures: the message below says where to put it
            why = f"the download failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        path, searched = _timm_cached_weights(cfg)
        if path is not None:
            return path
    raise FileNotFoundError(
        f"pretrained weights for timm {arch} ({cfg.architecture}.{cfg.tag}) are not cached locally ({why}); "
        f"looked in: {'; '.join(searched)}. Pass weights=PATH (e.g. the repo's model.safetensors) "
        "or pretrained=false for a randomly initialized model."
    )
