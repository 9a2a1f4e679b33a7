"""The inference-metadata JSON form of results (what LVA/AVA consumers see).

``{"timestamp": …, "inferences": [ … ]}``: each inference has a lowercase
``type``, camelCase keys, and no empty lists or maps.  Imports only the
contract's messages, so the client and the server can both use it.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from fastext._proto import extension_pb2, inferencing_pb2

__all__ = ["inference_to_json", "sample_to_dict", "sample_to_json"]


def inference_to_json(inference: inferencing_pb2.Inference) -> dict[str, Any]:
    """One inference: lowercase type, camelCase keys, empty lists and maps omitted."""
    data = MessageToDict(inference, preserving_proto_field_name=False)
    data["type"] = inferencing_pb2.Inference.InferenceType.Name(inference.type).lower()
    return data


def sample_to_dict(sample: extension_pb2.MediaSample) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp": sample.timestamp}
    if sample.inferences:
        out["inferences"] = [inference_to_json(i) for i in sample.inferences]
    return out


def sample_to_json(sample: extension_pb2.MediaSample) -> str:
    """``{"timestamp": …, "inferences": […]}`` on one line (inferences omitted when empty)."""
    return json.dumps(sample_to_dict(sample), separators=(",", ":"))
