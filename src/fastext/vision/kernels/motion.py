"""The motion detector's kernels (:mod:`fastext.processors.motion`): the per-frame pass
against the background, and the grouping of moving cells into regions."""

from __future__ import annotations

import numpy as np

from fastext.vision.kernels.common import jit


@jit
def _block_row_sums(acc, s, out_w, sums):  # type: ignore[no-untyped-def]
    """``sums[j]`` = sum of ``acc[j*s : j*s+s]`` (the last block may be short)."""
    width = acc.shape[0]
    full = width // s
    # Literal block sizes let LLVM vectorise the common cases.
    if s == 1:
        for j in range(full):
            sums[j] = np.uint32(acc[j])
    elif s == 2:
        for j in range(full):
            sums[j] = np.uint32(acc[2 * j]) + np.uint32(acc[2 * j + 1])
    elif s == 4:
        for j in range(full):
            sums[j] = (
                np.uint32(acc[4 * j])
                + np.uint32(acc[4 * j + 1])
                + np.uint32(acc[4 * j + 2])
                + np.uint32(acc[4 * j + 3])
            )
    else:
        for j in range(full):
            t = np.uint32(0)
            base = j * s
            for i in range(s):
                t += np.uint32(acc[base + i])
            sums[j] = t
    if full < out_w:
        t = np.uint32(0)
        for i in range(full * s, width):
            t += np.uint32(acc[i])
        sums[full] = t


@jit
def _cell_row(changed, words, cell_of, wy, cy, counts, extents):  # type: ignore[no-untyped-def]
    """Add the changed pixels of work row ``wy`` (flags in ``changed``, also seen as
    64-bit ``words``) to their cells of cell row ``cy``: counts and extents."""
    for w in range(words.shape[0]):
        if words[w] == 0:  # eight unchanged pixels at once: most of a frame
            continue
        for x in range(8 * w, 8 * w + 8):
            if changed[x] == 0:
                continue
            cx = cell_of[x]
            if counts[cy, cx] == 0:
                extents[cy, cx, 0] = x
                extents[cy, cx, 1] = wy
                extents[cy, cx, 2] = x
            else:
                extents[cy, cx, 0] = min(extents[cy, cx, 0], x)
                extents[cy, cx, 2] = max(extents[cy, cx, 2], x)
            extents[cy, cx, 3] = wy
            counts[cy, cx] += 1


@jit
def motion_cells(luma, s, k, background, threshold, alpha, init, counts, extents):  # type: ignore[no-untyped-def]
    """Compare one luma frame with the background; count changed pixels per cell.

    ``luma`` (H, W) is averaged over s x s blocks into the work image, whose shape
    ``background`` (ceil(H/s), ceil(W/s)) float32 has. A work pixel has changed when
    it differs from the background by more than ``threshold``; the background then
    moves towards it by ``alpha`` (with ``init``, it is set to it and nothing changes).
    Cells are k x k work pixels: ``counts`` (cells) gets the changed pixels of each,
    ``extents`` (cells, 4) their bounding box in work pixels (x0, y0, x1, y1 inclusive).
    """
    height, width = luma.shape
    work_h, work_w = background.shape
    if s < 1 or s > 257 or k < 1:
        raise ValueError("s must be within 1..257 and k positive")
    if work_h != (height + s - 1) // s or work_w != (width + s - 1) // s:
        raise ValueError("background must have shape (ceil(H/s), ceil(W/s))")
    cells_h = (work_h + k - 1) // k
    cells_w = (work_w + k - 1) // k
    if counts.shape[0] != cells_h or counts.shape[1] != cells_w:
        raise ValueError("counts must have shape (cells high, cells wide)")
    counts[:] = 0
    a = np.float32(alpha)
    thr = np.float32(threshold)
    acc = np.empty(width, np.uint16)  # s <= 257: s * 255 fits
    sums = np.empty(work_w, np.uint32)
    inv = np.empty(work_w, np.float32)
    changed = np.zeros(-(-work_w // 8) * 8, np.uint8)  # padded to whole words, tail zero
    words = changed.view(np.uint64)
    cell_of = np.empty(work_w, np.int64)
    for wx in range(work_w):
        cell_of[wx] = wx // k
    inv_rows = 0
    for wy in range(work_h):
        y0 = wy * s
        rows = min(s, height - y0)
        src = luma[y0]
        for x in range(width):
            acc[x] = src[x]
        for dy in range(1, rows):
            src = luma[y0 + dy]
            for x in range(width):
                acc[x] = np.uint16(acc[x] + np.uint16(src[x]))
        _block_row_sums(acc, s, work_w, sums)
        if rows != inv_rows:  # only the last work row may have fewer rows
            inv_rows = rows
            for wx in range(work_w):
                inv[wx] = np.float32(1.0 / (rows * min(s, width - wx * s)))
        bg = background[wy]
        if init:
            for wx in range(work_w):
                bg[wx] = np.float32(sums[wx]) * inv[wx]
            continue
        # Branch-free, so it vectorises; the changed pixels are gathered per cell after.
        any_changed = False
        for wx in range(work_w):
            v = np.float32(sums[wx]) * inv[wx]
            d = v - bg[wx]
            bg[wx] = bg[wx] + a * d
            c = abs(d) > thr
            changed[wx] = c
            any_changed |= c
        if any_changed:
            _cell_row(changed, words, cell_of, wy, wy // k, counts, extents)


@jit
def _find(parent, i):  # type: ignore[no-untyped-def]
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@jit
def motion_regions(counts, extents, min_count, radius, boxes):  # type: ignore[no-untyped-def]
    """Group moving cells into regions; return how many rows of ``boxes`` it filled.

    A cell moves when ``counts`` >= ``min_count``; moving cells at most ``radius``
    cells apart (horizontally, vertically or diagonally) belong to one region (a
    union-find). ``boxes`` (cells, 5) int64 gets per region, in order of each region's
    first cell in row-major order: x0, y0, x1, y1 (inclusive, work pixels) and the
    number of changed work pixels.
    """
    cells_h, cells_w = counts.shape
    n = cells_h * cells_w
    parent = np.empty(n, np.int64)
    for i in range(n):
        parent[i] = i
    for cy in range(cells_h):
        for cx in range(cells_w):
            if counts[cy, cx] < min_count:
                continue
            here = cy * cells_w + cx
            # Only neighbours after this cell in row-major order: each pair once.
            for dy in range(radius + 1):
                ny = cy + dy
                if ny >= cells_h:
                    break
                for dx in range(-radius, radius + 1):
                    nx = cx + dx
                    if (dy == 0 and dx <= 0) or nx < 0 or nx >= cells_w:
                        continue
                    if counts[ny, nx] >= min_count:
                        ra = _find(parent, here)
                        rb = _find(parent, ny * cells_w + nx)
                        if ra != rb:
                            # The smaller index stays root: regions keep row-major order.
                            if ra < rb:
                                parent[rb] = ra
                            else:
                                parent[ra] = rb
    slot = np.full(n, -1, np.int64)
    found = 0
    for cy in range(cells_h):
        for cx in range(cells_w):
            if counts[cy, cx] < min_count:
                continue
            root = _find(parent, cy * cells_w + cx)
            j = slot[root]
            if j < 0:
                j = found
                slot[root] = j
                found += 1
                boxes[j, 0] = extents[cy, cx, 0]
                boxes[j, 1] = extents[cy, cx, 1]
                boxes[j, 2] = extents[cy, cx, 2]
                boxes[j, 3] = extents[cy, cx, 3]
                boxes[j, 4] = counts[cy, cx]
            else:
                boxes[j, 0] = min(boxes[j, 0], extents[cy, cx, 0])
                boxes[j, 1] = min(boxes[j, 1], extents[cy, cx, 1])
                boxes[j, 2] = max(boxes[j, 2], extents[cy, cx, 2])
                boxes[j, 3] = max(boxes[j, 3], extents[cy, cx, 3])
                boxes[j, 4] += counts[cy, cx]
    return found
