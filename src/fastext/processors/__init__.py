"""Processors: the built-ins and the registry that finds them by name."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from fastext.processors.base import Processor
from fastext.processors.brightness import Brightness

__all__ = ["Processor", "available", "create", "from_configuration"]

ENTRY_POINT_GROUP = "fastext.processors"
_BUILTINS: dict[str, type[Processor]] = {Brightness.name: Brightness}


def available() -> dict[str, type[Processor]]:
    """Built-ins plus those installed under the ``fastext.processors`` entry-point group."""
    return dict(_discover())


@lru_cache(maxsize=1)
def _discover() -> dict[str, type[Processor]]:
    # Scanning installed distributions takes milliseconds: once per process, not per session.
    found = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def create(name: str, params: dict[str, Any] | None = None) -> Processor:
    """A new processor instance; ValueError names an unknown processor or bad parameter."""
    registry = available()
    cls = registry.get(name)
    if cls is None:
        raise ValueError(f"unknown processor {name!r} (available: {', '.join(sorted(registry))})")
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise ValueError(f"processor {name!r}: {exc}") from None


def from_configuration(text: str, default: str) -> tuple[str, dict[str, Any]]:
    """Split a session's ``extension_configuration`` into (processor name, parameters).

    Empty text selects ``default`` with no parameters; otherwise the text must be a
    JSON object, whose optional ``"processor"`` key names the processor and whose
    other keys are its parameters.
    """
    if not text.strip():
        return default, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"extension_configuration is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ValueError("extension_configuration must be a JSON object")
    name = data.pop("processor", default)
    if not isinstance(name, str):
        raise ValueError("extension_configuration: \"processor\" must be a string")
    return name, data
