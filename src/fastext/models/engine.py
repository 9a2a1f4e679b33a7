"""A model loaded in a worker: ONNX Runtime tuned for a small CPU box, and batches of
frames from any number of sessions run as one call.

:func:`load` opens every model of the repository once per process (a worker at start,
before READY); :func:`get` hands a session's processor the engine of its model.
:meth:`Engine.infer` takes *jobs*, each a session's parameters and its frames: every
frame is prepared straight into its slot of one input tensor (one numba pass:
letterbox or stretch, resize, pixel format, normalization), the runtime runs once per
``max_batch`` frames, and each job's slice of the output is decoded with that job's
own parameters (threshold, classes, ...). So frames of four cameras waiting in a
worker's ring cost one runtime call, as Triton's dynamic batcher would make it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastext._proto.inferencing_pb2 import Classification, Entity, Inference, Rectangle, Tag
from fastext.errors import FrameError
from fastext.malloc import release_freed_memory
from fastext.models.repository import CLASSIFY, ModelInfo
from fastext.outcomes import Outcome as Kind
from fastext.outcomes import Unprocessed

__all__ = ["Engine", "Params", "get", "load", "loaded", "validate_params"]

log = logging.getLogger("fastext.models.engine")

#: A frame's result: its inferences, or why it has none (a frame that could not be read).
Outcome = list[Inference] | Unprocessed
_PENDING = Unprocessed(Kind.ERROR, "not run")  # every slot is set before infer() returns


@dataclass(frozen=True, slots=True)
class Params:
    """A session's parameters for its model (validated: :func:`validate_params`)."""

    threshold: float
    iou: float
    max_detections: int
    classes: tuple[int, ...] | None  # class indices kept (None: every class)
    top_k: int
    softmax: bool


_DETECT_KEYS = ("threshold", "iou", "max_detections", "classes")
_CLASSIFY_KEYS = ("threshold", "top_k", "softmax")


def validate_params(info: ModelInfo, params: dict[str, Any]) -> Params:
    """A session's ``extension_configuration`` parameters for ``info``, checked without
    the model (the front calls this): ValueError names the parameter and the rule."""
    allowed = _CLASSIFY_KEYS if info.kind == CLASSIFY else _DETECT_KEYS
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {info.name!r} ({info.kind}) takes no parameter {unknown[0]!r} "
            f"(it takes {', '.join(allowed)})"
        )

    def number(key: str, low: float, high: float) -> float:
        value = params.get(key, info.default(key))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and low <= value <= high)
        ):
            raise ValueError(
                f"model {info.name!r}: {key} must be a number in {low}..{high}, got {value!r}"
            )
        return float(value)

    def whole(key: str, low: int, high: int) -> int:
        value = params.get(key, info.default(key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"model {info.name!r}: {key} must be a whole number in {low}..{high}, got {value!r}"
            )
        return value

    classes = params.get("classes")
    picked: tuple[int, ...] | None = None
    if classes is not None:
        if (
            not isinstance(classes, list)
            or not classes
            or not all(isinstance(c, str) for c in classes)
        ):
            raise ValueError(
                f"model {info.name!r}: classes must be a non-empty list of label names"
            )
        index = {label: i for i, label in enumerate(info.labels)}
        missing = [c for c in classes if c not in index]
        if missing:
            shown = ", ".join(info.labels[:20]) + (", ..." if len(info.labels) > 20 else "")
            raise ValueError(
                f"model {info.name!r} has no class {missing[0]!r} (its labels: {shown})"
            )
        picked = tuple(sorted({index[c] for c in classes}))
    softmax = params.get("softmax", info.default("softmax"))
    if not isinstance(softmax, bool):
        raise ValueError(f"model {info.name!r}: softmax must be true or false")
    return Params(
        threshold=number("threshold", 0.0, 1.0),
        iou=number("iou", 0.0, 1.0) if info.kind != CLASSIFY else info.default("iou"),
        max_detections=whole("max_detections", 1, 10_000)
        if info.kind != CLASSIFY
        else info.default("max_detections"),
        classes=picked,
        top_k=whole("top_k", 1, max(1, info.num_classes)) if info.kind == CLASSIFY else 1,
        softmax=softmax,
    )


class Engine:
    """One model in this process: its runtime session and its reusable input tensor."""

    def __init__(self, info: ModelInfo, threads: int = 1) -> None:
        import onnxruntime as ort

        from fastext.models.decode import Layout, OutputSpec
        from fastext.models.preprocess import InputSpec

        self.info = info
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A worker shares the box with the front and the other workers: a thread that
        # spins while it waits for work takes a core from them for nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = info.arena
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        providers = [p for p in info.providers if p in available] or ["CPUExecutionProvider"]
        missing = [p for p in info.providers if p not in available]
        if missing:
            log.warning(
                "model %s: execution provider(s) %s not in this ONNX Runtime (it has "
                "%s): running on %s",
                info.name,
                ", ".join(missing),
                ", ".join(sorted(available)),
                ", ".join(providers),
            )
        self.session = ort.InferenceSession(info.path, options, providers=providers)
        self.input = InputSpec(
            info.width,
            info.height,
            info.layout,
            info.dtype,
            info.channels,
            info.resize,
            info.mean,
            info.std,
        )
        self.output = (
            OutputSpec(Layout(info.output_layout), info.num_classes or None)
            if info.output_layout
            else None
        )
        self.slots = info.fixed_batch or info.max_batch
        self._tensor = np.zeros((self.slots, *self.input.slot_shape), info.dtype)
        #: (frames, seconds) of every runtime call since the caller last took them
        self.runs: list[tuple[int, float]] = []
        # One batch at a time per engine: the input tensor is reused (the in-process
        # backend runs sessions' batches on several threads).
        self._lock = threading.Lock()

    def take_runs(self) -> list[tuple[int, float]]:
        with self._lock:
            runs, self.runs = self.runs, []
        return runs

    def infer(self, jobs: Sequence[tuple[Params, Sequence[Any]]]) -> list[list[Outcome]]:
        """Each job's outcomes, one per frame in order. A job's frames are
        :class:`~fastext.vision.frames.Frame` objects (or an :class:`Unprocessed`, for a
        frame that could not be fetched: kept as it is). A frame that cannot be prepared
        is INVALID. When the runtime fails on a call of several frames, each is run again
        alone: only a frame it fails on alone is ERROR, not the frames (of any session)
        that shared its call."""
        results: list[list[Outcome]] = [[_PENDING] * len(frames) for _, frames in jobs]
        pending: list[tuple[int, int, Any]] = []  # (job, frame index, frame)
        for j, (_, frames) in enumerate(jobs):
            for i, frame in enumerate(frames):
                if isinstance(frame, Unprocessed):
                    results[j][i] = frame
                else:
                    pending.append((j, i, frame))
        with self._lock:
            for start in range(0, len(pending), self.slots):
                self._run_isolating(jobs, pending[start : start + self.slots], results)
        return results

    def _run_isolating(
        self,
        jobs: Sequence[tuple[Params, Sequence[Any]]],
        chunk: Sequence[tuple[int, int, Any]],
        results: list[list[Outcome]],
    ) -> None:
        """Run ``chunk``; if the runtime (or decoding) fails on it, run its frames one at
        a time, so that a frame the model cannot take fails alone."""
        try:
            self._run_chunk(jobs, chunk, results)
            return
        except Exception as exc:
            if len(chunk) == 1:
                self._failed(chunk[0], exc, results)
                return
            log.warning(
                "model %s failed on a call of %d frames (%s); running each alone",
                self.info.name,
                len(chunk),
                exc,
            )
        self._tensor[...] = 0  # a fixed batch's idle slots must not hold the failing frame
        for item in chunk:
            try:
                self._run_chunk(jobs, [item], results)
            except Exception as exc:
                self._failed(item, exc, results)

    def _failed(
        self, item: tuple[int, int, Any], exc: Exception, results: list[list[Outcome]]
    ) -> None:
        log.error("model %s failed on a frame: %s", self.info.name, exc)
        results[item[0]][item[1]] = Unprocessed(
            Kind.ERROR, f"model {self.info.name!r} failed: {exc}"
        )

    def _run_chunk(
        self,
        jobs: Sequence[tuple[Params, Sequence[Any]]],
        chunk: Sequence[tuple[int, int, Any]],
        results: list[list[Outcome]],
    ) -> None:
        from fastext.models.preprocess import prepare

        tensor = self._tensor
        placed: list[tuple[int, int, int]] = []  # (slot, job, frame index)
        transforms: list[tuple[float, float, float, float]] = []
        sizes: list[tuple[int, int]] = []
        for j, i, frame in chunk:
            slot = len(placed)
            try:
                t = prepare(frame, tensor[slot], self.input)
            except FrameError as exc:
                results[j][i] = Unprocessed(Kind.INVALID, str(exc))
                continue
            placed.append((slot, j, i))
            transforms.append((t.scale_x, t.scale_y, t.pad_x, t.pad_y))
            sizes.append((t.width, t.height))
        if not placed:
            return
        count = len(placed)
        feed = tensor if self.info.fixed_batch else tensor[:count]
        started = time.perf_counter()
        output = self.session.run(None, {self.info.input_name: feed})[0]
        self.runs.append((count, time.perf_counter() - started))
        if self.output is None:
            self._classify(jobs, output, placed, results)
        else:
            self._detect(jobs, output, placed, transforms, sizes, results)

    def _detect(
        self,
        jobs: Sequence[tuple[Params, Sequence[Any]]],
        output: np.ndarray,
        placed: list[tuple[int, int, int]],
        transforms: list[Any],
        sizes: list[Any],
        results: list[list[Outcome]],
    ) -> None:
        from fastext.models.decode import decode_detections

        assert self.output is not None
        labels = self.info.labels
        by_job: dict[int, list[int]] = {}
        for k, (_, j, _) in enumerate(placed):
            by_job.setdefault(j, []).append(k)
        for j, rows in by_job.items():
            params = jobs[j][0]
            found = decode_detections(
                output[[placed[k][0] for k in rows]],
                self.output,
                np.asarray([transforms[k] for k in rows]),
                np.asarray([sizes[k] for k in rows]),
                threshold=params.threshold,
                iou=params.iou,
                max_detections=params.max_detections,
                classes=params.classes,
            )
            for k, detections in zip(rows, found, strict=True):
                results[j][placed[k][2]] = [
                    Inference(
                        type=Inference.InferenceType.ENTITY,
                        subtype="objectDetection",
                        entity=Entity(
                            tag=Tag(value=_label(labels, c), confidence=s),
                            box=Rectangle(l=left, t=top, w=w, h=h),
                        ),
                    )
                    for c, s, left, top, w, h in detections.rows()
                ]

    def _classify(
        self,
        jobs: Sequence[tuple[Params, Sequence[Any]]],
        output: np.ndarray,
        placed: list[tuple[int, int, int]],
        results: list[list[Outcome]],
    ) -> None:
        from fastext.models.decode import top_k

        labels = self.info.labels
        for slot, j, i in placed:
            params = jobs[j][0]
            index, values = top_k(
                output[slot : slot + 1], params.top_k, apply_softmax=params.softmax
            )
            results[j][i] = [
                Inference(
                    type=Inference.InferenceType.CLASSIFICATION,
                    classification=Classification(
                        tag=Tag(value=_label(labels, int(c)), confidence=float(v))
                    ),
                )
                for c, v in zip(index[0], values[0], strict=True)
                if float(v) >= params.threshold
            ]


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else f"class {index}"


# -- this process's engines ---------------------------------------------------------------


def warm_units() -> list[Any]:
    """The model kernels' warm-up units: preprocessing (every pixel format goes through
    one kernel) and decoding."""
    from fastext.models import decode, preprocess
    from fastext.vision.warmup import Unit, jitted_closure

    return [
        *preprocess.warm_units(),
        Unit("decode", decode.warm, jitted_closure(decode._decode_batch)),
    ]


def warm_shared() -> tuple[list[str], list[str]]:
    """Compile (or load) the model kernels, each function compiled by one of the processes
    warming together and loaded from numba's cache by the others (as the vision kernels
    are: fastext.vision.warmup). Returns (every function readied, those compiled here)."""
    from fastext.models import decode, preprocess
    from fastext.vision.warmup import run_units

    units = warm_units()
    path = preprocess._prepare.stats.cache_path
    run_units(units, path if isinstance(path, str) and path else None, prefix="models.")
    functions = sorted(set().union(*(u.functions for u in units)))
    found = {**vars(preprocess), **vars(decode)}
    compiled = [
        n
        for n in functions
        if n in found and hasattr(found[n], "stats") and sum(found[n].stats.cache_misses.values())
    ]
    return functions, compiled


_engines: dict[str, Engine] = {}


def load(infos: Sequence[ModelInfo], threads: int = 1) -> list[str]:
    """Open every model in this process (once; a worker before READY), warm each with
    one batch so that no frame pays for a first run; returns their names."""
    if infos:
        warm_shared()
    for info in infos:
        if info.name in _engines:
            continue
        started = time.perf_counter()
        engine = Engine(info, threads)
        # The optimizer builds each transformed weight beside its original and frees the
        # original: glibc would keep those holes (+31 MiB of PSS for the 640 bench model).
        release_freed_memory()
        engine.session.run(
            None, {info.input_name: engine._tensor[:1] if not info.fixed_batch else engine._tensor}
        )
        _engines[info.name] = engine
        release_freed_memory()  # and the warm run's scratch
        log.info(
            "model %s loaded in %.2f s (%s, input %dx%d %s %s, batch up to %d)",
            info.name,
            time.perf_counter() - started,
            info.kind,
            info.width,
            info.height,
            info.layout,
            info.dtype,
            engine.slots,
        )
    return sorted(_engines)


def get(name: str) -> Engine | None:
    return _engines.get(name)


def loaded() -> list[str]:
    return sorted(_engines)
