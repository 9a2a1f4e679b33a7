"""Serving an ONNX model (issue 18), each figure beside its bound or baseline in one run.

Model: :func:`fastext.models.toy.yolo_like` (YOLOv8n's output shape and about its
FLOPs, random weights), its batch axis made dynamic here so that fastext's workers and
the runtime-alone bound can both batch; 320 by default (``FASTEXT_BENCH_SIZES=320,640``
measures the throughput at each size); the memory case loads the 640 one.
``FASTEXT_BENCH_MODEL=path.onnx`` runs everything on that model instead (YOLOv8 output
layout for the lock baseline).

Frames: 4 streams by shared memory, 1920x1080 RGB24, the client's slots written once per
session (``StreamOptions.shm_reuse``: one message per frame), 8 in flight per stream.

1. ``bench_models_throughput``: ``fastext serve --workers 2 --model m=PATH`` against
   ONNX Runtime alone on the same model with tensors already prepared
   (``bench/ort_alone.py``), the best of 2 processes x 1 thread and 1 process x 2
   threads, each at its best batch (1, 2, 4 or 8, swept first), and against the design
   of Microsoft's YOLOv3 gRPC sample (``bench/lock_server.py``); rounds alternated, the
   order rotating each round. Targets: fastext >= 0.90 of the runtime alone, >= 1.5x
   the lock server.
2. ``bench_models_preprocess``: :func:`~fastext.models.preprocess.prepare_raw` of a
   cold 1080p frame into the model's input slot, CPU per frame, alternated with a cold
   read of a frame plus the write of its slot (``bench/_membw.py``). Target <= 1.5x.
3. ``bench_models_memory``: PSS (``/proc/PID/smaps_rollup``) of the front and each
   worker of ``fastext serve --workers 2`` with the 640 model against one with no
   model, at rest after READY and after a round of frames. Targets: the front grows by
   <= 5 MiB, each worker by <= the model file + 40 MiB.
4. ``bench_models_latency``: ack p50/p99 at 4 streams x 15 fps, and at half of the
   throughput fastext reached in case 1 (a load it can keep up with), fastext and the
   lock server alternated.

Every figure goes to the benchmark's ``extra_info`` and is printed (``-s``). CPU per
frame is read per process from /proc (front, workers, lock server) or getrusage (this
process: the client). Run: ``pytest bench/bench_models.py --benchmark-only -q -s``; the
smoke form (``--benchmark-disable``) runs each case once with a few frames, 320 only.
"""

from __future__ import annotations

import asyncio
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from bench._membw import ColdReader, sum_words
from bench.conftest import HERE, ServerProcess, fastext_server, free_port, start
from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client import StreamOptions, StreamResult, stream_frames
from fastext.client.synthetic import scenes, to_pixel_format

WIDTH, HEIGHT = 1920, 1080
FRAME_BYTES = WIDTH * HEIGHT * 3
STREAMS, WINDOW = 4, 8
BATCHES = (1, 2, 4, 8)
CORES = os.cpu_count() or 1
MODEL_CONFIG = '{"model": "m"}'
FIGURES: dict[str, Any] = {}  # figures one case hands to a later one (latency's load)


# -- the model ------------------------------------------------------------------------------


def dynamic_batch(model: bytes) -> bytes:
    """yolo_like's model with a dynamic batch axis: input and output ``N``, and its
    heads' Reshape taking the batch from their input (0) instead of a fixed 1."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model)
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "N"
    for init in proto.graph.initializer:
        if init.name.startswith("shape"):
            shape = numpy_helper.to_array(init).copy()
            shape[0] = 0
            init.CopyFrom(numpy_helper.from_array(shape, init.name))
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def model_file(size: int, directory: Path) -> Path:
    real = os.environ.get("FASTEXT_BENCH_MODEL")
    if real:
        return Path(real)
    from fastext.models.toy import yolo_like

    path = directory / f"yolo_like_{size}.onnx"
    if not path.exists():
        path.write_bytes(dynamic_batch(yolo_like(size)))
    return path


def input_size(path: Path) -> tuple[int, int]:
    """(width, height) of the model's NCHW input."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[3].dim_value or 640), int(dims[2].dim_value or 640)


# -- processes ------------------------------------------------------------------------------


class Runner:
    """A ``bench/ort_alone.py`` process: the model open, runs on command."""

    def __init__(self, model: Path, threads: int) -> None:
        self.threads = threads
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "ort_alone.py"), str(model), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def wait_ready(self) -> Runner:
        line = self.readline(120.0)
        if line != "ready":
            raise RuntimeError(f"ort_alone did not start: {line!r}")
        return self

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("ort_alone did not answer in time")
        return self.proc.stdout.readline().strip()

    def send(self, batch: int, seconds: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {batch} {seconds}\n")
        self.proc.stdin.flush()

    def result(self, seconds: float) -> tuple[int, float, float] | None:
        """(frames, wall s, CPU s), or None for a batch the model does not take."""
        words = self.readline(seconds + 120.0).split()
        if words[0] == "error":
            return None
        return int(words[1]), float(words[2]), float(words[3])

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def runtime_alone(runners: list[Runner], batch: int, seconds: float) -> tuple[float, float] | None:
    """All ``runners`` at once on batches of ``batch``: (frames/s summed, CPU µs per frame)."""
    for runner in runners:
        runner.send(batch, seconds)
    results = [runner.result(seconds) for runner in runners]
    if any(r is None for r in results):
        return None
    done = [r for r in results if r is not None]
    frames = sum(r[0] for r in done)
    return sum(r[0] / r[1] for r in done), sum(r[2] for r in done) / frames * 1e6


def start_all(
    model: Path, metrics_port: int, started: list[Any]
) -> tuple[ServerProcess, ServerProcess, dict[str, list[Runner]]]:
    """fastext with the model, the lock server and the runtime-alone processes, started
    at once (each appended to ``started`` as soon as it exists, to be stopped)."""
    runners: dict[str, list[Runner]] = {"2x1": [], "1x2": []}
    for key, threads in (("2x1", 1), ("2x1", 1), ("1x2", 2)):
        runners[key].append(Runner(model, threads))
        started.append(runners[key][-1])
    with ThreadPoolExecutor(2) as pool:
        servers = [
            pool.submit(
                fastext_server,
                "--workers",
                "2",
                "--model",
                f"m={model}",
                "--metrics-port",
                str(metrics_port),
                "--metrics-host",
                "127.0.0.1",
            ),
            pool.submit(lock_server, model),
        ]
        failed = [e for f in servers if (e := f.exception()) is not None]
        started += [f.result() for f in servers if f.exception() is None]
        if failed:
            raise failed[0]
    for runner in (r for rs in runners.values() for r in rs):
        runner.wait_ready()
    return servers[0].result(), servers[1].result(), runners


def lock_server(model: Path) -> ServerProcess:
    return start(
        "lock (one ONNX Runtime session behind a lock)",
        [sys.executable, str(HERE / "lock_server.py"), str(model)],
        r"port (\d+)",
    )


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(found)


def workers(pid: int) -> list[int]:
    """The server's worker processes: its children but multiprocessing's resource tracker
    (a small helper that the spawn start method runs beside them)."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if b"resource_tracker" not in fh.read():
                    found.append(child)
        except OSError:
            continue
    return found


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def model_runs(port: int) -> tuple[float, float, float]:
    """(frames, runtime calls, runtime seconds) so far, from fastext's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {
        "fastext_model_batch_frames_sum": 0.0,
        "fastext_model_batch_frames_count": 0.0,
        "fastext_model_inference_seconds_sum": 0.0,
    }
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return tuple(values.values())  # type: ignore[return-value]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the client -----------------------------------------------------------------------------

_FRAMES: list[bytes] = []


def frames() -> list[bytes]:
    if not _FRAMES:
        _FRAMES.extend(to_pixel_format(rgb, VF.RGB24) for rgb, _ in scenes(WIDTH, HEIGHT, 8, 2))
    return _FRAMES


def stream_round(
    target: str, per_stream: int, config: str, fps: float = 0.0, streams: int = STREAMS
) -> list[StreamResult]:
    source = frames()

    async def go() -> list[StreamResult]:
        opts = [
            StreamOptions(
                target=target,
                width=WIDTH,
                height=HEIGHT,
                shm=True,
                shm_reuse=True,
                window=WINDOW,
                fps=fps,
                extension_configuration=config,
                graph_instance=f"models-{k}",
                ack_timeout_s=120.0,
            )
            for k in range(streams)
        ]
        return list(
            await asyncio.gather(
                *(
                    stream_frames(o, (source[i % len(source)] for i in range(per_stream)))
                    for o in opts
                )
            )
        )

    results = asyncio.run(go())
    got = sum(r.acked for r in results)
    assert got == streams * per_stream, f"{target}: {got} of {streams * per_stream} acked"
    return results


def detections(results: list[StreamResult]) -> float:
    """Inferences per frame (the work each server's decode did)."""
    counts = [len(s.inferences) for r in results for s in r.samples.values()]
    return statistics.mean(counts) if counts else 0.0


# -- the run's servers ----------------------------------------------------------------------


@dataclass
class Setup:
    smoke: bool
    directory: Path
    model: Path
    size: tuple[int, int]
    fastext: ServerProcess
    metrics_port: int
    lock: ServerProcess
    runners: dict[str, list[Runner]] = field(default_factory=dict)


@pytest.fixture(scope="module", params=None)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    smoke = bool(request.config.getoption("benchmark_disable", False))
    with tempfile.TemporaryDirectory(prefix="fastext-bench-models-") as tmp:
        directory = Path(tmp)
        model = model_file(320, directory)
        started: list[Any] = []
        try:
            metrics_port = free_port()
            fastext, lock, runners = start_all(model, metrics_port, started)
            yield Setup(
                smoke, directory, model, input_size(model), fastext, metrics_port, lock, runners
            )
        finally:
            for thing in started:
                thing.stop()


def report(benchmark: Any, title: str, info: dict[str, Any]) -> None:
    benchmark.extra_info.update(info)
    print(f"\n== {title}")
    for key, value in info.items():
        print(f"  {key}: {value}")


# -- 1 and 2: throughput ---------------------------------------------------------------------


def sizes() -> list[int]:
    return [int(s) for s in os.environ.get("FASTEXT_BENCH_SIZES", "320").split(",")]


@pytest.mark.parametrize("size", sizes())
def bench_models_throughput(benchmark: Any, setup: Setup, size: int) -> None:
    """fastext against the runtime alone and against the lock server, rounds rotated."""
    benchmark.group = f"models: throughput, {STREAMS} streams x shm 1080p RGB24"
    if setup.smoke and size != 320:
        pytest.skip("the smoke run measures 320 only")
    st = setup
    if size != 320 and not os.environ.get("FASTEXT_BENCH_MODEL"):  # servers of this size
        model = model_file(size, st.directory)
        port = free_port()
        started: list[Any] = []
        try:
            fastext, lock, runners = start_all(model, port, started)
            throughput(
                benchmark,
                Setup(
                    st.smoke, st.directory, model, input_size(model), fastext, port, lock, runners
                ),
            )
        finally:
            for thing in started:
                thing.stop()
        return
    throughput(benchmark, st)


def throughput(benchmark: Any, st: Setup) -> None:
    frames()  # made before any clock starts
    sweep_s = 0.3 if st.smoke else 2.0
    sweep: dict[str, dict[int, float]] = {"2x1": {}, "1x2": {}}
    for batch in (1,) if st.smoke else BATCHES:
        for key, runners in st.runners.items():
            got = runtime_alone(runners, batch, sweep_s)
            if got is not None:
                sweep[key][batch] = got[0]
    best = {key: max(fps, key=fps.__getitem__) for key, fps in sweep.items()}
    # Rounds near 2.5 s for fastext at the runtime's pace, the lock server at half of it.
    pace = max(max(s.values()) for s in sweep.values())
    per_stream = {
        "fastext": 2 if st.smoke else max(4, round(pace * 2.5 / STREAMS)),
        "lock": 2 if st.smoke else max(3, round(pace * 1.2 / STREAMS)),
    }
    round_s = 0.3 if st.smoke else 2.5
    fps: dict[str, list[float]] = {k: [] for k in ("fastext", "lock", "2x1", "1x2")}
    cpu: dict[str, list[float]] = {
        k: [] for k in ("front", "workers", "client", "lock", "lock_client", "2x1", "1x2")
    }
    inside: list[tuple[float, float, float]] = []  # fastext's runtime calls per round
    dets: dict[str, list[float]] = {"fastext": [], "lock": []}
    turn = [0]

    def server_round(key: str) -> None:
        server = st.fastext if key == "fastext" else st.lock
        config = MODEL_CONFIG if key == "fastext" else ""
        n = per_stream[key]
        before = server.cpu_seconds(), server.children_cpu_seconds(), own_cpu()
        runs = model_runs(st.metrics_port) if key == "fastext" else None
        start_t = time.perf_counter()
        results = stream_round(server.target, n, config)
        elapsed = time.perf_counter() - start_t
        after = server.cpu_seconds(), server.children_cpu_seconds(), own_cpu()
        total = STREAMS * n
        fps[key].append(total / elapsed)
        dets[key].append(detections(results))
        used = [(a - b) / total * 1e6 for a, b in zip(after, before, strict=True)]
        if key == "fastext":
            assert runs is not None
            now = model_runs(st.metrics_port)
            inside.append(tuple(a - b for a, b in zip(now, runs, strict=True)))  # type: ignore[arg-type]
            cpu["front"].append(used[0])
            cpu["workers"].append(used[1])
            cpu["client"].append(used[2])
        else:
            cpu["lock"].append(used[0] + used[1])
            cpu["lock_client"].append(used[2])

    def one_round() -> None:
        order = ["fastext", "lock", "2x1", "1x2"]
        k = turn[0] % len(order)
        turn[0] += 1
        for key in order[k:] + order[:k]:
            if key in ("fastext", "lock"):
                server_round(key)
            else:
                got = runtime_alone(st.runners[key], best[key], round_s)
                assert got is not None
                fps[key].append(got[0])
                cpu[key].append(got[1])

    if st.smoke:
        benchmark.pedantic(one_round, rounds=1, iterations=1)
        return
    benchmark.pedantic(one_round, rounds=5, iterations=1, warmup_rounds=1)
    skip = 1  # the warm-up round is not counted
    med = {k: statistics.median(v[skip:]) for k, v in fps.items()}
    cpu_med = {k: statistics.median(v[skip:]) for k, v in cpu.items()}
    bound_key = max(("2x1", "1x2"), key=med.__getitem__)
    bound = med[bound_key]
    per_round_bound = [max(a, b) for a, b in zip(fps["2x1"][skip:], fps["1x2"][skip:], strict=True)]
    frames_in, calls, seconds = (sum(r[i] for r in inside[skip:]) for i in range(3))
    fastext_cpu = cpu_med["front"] + cpu_med["workers"] + cpu_med["client"]
    lock_cpu = cpu_med["lock"] + cpu_med["lock_client"]
    ort_cpu = cpu_med[bound_key]
    info = {
        "model": str(st.model.name),
        "input": f"{st.size[0]}x{st.size[1]}",
        "model_mb": round(st.model.stat().st_size / 2**20, 2),
        "streams": STREAMS,
        "window": WINDOW,
        "rounds": len(fps["fastext"]) - skip,
        "frames_per_round_fastext": STREAMS * per_stream["fastext"],
        "frames_per_round_lock": STREAMS * per_stream["lock"],
        "sweep_fps": {k: {b: round(v, 2) for b, v in s.items()} for k, s in sweep.items()},
        "best_batch": best,
        "fps_fastext": round(med["fastext"], 2),
        "fps_lock": round(med["lock"], 2),
        "fps_runtime_2x1": round(med["2x1"], 2),
        "fps_runtime_1x2": round(med["1x2"], 2),
        "fps_fastext_rounds": [round(v, 2) for v in fps["fastext"][skip:]],
        "fps_lock_rounds": [round(v, 2) for v in fps["lock"][skip:]],
        "fps_runtime_rounds": [round(v, 2) for v in per_round_bound],
        "ratio_runtime": round(med["fastext"] / bound, 3),
        "ratio_runtime_median_of_rounds": round(
            statistics.median(
                f / b for f, b in zip(fps["fastext"][skip:], per_round_bound, strict=True)
            ),
            3,
        ),
        "ratio_lock": round(med["fastext"] / med["lock"], 2),
        "ratio_lock_median_of_rounds": round(
            statistics.median(
                f / b for f, b in zip(fps["fastext"][skip:], fps["lock"][skip:], strict=True)
            ),
            2,
        ),
        "detections_per_frame_fastext": round(statistics.median(dets["fastext"]), 1),
        "detections_per_frame_lock": round(statistics.median(dets["lock"]), 1),
        # CPU per frame, µs (medians over rounds)
        "front_cpu_us": round(cpu_med["front"]),
        "workers_cpu_us": round(cpu_med["workers"]),
        "client_cpu_us": round(cpu_med["client"]),
        "fastext_cpu_us": round(fastext_cpu),
        "lock_server_cpu_us": round(cpu_med["lock"]),
        "lock_client_cpu_us": round(cpu_med["lock_client"]),
        "lock_cpu_us": round(lock_cpu),
        "runtime_2x1_cpu_us": round(cpu_med["2x1"]),
        "runtime_1x2_cpu_us": round(cpu_med["1x2"]),
        # inside fastext's workers (their metrics): the runtime's calls
        "fastext_mean_batch": round(frames_in / calls, 2) if calls else None,
        # the runtime calls' wall time per frame (includes waits for a core on a busy box)
        "fastext_runtime_wall_us": round(seconds / frames_in * 1e6) if frames_in else None,
        # what 2 cores can do at most: cores / CPU per frame of everything on them
        "cores": CORES,
        "bound_fastext_fps": round(CORES / fastext_cpu * 1e6, 2),
        "bound_runtime_fps": round(CORES / ort_cpu * 1e6, 2),
        "bound_lock_fps": round(CORES / lock_cpu * 1e6, 2),
        "bound_ratio_runtime": round(ort_cpu / fastext_cpu, 3),
        "target_ratio_runtime": 0.90,
        "target_ratio_lock": 1.5,
    }
    # The share of the machine each one got (cores busy: frames/s x CPU per frame); on a
    # shared box, frames/s follow it as much as the CPU per frame.
    info["cores_used_fastext"] = round(med["fastext"] * fastext_cpu / 1e6, 2)
    info["cores_used_lock"] = round(med["lock"] * lock_cpu / 1e6, 2)
    info["cores_used_runtime"] = round(med[bound_key] * ort_cpu / 1e6, 2)
    # Without the client on these cores (a client with its own): the front and workers only.
    info["bound_ratio_runtime_own_client"] = round(
        ort_cpu / (cpu_med["front"] + cpu_med["workers"]), 3
    )
    info["workers_over_runtime_cpu"] = round(cpu_med["workers"] / ort_cpu, 3)
    FIGURES[f"fps_fastext_{st.model}"] = med["fastext"]
    report(benchmark, f"throughput {st.size[0]}x{st.size[1]}", info)


# -- 3: preprocessing ------------------------------------------------------------------------


def bench_models_preprocess(benchmark: Any, setup: Setup) -> None:
    """prepare_raw of a cold 1080p frame into the model's slot against a cold read + write,
    alternated frame by frame; CPU time of this thread."""
    from fastext.models import preprocess
    from fastext.models.preprocess import InputSpec, prepare_raw
    from fastext.vision.frames import PixelFormat

    benchmark.group = "models: preprocess 1080p RGB24 over a cold read + write"
    preprocess.warm()
    spec = InputSpec(*setup.size)
    count = 4 if setup.smoke else 40  # 40 frames: 250 MB, far beyond the last-level cache
    out = np.empty(spec.slot_shape, np.float32)
    cpu: dict[str, list[float]] = {"prepare": [], "read_write": []}
    wall: dict[str, list[float]] = {"prepare": [], "read_write": []}
    with ColdReader(FRAME_BYTES, count, "shm") as reader:
        reader.words.view(np.uint8)[:] = np.arange(reader.words.nbytes, dtype=np.uint32) % 251
        fw = reader.frame_words
        state = {"k": 0}

        def timed(key: str, fn: Any) -> None:
            c, w = time.thread_time(), time.perf_counter()
            fn()
            cpu[key].append(time.thread_time() - c)
            wall[key].append(time.perf_counter() - w)

        def one_pair() -> None:
            k = state["k"]
            state["k"] = (k + 1) % count
            data = reader.words[k * fw : (k + 1) * fw].view(np.uint8)
            timed(
                "prepare", lambda: prepare_raw(data, PixelFormat.RGB24, WIDTH, HEIGHT, 0, out, spec)
            )
            other = (k + count // 2) % count

            def read_write() -> None:
                sum_words(reader.words[other * fw : (other + 1) * fw])
                out.fill(0.5)

            timed("read_write", read_write)

        benchmark.pedantic(one_pair, rounds=2 * count, iterations=1, warmup_rounds=2)
    if setup.smoke:
        return
    med = {k: statistics.median(v) * 1e6 for k, v in cpu.items()}
    info = {
        "input": f"{spec.width}x{spec.height}",
        "slot_bytes": out.nbytes,
        "frames": 2 * count,
        "prepare_cpu_us": round(med["prepare"], 1),
        "cold_read_write_cpu_us": round(med["read_write"], 1),
        "ratio": round(med["prepare"] / med["read_write"], 2),
        "prepare_wall_us": round(statistics.median(wall["prepare"]) * 1e6, 1),
        "cold_read_write_wall_us": round(statistics.median(wall["read_write"]) * 1e6, 1),
        "target_ratio": 1.5,
    }
    report(benchmark, "preprocess", info)


# -- 4: memory --------------------------------------------------------------------------------


def bench_models_memory(benchmark: Any, setup: Setup) -> None:
    """PSS of the front and each worker, with the (640) model against no model."""
    benchmark.group = "models: memory (PSS) with the model against none"
    model = setup.model if setup.smoke else model_file(640, setup.directory)
    figures: dict[str, dict[str, Any]] = {}

    def measure(key: str, server: ServerProcess, config: str) -> None:
        time.sleep(0.2 if setup.smoke else 1.0)
        front = server.proc.pid
        rest = {
            "front": pss_mib(front),
            "workers": [pss_mib(w) for w in workers(front)],
            "helpers": [pss_mib(c) for c in children(front) if c not in workers(front)],
        }
        stream_round(server.target, 2, config)
        time.sleep(0.2 if setup.smoke else 1.0)  # the sessions closed, their files unmapped
        busy = {
            "front": pss_mib(front),
            "workers": [pss_mib(w) for w in workers(front)],
            "helpers": [pss_mib(c) for c in children(front) if c not in workers(front)],
        }
        figures[key] = {"rest": rest, "after_frames": busy}

    def both() -> None:
        if setup.smoke:  # the code path only: the setup's server stands in for both
            measure("none", setup.fastext, "")
            measure("model", setup.fastext, MODEL_CONFIG)
            return
        with ThreadPoolExecutor(2) as pool:  # started at once
            none = pool.submit(fastext_server, "--workers", "2")
            loaded = pool.submit(fastext_server, "--workers", "2", "--model", f"m={model}")
            try:
                measure("none", none.result(), "")
                measure("model", loaded.result(), MODEL_CONFIG)
            finally:
                for future in (none, loaded):
                    if future.exception() is None:
                        future.result().stop()

    benchmark.pedantic(both, rounds=1, iterations=1)
    if setup.smoke:
        return
    size_mib = model.stat().st_size / 2**20
    info: dict[str, Any] = {"model": model.name, "model_mib": round(size_mib, 1)}
    for when in ("rest", "after_frames"):
        none, with_model = figures["none"][when], figures["model"][when]
        growth = [
            round(m - n, 1)
            for m, n in zip(sorted(with_model["workers"]), sorted(none["workers"]), strict=True)
        ]
        total_none = none["front"] + sum(none["workers"]) + sum(none["helpers"])
        total_model = with_model["front"] + sum(with_model["workers"]) + sum(with_model["helpers"])
        info.update(
            {
                f"{when}_front_mib_none": round(none["front"], 1),
                f"{when}_front_mib_model": round(with_model["front"], 1),
                f"{when}_front_growth_mib": round(with_model["front"] - none["front"], 1),
                f"{when}_workers_mib_none": [round(w, 1) for w in none["workers"]],
                f"{when}_workers_mib_model": [round(w, 1) for w in with_model["workers"]],
                f"{when}_worker_growth_mib": growth,
                f"{when}_helpers_mib_model": [round(h, 1) for h in with_model["helpers"]],
                f"{when}_total_mib_none": round(total_none, 1),
                f"{when}_total_mib_model": round(total_model, 1),
                f"{when}_total_growth_mib": round(total_model - total_none, 1),
            }
        )
    info["target_front_growth_mib"] = 5
    info["target_worker_growth_mib"] = round(size_mib + 40, 1)
    report(benchmark, "memory", info)


# -- 5: latency -------------------------------------------------------------------------------


def bench_models_latency(benchmark: Any, setup: Setup) -> None:
    """Ack latency, 4 paced streams: at 15 fps each, and at half of fastext's measured
    throughput (a load within its capacity); fastext and the lock server alternated."""
    benchmark.group = f"models: ack latency, {STREAMS} streams paced"
    rates = [15.0]
    if f"fps_fastext_{setup.model}" in FIGURES:  # the setup's model (320): case 1 ran first
        rates.append(round(FIGURES[f"fps_fastext_{setup.model}"] / 2 / STREAMS, 2))
    latencies: dict[tuple[str, float], list[float]] = {}
    fps: dict[tuple[str, float], list[float]] = {}
    turn = [0]

    def one_pair() -> None:
        turn[0] += 1
        for rate in rates:
            order = [("fastext", setup.fastext, MODEL_CONFIG), ("lock", setup.lock, "")]
            for key, server, config in order if turn[0] % 2 else order[::-1]:
                n = 2 if setup.smoke else max(6, round(rate * (2.0 if rate >= 10 else 4.0)))
                start_t = time.perf_counter()
                results = stream_round(server.target, n, config, fps=rate)
                fps.setdefault((key, rate), []).append(
                    STREAMS * n / (time.perf_counter() - start_t)
                )
                latencies.setdefault((key, rate), []).extend(
                    t for r in results for t in r.latencies_s
                )

    if setup.smoke:
        benchmark.pedantic(one_pair, rounds=1, iterations=1)
        return
    benchmark.pedantic(one_pair, rounds=3, iterations=1)
    info: dict[str, Any] = {"streams": STREAMS, "window": WINDOW}
    for (key, rate), values in latencies.items():
        cuts = statistics.quantiles(values, n=100)
        tag = f"{key}_{rate:g}fps"
        info[f"{tag}_ack_p50_ms"] = round(cuts[49] * 1e3, 1)
        info[f"{tag}_ack_p99_ms"] = round(cuts[98] * 1e3, 1)
        info[f"{tag}_offered_fps"] = round(STREAMS * rate, 1)
        info[f"{tag}_reached_fps"] = round(statistics.median(fps[(key, rate)]), 2)
        info[f"{tag}_samples"] = len(values)
    report(benchmark, "latency", info)
