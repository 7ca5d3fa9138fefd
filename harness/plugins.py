"""Plugins: modules outside salbench that register methods, metrics, models and datasets.

Two ways to load one (docs/extending.md, "Plugins"):

* the config key ``plugins: [module, ...]``, e.g. ``salbench plugins=[my_lab.xai] method=[my_method]``
  (the command line loads them before Hydra composes, so their names are config options);
* the entry-point group ``salbench.plugins`` of an installed distribution, loaded automatically
  by the first registry lookup (``create_method``, ``list_metrics``, the command line)::

      [project.entry-points."salbench.plugins"]
      my_lab = "my_lab.xai"               # a module: imported
      other = "other_lab.plugin:register"  # a callable: called once, without arguments

A plugin module registers its components at import with the public decorators
(``salbench.register_method`` etc.). A module named in ``plugins`` that cannot be imported is a
:class:`PluginError` (a user error: one line, exit status 2); an installed entry point that
fails is reported once on stderr and with every unknown-name error, so one broken package does
not stop salbench. The loaded plugins are recorded in run.json (``plugins``), and checkpoints
may hold objects of their classes (:func:`salbench.harness.store.to_plain`).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

ENTRY_POINT_GROUP = "salbench.plugins"

# module -> what loaded it ({"source": "plugins" | "entry point NAME", "distribution", "version"})
_LOADED: Dict[str, Dict[str, Any]] = {}
# entry point or module -> why it failed to load
_FAILED: Dict[str, str] = {}
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin named in the config that cannot be imported or fails while registering."""


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_entry_points() -> None:
    """Import every installed ``salbench.plugins`` entry point once (calling it when it names a
    callable); a failure is reported on stderr and kept for the unknown-name errors."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        label = f"entry point {point.name!r} ({point.value})"
        try:
            loaded = point.load()
            if callable(loaded) and not isinstance(loaded, type(sys)):
                loaded()
        except Exception as error:  # a broken installed package must not stop salbench
            _FAILED[label] = _describe(error)
            print(f"salbench: warning: plugin {label} failed to load ({_describe(error)}); "
                  "its components are unavailable", file=sys.stderr)
            continue
        dist = getattr(point, "dist", None)
        _LOADED.setdefault(point.module, {
            "source": f"entry point {point.name}",
            "distribution": getattr(dist, "name", None), "version": getattr(dist, "version", None)})


def load_plugins(modules: Optional[Iterable[str]] = None) -> List[str]:
    """Load the installed entry points and import ``modules`` (the config's ``plugins``);
    returns the modules imported. A module that cannot be imported, or that raises while
    registering (e.g. a method function of the wrong signature), is a :class:`PluginError`."""
    load_entry_points()
    names = [modules] if isinstance(modules, str) else list(modules or [])
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"plugins must list module names (e.g. plugins=[my_lab.xai]); got {name!r}")
        name = name.strip()
        if name in _LOADED:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and (name == error.name or name.startswith(error.name + ".")):
                raise PluginError(f"plugin {name!r} cannot be imported: no module named {error.name!r} "
                                  "(install it, or add its folder to PYTHONPATH)") from None
            raise PluginError(f"plugin {name!r} failed to import: {_describe(error)}") from error
        except Exception as error:
            raise PluginError(f"plugin {name!r} failed to import: {_describe(error)}") from error
        _LOADED[name] = {"source": "plugins", **_distribution_of(name)}
    return names


def _distribution_of(module: str) -> Dict[str, Optional[str]]:
    """The installed distribution that provides ``module``'s top-level package (None when it
    is not installed, e.g. a folder on PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    names = packages_distributions().get(module.split(".")[0]) or []
    if not names:
        return {"distribution": None, "version": None}
    try:
        return {"distribution": names[0], "version": version(names[0])}
    except PackageNotFoundError:
        return {"distribution": names[0], "version": None}


def loaded_plugins() -> Dict[str, Dict[str, Any]]:
    """{module: {"source", "distribution", "version"}} of every plugin loaded (run.json records it)."""
    return {name: dict(info) for name, info in _LOADED.items()}


def failed_plugins() -> Dict[str, str]:
    """{entry point: why it failed to load}."""
    return dict(_FAILED)


def is_plugin_module(module: str) -> bool:
    """Whether ``module`` is a loaded plugin module or inside a loaded plugin package, or a
    module that registered a component (whose classes a checkpoint may then hold)."""
    from salbench.harness.registry import registering_modules

    if module in registering_modules():
        return True
    return any(module == name or module.startswith(name + ".") for name in _LOADED)


def plugins_in_overrides(overrides: Sequence[str]) -> List[str]:
    """The modules a command line's ``plugins=...`` overrides name (``plugins=[a,b]``,
    ``+plugins=a``; every value of a sweep), parsed as Hydra parses them."""
    wanted = [o for o in overrides if o.lstrip("+~").startswith("plugins=")]
    if not wanted:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    modules: List[str] = []
    for override in OverridesParser.create().parse_overrides(wanted):
        if override.is_delete():
            continue
        value = override.value()
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [value]
        for item in values:
            for name in (item if isinstance(item, (list, tuple)) else [item]):
                if name is not None and str(name) not in modules:
                    modules.append(str(name))
    return modules
