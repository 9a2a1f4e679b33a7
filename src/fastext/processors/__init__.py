"""Processors: the public API, the built-ins and the registry that finds them by name.

A plug-in needs only this module: :class:`Processor`, and the contract's inference
messages it returns (re-exported here so that plug-ins do not import fastext's
private ``_proto`` package). See docs/processors.md.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from fastext._proto.inferencing_pb2 import (
    Attribute,
    Classification,
    Entity,
    Event,
    Inference,
    Motion,
    Rectangle,
    Tag,
    Text,
)
from fastext.models import repository
from fastext.processors.base import Processor
from fastext.processors.brightness import Brightness
from fastext.processors.model import ModelProcessor
from fastext.processors.motion import MotionDetector
from fastext.vision.frames import Frame

__all__ = [
    "Attribute",
    "Classification",
    "Entity",
    "Event",
    "Frame",
    "Inference",
    "Motion",
    "ModelProcessor",
    "Processor",
    "Rectangle",
    "Tag",
    "Text",
    "available",
    "create",
    "from_configuration",
]

log = logging.getLogger("fastext.processors")

ENTRY_POINT_GROUP = "fastext.processors"
_BUILTINS: dict[str, type[Processor]] = {
    Brightness.name: Brightness,
    MotionDetector.name: MotionDetector,
}


def available() -> dict[str, type[Processor]]:
    """Built-ins plus those installed under the ``fastext.processors`` entry-point group."""
    return dict(_discover()[0])


@lru_cache(maxsize=1)
def _discover() -> tuple[dict[str, type[Processor]], dict[str, str]]:
    """(name -> class, name -> why it could not be loaded), scanned once per process.

    A plug-in cannot shadow a built-in. One that fails to load is left out and the
    reason kept, so a broken package takes down only the sessions that ask for it.
    """
    found = dict(_BUILTINS)
    broken: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # an ImportError usually; any failure is the plug-in's
            broken[ep.name] = f"{ep.value} could not be loaded: {type(exc).__name__}: {exc}"
            log.error("processor %r: %s", ep.name, broken[ep.name])
            continue
        if not (isinstance(cls, type) and issubclass(cls, Processor)):
            broken[ep.name] = f"{ep.value} is not a fastext.processors.Processor subclass"
            log.error("processor %r: %s", ep.name, broken[ep.name])
            continue
        found[ep.name] = cls
    return found, broken


def builtin_names() -> list[str]:
    """The built-in processors' names (no model may take one)."""
    return sorted(_BUILTINS)


def create(name: str, params: dict[str, Any] | None = None) -> Processor:
    """A new processor instance for one session: a built-in, a model of this server's
    repository (:mod:`fastext.models.repository`), or an installed plug-in.

    Raises ValueError naming the problem: an unknown processor, a bad parameter, or
    any other failure of the processor's ``__init__`` (e.g. a plug-in's model file).
    """
    info = repository.get(name) if name not in _BUILTINS else None
    if info is not None:  # validates the parameters; builds nothing
        return ModelProcessor(info, **(params or {}))
    registry, broken = _discover()
    cls = registry.get(name)
    if cls is None and name in broken:
        raise ValueError(f"processor {name!r}: {broken[name]}")
    if cls is None:
        known = sorted({*registry, *repository.names()})
        raise ValueError(f"unknown processor {name!r} (available: {', '.join(known)})")
    try:
        processor = cls(**(params or {}))
        processor.check()
    except ValueError:
        raise
    except TypeError as exc:  # a missing or unexpected keyword argument, mostly
        raise ValueError(f"processor {name!r}: {exc}") from None
    except Exception as exc:  # a plug-in's own failure (its model file, its runtime)
        log.exception("processor %r could not be created", name)
        raise ValueError(
            f"processor {name!r} could not be created: {type(exc).__name__}: {exc}"
        ) from None
    return processor


def from_configuration(text: str, default: str) -> tuple[str, dict[str, Any]]:
    """Split a session's ``extension_configuration`` into (processor name, parameters).

    Empty text selects ``default`` with no parameters; otherwise the text must be a
    JSON object, whose optional ``"processor"`` key names the processor (or ``"model"``
    a model of this server's repository) and whose other keys are its parameters.
    A model is named, never given as a path: the server opens no file a client names.
    """
    if not text.strip():
        return default, {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"extension_configuration is not JSON: {exc.msg} at column {exc.colno}"
        ) from None
    except RecursionError:  # json recurses once per nested array or object
        raise ValueError("extension_configuration is nested too deeply") from None
    except ValueError as exc:  # an integer past Python's digit limit, say
        raise ValueError(f"extension_configuration cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("extension_configuration must be a JSON object")
    if "model" in data:
        if "processor" in data:
            raise ValueError('extension_configuration: give "model" or "processor", not both')
        model = data.pop("model")
        have = ", ".join(repository.names()) or "none"
        if not isinstance(model, str) or repository.get(model) is None:
            shown = model if isinstance(model, str) else json.dumps(model)
            raise ValueError(
                f"extension_configuration: unknown model {shown[:200]!r}: this server "
                f"has {have} (a session names one of the server's models; the "
                "server never opens a file a client names)"
            )
        return model, data
    name = data.pop("processor", default)
    if not isinstance(name, str):
        raise ValueError('extension_configuration: "processor" must be a string')
    return name, data
