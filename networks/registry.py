"""A small name -> builder registry shared by networks, losses, datasets and metrics.

Follows the segment-anything ``sam_model_registry`` idea (a dict is the registry) with the
validation that MONAI and timm do in their factories: unknown names get a ``difflib`` "did you
mean", unknown keyword arguments get the list of accepted ones. It lives in ``networks`` so that
``networks`` imports without the training library; ``segmentation.registry`` re-exports it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


class Registry:
    """Maps names to builders (classes or functions) with default keyword arguments.

    Args:
        kind: what the registry holds ("network", "loss", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}

    def register(self, name: str, obj: Callable[..., Any] | None = None, **defaults: Any):
        """Register ``obj`` (or decorate it) under ``name`` with ``defaults`` as preset keyword
        arguments."""

        def add(target: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} '{name}' is registered twice "
                    f"({self._entries[name][0]} and {target}); "
                    "give the second one a different name."
                )
            unknown = set(defaults) - set(self.accepted_kwargs(target))
            if unknown and not _takes_var_kwargs(target):
                raise TypeError(
                    f"defaults {sorted(unknown)} for {self.kind} '{name}' "
                    f"are not arguments of {target}"
                )
            self._entries[name] = (target, dict(defaults))
            return target

        return add if obj is None else add(obj)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        """Return ``(builder, defaults)`` for ``name`` or raise ``KeyError`` with a suggestion."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'.{hint} Registered: {', '.join(self.names())}."
            )
        return self._entries[name]

    @staticmethod
    def accepted_kwargs(target: Callable[..., Any]) -> list[str]:
        """Names of the keyword arguments ``target`` accepts (constructor for classes)."""
        sig = inspect.signature(target)
        return [
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]

    def check_kwargs(self, name: str, kwargs: dict[str, Any], bound: tuple[str, ...] = ()) -> None:
        """Raise ``TypeError`` naming unknown ``kwargs`` of ``name``; ``bound`` lists arguments the
        caller supplies itself (e.g. the image a transform is applied to)."""
        target, _ = self.get(name)
        if _takes_var_kwargs(target):
            return
        accepted = [a for a in self.accepted_kwargs(target) if a not in bound]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, accepted, n=1, cutoff=0.6)
                hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            raise TypeError(
                f"{self.kind} '{name}' got unknown argument(s) {', '.join(hints)}; "
                f"accepted: {', '.join(accepted) or 'none'}."
            )

    def resolve(self, spec: Any, bound: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
        """``"name"`` or ``{name: ..., **kwargs}`` -> ``(name, kwargs)``, checked like
        :meth:`build` (unknown name: ``KeyError``; unknown argument or bad spec: ``TypeError``)."""
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, Mapping) and "name" in spec:
            name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            raise TypeError(
                f"a {self.kind} is a name or a mapping with 'name', got {spec!r}; "
                f"registered: {', '.join(self.names())}."
            )
        self.check_kwargs(name, kwargs, bound)
        return name, kwargs

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build ``name`` with its defaults updated by ``kwargs``; unknown kwargs raise
        ``TypeError``."""
        target, defaults = self.get(name)
        self.check_kwargs(name, kwargs)
        return target(**{**defaults, **kwargs})


def _takes_var_kwargs(target: Callable[..., Any]) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


NETWORKS = Registry("network")
