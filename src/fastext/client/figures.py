"""A stream's live figures: frames/s, ack latency p50/p99, inferences/s by type.

Computed over the last few seconds, so the live view shows how the stream runs
now, not since it began (the run's summary does that).  Acks are recorded on the
event loop; snapshots are taken by the view's threads: one lock, held briefly.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["StreamFigures"]


class StreamFigures:
    """Figures of one stream over the last ``span_s`` seconds (at most ``cap`` acks)."""

    def __init__(
        self, span_s: float = 5.0, cap: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.span_s, self._clock = span_s, clock
        self._acks: deque[tuple[float, float, tuple[str, ...]]] = deque(maxlen=cap)
        self._lock = threading.Lock()
        self.started: float | None = None  # the first ack: start-up is not counted as slowness
        self.acked = 0

    def record(self, latency_s: float, types: Iterable[str]) -> None:
        """One acknowledged frame: its ack latency and its inferences' types."""
        now = self._clock()
        with self._lock:
            if self.started is None:
                self.started = now
            self._acks.append((now, latency_s, tuple(types)))
            self.acked += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._acks and self._acks[0][0] < now - self.span_s:
            self._acks.popleft()

    def snapshot(self) -> dict[str, Any]:
        """``{"acked", "fps", "latency_ms": {"p50", "p99"}, "inferences_per_s": {type: n}}``."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            recent = list(self._acks)
            acked, started = self.acked, self.started
        # Over the span, or since the first ack while that is more recent (at least 1 s).
        seconds = self.span_s if started is None else max(min(self.span_s, now - started), 1.0)
        latencies = sorted(latency for _, latency, _ in recent)
        counts: Counter[str] = Counter(t for _, _, types in recent for t in types)
        return {
            "acked": acked,
            "fps": round(len(recent) / seconds, 1),
            "latency_ms": {"p50": _rank(latencies, 0.50), "p99": _rank(latencies, 0.99)},
            "inferences_per_s": {t: round(n / seconds, 1) for t, n in sorted(counts.items())},
        }


def _rank(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of ``ordered`` in milliseconds; None when empty."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) - 1e-9) - 1))
    return round(ordered[index] * 1e3, 2)
