"""Native code of fastext (private).

``_ring`` is the shared-memory record ring; import it only through
:mod:`fastext.ring`, which is its typed, documented front.
"""
