"""Prometheus metrics: values after a known number of frames, scraped over HTTP."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from fastext._proto.media_pb2 import VideoFrameSampleFormat as VF
from fastext.client.synthetic import to_pixel_format
from fastext.metrics import Metrics, NullMetrics, make_metrics
from tests.helpers import (
    AZURE,
    ORANGE,
    descriptor,
    embedded,
    exchange,
    free_port,
    open_call,
    scrape,
    solid,
)

# portable: counting and exposition in Python (the ARM64 stage leaves it to the native run).
pytestmark = pytest.mark.portable


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "workers"])
def test_metrics_after_known_frames(make_server, workers):
    port = free_port()
    srv = make_server(workers=workers, metrics_port=port)
    light = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
    dark = to_pixel_format(solid(AZURE, 32, 32), VF.RGB24)
    msgs = [descriptor(32, 32)] + [embedded(i + 2, light if i % 2 else dark) for i in range(17)]
    msgs.append(embedded(19, light[:10]))  # one invalid: too short
    replies, code, _ = exchange(srv.target, msgs)
    assert code == grpc.StatusCode.OK and len(replies) == 19
    m = scrape(port)
    assert m['fastext_frames_total{outcome="inferred"}'] == 17
    assert m['fastext_frames_total{outcome="invalid"}'] == 1
    assert m['fastext_frames_total{outcome="dropped"}'] == 0
    # The server's own faults each have a label, exposed (at 0) before any happens.
    for label in ("empty", "error", "lost", "shutdown"):
        assert m[f'fastext_frames_total{{outcome="{label}"}}'] == 0
    assert m["fastext_frame_latency_seconds_count"] == 18
    assert m["fastext_frames_in_flight"] == 0
    assert m["fastext_streams_active"] == 0
    assert m["fastext_processing_seconds_count"] >= 1
    assert m["fastext_queue_wait_seconds_count"] == m["fastext_processing_seconds_count"]
    assert m["fastext_worker_restarts_total"] == 0
    assert m["fastext_shared_memory_mapped_bytes"] == 0
    # Read from the rings' own counters at scrape time (workers only): no lost wake-up.
    assert m["fastext_ring_unsignalled_wakeups_total"] == 0


def test_auth_failures_and_drops_are_counted(make_server):
    port = free_port()
    srv = make_server(
        metrics_port=port,
        auth_username="lva",
        auth_password="pw",
        overload="drop",
        max_inflight=1,
        batch_size=4,
        batch_delay_ms=30.0,
    )
    frame = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)
    _, code, _ = exchange(srv.target, [descriptor(32, 32)])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    import base64

    auth = (("x-ms-authentication", "Basic " + base64.b64encode(b"lva:pw").decode()),)
    msgs = [descriptor(32, 32)] + [embedded(i + 2, frame) for i in range(20)]
    replies, code, _ = exchange(srv.target, msgs, metadata=auth)
    assert code == grpc.StatusCode.OK
    m = scrape(port)
    assert m["fastext_auth_failures_total"] == 1
    empty = sum(1 for r in replies[1:] if not r.media_sample.inferences)
    assert m['fastext_frames_total{outcome="dropped"}'] == empty > 0
    assert m['fastext_frames_total{outcome="inferred"}'] == 20 - empty


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "workers"])
def test_frames_of_a_vanished_client_leave_the_in_flight_gauge(make_server, workers):
    """A call cancelled with frames read but not acked: the gauge goes back to 0."""
    srv = make_server(
        workers=workers, metrics_port=free_port(), batch_size=8, batch_delay_ms=5000.0
    )  # the frames sit in a pending batch
    metrics = srv.server.metrics
    frame = to_pixel_format(solid(ORANGE, 32, 32), VF.RGB24)

    async def vanish() -> None:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            call = open_call(channel)
            await call.write(descriptor(32, 32))
            assert (await call.read()).ack_sequence_number == 1
            for i in range(5):
                await call.write(embedded(i + 2, frame))
            assert await _until(lambda: metrics.in_flight == 5), metrics.in_flight
            call.cancel()

    asyncio.run(vanish())
    assert asyncio.run(_until(lambda: srv.sessions() == 0)), "the session did not end"
    assert metrics.value("fastext_frames_in_flight") == 0
    assert metrics.value("fastext_streams_active") == 0


async def _until(predicate, timeout: float = 10.0) -> bool:
    """Poll state another thread owns (no event to await), up to ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


def test_metrics_off_is_a_null_object():
    assert type(make_metrics(0)) is NullMetrics
    on = make_metrics(0, enabled=True)
    assert isinstance(on, Metrics)
    on.frame_accepted()
    on.frame_acked("empty", 0.001, True)
    assert on.value("fastext_frames_total", {"outcome": "empty"}) == 1
    assert on.value("fastext_frames_in_flight") == 0


def test_unsignalled_wakeups_are_read_from_their_source_at_scrape_time():
    on = make_metrics(0, enabled=True)
    assert on.value("fastext_ring_unsignalled_wakeups_total") == 0  # no source: 0
    counts = [0]
    on.count_unsignalled_wakeups(lambda: counts[0])
    counts[0] = 3
    assert on.value("fastext_ring_unsignalled_wakeups_total") == 3


@pytest.mark.parametrize("host", ["127.0.0.1", None], ids=["loopback", "default"])
def test_metrics_listen_on_the_configured_host(make_server, host):
    port = free_port()
    changes = {"metrics_host": host} if host else {}
    srv = make_server(metrics_port=port, **changes)
    http = srv.server.metrics._http
    assert http.server_address == (host or "0.0.0.0", port)
    assert scrape(port)["fastext_streams_active"] == 0  # 127.0.0.1 reaches both
