"""Registries by name: methods, models, datasets and metrics.

Each registry maps a name to an entrypoint (a class or factory function). Registration is
explicit, by a decorator in the component's own module (``@register_method("gradcam")``), so a
component is one module (plus its YAML in ``conf/<group>/``) and nothing else lists it: a
registry with a ``package`` imports that package's modules the first time a name is looked up
or listed. Listing globs (``list("*cam*")``); an unknown name raises :class:`UnknownNameError`,
which lists the close matches and every choice (and the modules that failed to import).

Plugins (:mod:`salbench.harness.plugins`) register into the same tables: the first lookup of a
package registry also loads the installed ``salbench.plugins`` entry points.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import pkgutil
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple


_REGISTERING_MODULES: set = set()


def registering_modules() -> frozenset:
    """The modules whose code registered a component (salbench's own and the plugins')."""
    return frozenset(_REGISTERING_MODULES - {""})


class OptionError(TypeError, ValueError):
    """An option a component does not take (a TypeError, as Python's own for an unexpected
    keyword, and a ValueError, as every other config error)."""


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches and choices
    (``listing``: a sentence said instead of the choices, e.g. for thousands of them)."""

    def __init__(self, kind: str, name: str, choices: Iterable[str], listing: Optional[str] = None):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        close = difflib.get_close_matches(str(name), self.choices, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = listing or f"Valid choices: {', '.join(self.choices) or '(none)'}"
        super().__init__(f"unknown {kind} {name!r}.{hint} {listing}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class Registry:
    """A name -> entrypoint table with glob listing and close-match errors.

    ``package``: the package whose modules register their entries (imported on the first
    lookup; a module whose import fails is reported with the unknown-name error). ``lazy`` (and
    :meth:`register_lazy`) maps names to ``"module:attribute"`` strings imported on first use.
    Optional heavy dependencies (timm, the EfficientNet weights) are imported inside the
    entrypoints, not by their modules.
    """

    def __init__(self, kind: str, package: Optional[str] = None, lazy: Optional[Dict[str, str]] = None,
                 check: Optional[Callable[[str, Any], None]] = None):
        self.kind, self.package, self.check = kind, package, check
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._lazy: Dict[str, str] = dict(lazy or {})
        self._discovered = package is None
        self.failed: Dict[str, str] = {}  # module -> why its import failed

    def _discover(self) -> None:
        """Import every public module of ``package`` once (their decorators register entries)."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__, f"{self.package}."):
            if info.name.rsplit(".", 1)[1].startswith("_"):
                continue
            try:
                importlib.import_module(info.name)
            except ImportError as error:  # an optional dependency missing: said with unknown names
                self.failed[info.name] = f"{type(error).__name__}: {error}"
        from salbench.harness.plugins import load_entry_points

        load_entry_points()  # installed plugins register into the same tables

    def register(self, name: Optional[str] = None) -> Callable[[Callable], Callable]:
        """Decorator: register a class or factory under ``name`` (default: its ``__name__``);
        the registry's ``check(name, entry)`` rejects an entry of the wrong kind (a TypeError)."""

        def decorator(entry: Callable) -> Callable:
            key = name or getattr(entry, "__name__", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"register_{self.kind}: give a name, e.g. @register_{self.kind}(\"my_{self.kind}\")")
            if self.check is not None:
                self.check(key, entry)
            if key in self._entries and self._entries[key] is not entry:
                first = self._entries[key]
                raise ValueError(f"{self.kind} {key!r} is registered twice: by {_where(first)} and by {_where(entry)} "
                                 "(a plugin must choose a name salbench does not use)")
            self._entries[key] = entry
            self._lazy.pop(key, None)
            _REGISTERING_MODULES.add(getattr(entry, "__module__", None) or "")
            return entry

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported on first :meth:`get`."""
        if name not in self._entries:
            self._lazy[name] = target

    def names(self) -> List[str]:
        self._discover()
        return sorted(set(self._entries) | set(self._lazy))

    def list(self, pattern: str = "*") -> List[str]:
        """Registered names matching the glob ``pattern``."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries or name in self._lazy

    def get(self, name: str) -> Callable[..., Any]:
        self._discover()
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module_name, attribute = self._lazy[name].split(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries.setdefault(name, entry)
            return self._entries[name]
        from salbench.harness.plugins import failed_plugins

        failed = "".join(f" ({module} failed to import: {why})" for module, why in
                         {**self.failed, **failed_plugins()}.items())
        raise UnknownNameError(self.kind, name, self.names(), listing=None if not failed else
                               f"Valid choices: {', '.join(self.names())}.{failed}")

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """Build ``name`` with ``options``; ``None`` options are dropped so defaults apply. An
        option the entry does not take is a TypeError naming the valid ones."""
        entry = self.get(name)
        check_options(f"{self.kind} {name!r}", entry, options, positional=len(args))
        return entry(*args, **{k: v for k, v in options.items() if v is not None})


def _where(entry: Any) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__name__)}"


def entry_parameters(entry: Callable, skip: Tuple[str, ...] = ("self", "model")) -> Dict[str, inspect.Parameter]:
    """Keyword parameters of ``entry`` (a class: its ``__init__`` and, through ``**kwargs``, its
    bases'), without ``skip`` (``self`` and a method's ``model``) and variadics, with resolved
    annotations."""
    classes = inspect.getmro(entry) if inspect.isclass(entry) else (entry,)
    params: Dict[str, inspect.Parameter] = {}
    for owner in classes:
        function = owner.__init__ if inspect.isclass(owner) else owner
        if inspect.isclass(owner) and "__init__" not in vars(owner):
            continue
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # unresolvable forward references: fall back to Any
            hints = {}
        signature = inspect.signature(function)
        for name, param in signature.parameters.items():
            if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            params.setdefault(name, param.replace(annotation=hints.get(name, param.annotation)))
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break  # no **kwargs: the bases' options are not accepted
    return params


def takes_any_option(entry: Callable) -> bool:
    """Whether ``entry`` (or the last of its bases that :func:`entry_parameters` reads) takes
    ``**kwargs``, so that no option name can be checked."""
    classes = inspect.getmro(entry) if inspect.isclass(entry) else (entry,)
    for owner in classes:
        if inspect.isclass(owner) and "__init__" not in vars(owner):
            continue
        function = owner.__init__ if inspect.isclass(owner) else owner
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values()):
            return False
        if owner is object:
            break
    return True


def check_options(what: str, entry: Callable, options: Dict[str, Any], positional: int = 0) -> None:
    """A TypeError naming ``what``, the first unknown option and the valid ones (``positional``:
    how many arguments are given by position, e.g. a method's model)."""
    if takes_any_option(entry):
        return
    valid = list(entry_parameters(entry, skip=("self", "model") if positional else ("self",)))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise OptionError(f"{what} has no option {unknown[0]!r}; valid options: {', '.join(valid) or '(none)'}")
