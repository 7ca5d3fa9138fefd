"""Registries by name: methods, models, datasets and metrics.

Each registry maps a name to an entrypoint (a class or factory function). Registration is
explicit (``@METHODS.register("gradcam")``) and cheap; listing globs (``list("*cam*")``); an
unknown name raises :class:`UnknownNameError`, which lists the close matches and every choice.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
from typing import Any, Callable, Dict, Iterable, List, Optional


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

    ``lazy`` maps names to ``"module:attribute"`` strings imported on first use, so optional
    heavy dependencies (timm, efficientnet weights) are imported only when asked for.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._lazy: Dict[str, str] = {}

    def register(self, name: Optional[str] = None) -> Callable[[Callable], Callable]:
        def decorator(entry: Callable) -> Callable:
            key = name or entry.__name__
            if key in self._entries and self._entries[key] is not entry:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = entry
            self._lazy.pop(key, None)
            return entry

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported on first :meth:`get`."""
        if name not in self._entries:
            self._lazy[name] = target

    def names(self) -> List[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def list(self, pattern: str = "*") -> List[str]:
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._lazy

    def get(self, name: str) -> Callable[..., Any]:
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module_name, attribute = self._lazy[name].split(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries.setdefault(name, entry)
            return self._entries[name]
        raise UnknownNameError(self.kind, name, self.names())

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """Build ``name`` with ``options``; ``None`` options are dropped so defaults apply."""
        entry = self.get(name)
        return entry(*args, **{k: v for k, v in options.items() if v is not None})
