"""Tiny ONNX models built in code, for the demo, the tests and the benchmark.

- :func:`colour_detector`: finds red, green and blue objects, in every detection
  layout of :mod:`fastext.models.decode`, with answers that are exact to compute;
- :func:`colour_classifier`: the dominant colour of an image, ``[N, 3, S, S] -> [N, 3]``;
- :func:`yolo_like`: random weights in YOLOv8n's shape and about its cost, to time
  an engine with.

Every builder returns the serialized model. The batch axis is dynamic (``"N"``)
unless ``batch`` fixes it. The ``onnx`` package (a test dependency) is imported by
the builders only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastext.models.decode import Layout

__all__ = ["COLOURS", "colour_classifier", "colour_detector", "yolo_like", "yolo_like_flops"]

# The classes of both colour models, in their order.
COLOURS = ("red", "green", "blue")
_OPSET = 13
# IR version 8 (ONNX 1.10): every ONNX Runtime the tests accept loads it.
_IR_VERSION = 8


def _names(labels: tuple[str, ...]) -> str:
    """The ``names`` metadata as Ultralytics writes it: a Python dict literal."""
    return repr(dict(enumerate(labels)))


def _model(
    nodes: list[Any],
    name: str,
    inputs: list[Any],
    outputs: list[Any],
    initializers: list[Any],
    metadata: dict[str, str],
) -> bytes:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="fastext-toy"
    )
    model.ir_version = _IR_VERSION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _const(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(value, name)


def colour_detector(
    layout: Layout, size: int = 32, cell: int = 8, batch: int | None = None, max_boxes: int = 10
) -> bytes:
    """A detector of red, green and blue objects, its output in ``layout``.

    Input ``images``: float32 ``[N, 3, size, size]``, RGB in 0..1. The image is cut
    into cells of ``cell`` x ``cell`` pixels, one anchor per cell (row by row); a
    cell's score for a colour is the mean over its pixels of that channel minus the
    mean of the other two, floored at 0, and its box is the cell itself (cx, cy, w, h
    in input pixels). So a cell filled with pure red scores exactly 1.0 as red, one
    three quarters filled 0.75 (exact in binary, as is any fraction of the pixels
    when ``cell`` is a power of 2).

    Per layout: ``YOLOV8`` ``[N, 7, A]``; ``YOLOV8_TRANSPOSED`` ``[N, A, 7]``;
    ``YOLOV5`` ``[N, A, 8]``, whose objectness is the cell's best colour score, so a
    detection scores that squared (1.0 stays 1.0, 0.75 becomes 0.5625);
    ``END_TO_END`` ``[N, min(max_boxes, A), 6]``: the cells with the best scores,
    corners x1, y1, x2, y2, score and class (cells never overlap, so no NMS is due).
    The ``names`` metadata holds :data:`COLOURS`.
    """
    from onnx import TensorProto, helper

    if size % cell:
        raise ValueError("size must be a multiple of cell")
    grid = size // cell
    anchors = grid * grid
    n_cls = len(COLOURS)
    # Channel c scores own - (sum of the others) / 2, averaged over the cell.
    weight = np.full((n_cls, 3, cell, cell), -0.5 / cell**2, np.float32)
    for c in range(n_cls):
        weight[c, c] = 1.0 / cell**2
    gy, gx = np.divmod(np.arange(anchors), grid)
    cx = (gx + 0.5) * cell
    cy = (gy + 0.5) * cell
    half = np.full(anchors, cell / 2)
    cxcywh = np.stack([cx, cy, 2 * half, 2 * half])[None].astype(np.float32)  # [1, 4, A]
    corners = np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)[None]  # [1, A, 4]
    inits = [
        _const("colour_weight", weight),
        _const("score_shape", np.array([0, n_cls, -1], np.int64)),
        _const("zero", np.array([0], np.int64)),
        _const("one", np.array([1], np.int64)),
        _const("ones2", np.array([1, 1], np.int64)),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["images", "colour_weight"],
            ["cells"],
            kernel_shape=[cell, cell],
            strides=[cell, cell],
        ),
        helper.make_node("Relu", ["cells"], ["cell_scores"]),
        helper.make_node("Reshape", ["cell_scores", "score_shape"], ["scores"]),  # [N, C, A]
        helper.make_node("Shape", ["images"], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "ones2"], ["n11"], axis=0),
    ]
    n_dim: int | str = "N" if batch is None else batch
    if layout is Layout.END_TO_END:
        k = min(max_boxes, anchors)
        inits += [
            _const("corners", corners.astype(np.float32)),
            _const("k", np.array([k], np.int64)),
            _const("axis2", np.array([2], np.int64)),
            _const("tile4", np.array([1, 1, 4], np.int64)),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["scores"], ["best"], axes=[1], keepdims=0),
            helper.make_node("ArgMax", ["scores"], ["best_class"], axis=1, keepdims=0),
            helper.make_node("Cast", ["best_class"], ["best_class_f"], to=TensorProto.FLOAT),
            helper.make_node("TopK", ["best", "k"], ["top_scores", "top_index"], axis=1),
            helper.make_node("Expand", ["corners", "n11"], ["all_corners"]),
            helper.make_node("Unsqueeze", ["top_index", "axis2"], ["top_index3"]),
            helper.make_node("Tile", ["top_index3", "tile4"], ["top_index4"]),
            helper.make_node(
                "GatherElements", ["all_corners", "top_index4"], ["top_corners"], axis=1
            ),
            helper.make_node(
                "GatherElements", ["best_class_f", "top_index"], ["top_class"], axis=1
            ),
            helper.make_node("Unsqueeze", ["top_scores", "axis2"], ["top_scores3"]),
            helper.make_node("Unsqueeze", ["top_class", "axis2"], ["top_class3"]),
            helper.make_node(
                "Concat", ["top_corners", "top_scores3", "top_class3"], ["output0"], axis=2
            ),
        ]
        out_shape: list[int | str] = [n_dim, k, 6]
    else:
        inits.append(_const("cxcywh", cxcywh))
        nodes.append(helper.make_node("Expand", ["cxcywh", "n11"], ["boxes"]))  # [N, 4, A]
        parts = ["boxes", "scores"]
        if layout is Layout.YOLOV5:
            nodes.append(
                helper.make_node("ReduceMax", ["scores"], ["objectness"], axes=[1], keepdims=1)
            )
            parts = ["boxes", "objectness", "scores"]
        rows = 4 + n_cls + (layout is Layout.YOLOV5)
        if layout is Layout.YOLOV8:
            nodes.append(helper.make_node("Concat", parts, ["output0"], axis=1))
            out_shape = [n_dim, rows, anchors]
        else:
            nodes += [
                helper.make_node("Concat", parts, ["channels_first"], axis=1),
                helper.make_node("Transpose", ["channels_first"], ["output0"], perm=[0, 2, 1]),
            ]
            out_shape = [n_dim, anchors, rows]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n_dim, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)]
    return _model(
        nodes,
        "colour_detector",
        inputs,
        outputs,
        inits,
        {"names": _names(COLOURS), "imgsz": repr([size, size])},
    )


def colour_classifier(size: int = 32, batch: int | None = None) -> bytes:
    """A classifier of an image's dominant colour: ``[N, 3, size, size]`` -> ``[N, 3]``
    logits, 4 times the mean of each channel (RGB in 0..1), ``names`` :data:`COLOURS`."""
    from onnx import TensorProto, helper

    n_dim: int | str = "N" if batch is None else batch
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["means"], axis=1),
        helper.make_node("Gemm", ["means", "weight", "bias"], ["logits"]),
    ]
    inits = [
        _const("weight", 4 * np.eye(3, dtype=np.float32)),
        _const("bias", np.zeros(3, np.float32)),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n_dim, 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n_dim, 3])]
    return _model(nodes, "colour_classifier", inputs, outputs, inits, {"names": _names(COLOURS)})


# -- a YOLOv8n stand-in -------------------------------------------------------------------

# (out channels, 3x3 convolutions after the stride-2 one) per stage; stages 3..5 feed
# the heads (strides 8, 16, 32), as YOLOv8's P3..P5 do. The repeats put the cost at
# YOLOv8n's: 8.7 GFLOPs at 640 (Ultralytics counts 2 FLOPs per multiply-add).
_STAGES = ((16, 0), (32, 2), (64, 4), (128, 4), (256, 4))
_HEAD_CHANNELS = 64


def _yolo_like_convs(size: int, classes: int) -> list[tuple[str, int, int, int, int, int]]:
    """Every convolution: (tag, in channels, out channels, kernel, stride, output
    side), in graph order. Each takes the previous one's output, except that a tag
    ``pN`` names an output the head tagged ``headN`` takes."""
    if size % 32 or size < 32:
        raise ValueError("size must be a positive multiple of 32")
    convs = []
    ch, side = 3, size
    for i, (out_ch, repeats) in enumerate(_STAGES):
        side //= 2
        convs.append(("", ch, out_ch, 3, 2, side))
        ch = out_ch
        convs += [("", ch, ch, 3, 1, side)] * repeats
        if i >= 2:  # this stage's last output feeds a head
            convs[-1] = (f"p{i + 1}", *convs[-1][1:])
    for p, (head_ch, head_side) in enumerate(
        ((64, size // 8), (128, size // 16), (256, size // 32))
    ):
        convs.append((f"head{p + 3}", head_ch, _HEAD_CHANNELS, 3, 1, head_side))
        convs.append(("", _HEAD_CHANNELS, 4 + classes, 1, 1, head_side))
    return convs


def yolo_like_flops(size: int, classes: int = 80) -> float:
    """The convolutions' FLOPs of :func:`yolo_like` (2 per multiply-add)."""
    return float(
        sum(
            2 * side * side * cout * cin * k * k
            for _, cin, cout, k, _, side in _yolo_like_convs(size, classes)
        )
    )


def yolo_like(size: int = 640, classes: int = 80, seed: int = 0) -> bytes:
    """Random weights in YOLOv8n's shape: input ``[1, 3, size, size]``, output
    ``[1, 4+classes, A]`` (``[1, 84, 8400]`` at 640: anchors at strides 8, 16 and 32),
    a stack of 3x3 convolutions with SiLU whose cost is about YOLOv8n's
    (:func:`yolo_like_flops`; 8.6 GFLOPs at 640, 2.1 at 320). Not its architecture:
    only its shape and cost, to time an engine with."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []
    current = "images"
    head_outputs = []
    for i, (tag, cin, cout, k, stride, side) in enumerate(_yolo_like_convs(size, classes)):
        if tag.startswith("head"):
            current = "p" + tag[4:]
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        inits += [
            _const(f"w{i}", w.astype(np.float32)),
            _const(f"b{i}", np.zeros(cout, np.float32)),
        ]
        conv = f"conv{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"w{i}", f"b{i}"],
                [conv],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        if k == 1:  # a head's prediction: [1, 4+C, side * side]
            flat = f"flat{i}"
            inits.append(_const(f"shape{i}", np.array([1, 4 + classes, side * side], np.int64)))
            nodes.append(helper.make_node("Reshape", [conv, f"shape{i}"], [flat]))
            head_outputs.append(flat)
            continue
        out = tag if tag.startswith("p") else f"act{i}"
        nodes += [
            helper.make_node("Sigmoid", [conv], [f"sig{i}"]),
            helper.make_node("Mul", [conv, f"sig{i}"], [out]),
        ]
        current = out
    nodes += [
        helper.make_node("Concat", head_outputs, ["raw"], axis=2),
        helper.make_node("Sigmoid", ["raw"], ["output0"]),
    ]
    anchors = sum((size // s) ** 2 for s in (8, 16, 32))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [
        helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, anchors])
    ]
    labels = tuple(f"class{i}" for i in range(classes))
    return _model(nodes, "yolo_like", inputs, outputs, inits, {"names": _names(labels)})
