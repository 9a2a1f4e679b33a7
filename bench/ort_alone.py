"""ONNX Runtime alone on a model, with tensors already prepared: the model's own bound.

A long-lived process (started once per bench run, so no round pays for loading):

    python bench/ort_alone.py MODEL.onnx --threads T

prints ``ready`` once the model is open, then answers each command line on stdin:

- ``run B SECONDS``: runs batches of ``B`` (a random tensor made once per ``B``, one
  warm-up call the first time) back to back for ``SECONDS``; prints
  ``done FRAMES ELAPSED CPU`` (frames run, wall seconds, this process's CPU seconds),
  or ``error MESSAGE`` (a batch size the model does not take);
- ``quit``.

Session options: ``T`` intra-op threads, one inter-op thread, sequential execution,
the rest ONNX Runtime's defaults (its threads spin while they wait: alone on the
runtime, that is its best).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    shape = [int(d) if isinstance(d, int) else 1 for d in model_input.shape]
    fixed = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
    dtype = np.float16 if "float16" in model_input.type else np.float32
    tensors: dict[int, np.ndarray] = {}
    print("ready", flush=True)
    for line in sys.stdin:  # bounded by the parent, which sends quit or closes stdin
        words = line.split()
        if not words or words[0] == "quit":
            break
        batch, seconds = int(words[1]), float(words[2])
        if fixed is not None and batch != fixed:
            print(f"error the model's batch is fixed at {fixed}", flush=True)
            continue
        if batch not in tensors:
            rng = np.random.default_rng(batch)
            tensors[batch] = rng.random((batch, *shape[1:]), np.float32).astype(dtype)
            session.run(None, {model_input.name: tensors[batch]})
        feed = {model_input.name: tensors[batch]}
        frames = 0
        cpu = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        while True:  # bounded by the deadline
            session.run(None, feed)
            frames += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        print(f"done {frames} {now - start:.6f} {time.process_time() - cpu:.6f}", flush=True)


if __name__ == "__main__":
    main()
