"""What every kernel module shares: the jit decorators, the strided-row overload, the
cache prefetch hint, the
RGB565/RGB555 unpacking and the argument checks of more than one module's kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

jit = njit(nogil=True, cache=True, boundscheck=False)
# For small loops a kernel calls in its own inner loop: numba inlines them where they
# are called, so each call site keeps its constants (and pays no call per chunk).
jit_inline = njit(nogil=True, cache=True, boundscheck=False, inline="always")
# Typed as Any: numba's stub of jit_options lacks boundscheck, which it accepts.
_OVERLOAD_OPTIONS: Any = {"nogil": True, "boundscheck": False}


def _row_as_c(row, scratch):  # type: ignore[no-untyped-def]
    """``row`` itself when numba knows it is contiguous, else a copy in ``scratch``."""
    raise NotImplementedError("only callable from numba kernels")


@overload(_row_as_c, jit_options=_OVERLOAD_OPTIONS)
def _row_as_c_impl(row, scratch):  # type: ignore[no-untyped-def]
    if isinstance(row, types.Array) and row.layout == "C":
        return lambda row, scratch: row

    def copy(row, scratch):  # type: ignore[no-untyped-def]
        n = row.shape[0]
        for i in range(n):
            scratch[i] = row[i]
        return scratch[:n]

    return copy


@intrinsic
def prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Ask for the cache line holding ``array[index]`` (1-D) to be read ahead: LLVM's
    ``llvm.prefetch`` (x86-64 ``prefetcht0``, aarch64 ``prfm pldl1keep``). A hint only:
    it never faults, changes no value, and is a no-op where the target has none."""
    if not isinstance(array, types.Array) or array.ndim != 1:
        return None
    if not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr], fnty)
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_ptr)
        # read (0), highest locality (3), data cache (1)
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


@jit
def _expand5(v):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(v << 3) | np.uint32(v >> 2))


@jit
def _expand6(v):  # type: ignore[no-untyped-def]
    return np.uint32(np.uint32(v << 2) | np.uint32(v >> 4))


@jit
def _unpack16(lo_byte, hi_byte, is565):  # type: ignore[no-untyped-def]
    """8-bit (R, G, B) of one RGB565/RGB555 word, expanded by bit replication."""
    # Every intermediate is truncated to 32 bits so LLVM keeps 32-bit SIMD lanes.
    word = np.uint32(np.uint32(np.uint32(hi_byte) << 8) | np.uint32(lo_byte))
    b = _expand5(np.uint32(word & 31))
    if is565:
        r = _expand5(np.uint32(word >> 11))
        g = _expand6(np.uint32(np.uint32(word >> 5) & 63))
    else:
        r = _expand5(np.uint32(np.uint32(word >> 10) & 31))
        g = _expand5(np.uint32(np.uint32(word >> 5) & 31))
    return r, g, b


@jit
def _check_rgb_args(view2d, bpp, r, g, b, width):  # type: ignore[no-untyped-def]
    """The checks every byte-channel kernel makes before it reads a pixel."""
    if (bpp != 3 and bpp != 4) or width < 0 or width * bpp > view2d.shape[1]:
        raise ValueError("bpp must be 3 or 4 and width * bpp fit in the row")
    if not (0 <= r < bpp and 0 <= g < bpp and 0 <= b < bpp):
        raise ValueError("channel offset outside the pixel")


@jit
def _check_packed_args(view2d, width):  # type: ignore[no-untyped-def]
    """The check every RGB565/RGB555 kernel makes before it reads a pixel."""
    if width < 0 or 2 * width > view2d.shape[1]:
        raise ValueError("2 * width exceeds the row")


@jit
def _check_rgb_out(out, height, width):  # type: ignore[no-untyped-def]
    if out.shape[0] != height or out.shape[1] != width or out.shape[2] != 3:
        raise ValueError("out must have shape (height, width, 3)")
