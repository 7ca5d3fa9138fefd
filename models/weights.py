"""Weights files of any origin into a model, strictly, with errors that say what does not fit.

:func:`load_weights` reads a file (:func:`read_state_dict`) and loads it with
``load_state_dict(strict=True)`` after checking keys and shapes itself, so a mismatch is one
clear error: the missing and unexpected keys and every shape mismatch
("fc.weight: checkpoint [5, 512], model [10, 512]"), with ``set model.num_classes=5`` when the
classifier's class count is what differs.

A weights file may be

* a state dict (``torch.save(model.state_dict())``), or a ``.safetensors`` file;
* a training checkpoint: a dict whose state dict is under ``state_dict``, ``model``,
  ``model_state_dict`` or ``net`` (tried in this order), or under ``state_dict_key`` (dotted for
  nested dicts: ``ema.model``);
* a DataParallel / DistributedDataParallel state dict (every key prefixed ``module.``), or one of
  a ``torch.compile``d model (``_orig_mod.``): the prefix is removed.

Files are read with ``torch.load(weights_only=True)`` (tensors and plain data only: a file that
pickles Python objects is refused with the reason). Downloads of published weights go through
the libraries' own mechanisms (torchvision's, timm's); :func:`download_allowed` says whether
to try (``model.download=false`` or ``SALBENCH_OFFLINE=1`` never do; an offline machine is
detected at once, before any request).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")


class WeightsMismatchError(ValueError):
    """A weights file whose keys or shapes do not fit the model."""


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def read_weights_file(path: Path) -> Any:
    """The object stored in ``path``: ``.safetensors`` through safetensors, anything else
    through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal or a corrupt file
        raise ValueError(f"cannot read weights {path} with torch.load(weights_only=True): {type(error).__name__}: "
                         f"{str(error).splitlines()[0][:300]} (save the state dict itself: "
                         "torch.save(model.state_dict(), FILE))") from None


def state_dict_of(stored: Any, path: Path, state_dict_key: Optional[str] = None) -> Dict[str, Tensor]:
    """The state dict inside what a weights file holds (module docstring), prefixes removed."""
    found = stored
    if state_dict_key:
        for part in state_dict_key.split("."):
            if not isinstance(found, dict) or part not in found:
                keys = list(found) if isinstance(found, dict) else []
                raise ValueError(f"{path} has no {state_dict_key!r} (state_dict_key); its top-level keys: "
                                 f"{', '.join(map(str, keys[:20])) or '(none: not a dict)'}")
            found = found[part]
    elif not _is_state_dict(found) and isinstance(found, dict):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(found.get(key)):
                found = found[key]
                break
    if not _is_state_dict(found):
        keys = list(stored) if isinstance(stored, dict) else []
        raise ValueError(f"{path} holds no state dict (a dict of tensors) at the top level or under "
                         f"{', '.join(CHECKPOINT_KEYS)}; its top-level keys: {', '.join(map(str, keys[:20])) or '(none)'}; "
                         "name the right one with model.state_dict_key=KEY")
    return strip_prefixes(found)


def strip_prefixes(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Remove a ``module.`` (DataParallel / DDP) or ``_orig_mod.`` (torch.compile) prefix that
    every key carries (repeatedly: a compiled DDP model has both)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state_dict and all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def mismatches(module: nn.Module, state_dict: Dict[str, Tensor]) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, "key: checkpoint [..], model [..]" shape mismatches)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {list(state_dict[k].shape)}, model {list(v.shape)}"
              for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    return missing, unexpected, shapes


def _class_count_hint(module: nn.Module, state_dict: Dict[str, Tensor], num_classes: Optional[int]) -> str:
    """``; set model.num_classes=K`` when the mismatching tensors are the classifier's (their
    first dimension is the model's class count, the checkpoint's is K)."""
    if num_classes is None:
        return ""
    expected = module.state_dict()
    counts = {int(state_dict[k].shape[0]) for k, v in expected.items()
              if k in state_dict and state_dict[k].shape != v.shape and v.ndim >= 1 and v.shape[0] == num_classes
              and state_dict[k].ndim == v.ndim and state_dict[k].shape[1:] == v.shape[1:]}
    return f"; set model.num_classes={counts.pop()}" if len(counts) == 1 else ""


def load_weights(module: nn.Module, path: Path, *, state_dict_key: Optional[str] = None, what: str = "the model",
                 num_classes: Optional[int] = None, remap: Any = None) -> Dict[str, Tensor]:
    """Load the weights file ``path`` into ``module`` strictly (module docstring); returns the
    state dict loaded. ``remap``: a function applied to the state dict first (e.g. the
    DenseNet key names); ``num_classes``: the model's class count, for the hint."""
    path = Path(path).expanduser()
    state_dict = state_dict_of(read_weights_file(path), path, state_dict_key)
    if remap is not None:
        state_dict = remap(state_dict)
    missing, unexpected, shapes = mismatches(module, state_dict)
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:8])}{'; ...' if len(shapes) > 8 else ''}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}"
                         f"{', ...' if len(unexpected) > 8 else ''}")
        raise WeightsMismatchError(f"weights {path} do not fit {what}: {'. '.join(parts)}"
                                   f"{_class_count_hint(module, state_dict, num_classes)}")
    module.load_state_dict(state_dict, strict=True)
    return state_dict


# --------------------------------------------------------------------------- downloads
def download_allowed(url: str, download: bool = True, timeout: float = 3.0) -> bool:
    """Whether to fetch ``url``: not with ``download=False`` or ``SALBENCH_OFFLINE=1`` (or
    ``HF_HUB_OFFLINE=1``); with a proxy configured, yes (the proxy decides); otherwise when the
    host answers a TCP connection within ``timeout`` seconds (an offline machine fails at once,
    with no request made)."""
    if not download or os.environ.get("SALBENCH_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
