"""What a model's output means: detection layouts, class-aware NMS, labels, top-k.

Detection outputs come in four layouts (:class:`Layout`); :func:`detect_layout` tells
them apart from the output shape and, when the labels are known, the class count.
:func:`decode_detections` turns a whole batch's output into per-image detections in
one numba call: candidates above the score threshold, greedy class-aware NMS, and
boxes mapped back through each image's letterbox transform to the frame as received,
normalized to 0..1 and clipped. Python touches each batch, never each box.

A letterbox transform is ``(scale_x, scale_y, pad_x, pad_y)`` with
``frame_x = (tensor_x - pad_x) / scale_x`` (and the same for y), as the preprocessing
returns it.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from fastext.errors import FastextError
from fastext.vision.kernels.common import jit

__all__ = [
    "Detections",
    "LabelsError",
    "Layout",
    "LayoutError",
    "OutputSpec",
    "decode_detections",
    "default_labels",
    "detect_layout",
    "labels_from_metadata",
    "parse_names",
    "softmax",
    "top_k",
    "warm",
]

# Class indices are int32 in the results.
_MAX_CLASS = 2**31 - 1


class LayoutError(FastextError, ValueError):
    """A model output this module cannot decode; the message names the shapes found."""


class LabelsError(FastextError, ValueError):
    """Label metadata that cannot be used; the message says what is wrong with it."""


class Layout(Enum):
    """The detection output layouts, named for the exports that write them.

    - ``YOLOV8``: ``[N, 4+C, A]``, rows cx, cy, w, h (input pixels) then C class
      scores, one column per anchor (YOLOv8 and YOLO11 ONNX exports);
    - ``YOLOV8_TRANSPOSED``: ``[N, A, 4+C]``, the same transposed;
    - ``YOLOV5``: ``[N, A, 5+C]``, cx, cy, w, h, objectness, C class scores; a
      detection's score is objectness times its class score;
    - ``END_TO_END``: ``[N, K, 6]``, x1, y1, x2, y2, score, class per row, NMS done
      inside the model (so decoding skips it).
    """

    YOLOV8 = "yolov8"
    YOLOV8_TRANSPOSED = "yolov8-transposed"
    YOLOV5 = "yolov5"
    END_TO_END = "end-to-end"


# The kernel's codes for the layouts.
_KIND = {Layout.YOLOV8: 0, Layout.YOLOV8_TRANSPOSED: 1, Layout.YOLOV5: 2, Layout.END_TO_END: 3}


@dataclass(frozen=True)
class OutputSpec:
    """A recognised output: its layout and class count (None: an end-to-end output
    whose labels are unknown; its class indices are then taken as they come)."""

    layout: Layout
    num_classes: int | None


Dim = int | str | None


def _dim(d: object) -> int | None:
    """A fixed dimension, or None for a dynamic one (ONNX Runtime names those)."""
    return d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None


def _fits(layout: Layout, a: int | None, b: int | None, c: int | None) -> bool:
    """Whether ``[N, a, b]`` can be ``layout`` with ``c`` classes (None: any)."""
    if layout is Layout.YOLOV8:
        return a is not None and a >= 5 and (c is None or a == 4 + c)
    if layout is Layout.YOLOV8_TRANSPOSED:
        return b is not None and b >= 5 and (c is None or b == 4 + c)
    if layout is Layout.YOLOV5:
        return b is not None and b >= 6 and (c is None or b == 5 + c)
    return b == 6


def _classes_in(layout: Layout, a: int | None, b: int | None) -> int | None:
    if layout is Layout.YOLOV8:
        return None if a is None else a - 4
    if layout is Layout.YOLOV8_TRANSPOSED:
        return None if b is None else b - 4
    if layout is Layout.YOLOV5:
        return None if b is None else b - 5
    return None


def detect_layout(
    shapes: Sequence[Sequence[Dim]],
    num_classes: int | None = None,
    layout: Layout | None = None,
) -> OutputSpec:
    """The layout of a detector's outputs, from their shapes (``session.get_outputs()``'s,
    dynamic dimensions as names or None) and the class count when the labels give it.

    Exactly one output of rank 3 is accepted. ``layout``, when given, is checked
    against the shape instead of guessed. Otherwise, with ``num_classes`` known, the
    layouts that fit the shape are kept; ties are broken by the rules below and a tie
    that remains is refused.

    Without ``num_classes`` the shape alone decides, by these rules:

    - a last axis of 6 is ``END_TO_END``, unless the middle axis is smaller and at
      least 5 (then the next rule makes it ``YOLOV8``);
    - otherwise the attribute axis (4+C or 5+C) is the smaller one: exports put
      thousands of anchors on the other (``[1, 84, 8400]`` is YOLOv8's 80 classes,
      ``[1, 8400, 84]`` the same transposed). A smaller middle axis is ``YOLOV8``;
    - a smaller last axis is refused: ``[1, 25200, 85]`` is YOLOv5's 80 classes or a
      transposed YOLOv8 with 81, and a wrong guess decodes objectness as a class (or
      the reverse) without any error. The labels (YOLOv5 and Ultralytics exports
      write them into the metadata) or ``layout`` settle it.

    The same orientation rule breaks ties when the class count is known (a square
    ``[N, 4+C, 4+C]`` is refused); a last axis of 6 that also fits a raw layout
    (two classes, or one with objectness) is taken as ``END_TO_END``, since exporters
    write raw outputs of so few classes channels-first.
    """
    found = [tuple(shape) for shape in shapes]
    if len(found) != 1 or len(found[0]) != 3:
        raise LayoutError(
            f"a detector must have one output of shape [N, 4+C, A], [N, A, 4+C], "
            f"[N, A, 5+C] or [N, K, 6]; found {_shapes_text(found)}"
        )
    if num_classes is not None and num_classes < 1:
        raise LayoutError(f"num_classes must be at least 1, not {num_classes}")
    a, b = _dim(found[0][1]), _dim(found[0][2])
    candidates = [layout] if layout is not None else list(Layout)
    fits = [lay for lay in candidates if _fits(lay, a, b, num_classes)]
    if len(fits) > 1 and a is not None and b is not None and a != b:
        oriented = [lay for lay in fits if (lay is Layout.YOLOV8) == (a < b)]
        # A short end-to-end output ([N, 4, 6]) is the one exception to orientation.
        fits = oriented or [lay for lay in fits if lay is Layout.END_TO_END]
    if len(fits) > 1 and Layout.END_TO_END in fits and Layout.YOLOV8 not in fits:
        fits = [Layout.END_TO_END]
    what = f"output {_shapes_text(found)}" + (
        f" with {num_classes} classes" if num_classes is not None else ""
    )
    if not fits:
        wanted = f"a {layout.value} layout" if layout is not None else "any supported layout"
        raise LayoutError(
            f"{what} does not fit {wanted} ([N, 4+C, A], [N, A, 4+C], [N, A, 5+C] or [N, K, 6])"
        )
    if len(fits) > 1:
        names = " or ".join(lay.value for lay in fits)
        raise LayoutError(
            f"{what} is ambiguous ({names}): give the model's labels "
            "(the class count) or name its layout"
        )
    chosen = fits[0]
    classes = num_classes if num_classes is not None else _classes_in(chosen, a, b)
    return OutputSpec(chosen, classes)


def _shapes_text(shapes: Sequence[Sequence[Dim]]) -> str:
    return ", ".join("[" + ", ".join(str(d) for d in shape) + "]" for shape in shapes) or "none"


# -- the kernel ---------------------------------------------------------------------------


@jit
def _keep(score, c, threshold, allowed):  # type: ignore[no-untyped-def]
    """Whether a candidate's score and class pass the threshold and the class filter."""
    if not score > threshold:  # NaN scores fail too
        return False
    return allowed.shape[0] == 0 or (c < allowed.shape[0] and allowed[c] != 0)


@jit
def _put_cxcywh(cand_box, m, cx, cy, w, h):  # type: ignore[no-untyped-def]
    """Store a cx, cy, w, h box as corners; False (nothing stored) unless finite."""
    x1 = np.float64(cx) - np.float64(w) / 2.0
    y1 = np.float64(cy) - np.float64(h) / 2.0
    x2 = np.float64(cx) + np.float64(w) / 2.0
    y2 = np.float64(cy) + np.float64(h) / 2.0
    return _put_corners(cand_box, m, x1, y1, x2, y2)


@jit
def _put_corners(cand_box, m, x1, y1, x2, y2):  # type: ignore[no-untyped-def]
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        return False
    cand_box[m, 0] = x1
    cand_box[m, 1] = y1
    cand_box[m, 2] = x2
    cand_box[m, 3] = y2
    return True


@jit
def _best_class_columns(o, best, best_c):  # type: ignore[no-untyped-def]
    """Per anchor (column) of a ``[4+C, A]`` output: the best class score and its class.

    Class by class over contiguous rows, so the loop over anchors vectorises; NaN
    never wins (the best stays -inf when every score is NaN).
    """
    n_anchors = o.shape[1]
    for i in range(n_anchors):
        best[i] = -np.inf
        best_c[i] = 0
    for c in range(o.shape[0] - 4):
        row = o[4 + c]
        for i in range(n_anchors):
            if row[i] > best[i]:
                best[i] = row[i]
                best_c[i] = c


@jit
def _candidates(  # type: ignore[no-untyped-def]
    o,
    kind,
    num_classes,
    threshold,
    allowed,
    best,
    best_c,
    cand_score,
    cand_class,
    cand_box,
):
    """Fill the candidate arrays from one image's output ``o``; return their count."""
    m = 0
    if kind == 0:  # [4+C, A]
        _best_class_columns(o, best, best_c)
        for i in range(o.shape[1]):
            s = best[i]
            c = best_c[i]
            if _keep(s, c, threshold, allowed) and _put_cxcywh(
                cand_box, m, o[0, i], o[1, i], o[2, i], o[3, i]
            ):
                cand_score[m] = s
                cand_class[m] = c
                m += 1
    elif kind == 1 or kind == 2:  # [A, 4+C] or [A, 5+C]
        first = 4 if kind == 1 else 5
        for i in range(o.shape[0]):
            row = o[i]
            s = np.float32(-np.inf)
            c = 0
            if kind == 1:
                for k in range(o.shape[1] - first):
                    v = row[first + k]
                    if v > s:
                        s = v
                        c = k
            else:
                obj = row[4]
                for k in range(o.shape[1] - first):
                    v = np.float32(obj * row[first + k])
                    if v > s:
                        s = v
                        c = k
            if _keep(s, c, threshold, allowed) and _put_cxcywh(
                cand_box, m, row[0], row[1], row[2], row[3]
            ):
                cand_score[m] = s
                cand_class[m] = c
                m += 1
    else:  # [K, 6]: x1, y1, x2, y2, score, class
        for i in range(o.shape[0]):
            row = o[i]
            s = row[4]
            if not s > threshold:
                continue
            cv = row[5]
            if not (
                math.isfinite(cv)
                and cv >= 0
                and cv == np.floor(cv)
                and cv < _MAX_CLASS
                and (num_classes < 0 or cv < num_classes)
            ):
                raise ValueError(
                    "an end-to-end output row holds a class index that is "
                    "not one of the model's classes"
                )
            c = np.int64(cv)
            if _keep(s, c, threshold, allowed) and _put_corners(
                cand_box,
                m,
                np.float64(row[0]),
                np.float64(row[1]),
                np.float64(row[2]),
                np.float64(row[3]),
            ):
                cand_score[m] = s
                cand_class[m] = c
                m += 1
    return m


@jit
def _iou(box, i, j):  # type: ignore[no-untyped-def]
    """Intersection over union of corner boxes ``box[i]`` and ``box[j]`` (0 when empty)."""
    iw = min(box[i, 2], box[j, 2]) - max(box[i, 0], box[j, 0])
    ih = min(box[i, 3], box[j, 3]) - max(box[i, 1], box[j, 1])
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    area_i = max(box[i, 2] - box[i, 0], 0.0) * max(box[i, 3] - box[i, 1], 0.0)
    area_j = max(box[j, 2] - box[j, 0], 0.0) * max(box[j, 3] - box[j, 1], 0.0)
    union = area_i + area_j - inter
    return inter / union if union > 0.0 else 0.0


@jit
def _clip01(v):  # type: ignore[no-untyped-def]
    return min(max(v, 0.0), 1.0)


@jit
def _decode_batch(  # type: ignore[no-untyped-def]
    out,
    kind,
    num_classes,
    threshold,
    iou,
    allowed,
    transforms,
    sizes,
    labels,
    scores,
    boxes,
    counts,
):
    """Decode ``out`` (``[N, ., .]`` float32) into ``labels``/``scores``/``boxes``
    (``[N, M]``, ``[N, M]``, ``[N, M, 4]``) and ``counts`` (``[N]``); M is the most
    detections kept per image."""
    n_rows = out.shape[1] if kind != 0 else out.shape[2]
    max_det = labels.shape[1]
    best = np.empty(n_rows, np.float32)
    best_c = np.empty(n_rows, np.int64)
    cand_score = np.empty(n_rows, np.float32)
    cand_class = np.empty(n_rows, np.int64)
    cand_box = np.empty((n_rows, 4), np.float64)
    kept = np.empty(max_det, np.int64)
    for n in range(out.shape[0]):
        m = _candidates(
            out[n],
            kind,
            num_classes,
            threshold,
            allowed,
            best,
            best_c,
            cand_score,
            cand_class,
            cand_box,
        )
        # Stable: equal scores keep their anchor order, as the reference's does.
        order = np.argsort(-cand_score[:m], kind="mergesort")
        n_kept = 0
        for r in range(m):
            k = order[r]
            suppressed = False
            if kind != 3:  # an end-to-end model did its own NMS
                for q in range(n_kept):
                    other = kept[q]
                    if cand_class[other] == cand_class[k] and _iou(cand_box, k, other) > iou:
                        suppressed = True
                        break
            if suppressed:
                continue
            kept[n_kept] = k
            n_kept += 1
            if n_kept == max_det:
                break
        sx, sy, px, py = transforms[n, 0], transforms[n, 1], transforms[n, 2], transforms[n, 3]
        fw, fh = sizes[n, 0], sizes[n, 1]
        for q in range(n_kept):
            k = kept[q]
            left = _clip01((cand_box[k, 0] - px) / sx / fw)
            top = _clip01((cand_box[k, 1] - py) / sy / fh)
            right = _clip01((cand_box[k, 2] - px) / sx / fw)
            bottom = _clip01((cand_box[k, 3] - py) / sy / fh)
            labels[n, q] = cand_class[k]
            scores[n, q] = cand_score[k]
            boxes[n, q, 0] = left
            boxes[n, q, 1] = top
            boxes[n, q, 2] = max(right - left, 0.0)
            boxes[n, q, 3] = max(bottom - top, 0.0)
        counts[n] = n_kept


# -- the Python side ----------------------------------------------------------------------


class Detections(NamedTuple):
    """One image's detections, best score first: ``labels`` (int32 class indices),
    ``scores`` (float32), ``boxes`` (float32 ``[k, 4]``: left, top, width, height as
    fractions of the frame, clipped to it)."""

    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def rows(self) -> list[tuple[int, float, float, float, float, float]]:
        """``(label index, score, left, top, width, height)`` per detection."""
        return [
            (int(c), float(s), *(float(v) for v in box))  # type: ignore[misc]
            for c, s, box in zip(self.labels, self.scores, self.boxes, strict=True)
        ]


MAX_DETECTIONS_LIMIT = 100_000


def decode_detections(
    output: np.ndarray,
    spec: OutputSpec,
    transforms: Any,
    frame_sizes: Any,
    *,
    threshold: float = 0.25,
    iou: float = 0.45,
    max_detections: int = 100,
    classes: Collection[int] | None = None,
) -> list[Detections]:
    """Decode a batch's detector output into one :class:`Detections` per image.

    ``transforms``: the letterbox transform ``(scale_x, scale_y, pad_x, pad_y)`` of
    each image, ``[N, 4]``, or one for all; ``frame_sizes``: each frame's
    ``(width, height)`` as received, ``[N, 2]``, or one for all. A detection is kept
    when its score is above ``threshold`` (a raw anchor's score is its best class's:
    with ``classes``, an anchor whose best class is not in the set is dropped, as
    Ultralytics does) and no kept box of its class overlaps it with IoU above
    ``iou``; at most ``max_detections`` per image. Candidates with a non-finite box
    are dropped. Raises :class:`LayoutError` for an output that does not fit ``spec``
    and ValueError for arguments out of range.
    """
    out = np.ascontiguousarray(output, dtype=np.float32)
    _check_output(out, spec)
    n = out.shape[0]
    trans = _per_image(transforms, n, 4, "transforms")
    sizes = _per_image(frame_sizes, n, 2, "frame_sizes")
    if not (trans[:, :2] > 0).all():
        raise ValueError("a transform's scales must be positive")
    if not (sizes > 0).all():
        raise ValueError("frame sizes must be positive")
    if not (math.isfinite(threshold) and math.isfinite(iou)):
        raise ValueError("threshold and iou must be finite numbers")
    if isinstance(max_detections, bool) or not 1 <= max_detections <= MAX_DETECTIONS_LIMIT:
        raise ValueError(f"max_detections must be 1..{MAX_DETECTIONS_LIMIT}, not {max_detections}")
    allowed = _class_mask(classes, spec.num_classes)
    labels = np.zeros((n, max_detections), np.int32)
    scores = np.zeros((n, max_detections), np.float32)
    boxes = np.zeros((n, max_detections, 4), np.float32)
    counts = np.zeros(n, np.int64)
    num_classes = -1 if spec.num_classes is None else spec.num_classes
    _decode_batch(
        out,
        _KIND[spec.layout],
        num_classes,
        float(threshold),
        float(iou),
        allowed,
        trans,
        sizes,
        labels,
        scores,
        boxes,
        counts,
    )
    return [Detections(labels[i, :k], scores[i, :k], boxes[i, :k]) for i, k in enumerate(counts)]


def _check_output(out: np.ndarray, spec: OutputSpec) -> None:
    if out.ndim != 3:
        raise LayoutError(f"a detector output has rank 3; found shape {list(out.shape)}")
    a, b = out.shape[1], out.shape[2]
    if not _fits(spec.layout, a, b, spec.num_classes):
        classes = f" with {spec.num_classes} classes" if spec.num_classes is not None else ""
        raise LayoutError(f"output shape {list(out.shape)} is not {spec.layout.value}{classes}")


def _per_image(values: Any, n: int, width: int, name: str) -> np.ndarray:
    """``values`` as a new C-contiguous float64 ``[n, width]`` array (one row repeats):
    always a writable copy, so the kernel sees one array type whatever came in."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape == (width,):
        arr = np.broadcast_to(arr, (n, width))
    if arr.shape != (n, width):
        raise ValueError(f"{name} must have shape ({width},) or ({n}, {width}), not {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return np.array(arr, dtype=np.float64, order="C")


def _class_mask(classes: Collection[int] | None, num_classes: int | None) -> np.ndarray:
    """The class filter as a uint8 mask (empty: every class)."""
    if classes is None:
        return np.zeros(0, np.uint8)
    picked = list(classes)
    for c in picked:
        if (
            isinstance(c, bool)
            or not isinstance(c, int | np.integer)
            or c < 0
            or (num_classes is not None and c >= num_classes)
        ):
            limit = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
            raise ValueError(f"class filter: {c!r} is not a class index ({limit})")
    size = num_classes if num_classes is not None else max(picked, default=-1) + 1
    mask = np.zeros(max(size, 1), np.uint8)  # all zero: nothing passes an empty filter
    mask[picked] = 1
    return mask


def warm() -> None:
    """Compile (or load from numba's cache) the decode kernel for every argument type
    :func:`decode_detections` passes it: the output writable or read-only (a view of
    memory the engine does not own); everything else it makes itself."""
    spec = OutputSpec(Layout.YOLOV8, 1)
    out = np.zeros((1, 5, 2), np.float32)
    for writeable in (True, False):
        out.flags.writeable = writeable
        decode_detections(out, spec, (1.0, 1.0, 0.0, 0.0), (1.0, 1.0))


# -- labels -------------------------------------------------------------------------------

# Longer metadata is refused unparsed: 1000 labels of 60 characters take 64 KiB.
MAX_NAMES_CHARS = 1 << 20


def parse_names(text: str) -> list[str]:
    """Labels from an Ultralytics-style ``names`` metadata string.

    The string is a Python literal, ``"{0: 'person', 1: 'bicycle'}"`` (a list of
    strings is accepted too), read with :func:`ast.literal_eval`, which evaluates
    literals only: no name, call or attribute is ever evaluated. The keys must number
    the classes 0..n-1 and every label be a string; anything else raises
    :class:`LabelsError`.
    """
    if not isinstance(text, str):
        raise LabelsError(f"names metadata must be a string, not {type(text).__name__}")
    if len(text) > MAX_NAMES_CHARS:
        raise LabelsError(
            f"names metadata is {len(text)} characters long; the limit is {MAX_NAMES_CHARS}"
        )
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise LabelsError(
            f"names metadata is not a literal dict of labels ({type(exc).__name__}): {text[:80]!r}"
        ) from None
    if isinstance(value, list | tuple):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value:
        raise LabelsError(
            f"names metadata must be a non-empty dict of index: label, not {text[:80]!r}"
        )
    keys = list(value)
    if any(isinstance(k, bool) or not isinstance(k, int) for k in keys) or sorted(keys) != list(
        range(len(keys))
    ):
        raise LabelsError("names metadata must number its classes 0..n-1")
    labels = [value[i] for i in range(len(keys))]
    if not all(isinstance(label, str) for label in labels):
        raise LabelsError("names metadata labels must be strings")
    return labels


def default_labels(num_classes: int) -> list[str]:
    """``class 0``, ``class 1``, ...: the labels of a model without ``names`` metadata."""
    return [f"class {i}" for i in range(num_classes)]


def labels_from_metadata(
    metadata: Mapping[str, str] | None, num_classes: int | None = None
) -> list[str] | None:
    """A model's labels: its ``names`` metadata (``session.get_modelmeta().
    custom_metadata_map``) when present, else ``class N`` for ``num_classes``, else
    None. Raises :class:`LabelsError` when ``names`` is unusable or disagrees with
    ``num_classes``."""
    text = (metadata or {}).get("names")
    if text is None:
        return None if num_classes is None else default_labels(num_classes)
    labels = parse_names(text)
    if num_classes is not None and len(labels) != num_classes:
        raise LabelsError(
            f"names metadata has {len(labels)} labels; the model has {num_classes} classes"
        )
    return labels


# -- classification -----------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` scores (float64, shifted by each row's max)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(
    scores: np.ndarray, k: int = 5, *, apply_softmax: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best classes of each row of a ``[N, C]`` classifier output.

    Returns ``(indices, values)``, both ``[N, min(k, C)]``, best first (equal scores
    in class order; NaN last); values are float32, softmax probabilities when
    ``apply_softmax`` (for a model that outputs logits).
    """
    x = np.asarray(scores)
    if x.ndim != 2 or x.shape[1] == 0:
        raise LayoutError(f"a classifier output has shape [N, C]; found {list(x.shape)}")
    if isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    values = softmax(x) if apply_softmax else x.astype(np.float64)
    order = np.argsort(-values, axis=1, kind="stable")[:, : min(k, x.shape[1])]
    return order, np.take_along_axis(values, order, axis=1).astype(np.float32)
