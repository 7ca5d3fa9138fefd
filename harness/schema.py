"""Typed config schemas.

* ``salbench_schema`` (in Hydra's ConfigStore): the top-level dataclass :class:`SalbenchConfig`
  (first in config.yaml's defaults), so a mistyped top-level key or a wrong type fails at
  compose time.
* one dataclass per registered method, model, dataset and metric (:func:`schema_for`), derived
  from its entrypoint's signature (so the schema can never drift from the code):
  :func:`validate_config` merges every selected option into its schema, so an unknown key or a
  wrong type is an error naming the key and the valid ones. They are built when needed, not
  stored in the ConfigStore (whose groups ``--help`` would list as if they were options).
* one config node per registered name without a packaged YAML (:func:`store_registered_options`:
  a plugin's components, in the layout the YAMLs use, defaults from the signature), so every
  registered name is an option of its group on the command line, in sweeps and in ``--help``.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from salbench.harness.allocator import check_malloc
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
    malloc: str = "retain"
    tf32: bool = False
    save_maps: Optional[str] = None
    plugins: List[str] = field(default_factory=list)


SAVE_MAPS = ("float16", "float32")


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


# options every entry of a group takes, handled by the group's create_* function (model) or
# the job (method: ``label``, the method's key in the scores)
COMMON_OPTIONS = {"model": ("output_key",), "method": ("label",)}


def _registries() -> Dict[str, Registry]:
    from salbench.datasets import DATASETS
    from salbench.methods import METHODS
    from salbench.metrics import METRICS
    from salbench.models import MODELS

    return {"method": METHODS, "model": MODELS, "dataset": DATASETS, "metric": METRICS}


def register_schemas() -> None:
    """Store the top-level schema in the ConfigStore (config.yaml's first default) and a config
    node for every registered name without a packaged YAML (:func:`store_registered_options`)."""
    ConfigStore.instance().store(name="salbench_schema", node=SalbenchConfig)
    store_registered_options()


def _plain_default(value: Any) -> Any:
    """A signature default as a config value (tuples as lists, paths as strings; anything a
    config cannot hold as None: the entry's own default then applies)."""
    import enum
    from pathlib import PurePath

    if value is inspect.Parameter.empty:
        return MISSING  # a required option: the config must give it
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_plain_default(v) for v in value]
        return items if all(v is None or isinstance(v, (*_PLAIN, list, dict)) for v in items) else None
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_default(v) for k, v in value.items()}
    return None


def config_node(kind: str, name: str, entry: Callable) -> Dict[str, Any]:
    """The config node of a registered entry, in the layout of the packaged YAMLs: a method or
    metric ``{name: {name: name, **defaults}}`` (the group holds several), a model or dataset
    ``{name: name, **defaults}``; defaults from the entry's signature (a required option is
    ``???``: a job without it fails naming it)."""
    node: Dict[str, Any] = {"name": name, **({"label": None} if kind == "method" else {})}
    node.update({pname: _plain_default(param.default) for pname, param in entry_parameters(entry).items()})
    return {name: node} if kind in ("method", "metric") else node


def packaged_options(kind: str) -> List[str]:
    """The options of group ``kind`` that have a YAML in the packaged config tree."""
    from pathlib import Path

    from salbench.harness.cli import config_dir

    return sorted(p.stem for p in (Path(config_dir()) / kind).glob("*.yaml"))


def store_registered_options() -> List[str]:
    """Store a config node (:func:`config_node`) in Hydra's ConfigStore for every registered
    method, metric, model and dataset that has no packaged YAML (a plugin's, or one registered
    from Python), in its group; returns ``group/name`` of each. A YAML of the same name in the
    search path (the package, ``--config-dir``) takes precedence over the stored node."""
    store = ConfigStore.instance()
    stored = []
    for kind, registry in _registries().items():
        packaged = set(packaged_options(kind))
        for name in registry.names():
            if name in packaged:
                continue
            try:
                entry = registry.get(name)
            except Exception:  # a lazy entry whose module fails to import: said when it is used
                continue
            store.store(group=kind, name=name, node=config_node(kind, name, entry), provider="salbench")
            stored.append(f"{kind}/{name}")
    return stored


def method_key(key: str, node: Any) -> str:
    """The key of a method in the job's scores: its ``label`` when set, else its config key
    (``method.captum.label=ig32`` names that instance ``ig32``)."""
    label = node.get("label") if hasattr(node, "get") else None
    return str(label) if label not in (None, "") else str(key)


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
    if cfg.get("save_maps") is not None and cfg.save_maps not in SAVE_MAPS:
        raise ValueError(f"unknown save_maps {cfg.save_maps!r}; valid: null, {', '.join(SAVE_MAPS)}")
    check_malloc(cfg.get("malloc", "retain"))
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ValueError(f"{len(missing)} option(s) need a value: {', '.join(missing)} (e.g. {missing[0]}=...)")
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
    labels: Dict[str, str] = {}
    for key, node in cfg.method.items():
        label = method_key(key, node)
        if not label or "/" in label or "\\" in label or label.startswith("."):
            raise ValueError(f"method.{key}.label={label!r}: a label names a folder of saved maps; no '/', '\\' "
                             "or leading '.'")
        if label in labels:
            raise ValueError(f"methods {labels[label]!r} and {key!r} are both labelled {label!r}; give each instance "
                             f"its own label (method.{key}.label=...)")
        labels[label] = key


def options_of(node: DictConfig, kind: Optional[str] = None) -> Dict[str, Any]:
    """A group node as plain keyword options for its factory (``name`` removed, and for
    ``kind="method"`` the job's ``label``)."""
    options = OmegaConf.to_container(node, resolve=True)
    assert isinstance(options, dict)
    options.pop("name", None)
    if kind == "method":
        options.pop("label", None)
    return options
