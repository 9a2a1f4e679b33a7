"""What metrics cost per frame on the front's hot path: on vs off, side by side.

One frame's events — accepted, acked (outcome + latency), its batch's timings, the
queue depth — through :class:`Metrics` (on) and :class:`NullMetrics` (off).  Compare
with the front's whole CPU per frame in bench_e2e (``front_cpu_us_per_frame``, about
110–150 µs for shared-memory 416x416): the target is a cost of at most 5 %.
"""

from __future__ import annotations

import pytest

from fastext.metrics import Metrics, NullMetrics


def one_frame(metrics: NullMetrics) -> None:
    metrics.frame_accepted()
    metrics.batch_done(0.0004, 0.0011)
    metrics.queue_depth(3)
    metrics.frame_acked("inferred", 0.0032, True)


@pytest.mark.benchmark(group="metrics events for one frame")
@pytest.mark.parametrize("state", ["off", "on"])
def bench_metrics_per_frame(benchmark, state):
    metrics = Metrics(0) if state == "on" else NullMetrics()
    benchmark(one_frame, metrics)
    if isinstance(metrics, Metrics):
        assert metrics.outcomes["inferred"] >= 1 and metrics.in_flight == 0
