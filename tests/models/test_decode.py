"""fastext.models.decode: layouts, class-aware NMS against a numpy reference, the
letterbox mapping, labels from metadata, top-k; and the toy models of
fastext.models.toy run through ONNX Runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastext.models.decode import (
    Detections,
    LabelsError,
    Layout,
    LayoutError,
    OutputSpec,
    _decode_batch,
    decode_detections,
    default_labels,
    detect_layout,
    labels_from_metadata,
    parse_names,
    softmax,
    top_k,
    warm,
)
from fastext.models.toy import (
    COLOURS,
    colour_classifier,
    colour_detector,
    yolo_like,
    yolo_like_flops,
)

RAW = (Layout.YOLOV8, Layout.YOLOV8_TRANSPOSED, Layout.YOLOV5)
IDENTITY = (1.0, 1.0, 0.0, 0.0)

# -- a numpy reference: greedy class-aware NMS, written independently of the kernel ------


def _area(b: np.ndarray) -> np.ndarray:
    """Areas of corner boxes ``[..., 4]`` (x1, y1, x2, y2), empty ones 0."""
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def reference(
    out: np.ndarray,
    layout: Layout,
    threshold: float,
    iou: float,
    max_det: int,
    classes: set[int] | None,
    transforms: np.ndarray,
    sizes: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    results = []
    for n, o in enumerate(out):
        if layout is Layout.END_TO_END:
            corners = o[:, :4].astype(np.float64)
            score = o[:, 4]
            cls = o[:, 5].astype(np.int64)
        else:
            if layout is Layout.YOLOV8:
                o = o.T
            if layout is Layout.YOLOV5:
                per_class = o[:, 4:5] * o[:, 5:]
            else:
                per_class = o[:, 4:]
            cls = per_class.argmax(axis=1)
            score = per_class[np.arange(len(o)), cls]
            xy, half = o[:, :2].astype(np.float64), o[:, 2:4].astype(np.float64) / 2.0
            corners = np.concatenate([xy - half, xy + half], axis=1)
        keep = score > threshold
        if classes is not None:
            keep &= np.isin(cls, list(classes))
        corners, score, cls = corners[keep], score[keep], cls[keep]
        kept: list[int] = []
        for i in np.argsort(-score, kind="stable"):
            if layout is not Layout.END_TO_END and kept:
                others = corners[kept]
                iw = np.minimum(others[:, 2], corners[i, 2]) - np.maximum(
                    others[:, 0], corners[i, 0]
                )
                ih = np.minimum(others[:, 3], corners[i, 3]) - np.maximum(
                    others[:, 1], corners[i, 1]
                )
                inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
                union = _area(others) + _area(corners[i]) - inter
                overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
                if ((cls[kept] == cls[i]) & (overlap > iou)).any():
                    continue
            kept.append(int(i))
            if len(kept) == max_det:
                break
        sx, sy, px, py = transforms[n]
        fw, fh = sizes[n]
        b = corners[kept]
        x = np.clip((b[:, [0, 2]] - px) / sx / fw, 0, 1)
        y = np.clip((b[:, [1, 3]] - py) / sy / fh, 0, 1)
        ltwh = np.stack([x[:, 0], y[:, 0], x[:, 1] - x[:, 0], y[:, 1] - y[:, 0]], axis=1)
        results.append((cls[kept], score[kept], ltwh))
    return results


def random_output(
    rng: np.random.Generator, layout: Layout, n: int, anchors: int, classes: int
) -> np.ndarray:
    """Boxes crowded on a 64-pixel square, so many overlap; scores uniform in 0..1."""
    cxcy = rng.uniform(0, 64, (n, anchors, 2))
    wh = rng.uniform(4, 30, (n, anchors, 2))
    if layout is Layout.END_TO_END:
        rows = np.concatenate(
            [
                cxcy - wh / 2,
                cxcy + wh / 2,
                rng.uniform(0, 1, (n, anchors, 1)),
                rng.integers(0, classes, (n, anchors, 1)),
            ],
            axis=2,
        )
        return rows.astype(np.float32)
    extra = 1 if layout is Layout.YOLOV5 else 0
    scores = rng.uniform(0, 1, (n, anchors, classes + extra))
    rows = np.concatenate([cxcy, wh, scores], axis=2).astype(np.float32)
    return np.ascontiguousarray(rows.transpose(0, 2, 1)) if layout is Layout.YOLOV8 else rows


def assert_same(
    got: list[Detections], want: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    assert len(got) == len(want)
    for g, (labels, scores, boxes) in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.labels, labels)
        np.testing.assert_array_equal(g.scores, scores)
        np.testing.assert_allclose(g.boxes, boxes, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", list(Layout))
def test_decode_matches_numpy_reference(layout: Layout, seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = random_output(rng, layout, n=3, anchors=300, classes=4)
    transforms = np.array([[0.5, 0.5, 0, 8], [1.0, 1.0, 0, 0], [0.25, 0.2, 4, 0]])
    sizes = np.array([[128, 96], [64, 64], [240, 320]], np.float64)
    threshold, iou, max_det = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.7), int(rng.integers(5, 60))
    classes = None if seed % 2 else {0, 2}
    got = decode_detections(
        out,
        OutputSpec(layout, 4),
        transforms,
        sizes,
        threshold=threshold,
        iou=iou,
        max_detections=max_det,
        classes=classes,
    )
    want = reference(out, layout, threshold, iou, max_det, classes, transforms, sizes)
    assert sum(len(w[0]) for w in want) > 10  # the case decodes something
    assert_same(got, want)
    for g in got:
        assert (np.diff(g.scores) <= 0).all()  # best first


def test_decode_default_thresholds_match_reference_and_suppress() -> None:
    rng = np.random.default_rng(7)
    out = random_output(rng, Layout.YOLOV8, n=2, anchors=2000, classes=3)
    spec, sizes = OutputSpec(Layout.YOLOV8, 3), np.array([[64, 64]] * 2)
    got = decode_detections(out, spec, IDENTITY, (64, 64))
    assert_same(
        got, reference(out, Layout.YOLOV8, 0.25, 0.45, 100, None, np.array([IDENTITY] * 2), sizes)
    )
    assert [len(g.labels) for g in got] == [100, 100]  # max_detections binds
    unbounded = decode_detections(out, spec, IDENTITY, (64, 64), max_detections=5000)
    assert_same(
        unbounded,
        reference(out, Layout.YOLOV8, 0.25, 0.45, 5000, None, np.array([IDENTITY] * 2), sizes),
    )
    candidates = (out[:, 4:].max(axis=1) > 0.25).sum(axis=1)
    # Crowded boxes: NMS removed most candidates.
    assert all(100 < len(g.labels) < c / 2 for g, c in zip(unbounded, candidates, strict=True))


# -- known answers --------------------------------------------------------------------------


def v8(*rows: tuple[float, ...]) -> np.ndarray:
    """One image's YOLOv8 output from per-anchor rows (cx, cy, w, h, scores...)."""
    return np.array(rows, np.float32).T[None].copy()


def decode_one(
    out: np.ndarray, layout: Layout = Layout.YOLOV8, n_classes: int = 2, **kwargs: object
) -> list[tuple[int, float, float, float, float, float]]:
    return decode_detections(out, OutputSpec(layout, n_classes), IDENTITY, (100, 100), **kwargs)[
        0
    ].rows()  # type: ignore[arg-type]


def test_decode_single_box_survives_with_its_box_and_score() -> None:
    rows = decode_one(v8((50, 40, 20, 10, 0.1, 0.9)))
    assert rows == [
        (
            1,
            pytest.approx(0.9),
            pytest.approx(0.4),
            pytest.approx(0.35),
            pytest.approx(0.2),
            pytest.approx(0.1),
        )
    ]


def test_decode_suppresses_overlap_of_same_class_keeps_other_class() -> None:
    out = v8(
        (50, 50, 20, 20, 0.9, 0.0),  # kept
        (52, 50, 20, 20, 0.8, 0.0),  # same class, IoU 0.82: suppressed
        (52, 50, 20, 20, 0.0, 0.7),  # other class, same box: kept
        (70, 50, 20, 20, 0.6, 0.0),
    )  # same class, IoU 0 with the first: kept
    rows = decode_one(out)
    assert [(r[0], round(r[1], 3)) for r in rows] == [(0, 0.9), (1, 0.7), (0, 0.6)]


def test_decode_iou_threshold_is_strict() -> None:
    # IoU of these two is exactly 1/3 (overlap 10x20 of two 20x20 boxes).
    out = v8((50, 50, 20, 20, 0.9, 0.0), (60, 50, 20, 20, 0.8, 0.0))
    assert len(decode_one(out, iou=1 / 3)) == 2
    assert len(decode_one(out, iou=0.3)) == 1


def test_decode_threshold_keeps_scores_above_it_only() -> None:
    out = v8((10, 10, 4, 4, 0.5, 0.0), (50, 50, 4, 4, 0.25, 0.0), (90, 90, 4, 4, 0.2, 0.0))
    assert [r[1] for r in decode_one(out)] == [0.5]  # 0.25 is not above the default 0.25
    assert len(decode_one(out, threshold=0.1)) == 3


def test_decode_max_detections_keeps_the_best() -> None:
    out = v8(*[(10 + 20 * i, 50, 4, 4, 0.3 + 0.1 * i, 0.0) for i in range(5)])
    rows = decode_one(out, max_detections=2)
    assert [round(r[1], 3) for r in rows] == [0.7, 0.6]


def test_decode_equal_scores_keep_anchor_order() -> None:
    out = v8((10, 10, 4, 4, 0.5, 0.0), (50, 50, 4, 4, 0.0, 0.5), (90, 90, 4, 4, 0.5, 0.0))
    lefts = [(r[0], r[1], round(r[2], 6)) for r in decode_one(out)]
    assert lefts == [(0, 0.5, 0.08), (1, 0.5, 0.48), (0, 0.5, 0.88)]
    assert [r[2] for r in decode_one(out, max_detections=1)] == [pytest.approx(0.08)]
    # Many ties (a sort that is not stable reorders them): still in anchor order.
    many = v8(*[(2 * i + 1.5, 50, 1, 1, 0.5, 0.0) for i in range(50)])
    assert [round(r[2] * 100) for r in decode_one(many)] == [2 * i + 1 for i in range(50)]


def test_decode_class_filter_drops_anchors_whose_best_class_is_not_wanted() -> None:
    out = v8((10, 10, 4, 4, 0.9, 0.5), (50, 50, 4, 4, 0.0, 0.8), (90, 90, 4, 4, 0.6, 0.0))
    assert [r[0] for r in decode_one(out, classes={0})] == [0, 0]
    # The first anchor's best class is 0: with only class 1 wanted it goes (as Ultralytics).
    assert [(r[0], round(r[1], 3)) for r in decode_one(out, classes={1})] == [(1, 0.8)]
    assert decode_one(out, classes=set()) == []


def test_decode_yolov5_scores_objectness_times_class() -> None:
    out = np.array([[[50, 50, 10, 10, 0.5, 0.2, 0.9], [20, 20, 10, 10, 0.9, 0.1, 0.2]]], np.float32)
    rows = decode_one(out, Layout.YOLOV5, threshold=0.1)
    assert [(r[0], r[1]) for r in rows] == [(1, pytest.approx(0.45)), (1, pytest.approx(0.18))]


def test_decode_end_to_end_keeps_model_nms_and_checks_classes() -> None:
    out = np.array(
        [[[10, 10, 30, 30, 0.9, 1], [11, 10, 31, 30, 0.8, 1], [0, 0, 0, 0, 0.0, -1]]], np.float32
    )  # a padding row
    rows = decode_one(out, Layout.END_TO_END)
    assert [(r[0], round(r[1], 3)) for r in rows] == [(1, 0.9), (1, 0.8)]  # no second NMS
    for bad in (2, -1, 1.5, np.nan):
        out[0, 2] = (0, 0, 5, 5, 0.7, bad)
        with pytest.raises(ValueError, match="class index"):
            decode_one(out, Layout.END_TO_END)
    # Unknown labels: any non-negative whole class index is taken as it comes.
    out[0, 2] = (50, 50, 60, 60, 0.7, 7)
    got = decode_detections(out, OutputSpec(Layout.END_TO_END, None), IDENTITY, (100, 100))
    assert got[0].labels.tolist() == [1, 1, 7]


def test_decode_drops_non_finite_boxes_and_nan_scores() -> None:
    out = v8(
        (np.nan, 10, 4, 4, 0.9, 0.0),
        (50, 50, np.inf, 4, 0.8, 0.0),
        (50, 50, 4, 4, np.nan, 0.7),
        (90, 90, 4, 4, 0.6, np.nan),
    )
    assert [(r[0], round(r[1], 3)) for r in decode_one(out)] == [(1, 0.7), (0, 0.6)]


def test_decode_maps_through_letterbox_and_clips() -> None:
    # A 640x480 frame letterboxed into 320x320: scale 0.5, 40 rows of padding above.
    transform = (0.5, 0.5, 0.0, 40.0)
    out = v8(
        (160, 160, 100, 50, 0.9, 0.0),  # frame x 220..420, y 190..290
        (10, 45, 40, 20, 0.8, 0.0),
    )  # reaches into the padding and past the left
    got = decode_detections(out, OutputSpec(Layout.YOLOV8, 2), transform, (640, 480))[0]
    np.testing.assert_allclose(
        got.boxes,
        [[220 / 640, 190 / 480, 200 / 640, 100 / 480], [0, 0, 60 / 640, 30 / 480]],
        atol=1e-7,
    )


def test_decode_one_transform_per_image() -> None:
    out = np.concatenate([v8((16, 16, 8, 8, 0.9, 0.0))] * 2)
    got = decode_detections(
        out, OutputSpec(Layout.YOLOV8, 2), [(1, 1, 0, 0), (0.5, 0.25, 4, 8)], [(32, 32), (64, 64)]
    )
    np.testing.assert_allclose(got[0].boxes, [[0.375, 0.375, 0.25, 0.25]])
    np.testing.assert_allclose(
        got[1].boxes, [[(12 - 4) / 0.5 / 64, (12 - 8) / 0.25 / 64, 0.25, 0.5]]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"transforms": (0, 1, 0, 0)}, "scales must be positive"),
        ({"transforms": (1, 1, 0)}, "transforms must have shape"),
        ({"transforms": (1, 1, np.nan, 0)}, "transforms must be finite"),
        ({"frame_sizes": (0, 10)}, "frame sizes must be positive"),
        ({"frame_sizes": [(10, 10)] * 3}, "frame_sizes must have shape"),
        ({"threshold": float("nan")}, "must be finite"),
        ({"max_detections": 0}, "max_detections must be"),
        ({"classes": {2}}, "not a class index"),
        ({"classes": {-1}}, "not a class index"),
    ],
)
def test_decode_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"transforms": IDENTITY, "frame_sizes": (10, 10)} | kwargs
    with pytest.raises(ValueError, match=message):
        decode_detections(v8((5, 5, 2, 2, 0.9, 0.1)), OutputSpec(Layout.YOLOV8, 2), **args)  # type: ignore[arg-type]


def test_decode_refuses_output_that_does_not_fit_spec() -> None:
    with pytest.raises(LayoutError, match=r"\[1, 6, 1\] is not yolov8 with 3 classes"):
        decode_one(v8((5, 5, 2, 2, 0.9, 0.1)), n_classes=3)
    with pytest.raises(LayoutError, match="rank 3"):
        decode_detections(
            np.zeros((6, 4), np.float32), OutputSpec(Layout.YOLOV8, 2), IDENTITY, (1, 1)
        )


def test_decode_accepts_float16_and_strided_outputs() -> None:
    out = v8((50, 40, 20, 10, 0.1, 0.75), (10, 10, 4, 4, 0.5, 0.0))
    want = decode_one(out)
    assert len(want) == 2
    assert decode_one(out.astype(np.float16)) == want
    transposed = np.ascontiguousarray(out.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not transposed.flags.c_contiguous
    assert decode_one(transposed) == want


def test_decode_warm_compiles_every_signature_decoding_uses() -> None:
    warm()
    compiled = set(_decode_batch.signatures)
    assert len(compiled) == 2  # the output writable, and read-only
    rng = np.random.default_rng(3)
    for layout in Layout:
        out = random_output(rng, layout, n=2, anchors=20, classes=3)
        for variant in (out, out.astype(np.float16), out.astype(np.float64), out[:, ::-1][:, ::-1]):
            decode_detections(
                variant,
                OutputSpec(layout, 3),
                np.ones((2, 4))[:, ::1],
                np.full((2, 3), 9)[:, :2],
                classes={1},
                max_detections=3,
            )
        out.flags.writeable = False
        decode_detections(out, OutputSpec(layout, 3), [1, 1, 0, 0], [9, 9], threshold=0)
    assert set(_decode_batch.signatures) == compiled


def test_decode_empty_batch_and_no_anchors() -> None:
    assert (
        decode_detections(
            np.zeros((0, 7, 10), np.float32), OutputSpec(Layout.YOLOV8, 3), IDENTITY, (1, 1)
        )
        == []
    )
    got = decode_detections(
        np.zeros((2, 0, 6), np.float32), OutputSpec(Layout.END_TO_END, None), IDENTITY, (1, 1)
    )
    assert [len(g.labels) for g in got] == [0, 0]


# -- layouts from shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "classes", "want"),
    [
        ([1, 84, 8400], 80, OutputSpec(Layout.YOLOV8, 80)),
        ([1, 84, 8400], None, OutputSpec(Layout.YOLOV8, 80)),
        (["batch", 84, "anchors"], None, OutputSpec(Layout.YOLOV8, 80)),
        ([1, 8400, 84], 80, OutputSpec(Layout.YOLOV8_TRANSPOSED, 80)),
        ([1, 25200, 85], 80, OutputSpec(Layout.YOLOV5, 80)),
        ([None, "anchors", 85], 80, OutputSpec(Layout.YOLOV5, 80)),
        ([1, 300, 6], None, OutputSpec(Layout.END_TO_END, None)),
        ([1, 300, 6], 80, OutputSpec(Layout.END_TO_END, 80)),
        (["N", "K", 6], None, OutputSpec(Layout.END_TO_END, None)),
        ([1, 4, 6], None, OutputSpec(Layout.END_TO_END, None)),  # 4 rows: no room for 4+C
        ([1, 300, 6], 2, OutputSpec(Layout.END_TO_END, 2)),  # not a transposed 2-class output
        ([1, 6, 8400], 2, OutputSpec(Layout.YOLOV8, 2)),
        ([1, 6, 8400], None, OutputSpec(Layout.YOLOV8, 2)),
    ],
)
def test_detect_layout_from_shapes(
    shape: list[object], classes: int | None, want: OutputSpec
) -> None:
    assert detect_layout([shape], classes) == want  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("shapes", "classes", "message"),
    [
        (
            [[1, 8400, 84]],
            None,
            r"output \[1, 8400, 84\] is ambiguous \(yolov8-transposed or yolov5\)",
        ),
        ([[1, 84, 8400]], 3, r"output \[1, 84, 8400\] with 3 classes does not fit"),
        ([[1, 84, 84]], 80, r"ambiguous \(yolov8 or yolov8-transposed\)"),
        ([[1, 84, 8400], [1, 32, 160, 160]], None, r"found \[1, 84, 8400\], \[1, 32, 160, 160\]"),
        ([[1, 1000]], None, r"found \[1, 1000\]"),
        ([], None, "found none"),
        ([[1, 4, 8400]], None, "does not fit"),
        ([["N", "a", "b"]], None, "does not fit"),
    ],
)
def test_detect_layout_refuses_with_the_shapes(
    shapes: list[list[object]], classes: int | None, message: str
) -> None:
    with pytest.raises(LayoutError, match=message):
        detect_layout(shapes, classes)  # type: ignore[arg-type]


def test_detect_layout_named_layout_is_checked_not_guessed() -> None:
    assert detect_layout([[1, 8400, 84]], layout=Layout.YOLOV8_TRANSPOSED) == OutputSpec(
        Layout.YOLOV8_TRANSPOSED, 80
    )
    assert detect_layout([[1, 8400, 84]], layout=Layout.YOLOV5) == OutputSpec(Layout.YOLOV5, 79)
    with pytest.raises(LayoutError, match="does not fit a yolov5 layout"):
        detect_layout([[1, 8400, 84]], 80, layout=Layout.YOLOV5)


# -- labels ---------------------------------------------------------------------------------


def test_labels_from_ultralytics_names() -> None:
    meta = {"names": "{0: 'person', 1: 'bicycle', 2: \"it's\"}", "stride": "32"}
    assert labels_from_metadata(meta) == ["person", "bicycle", "it's"]
    assert labels_from_metadata(meta, 3) == ["person", "bicycle", "it's"]
    assert parse_names("['a', 'b']") == ["a", "b"]
    assert parse_names("{1: 'b', 0: 'a'}") == ["a", "b"]


def test_labels_default_without_names() -> None:
    assert labels_from_metadata({"stride": "32"}, 3) == ["class 0", "class 1", "class 2"]
    assert labels_from_metadata(None, 2) == default_labels(2) == ["class 0", "class 1"]
    assert labels_from_metadata({}) is None


def test_labels_count_must_match_the_model() -> None:
    with pytest.raises(LabelsError, match="has 2 labels; the model has 80 classes"):
        labels_from_metadata({"names": "{0: 'a', 1: 'b'}"}, 80)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch {marker}')",
        "{0: open('{marker}', 'w')}",
        "{0: 'a', 1: (lambda: open('{marker}', 'w'))()}",
        "{0: 'a'}.__class__",
        "[x for x in 'ab']",
        "{0: 'a', 1: 'b'",
        "{0: 'a', 2: 'c'}",  # a gap
        "{True: 'a'}",  # a bool is not a class index
        "{'0': 'a'}",
        "{0: 1}",
        "{}",
        "'person'",
        "[" * 200_000 + "]" * 200_000,  # deep nesting: refused, not a crash
        "-" * 500_000 + "1",  # the parser's memory, refused
        "1" + "+1" * 300_000,  # literal_eval's recursion, refused
        "{0: '" + "a" * (1 << 20) + "'}",  # over the size limit
        "9" * 5000,  # past int's digit limit
    ],
)
def test_labels_malicious_or_malformed_names_refused(text: str, tmp_path: Path) -> None:
    marker = tmp_path / "evaluated"
    with pytest.raises(LabelsError):
        labels_from_metadata({"names": text.replace("{marker}", str(marker))})
    assert not marker.exists()


# -- classification -------------------------------------------------------------------------


def test_top_k_orders_and_softmaxes() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, -1.0, 5.0, 1.0]], np.float32)
    idx, val = top_k(logits, 3)
    assert idx.tolist() == [[1, 3, 2], [2, 3, 0]]  # equal scores in class order
    assert val.dtype == np.float32 and val.tolist() == [[3, 3, 2], [5, 1, 0]]
    idx, val = top_k(logits, 10, apply_softmax=True)
    assert idx.shape == (2, 4)
    e = np.exp(logits[0].astype(np.float64))
    np.testing.assert_allclose(val[0], (e / e.sum())[[1, 3, 2, 0]], rtol=1e-6)
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1.0)
    # Large logits do not overflow.
    assert np.isfinite(softmax(np.array([[1000.0, 0.0]]))).all()


def test_top_k_refuses_bad_shapes() -> None:
    with pytest.raises(LayoutError, match=r"\[N, C\]; found \[3\]"):
        top_k(np.zeros(3))
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.zeros((1, 3)), 0)


# -- the toy models through ONNX Runtime ----------------------------------------------------

# Building the toy models needs onnx, running them onnxruntime (both in the test extra).
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")),
    reason="onnx and onnxruntime (the test extra) are not installed",
)

SIZE, CELL = 32, 8
FRAME_W, FRAME_H = 64, 48
# The 64x48 frame halved to 32x24 and centred in 32x32: 4 rows of padding above.
TRANSFORM = (0.5, 0.5, 0.0, 4.0)


def session(model: bytes) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def letterbox(frame: np.ndarray) -> np.ndarray:
    """The test's own letterbox of a 64x48 RGB frame: 2x2 means, gray padding."""
    half = frame.astype(np.float32).reshape(FRAME_H // 2, 2, FRAME_W // 2, 2, 3).mean(axis=(1, 3))
    tensor = np.full((SIZE, SIZE, 3), 114.0, np.float32)
    tensor[4:28] = half
    return (tensor / 255.0).transpose(2, 0, 1)


def colour_frame() -> np.ndarray:
    """A black frame with a red square filling the tensor's cell (1, 1) and a green
    block filling three quarters of its cell (2, 2)."""
    frame = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    frame[8:24, 16:32] = (255, 0, 0)  # tensor x 8..16, y 8..16
    frame[24:36, 32:48] = (0, 255, 0)  # tensor x 16..24, y 16..22 of the cell's 16..24
    return frame


@needs_onnx
@pytest.mark.parametrize("layout", list(Layout))
def test_toy_detector_finds_the_coloured_squares(layout: Layout) -> None:
    sess = session(colour_detector(layout, SIZE, CELL))
    labels = labels_from_metadata(sess.get_modelmeta().custom_metadata_map)
    assert labels == list(COLOURS)
    spec = detect_layout([o.shape for o in sess.get_outputs()], len(labels))
    assert spec == OutputSpec(layout, 3)
    empty = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    batch = np.stack([letterbox(colour_frame()), letterbox(empty)])
    (out,) = sess.run(None, {"images": batch})
    got = decode_detections(out, spec, TRANSFORM, (FRAME_W, FRAME_H))
    green = 0.5625 if layout is Layout.YOLOV5 else 0.75  # YOLOv5: objectness x class
    assert got[0].labels.tolist() == [0, 1]
    assert got[0].scores.tolist() == [1.0, green]
    np.testing.assert_allclose(
        got[0].boxes,
        [[16 / 64, 8 / 48, 16 / 64, 16 / 48], [32 / 64, 24 / 48, 16 / 64, 16 / 48]],
        atol=1e-7,
    )
    assert len(got[1].labels) == 0
    # The same, as the end-to-end class filter and labels see it.
    only_green = decode_detections(out, spec, TRANSFORM, (FRAME_W, FRAME_H), classes={1})
    assert [labels[c] for c in only_green[0].labels] == ["green"]


@needs_onnx
def test_toy_detector_batch_axis_dynamic_or_fixed() -> None:
    dynamic = session(colour_detector(Layout.YOLOV8))
    assert dynamic.get_inputs()[0].shape == ["N", 3, 32, 32]
    (out,) = dynamic.run(None, {"images": np.zeros((5, 3, 32, 32), np.float32)})
    assert out.shape == (5, 7, 16)
    fixed = session(colour_detector(Layout.END_TO_END, batch=1, max_boxes=4))
    assert fixed.get_inputs()[0].shape == [1, 3, 32, 32]
    assert fixed.get_outputs()[0].shape == [1, 4, 6]


@needs_onnx
def test_toy_classifier_top_colour() -> None:
    sess = session(colour_classifier())
    frames = np.zeros((3, 3, 32, 32), np.float32)
    for i, c in enumerate((2, 0, 1)):
        frames[i, c] = 0.8
    (logits,) = sess.run(None, {"images": frames})
    idx, prob = top_k(logits, 2, apply_softmax=True)
    assert idx[:, 0].tolist() == [2, 0, 1]
    np.testing.assert_allclose(prob[:, 0], np.exp(3.2) / (np.exp(3.2) + 2), rtol=1e-5)
    assert labels_from_metadata(sess.get_modelmeta().custom_metadata_map) == list(COLOURS)


@needs_onnx
def test_yolo_like_shape_and_cost() -> None:
    assert yolo_like_flops(640) == pytest.approx(
        8.7e9, rel=0.05
    )  # YOLOv8n's, as Ultralytics counts
    assert yolo_like_flops(320) == pytest.approx(yolo_like_flops(640) / 4)
    sess = session(yolo_like(96))
    assert sess.get_outputs()[0].shape == [1, 84, 12 * 12 + 6 * 6 + 3 * 3]
    (out,) = sess.run(None, {"images": np.random.default_rng(0).random((1, 3, 96, 96), np.float32)})
    assert out.shape == (1, 84, 189) and np.isfinite(out).all()
    spec = detect_layout([o.shape for o in sess.get_outputs()])
    assert spec == OutputSpec(Layout.YOLOV8, 80)
    assert len(decode_detections(out, spec, IDENTITY, (96, 96))) == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        yolo_like(100)
    import onnx

    graph = onnx.load_model_from_string(yolo_like(640)).graph
    dims = [
        [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (graph.input[0], graph.output[0])
    ]
    assert dims == [[1, 3, 640, 640], [1, 84, 8400]]
