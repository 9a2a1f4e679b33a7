"""The processor of a model the server was started with (``fastext serve --model``).

A session selects it by name (``{"model": "NAME", "threshold": 0.4, ...}`` in its
``extension_configuration``, or ``--processor NAME`` as the server's default). The
instance only holds the session's checked parameters and, in a worker, the worker's
engine of that model: making one builds nothing, so the front validates a session
with it without loading any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fastext.models import engine as engines
from fastext.models.repository import ModelInfo
from fastext.outcomes import Unprocessed
from fastext.processors.base import Frame, Inference, Processor

__all__ = ["ModelProcessor"]


class ModelProcessor(Processor):
    """A detector's boxes or a classifier's top-k, from the worker's engine of the model."""

    name: ClassVar[str] = "model"
    needs: ClassVar[str] = "raw"  # preprocessing reads the frame as it arrived, in one pass

    def __init__(self, info: ModelInfo, **params: Any) -> None:  # noqa: D107 - see open()
        self.info = info
        self.params = engines.validate_params(info, params)

    @property
    def engine(self) -> engines.Engine:
        engine = engines.get(self.info.name)
        if engine is None:
            raise RuntimeError(f"model {self.info.name!r} is not loaded in this process")
        return engine

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        return [o if isinstance(o, list) else [] for o in self.outcomes(frames)]

    def outcomes(self, frames: Sequence[Frame]) -> list[list[Inference] | Unprocessed]:
        return self.engine.infer([(self.params, frames)])[0]
