"""Pixels: frame formats and zero-copy views, decoders, the numba kernels and their
warm-up. Imports nothing of gRPC, the front or the backend."""
