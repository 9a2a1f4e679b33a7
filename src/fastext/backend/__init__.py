"""Where batches run: the backends, the worker processes and their supervisor, the
shared-memory rings, records and segments, and the placement of batches on workers."""
