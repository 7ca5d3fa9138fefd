"""Typed config schemas.

* ``salbench_schema`` (in Hydra's ConfigStore): the top-level dataclass :class:`SalbenchConfig`
  (first in config.yaml's defaults), so a mistyped top-level key or a wrong type fails at
  compose time.
* one dataclass per registered method, model, dataset and metric (:func:`schema_for`), derived
  from its entrypoint's signature (so the schema can never drift from the code):
  :func:`validate_config` merges every selected option into its schema, so an unknown key or a
  wrong type is an error naming the key and the valid ones. They are built when needed, not
  stored in the ConfigStore (whose groups ``--help`` would list as if they were options).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from salbench.harness.registry import Registry, entry_parameters

TARGETS = ("label", "predicted")


@dataclass
class SalbenchConfig:
    """Top-level schema. Group nodes (model, dataset, method, metric) are validated separately
    against the schemas derived from their entrypoints (:func:`validate_config`)."""

    model: Any = MISSING
    dataset: Any = MISSING
    method: Dict[str, Any] = field(default_factory=dict)
    metric: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    num_workers: int = 0
    target: str = "label"
    progress: bool = True
    gallery_images: int = 8
    viewer_images: int = 32
    flush_every: int = 256
    resume: bool = True
    shared_passes: bool = True
    forward_chunk: int = 32
    channels_last: bool = False
    tf32: bool = False


_PLAIN = (int, float, bool, str)


def _field_type(annotation: Any) -> Any:
    """Map an entrypoint annotation to one OmegaConf accepts (Any when it cannot)."""
    if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
        return Any
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _PLAIN:
        return annotation
    if origin is typing.Union and len(args) == 2 and type(None) in args:
        inner = _field_type(next(a for a in args if a is not type(None)))
        return Any if inner is Any else Optional[inner]
    if origin in (list, tuple, List, Tuple) and args and all(a in _PLAIN for a in args if a is not Ellipsis):
        return List[args[0]]
    return Any


def schema_for(kind: str, name: str, entry: Callable) -> Type:
    """A dataclass with a ``name`` field and one field per keyword option of ``entry``."""
    fields: List[Tuple[str, Any, Any]] = [("name", str, field(default=name))]
    for pname, param in entry_parameters(entry).items():
        ftype = _field_type(param.annotation)
        default = None if param.default is inspect.Parameter.empty else param.default
        if default is not None and ftype is not Any and not isinstance(default, _PLAIN):
            ftype = Any
        if ftype is not Any and typing.get_origin(ftype) is not typing.Union:
            ftype = Optional[ftype]  # null in YAML means "the entry's default / derived value"
        if isinstance(default, (list, tuple)):
            fields.append((pname, ftype, field(default_factory=lambda d=default: list(d))))
        else:
            fields.append((pname, ftype, field(default=default)))
    fields += [(key, Any, field(default=None)) for key in COMMON_OPTIONS.get(kind, ()) if key not in dict(
        (f[0], f) for f in fields)]
    cls_name = "".join(part.capitalize() for part in f"{name}_{kind}_config".split("_"))
    return dataclasses.make_dataclass(cls_name, fields)


# options every entry of a group takes, handled by the group's create_* function
COMMON_OPTIONS = {"model": ("output_key",)}


def _registries() -> Dict[str, Registry]:
    from salbench.datasets import DATASETS
    from salbench.methods import METHODS
    from salbench.metrics import METRICS
    from salbench.models import MODELS

    return {"method": METHODS, "model": MODELS, "dataset": DATASETS, "metric": METRICS}


def register_schemas() -> None:
    """Store the top-level schema in the ConfigStore (config.yaml's first default)."""
    ConfigStore.instance().store(name="salbench_schema", node=SalbenchConfig)


def _check_node(kind: str, node: DictConfig, registry: Registry) -> None:
    name = node.get("name")
    if name is None:
        raise ValueError(f"{kind} config {OmegaConf.to_container(node)} has no 'name' (e.g. {kind}=[option])")
    schema = OmegaConf.structured(schema_for(kind, name, registry.get(name)))
    try:
        OmegaConf.merge(schema, node)
    except Exception as error:  # OmegaConf's ConfigKeyError / ValidationError
        valid = [k for k in schema.keys() if k != "name"]
        raise ValueError(f"invalid {kind} config {name!r}: {error}\nvalid options: {', '.join(valid)}") from None


def drop_unselected_settings(cfg: DictConfig) -> List[str]:
    """Remove the settings an experiment gives to methods or metrics that are not selected (a
    node without ``name`` under ``method`` / ``metric``, e.g. ``experiment=demo metric=[cam_paper]``
    leaves the demo's ``metric.rise.n_steps``); returns one note per removed node."""
    notes = []
    for kind in ("method", "metric"):
        group = cfg.get(kind)
        if not isinstance(group, DictConfig):
            continue
        for key in [k for k, node in group.items() if isinstance(node, DictConfig) and node.get("name") is None]:
            notes.append(f"{kind}.{key} settings {OmegaConf.to_container(group[key])} ignored: "
                         f"{key!r} is not selected ({kind}=[...])")
            with open_dict(cfg):
                del group[key]
    return notes


def validate_config(cfg: DictConfig) -> None:
    """Check every selected option against its schema and the top-level choices."""
    registries = _registries()
    known = [f.name for f in dataclasses.fields(SalbenchConfig)]
    unknown = [key for key in cfg if key not in known and key != "hydra"]
    if unknown:  # `+batch_sise=3` adds a key that Hydra's struct check lets through
        import difflib

        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ValueError(f"unknown config key {unknown[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                         f"valid top-level keys: {', '.join(known)}")
    if cfg.target not in TARGETS:
        raise ValueError(f"unknown target {cfg.target!r}; valid: {', '.join(TARGETS)}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {cfg.batch_size}")
    if cfg.get("forward_chunk", 1) < 1:
        raise ValueError(f"forward_chunk must be >= 1; got {cfg.forward_chunk}")
    for key in ("gallery_images", "viewer_images"):
        if cfg.get(key, 0) < 0:
            raise ValueError(f"{key} must be >= 0 (0: none); got {cfg[key]}")
    if not cfg.metric:
        raise ValueError("no metric selected; e.g. metric=[cam_paper]")
    _check_node("model", cfg.model, registries["model"])
    _check_node("dataset", cfg.dataset, registries["dataset"])
    if not cfg.method:
        raise ValueError("no method selected; e.g. method=[gradcam]")
    for kind in ("method", "metric"):
        for key, node in cfg[kind].items():
            if not isinstance(node, DictConfig):
                raise ValueError(f"{kind}.{key} must be a mapping with a 'name'; got {node!r}")
            _check_node(kind, node, registries[kind])


def options_of(node: DictConfig) -> Dict[str, Any]:
    """A group node as plain keyword options for its factory (``name`` removed)."""
    options = OmegaConf.to_container(node, resolve=True)
    assert isinstance(options, dict)
    options.pop("name", None)
    return options
