"""The motion detector's algorithm in plain numpy: the baseline of bench_motion.py.

Benchmarks never import tests and tests never import bench: the test's oracle is its own,
``tests.helpers.reference_motion`` (written for reading, not speed).
"""

from __future__ import annotations

import numpy as np

from fastext.processors.motion import CELLS, LINK_RADIUS, WORK_SIZE, threshold_for

Box = tuple[float, float, float, float]


class NumpyMotion:
    """A straightforward numpy + Python rendering of :class:`MotionDetector`'s algorithm."""

    def __init__(self, sensitivity: float = 0.75, min_area: float = 0.001, alpha: float = 0.1):
        self.threshold = np.float32(threshold_for(sensitivity))
        self.alpha = np.float32(alpha)
        self.min_area = min_area
        self.shape: tuple[int, int] | None = None
        self.background = np.zeros((0, 0), np.float32)

    def detect(self, luma: np.ndarray) -> list[Box]:
        h, w = luma.shape
        s = max(1, -(-max(h, w) // WORK_SIZE))
        wh, ww = -(-h // s), -(-w // s)
        padded = np.zeros((wh * s, ww * s), np.uint32)
        padded[:h, :w] = luma
        sums = padded.reshape(wh, s, ww, s).sum(axis=(1, 3))
        rows = np.minimum(s, h - np.arange(wh) * s)
        cols = np.minimum(s, w - np.arange(ww) * s)
        inv = (1.0 / (rows[:, None] * cols[None, :])).astype(np.float32)
        work = sums.astype(np.float32) * inv
        if self.shape != (h, w):
            self.shape = (h, w)
            self.background = work
            return []
        diff = work - self.background
        self.background = self.background + self.alpha * diff
        changed = np.abs(diff) > self.threshold
        k = max(1, round(max(wh, ww) / CELLS))
        return self._regions(changed, k, s, h, w)

    def _regions(self, changed: np.ndarray, k: int, s: int, h: int, w: int) -> list[Box]:
        wh, ww = changed.shape
        ch, cw = -(-wh // k), -(-ww // k)
        ys, xs = np.nonzero(changed)
        cells = (ys // k) * cw + xs // k
        count = np.bincount(cells, minlength=ch * cw)
        big = np.iinfo(np.int64).max
        x0 = np.full(ch * cw, big)
        y0 = np.full(ch * cw, big)
        x1 = np.full(ch * cw, -1)
        y1 = np.full(ch * cw, -1)
        np.minimum.at(x0, cells, xs)
        np.minimum.at(y0, cells, ys)
        np.maximum.at(x1, cells, xs)
        np.maximum.at(y1, cells, ys)
        moving = count >= max(1, k * k // 16)
        parent = list(range(ch * cw))

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for c in np.flatnonzero(moving).tolist():
            cy, cx = divmod(c, cw)
            for ny in range(cy - LINK_RADIUS, cy + LINK_RADIUS + 1):
                for nx in range(cx - LINK_RADIUS, cx + LINK_RADIUS + 1):
                    if 0 <= ny < ch and 0 <= nx < cw and moving[ny * cw + nx]:
                        a, b = find(c), find(ny * cw + nx)
                        parent[max(a, b)] = min(a, b)
        regions: dict[int, list[int]] = {}
        for c in np.flatnonzero(moving).tolist():
            r = regions.setdefault(find(c), [big, big, -1, -1, 0])
            r[0], r[1] = min(r[0], int(x0[c])), min(r[1], int(y0[c]))
            r[2], r[3] = max(r[2], int(x1[c])), max(r[3], int(y1[c]))
            r[4] += int(count[c])
        boxes = []
        for bx0, by0, bx1, by1, n in regions.values():  # dict order: first cell, row-major
            if n < self.min_area * wh * ww:
                continue
            left, top = min(bx0 * s, w) / w, min(by0 * s, h) / h
            right, bottom = min((bx1 + 1) * s, w) / w, min((by1 + 1) * s, h) / h
            boxes.append((left, top, right - left, bottom - top))
        return boxes
