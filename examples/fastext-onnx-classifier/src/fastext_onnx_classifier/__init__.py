"""An image classifier processor for fastext, run by ONNX Runtime (the ``onnx`` extra).

The whole plug-in is this class plus one entry point in ``pyproject.toml``::

    [project.entry-points."fastext.processors"]
    onnx-classifier = "fastext_onnx_classifier:OnnxClassifier"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastext.processors import Classification, Frame, Inference, Processor, Tag

__all__ = ["OnnxClassifier"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _triple(name: str, value: Any) -> np.ndarray:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"onnx-classifier {name} must be a list of 3 numbers, got {value!r}")
    return np.asarray(value, np.float32)


def _labels(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return [line.strip() for line in Path(value).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ValueError(f"onnx-classifier labels file {value!r}: {exc.strerror}") from None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("onnx-classifier labels must be a list of names or a file path")


class OnnxClassifier(Processor):
    """Top-k ``CLASSIFICATION`` inferences of an ONNX image classifier, per frame."""

    name = "onnx-classifier"
    needs = "rgb"  # rgb_size is set from the model's input in __init__

    def __init__(
        self,
        model: str | None = None,
        labels: list[str] | str | None = None,
        top_k: int = 1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        softmax: bool = True,
        threads: int = 1,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        try:  # the optional extra: imported only when a session asks for it
            import onnxruntime
        except ImportError:
            raise ValueError(
                "onnx-classifier needs onnxruntime: pip install 'fastext-onnx-classifier[onnx]'"
            ) from None

        if not isinstance(model, str) or not model:
            raise ValueError("onnx-classifier needs a model: the path of an .onnx file")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"onnx-classifier top_k must be an int >= 1, got {top_k!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"onnx-classifier threads must be an int >= 1, got {threads!r}")
        if not isinstance(softmax, bool):
            raise ValueError(f"onnx-classifier softmax must be true or false, got {softmax!r}")
        self.labels = _labels(labels)
        self.top_k = top_k
        self.softmax = softmax
        self.mean = _triple("mean", mean)
        std_array = _triple("std", std)
        if np.any(std_array == 0):
            raise ValueError("onnx-classifier std must not contain 0")
        self.inv_std = 1.0 / std_array
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                model, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - a missing or invalid file, mostly
            raise ValueError(f"onnx-classifier model {model!r} cannot be loaded: {exc}") from None
        self._bind_input(self.session.get_inputs()[0])

    def _bind_input(self, spec: Any) -> None:
        """Layout, element type, size and batch dimension from the model's input."""
        shape = list(spec.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(f"onnx-classifier expects an NCHW or NHWC RGB input, got {shape}")
        self.input_name = spec.name
        self.channels_first = shape[1] == 3
        height, width = (shape[2], shape[3]) if self.channels_first else (shape[1], shape[2])
        if isinstance(height, int) and isinstance(width, int):
            self.rgb_size = (width, height)  # fastext resizes every frame to this
        self.batched = not isinstance(shape[0], int) or shape[0] != 1
        self.raw_uint8 = spec.type == "tensor(uint8)"

    def _tensor(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB → the model's input tensor."""
        if self.raw_uint8:
            tensor = images
        else:
            tensor = (images.astype(np.float32) * np.float32(1 / 255) - self.mean) * self.inv_std
        return np.ascontiguousarray(tensor.transpose(0, 3, 1, 2) if self.channels_first else tensor)

    def _scores(self, images: np.ndarray) -> np.ndarray:
        if self.batched:
            batches = [images]
        else:
            batches = [images[i : i + 1] for i in range(len(images))]
        scores = [
            self.session.run(None, {self.input_name: self._tensor(b)})[0].reshape(len(b), -1)
            for b in batches
        ]
        out = np.concatenate(scores).astype(np.float64)
        if self.softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out

    def _label(self, index: int) -> str:
        if self.labels is not None and index < len(self.labels):
            return self.labels[index]
        return str(index)

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        scores = self._scores(self.rgb_batch(frames))
        results = []
        for row in scores:
            best = np.argsort(-row, kind="stable")[: self.top_k]
            results.append(
                [
                    Inference(
                        type=Inference.InferenceType.CLASSIFICATION,
                        classification=Classification(
                            tag=Tag(
                                value=self._label(int(i)), confidence=float(np.clip(row[i], 0, 1))
                            )
                        ),
                    )
                    for i in best
                ]
            )
        return results
