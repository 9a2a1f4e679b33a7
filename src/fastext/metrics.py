"""Prometheus metrics, cheap on the hot path.

Every event is one method call on a :class:`Metrics`; with metrics off
(``--metrics-port 0``) it is a :class:`NullMetrics`, whose methods do nothing,
so "off" costs a call and "on" costs a few lock-protected additions.  Each
server has its own registry (tests run several servers in one process).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["Metrics", "NullMetrics", "make_metrics"]

log = logging.getLogger("fastext.metrics")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NullMetrics:
    """Metrics off: every event is a no-op."""

    def frame_acked(self, outcome: str, latency_s: float, held_permit: bool) -> None: ...
    def frame_accepted(self) -> None: ...
    def batch_done(self, queue_wait_s: float, processing_s: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def stream_started(self, shm_bytes: int) -> None: ...
    def stream_ended(self, shm_bytes: int) -> None: ...
    def worker_restarted(self) -> None: ...
    def auth_failed(self) -> None: ...
    def close(self) -> None: ...


class Metrics(NullMetrics):
    """The server's Prometheus metrics, served over HTTP on ``port`` (0: not served)."""

    def __init__(self, port: int = 0, addr: str = "0.0.0.0") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        frames = Counter("fastext_frames", "Frames acknowledged, by outcome: inferred (with "
                         "inferences), empty (processed, nothing found), invalid (bad sample), "
                         "dropped (overload policy drop)", ["outcome"], registry=r)
        self._outcomes = {name: frames.labels(name)
                          for name in ("inferred", "empty", "invalid", "dropped")}
        self._streams = Gauge("fastext_streams_active", "Open ProcessMediaStream calls", registry=r)
        self._in_flight = Gauge("fastext_frames_in_flight", "Frames read but not yet acknowledged",
                                registry=r)
        self._queue = Gauge("fastext_queue_depth", "Batches waiting for a worker or arena space",
                            registry=r)
        self._wait = Histogram("fastext_queue_wait_seconds", "Time a batch waited before a worker "
                               "started it", buckets=_LATENCY_BUCKETS, registry=r)
        self._processing = Histogram("fastext_processing_seconds", "Time a worker spent on a batch",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self._latency = Histogram("fastext_frame_latency_seconds", "From a sample's arrival to its "
                                  "acknowledgement", buckets=_LATENCY_BUCKETS, registry=r)
        self._restarts = Counter("fastext_worker_restarts", "Worker processes restarted after "
                                 "they died", registry=r)
        self._shm = Gauge("fastext_shared_memory_mapped_bytes", "Bytes of clients' shared memory "
                          "mapped by open sessions", registry=r)
        self._auth = Counter("fastext_auth_failures", "Calls refused for missing or wrong "
                             "x-ms-authentication credentials", registry=r)
        self._http: Any = None
        if port:
            from prometheus_client import start_http_server

            self._http, _ = start_http_server(port, addr=addr, registry=r)
            log.info("metrics on http://%s:%d/metrics", addr, port)

    def frame_acked(self, outcome: str, latency_s: float, held_permit: bool) -> None:
        self._outcomes[outcome].inc()
        self._latency.observe(latency_s)
        if held_permit:
            self._in_flight.dec()

    def frame_accepted(self) -> None:
        self._in_flight.inc()

    def batch_done(self, queue_wait_s: float, processing_s: float) -> None:
        self._wait.observe(max(queue_wait_s, 0.0))
        self._processing.observe(processing_s)

    def queue_depth(self, depth: int) -> None:
        self._queue.set(depth)

    def stream_started(self, shm_bytes: int) -> None:
        self._streams.inc()
        self._shm.inc(shm_bytes)

    def stream_ended(self, shm_bytes: int) -> None:
        self._streams.dec()
        self._shm.dec(shm_bytes)

    def worker_restarted(self) -> None:
        self._restarts.inc()

    def auth_failed(self) -> None:
        self._auth.inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (for tests and the benchmark)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def make_metrics(port: int, enabled: bool | None = None) -> NullMetrics:
    """Metrics served on ``port``; counting is on when served (or when ``enabled``)."""
    if enabled is None:
        enabled = port > 0
    return Metrics(port) if enabled else NullMetrics()
