"""The model repository: the models an operator names, what each one is, and the checks
that stop a server at start rather than on its first frame.

A :class:`~fastext.config.ModelSpec` (``NAME=PATH`` and settings) becomes a
:class:`ModelInfo` by opening the file with ONNX Runtime: kind (detector or
classifier), input tensor (size, layout, type), output layout, labels, batch limit,
and the defaults of the session parameters. The front process needs those facts to
validate sessions but must not load the runtime (its memory would grow with every
model), so :func:`load_infos` reads them in a short-lived child process, one per
start; workers then load each model once (:mod:`fastext.models.engine`).

The repository of a process is :func:`install`-ed once and read with :func:`get` and
:func:`names`: a session names a model, never a path (the server never opens a path
that a client sent).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastext.config import ModelSpec
from fastext.errors import ConfigError

__all__ = [
    "DETECT",
    "CLASSIFY",
    "ModelInfo",
    "ModelError",
    "get",
    "inspect_spec",
    "install",
    "installed",
    "load_infos",
    "names",
]

DETECT, CLASSIFY = "detect", "classify"
MAX_BATCH_CAP = 16  # a dynamic batch axis runs at most this many frames per call
_INSPECT_TIMEOUT_S = 300.0  # a large model on a slow ARM board takes a while to open

#: Settings a model may have in the ``--config`` file's ``models`` object, with a check each.
SETTINGS = (
    "kind",
    "labels",
    "layout",
    "output_layout",
    "resize",
    "channels",
    "mean",
    "std",
    "max_batch",
    "max_queue_delay_ms",
    "threshold",
    "iou",
    "max_detections",
    "top_k",
    "softmax",
    "providers",
    "arena",
)


class ModelError(ConfigError):
    """A model that cannot be served; the message names the model, its file and why."""


@dataclass(frozen=True)
class ModelInfo:
    """What fastext knows of one model (picklable, and JSON as a dict)."""

    name: str
    path: str
    kind: str  # DETECT or CLASSIFY
    input_name: str
    width: int
    height: int
    layout: str  # the input's: NCHW or NHWC
    dtype: str  # float32 or uint8
    channels: str = "RGB"
    resize: str = "letterbox"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output_layout: str | None = None  # a detector's (fastext.models.decode.Layout value)
    num_classes: int = 0
    labels: tuple[str, ...] = ()
    fixed_batch: int | None = None  # the batch axis' size when the model fixes it
    max_batch: int = 1
    max_queue_delay_ms: float = 0.0
    defaults: tuple[tuple[str, Any], ...] = ()  # session parameter defaults
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    arena: bool = True
    file_bytes: int = 0
    outputs: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=())  # (name, shape)

    def default(self, key: str) -> Any:
        return dict(self.defaults)[key]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        values = dict(data)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        values["labels"] = tuple(values.get("labels", ()))
        values["providers"] = tuple(values.get("providers", ()))
        values["defaults"] = tuple((k, v) for k, v in values.get("defaults", ()))
        values["outputs"] = tuple((n, tuple(s)) for n, s in values.get("outputs", ()))
        return cls(**values)


# -- the process's repository ------------------------------------------------------------

_installed: dict[str, ModelInfo] = {}


def install(infos: Sequence[ModelInfo]) -> None:
    """Make ``infos`` this process's models (the front at start, each worker at start)."""
    _installed.clear()
    _installed.update((info.name, info) for info in infos)


def installed() -> tuple[ModelInfo, ...]:
    """This process's models, in the order they were configured."""
    return tuple(_installed.values())


def get(name: str) -> ModelInfo | None:
    return _installed.get(name)


def names() -> list[str]:
    return sorted(_installed)


# -- reading a model ------------------------------------------------------------------------


def _setting_error(spec: ModelSpec, key: str, why: str) -> ModelError:
    return ModelError(f"model {spec.name!r}: setting {key!r} {why}")


def _check_settings(spec: ModelSpec) -> dict[str, Any]:
    settings = spec.settings_dict()
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise _setting_error(spec, unknown[0], f"is not one of {', '.join(SETTINGS)}")

    def choice(key: str, allowed: Sequence[str]) -> None:
        if key in settings and settings[key] not in allowed:
            raise _setting_error(spec, key, f"must be one of {', '.join(allowed)}")

    choice("kind", (DETECT, CLASSIFY))
    choice("layout", ("NCHW", "NHWC"))
    choice("output_layout", ("yolov8", "yolov8-transposed", "yolov5", "end-to-end"))
    choice("resize", ("letterbox", "stretch"))
    choice("channels", ("RGB", "BGR"))
    for key in ("mean", "std"):
        value = settings.get(key)
        if value is not None and not (
            isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)
        ):
            raise _setting_error(spec, key, "must be a list of 3 numbers (0..1 scale)")
    if "labels" in settings and not (
        isinstance(settings["labels"], list)
        and settings["labels"]
        and all(isinstance(v, str) for v in settings["labels"])
    ):
        raise _setting_error(spec, "labels", "must be a non-empty list of names")
    if "providers" in settings and not (
        isinstance(settings["providers"], list)
        and all(isinstance(v, str) for v in settings["providers"])
    ):
        raise _setting_error(spec, "providers", "must be a list of execution provider names")
    for key, low, high in (
        ("max_batch", 1, 256),
        ("max_detections", 1, 10_000),
        ("top_k", 1, 1000),
    ):
        value = settings.get(key)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        ):
            raise _setting_error(spec, key, f"must be a whole number in {low}..{high}")
    for key, lowest, highest in (
        ("threshold", 0.0, 1.0),
        ("iou", 0.0, 1.0),
        ("max_queue_delay_ms", 0.0, 1000.0),
    ):
        value = settings.get(key)
        if value is not None and not (_number(value) and lowest <= value <= highest):
            raise _setting_error(spec, key, f"must be a number in {lowest}..{highest}")
    for key in ("softmax", "arena"):
        if key in settings and not isinstance(settings[key], bool):
            raise _setting_error(spec, key, "must be true or false")
    return settings


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def inspect_spec(spec: ModelSpec, session: Any = None) -> ModelInfo:
    """Open ``spec``'s file with ONNX Runtime and say what it is, or raise ModelError
    naming the file and the reason. ``session``: an InferenceSession already open."""
    from fastext.models.decode import (
        LabelsError,
        Layout,
        LayoutError,
        detect_layout,
        labels_from_metadata,
    )

    settings = _check_settings(spec)
    where = f"model {spec.name!r} ({spec.path})"
    if session is None:
        if not os.path.isfile(spec.path):
            raise ModelError(f"{where}: no such file")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                f"{where}: ONNX Runtime is not installed (pip install 'fastext[onnx]')"
            ) from None
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # the runtime's own errors (corrupt, unsupported operator)
            reason = " ".join(str(exc).split())[:300]
            raise ModelError(f"{where}: ONNX Runtime cannot load it: {reason}") from None
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    shapes = tuple(
        (o.name, tuple(d if isinstance(d, int) else None for d in o.shape)) for o in outputs
    )
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        found = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs) or "none"
        raise ModelError(
            f"{where}: expected one image input of rank 4 (NCHW or NHWC); found {found}"
        )
    tensor = inputs[0]
    dtype = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}.get(tensor.type)
    if dtype is None:
        raise ModelError(
            f"{where}: input {tensor.name} is {tensor.type}; fastext feeds float32 or uint8"
        )
    n, a, b, c = tensor.shape
    layout = settings.get("layout")
    if layout is None:
        layout = "NCHW" if a == 3 else "NHWC" if c == 3 else None
    if layout is None:
        raise ModelError(
            f"{where}: input {tensor.name} {list(tensor.shape)} has no axis of 3 "
            "channels; name its layout in the model's settings"
        )
    height, width = (_dim(b), _dim(c)) if layout == "NCHW" else (_dim(a), _dim(b))
    if height is None or width is None:
        raise ModelError(
            f"{where}: input {tensor.name} {list(tensor.shape)} has no fixed height and width"
        )
    fixed = _dim(n)
    max_batch = fixed or min(settings.get("max_batch", MAX_BATCH_CAP), MAX_BATCH_CAP)
    if fixed and settings.get("max_batch", fixed) != fixed:
        raise _setting_error(
            spec, "max_batch", f"cannot differ from the model's fixed batch {fixed}"
        )
    metadata = session.get_modelmeta().custom_metadata_map
    kind = settings.get("kind") or (
        CLASSIFY if len(outputs) == 1 and len(outputs[0].shape) == 2 else DETECT
    )
    labels = settings.get("labels")
    try:
        if kind == CLASSIFY:
            if len(outputs) != 1 or len(outputs[0].shape) != 2:
                raise LayoutError(
                    "a classifier must have one output of shape [N, C]; found "
                    + ", ".join(str(list(o.shape)) for o in outputs)
                )
            num_classes = _dim(outputs[0].shape[1])
            if num_classes is None:
                raise LayoutError(
                    f"classifier output {list(outputs[0].shape)} has no fixed class count"
                )
            output_layout = None
        else:
            known = len(labels) if labels else None
            if known is None and metadata.get("names"):
                known = len(labels_from_metadata(metadata) or [])
            wanted = Layout(settings["output_layout"]) if "output_layout" in settings else None
            out = detect_layout([o.shape for o in outputs], known, wanted)
            num_classes = out.num_classes or (known or 0)
            output_layout = out.layout.value
        if labels is None:
            labels = labels_from_metadata(metadata, num_classes or None) or []
        elif num_classes and len(labels) != num_classes:
            raise LabelsError(f"{len(labels)} labels for {num_classes} classes")
    except (LayoutError, LabelsError) as exc:
        raise ModelError(f"{where}: {exc}") from None
    defaults = {
        "threshold": settings.get("threshold", 0.25),
        "iou": settings.get("iou", 0.45),
        "max_detections": settings.get("max_detections", 100),
        "top_k": settings.get("top_k", 1),
        "softmax": settings.get("softmax", False),
    }
    mean, std = settings.get("mean"), settings.get("std")
    if (mean is None) != (std is None):
        raise _setting_error(spec, "mean", "and 'std' go together")
    if mean is not None and dtype == "uint8":
        raise _setting_error(spec, "mean", "applies to float32 inputs only")
    return ModelInfo(
        name=spec.name,
        path=os.path.abspath(spec.path),
        kind=kind,
        input_name=tensor.name,
        width=width,
        height=height,
        layout=layout,
        dtype=dtype,
        channels=settings.get("channels", "RGB"),
        resize=settings.get("resize", "letterbox"),
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        output_layout=output_layout,
        num_classes=num_classes or 0,
        labels=tuple(labels),
        fixed_batch=fixed,
        max_batch=max_batch,
        max_queue_delay_ms=float(settings.get("max_queue_delay_ms", 0.0)),
        defaults=tuple(sorted(defaults.items())),
        providers=tuple(settings.get("providers", ["CPUExecutionProvider"])),
        arena=settings.get("arena", True),
        file_bytes=os.path.getsize(spec.path) if os.path.isfile(spec.path) else 0,
        outputs=shapes,
    )


def load_infos(specs: Sequence[ModelSpec], reserved: Sequence[str] = ()) -> list[ModelInfo]:
    """Every model's :class:`ModelInfo`, read in a child process (the runtime never loads
    in the caller). Raises ModelError with one line for the first model that cannot be
    served; ``reserved``: names already taken (the built-in processors)."""
    for spec in specs:
        if spec.name in reserved:
            raise ModelError(
                f"model {spec.name!r}: the name is a built-in processor's; choose another"
            )
    if not specs:
        return []
    request = json.dumps([dataclasses.asdict(s) for s in specs])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastext.models.repository"],
            input=request,
            capture_output=True,
            text=True,
            timeout=_INSPECT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"reading the models took over {_INSPECT_TIMEOUT_S:.0f} s") from None
    if proc.returncode == 2:
        raise ModelError(
            proc.stdout.strip().splitlines()[-1]
            if proc.stdout.strip()
            else "a model could not be read"
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"reading the models failed (exit {proc.returncode}): {tail}")
    return [ModelInfo.from_json(item) for item in json.loads(proc.stdout)]


def _child() -> int:
    specs = [
        ModelSpec(d["name"], d["path"], tuple((k, v) for k, v in d["settings"]))
        for d in json.loads(sys.stdin.read())
    ]
    try:
        infos = [inspect_spec(spec) for spec in specs]
    except ModelError as exc:
        print(str(exc))
        return 2
    print(json.dumps([info.to_json() for info in infos]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
