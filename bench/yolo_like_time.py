"""Time :func:`fastext.models.toy.yolo_like` (YOLOv8n's shape and cost) in ONNX Runtime
on the CPU, and the decode of its output, per image.

    python -m bench.yolo_like_time [--sizes 320 640] [--runs 20] [--threads 1]

Prints one line per size: the model's FLOPs, ONNX Runtime's median and fastest time
per image (batch 1, after warm-up runs), and the median time of
:func:`fastext.models.decode.decode_detections` on that output (default thresholds).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import onnxruntime as ort

from fastext.models.decode import decode_detections, detect_layout, labels_from_metadata
from fastext.models.toy import yolo_like, yolo_like_flops


def _median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def time_size(size: int, runs: int, threads: int) -> str:
    """One size's line of the report."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(yolo_like(size), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, size, size), np.float32)
    infer = partial(sess.run, None, {sess.get_inputs()[0].name: image})
    for _ in range(3):
        (out,) = infer()
    infer_med, infer_min = _median_ms(infer, runs)
    labels = labels_from_metadata(sess.get_modelmeta().custom_metadata_map)
    spec = detect_layout(
        [o.shape for o in sess.get_outputs()], None if labels is None else len(labels)
    )
    decode = partial(decode_detections, out, spec, (1, 1, 0, 0), (size, size))
    decode()  # compile or load from numba's cache
    decode_med, _ = _median_ms(decode, runs)
    return (
        f"size {size}: output {list(out.shape)}, {yolo_like_flops(size) / 1e9:.2f} GFLOPs; "
        f"onnxruntime median {infer_med:.1f} ms (fastest {infer_min:.1f}); "
        f"decode median {decode_med:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(
        f"host {platform.node()} {platform.machine()} cpus {os.cpu_count()} "
        f"onnxruntime {ort.__version__} threads {args.threads}"
    )
    for size in args.sizes:
        print(time_size(size, args.runs, args.threads))


if __name__ == "__main__":
    main()
