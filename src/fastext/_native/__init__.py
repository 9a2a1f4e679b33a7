"""Native code of fastext (private).

Each module has exactly one Python front, which is its typed, documented face:
``_ring`` (the shared-memory record ring) through :mod:`fastext.ring`, and
``_wire`` (the per-frame sample parser and ack encoder) through :mod:`fastext.wire`.
"""
