"""Where a worker's memory goes when it loads a model: PSS of one process, step by step.

    python bench/model_memory.py [MODEL.onnx] [--size 640] [--batch 4]

Without a model, :func:`fastext.models.toy.yolo_like` at ``--size`` (batch axis made
dynamic). Prints this process's PSS (``/proc/self/smaps_rollup``) after each step a
worker takes: numba and the vision kernels (what every worker loads, model
or not); import ONNX Runtime; load the model kernels (numba's preprocessing and
decode, from its cache); open the session as the engine does and hand the heap's
free pages back; its warm-up run of one frame; then a run of ``--batch`` frames (ONNX
Runtime's arena grows to the batch) and the input tensor's slots written. One process alone: shared pages count whole here,
where two workers would each count half.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_BUILD = """import sys
from pathlib import Path
from bench.bench_models import dynamic_batch
from fastext.models.toy import yolo_like
Path(sys.argv[2]).write_bytes(dynamic_batch(yolo_like(int(sys.argv[1]))))
"""


def pss_mib() -> float:
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--arena",
        choices=("on", "off"),
        default="on",
        help="ONNX Runtime's CPU memory arena (the model setting `arena`)",
    )
    args = parser.parse_args()
    last = pss_mib()
    print(f"{'start (numpy imported)':44s} {last:7.1f} MiB")

    def step(name: str) -> None:
        nonlocal last
        now = pss_mib()
        print(f"{name:44s} {now:7.1f} MiB  (+{now - last:.1f})", flush=True)
        last = now

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = Path(args.model)
        else:  # built in another process: onnx and the bench's imports stay out of this one
            path = Path(tmp) / "model.onnx"
            subprocess.run(
                [sys.executable, "-c", _BUILD, str(args.size), str(path)], check=True, timeout=300
            )
        step(f"(model file {path.stat().st_size / 2**20:.1f} MiB)")
        from fastext.vision import warmup

        warmup.warm_shared()
        step("numba and the vision kernels (every worker)")
        import onnxruntime as ort

        step("import onnxruntime")
        from fastext.models import decode, preprocess

        preprocess.warm()
        decode.warm()
        step("model kernels (preprocess, decode) loaded")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = args.arena == "on"
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        step("session opened")
        from fastext.malloc import release_freed_memory

        release_freed_memory()
        step("the optimizer's freed originals handed back")
        model_input = session.get_inputs()[0]
        side = args.size
        tensor = np.zeros((16, 3, side, side), np.float32)  # the engine's 16 slots, untouched
        session.run(None, {model_input.name: tensor[:1]})
        release_freed_memory()
        step("warm-up run, 1 frame (+ slot 0 written)")
        tensor[: args.batch] = 0.5
        session.run(None, {model_input.name: tensor[: args.batch]})
        step(f"a run of {args.batch} frames (+ their slots written)")


if __name__ == "__main__":
    main()
