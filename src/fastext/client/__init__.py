"""The LVA-side client: streams frames to any MediaGraphExtension server.

It speaks only the contract (it imports nothing of the server), so it can test
and benchmark fastext or any other extension.
"""

from __future__ import annotations

from fastext.client.stream import FrameSource, StreamOptions, StreamResult, stream_frames

__all__ = ["FrameSource", "StreamOptions", "StreamResult", "stream_frames"]
