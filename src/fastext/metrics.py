"""Prometheus metrics, cheap on the hot path.

Every event is one method call on a :class:`Metrics`; with metrics off
(``--metrics-port 0``) it is a :class:`NullMetrics`, whose methods do nothing.
"On" costs a few integer additions per frame: the Prometheus families are built
only when scraped.  Each server has its own registry (tests run several servers
in one process).
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from fastext.outcomes import Outcome

__all__ = ["Metrics", "MetricsSink", "NullMetrics", "make_metrics"]

log = logging.getLogger("fastext.metrics")
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsSink(Protocol):
    """What the server, sessions and backends report to: one method per event."""

    enabled: bool  # False: nothing is counted, so callers may skip computing a value

    def frame_acked(self, outcome: str, latency_s: float, held_permit: bool) -> None: ...
    def frame_accepted(self) -> None: ...
    def frames_unacked(self, count: int) -> None: ...
    def batch_done(self, queue_wait_s: float, processing_s: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def stream_started(self, shm_bytes: int) -> None: ...
    def stream_ended(self, shm_bytes: int) -> None: ...
    def worker_restarted(self) -> None: ...
    def model_run(self, model: str, frames: int, seconds: float) -> None: ...
    def worker_launch_failed(self) -> None: ...
    def auth_failed(self) -> None: ...
    def count_unsignalled_wakeups(self, source: Callable[[], int]) -> None: ...
    def close(self) -> None: ...


class NullMetrics:
    """Metrics off: every event is a no-op."""

    enabled = False

    def frame_acked(self, outcome: str, latency_s: float, held_permit: bool) -> None: ...
    def frame_accepted(self) -> None: ...
    def frames_unacked(self, count: int) -> None: ...
    def batch_done(self, queue_wait_s: float, processing_s: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def stream_started(self, shm_bytes: int) -> None: ...
    def stream_ended(self, shm_bytes: int) -> None: ...
    def worker_restarted(self) -> None: ...
    def model_run(self, model: str, frames: int, seconds: float) -> None: ...
    def worker_launch_failed(self) -> None: ...
    def auth_failed(self) -> None: ...
    def count_unsignalled_wakeups(self, source: Callable[[], int]) -> None: ...
    def close(self) -> None: ...


class _Histogram:
    """Bucket counts kept as plain integers; turned into a Prometheus family at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, buckets = 0, list[tuple[str, float]]()
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return buckets

    def family(self, name: str, doc: str) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        return HistogramMetricFamily(name, doc, buckets=self.buckets(), sum_value=self.total)


class Metrics(NullMetrics):
    """The server's Prometheus metrics, served over HTTP on ``port`` (0: not served).

    The hot path only adds to integers owned by the event loop (batch timings from
    the in-process thread pool take a lock, once per batch); ``prometheus_client``
    builds the metric families from them when scraped.
    """

    enabled = True

    def __init__(self, port: int = 0, addr: str = "0.0.0.0") -> None:
        from prometheus_client import CollectorRegistry

        self.outcomes = {kind.label: 0 for kind in Outcome}  # by fastext_frames_total's label
        self.streams = self.in_flight = self.queue = self.restarts = self.shm = self.auth = 0
        self.launch_failures = 0
        self.latency = _Histogram(_LATENCY_BUCKETS)
        self.wait = _Histogram(_LATENCY_BUCKETS)
        self.processing = _Histogram(_LATENCY_BUCKETS)
        self._unsignalled: Callable[[], int] | None = None
        # Per model: frames per runtime call, and the call's time (reported by workers).
        self.model_batches: dict[str, _Histogram] = {}
        self.model_seconds: dict[str, _Histogram] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)  # collect() below
        self._http: Any = None
        if port:
            from prometheus_client import start_http_server

            self._http, _ = start_http_server(port, addr=addr, registry=self.registry)
            log.info("metrics on http://%s:%d/metrics", addr, port)

    def frame_acked(self, outcome: str, latency_s: float, held_permit: bool) -> None:
        """A frame was acknowledged; ``outcome`` is its :class:`Outcome`'s label."""
        self.outcomes[outcome] += 1
        self.latency.observe(latency_s)
        if held_permit:
            self.in_flight -= 1

    def frame_accepted(self) -> None:
        self.in_flight += 1

    def frames_unacked(self, count: int) -> None:
        """A session ended with ``count`` accepted frames it will never acknowledge."""
        self.in_flight -= count

    def batch_done(self, queue_wait_s: float, processing_s: float) -> None:
        with self._lock:  # called from the in-process pool's threads too
            self.wait.observe(max(queue_wait_s, 0.0))
            self.processing.observe(processing_s)

    def queue_depth(self, depth: int) -> None:
        self.queue = depth

    def stream_started(self, shm_bytes: int) -> None:
        self.streams += 1
        self.shm += shm_bytes

    def stream_ended(self, shm_bytes: int) -> None:
        self.streams -= 1
        self.shm -= shm_bytes

    def worker_restarted(self) -> None:
        self.restarts += 1

    def worker_launch_failed(self) -> None:
        self.launch_failures += 1

    def auth_failed(self) -> None:
        self.auth += 1

    def model_run(self, model: str, frames: int, seconds: float) -> None:
        """One runtime call of ``model`` on ``frames`` frames (of any sessions) took ``seconds``."""
        with self._lock:  # the in-process backend reports from its threads
            if model not in self.model_batches:
                self.model_batches[model] = _Histogram(_BATCH_BUCKETS)
                self.model_seconds[model] = _Histogram(_LATENCY_BUCKETS)
            self.model_batches[model].observe(frames)
            self.model_seconds[model].observe(seconds)

    def count_unsignalled_wakeups(self, source: Callable[[], int]) -> None:
        """``source()`` is read at scrape time (the counts live in the rings)."""
        self._unsignalled = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        frames = CounterMetricFamily(
            "fastext_frames",
            "Frames acknowledged, by outcome: inferred (with inferences), "
            "empty (processed, nothing found), invalid (bad sample: the client's), error "
            "(the processor failed: the server's), lost (its worker died every time it ran), "
            "shutdown (the server stopped first), dropped (overload drop)",
            labels=["outcome"],
        )
        for name, count in self.outcomes.items():
            frames.add_metric([name], count)
        yield frames
        yield GaugeMetricFamily(
            "fastext_streams_active", "Open ProcessMediaStream calls", value=self.streams
        )
        yield GaugeMetricFamily(
            "fastext_frames_in_flight", "Frames read but not yet acknowledged", value=self.in_flight
        )
        yield GaugeMetricFamily(
            "fastext_queue_depth", "Batches waiting for a worker or arena space", value=self.queue
        )
        yield GaugeMetricFamily(
            "fastext_shared_memory_mapped_bytes",
            "Bytes of clients' shared memory mapped by open sessions",
            value=self.shm,
        )
        yield CounterMetricFamily(
            "fastext_worker_restarts",
            "Worker processes restarted after they died",
            value=self.restarts,
        )
        yield CounterMetricFamily(
            "fastext_worker_launch_failures",
            "Worker restarts that could "
            "not start a process (/dev/shm full, no file descriptors, "
            "fork refused); each is tried again",
            value=self.launch_failures,
        )
        yield CounterMetricFamily(
            "fastext_auth_failures",
            "Calls refused for missing or wrong x-ms-authentication credentials",
            value=self.auth,
        )
        yield CounterMetricFamily(
            "fastext_ring_unsignalled_wakeups",
            "Ring sleeps that ran out at the 100 ms cap and "
            "found progress nobody signalled: lost wake-ups the cap rescued (should stay 0)",
            value=self._unsignalled() if self._unsignalled is not None else 0,
        )
        with self._lock:
            yield self.wait.family(
                "fastext_queue_wait_seconds", "Time a batch waited before a worker started it"
            )
            yield self.processing.family(
                "fastext_processing_seconds", "Time a worker spent on a batch"
            )
        yield self.latency.family(
            "fastext_frame_latency_seconds", "From a sample's arrival to its acknowledgement"
        )
        yield from self._model_families()

    def _model_families(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        batches = HistogramMetricFamily(
            "fastext_model_batch_frames",
            "Frames in one runtime call of a model (batched across streams)",
            labels=["model"],
        )
        seconds = HistogramMetricFamily(
            "fastext_model_inference_seconds",
            "Time of one runtime call of a model",
            labels=["model"],
        )
        with self._lock:
            for model in sorted(self.model_batches):
                batch, took = self.model_batches[model], self.model_seconds[model]
                batches.add_metric([model], batch.buckets(), batch.total)
                seconds.add_metric([model], took.buckets(), took.total)
        yield batches
        yield seconds

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (for tests and the benchmark)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def make_metrics(port: int, enabled: bool | None = None, host: str = "0.0.0.0") -> MetricsSink:
    """Metrics served on ``host:port``; counting is on when served (or when ``enabled``)."""
    if enabled is None:
        enabled = port > 0
    return Metrics(port, host) if enabled else NullMetrics()
