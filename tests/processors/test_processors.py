"""The Processor API: selection and parameters, plug-ins, declared needs, Frame.rgb."""

from __future__ import annotations

import io
import tomllib
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from fastext import processors
from fastext._proto.inferencing_pb2 import Classification, Inference, Tag
from fastext.backend.execute import FrameFormat, make_frame, run_batch
from fastext.outcomes import Outcome, Unprocessed
from fastext.processors import Processor, create, from_configuration
from fastext.processors.brightness import Brightness
from fastext.processors.motion import MotionDetector
from fastext.vision import kernels
from fastext.vision.frames import Encoding, Frame, PixelFormat, frame_from_encoded, frame_from_raw
from tests.helpers import BYTE_ORDERS, PACKED, pack, place, random_rgb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastext-onnx-classifier"


def tag(value: str, confidence: float = 1.0) -> Inference:
    return Inference(
        type=Inference.InferenceType.CLASSIFICATION,
        classification=Classification(tag=Tag(value=value, confidence=confidence)),
    )


# -- selection and parameters ----------------------------------------------------------


def test_builtins_are_available_by_name() -> None:
    registry = processors.available()
    assert registry["brightness"] is Brightness
    assert registry["motion"] is MotionDetector


def test_create_passes_parameters() -> None:
    brightness = create("brightness", {"threshold": 100})
    assert isinstance(brightness, Brightness) and brightness.threshold == 100.0
    motion = create("motion", {"sensitivity": 0.5, "min_area": 0.01, "alpha": 0.2})
    assert isinstance(motion, MotionDetector)
    assert (motion.sensitivity, motion.min_area, motion.alpha, motion.threshold) == (
        0.5,
        0.01,
        0.2,
        52.0,
    )
    assert create("motion") is not create("motion")  # one instance per session


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("brightness", {})),
        ("  ", ("brightness", {})),
        ('{"processor": "motion", "sensitivity": 0.9}', ("motion", {"sensitivity": 0.9})),
        ('{"threshold": 90}', ("brightness", {"threshold": 90})),
    ],
)
def test_from_configuration_splits_name_and_parameters(
    text: str, expected: tuple[str, dict[str, Any]]
) -> None:
    assert from_configuration(text, "brightness") == expected
    name, params = from_configuration(text, "brightness")
    create(name, params)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"processor": 3}', '"processor" must be a string'),
    ],
)
def test_from_configuration_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_configuration(text, "brightness")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, r"unknown processor 'nope' \(available: .*brightness, .*motion"),
        ("brightness", {"threshold": 300}, "threshold"),
        ("brightness", {"threshold": "dark"}, "threshold"),
        ("brightness", {"treshold": 100}, "treshold"),
        ("motion", {"sensitivity": 2}, "sensitivity"),
        ("motion", {"min_area": -1}, "min_area"),
        ("motion", {"alpha": 0}, "alpha"),
        ("motion", {"sensitvity": 0.5}, "sensitvity"),
    ],
)
def test_unknown_processor_or_bad_parameter_names_the_problem(
    name: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create(name, params)


# -- plug-ins through the entry-point group ----------------------------------------------


class Echo(Processor):
    """A plug-in for the tests: tags every frame with a configured word."""

    name = "echo"

    def __init__(self, word: str = "hello", **params: Any) -> None:
        super().__init__(**params)
        if not isinstance(word, str):
            raise ValueError(f"echo word must be a string, got {word!r}")
        self.word = word

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        return [[tag(self.word)] for _ in frames]


NOT_A_PROCESSOR = object()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EntryPoint]]:
    """Installed entry points as the test lists them; the registry is rescanned around it."""
    installed: list[EntryPoint] = []

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [ep for ep in installed if ep.group == group]

    monkeypatch.setattr(processors, "entry_points", entry_points)
    processors._discover.cache_clear()
    yield installed
    processors._discover.cache_clear()


def plugin(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, processors.ENTRY_POINT_GROUP)


def test_plugins_are_found_through_entry_points(plugins: list[EntryPoint]) -> None:
    plugins += [
        plugin("echo", "tests.processors.test_processors:Echo"),
        plugin("brightness", "tests.processors.test_processors:Echo"),  # cannot shadow a built-in
        plugin("elsewhere", "fastext_no_such_module:Thing"),
        plugin("thing", "tests.processors.test_processors:NOT_A_PROCESSOR"),
    ]
    registry = processors.available()
    assert registry["echo"] is Echo
    assert registry["brightness"] is Brightness
    assert "elsewhere" not in registry and "thing" not in registry
    echo = create("echo", {"word": "hi"})
    fmt = FrameFormat(Encoding.RAW, PixelFormat.RGB24, 2, 2, 0)
    assert run_batch(echo, fmt, [bytes(12)]) == [[tag("hi")]]
    with pytest.raises(ValueError, match="echo word"):
        create("echo", {"word": 3})
    with pytest.raises(ValueError, match="'elsewhere'.*could not be loaded.*ModuleNotFoundError"):
        create("elsewhere")
    with pytest.raises(ValueError, match="'thing'.*not a fastext.processors.Processor"):
        create("thing")


class Fragile(Echo):
    """A plug-in whose __init__ fails in its own way (a missing model file)."""

    name = "fragile"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        raise FileNotFoundError("model.bin")


def test_a_failing_plugin_init_becomes_a_value_error(
    plugins: list[EntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    plugins.append(plugin("fragile", "tests.processors.test_processors:Fragile"))
    with pytest.raises(ValueError, match="'fragile' could not be created: FileNotFoundError"):
        create("fragile")
    with pytest.raises(ValueError, match="'fragile'.*'bogus'"):
        create("fragile", {"bogus": 1})  # its own parameter check runs first
    assert "could not be created" in caplog.text


# -- declarations ----------------------------------------------------------------------


def test_processor_declarations_have_defaults() -> None:
    assert (Processor.needs, Processor.luma_scale, Processor.rgb_size, Processor.stateful) == (
        "luma",
        1,
        None,
        False,
    )
    assert (Brightness.needs, Brightness.luma_scale, Brightness.stateful) == ("luma", 8, False)


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("needs", "bgr", "needs must be one of"),
        ("luma_scale", 3, "luma_scale must be one of"),
        ("rgb_size", (224, 0), "rgb_size must be"),
        ("rgb_size", 224, "rgb_size must be"),
    ],
)
def test_wrong_declarations_fail_when_the_class_is_defined(
    attribute: str, value: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        type("Bad", (Echo,), {attribute: value})


def test_a_size_set_in_init_is_checked_by_create(plugins: list[EntryPoint]) -> None:
    plugins.append(plugin("sized", "tests.processors.test_processors:Sized"))
    assert create("sized", {"size": [32, 24]}).rgb_size == (32, 24)
    with pytest.raises(ValueError, match="'sized' rgb_size must be"):
        create("sized", {"size": [32, -1]})


class Sized(Echo):
    name = "sized"
    needs = "rgb"

    def __init__(self, size: list[int], **params: Any) -> None:
        super().__init__(**params)
        self.rgb_size = (size[0], size[1])


# -- Frame.rgb for every RAW format -------------------------------------------------------

RGB_FORMATS = [*BYTE_ORDERS, *PACKED]


def bilinear_ref(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Bilinear resize with aligned pixel centres and clamped edges, in float64."""
    h, w, _ = rgb.shape

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, None)
        lo = np.minimum(np.floor(s).astype(np.int64), src - 1)
        return lo, np.minimum(lo + 1, src - 1), s - lo

    x0, x1, fx = taps(w, out_w)
    y0, y1, fy = taps(h, out_h)
    f = rgb.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bottom = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def yuv_ref(y: np.ndarray, u: np.ndarray, v: np.ndarray, full_range: bool) -> np.ndarray:
    """BT.601 YCbCr → RGB in float64, each chroma sample covering 2x2 pixels."""
    h, w = y.shape
    cb = u.astype(np.float64).repeat(2, 0).repeat(2, 1)[:h, :w] - 128
    cr = v.astype(np.float64).repeat(2, 0).repeat(2, 1)[:h, :w] - 128
    luma = y.astype(np.float64)
    if not full_range:
        luma, cb, cr = (luma - 16) * 255 / 219, cb * 255 / 224, cr * 255 / 224
    rgb = np.stack(
        [luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], axis=-1
    )
    return np.clip(np.rint(rgb), 0, 255)


def assert_close(got: np.ndarray, want: np.ndarray, tol: int = 1) -> None:
    assert got.dtype == np.uint8
    assert got.shape == want.shape
    assert np.abs(got.astype(np.float64) - want).max() <= tol


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("pixel_format", RGB_FORMATS, ids=lambda f: PixelFormat(f).name)
def test_frame_rgb_of_every_rgb_format(pixel_format: int, padded: bool) -> None:
    h, w = 7, 13
    rows, seen = pack(random_rgb(h, w, seed=pixel_format), pixel_format)
    stride = rows.shape[1] + (5 if padded else 0)
    frame = frame_from_raw(place(rows, stride), pixel_format, w, h, stride)
    rgb = frame.rgb()
    np.testing.assert_array_equal(rgb, seen)
    assert rgb.flags.c_contiguous or (pixel_format == PixelFormat.RGB24 and padded)
    assert frame.rgb((w, h)) is not None and np.array_equal(frame.rgb((w, h)), seen)
    assert_close(frame.rgb((5, 4)), bilinear_ref(seen, 5, 4))
    assert_close(frame.rgb((31, 17)), bilinear_ref(seen, 31, 17))


def test_frame_rgb_of_rgb24_is_a_zero_copy_view() -> None:
    h, w, stride = 4, 5, 20
    rows, seen = pack(random_rgb(h, w), PixelFormat.RGB24)
    buf = place(rows, stride)
    rgb = frame_from_raw(buf, PixelFormat.RGB24, w, h, stride).rgb()
    assert np.shares_memory(rgb, np.frombuffer(buf, np.uint8))
    assert rgb.strides == (stride, 3, 1) and not rgb.flags.writeable
    np.testing.assert_array_equal(rgb, seen)


def yuv420p_frame(
    seed: int, w: int, h: int, stride: int
) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ch, cw, cs = (h + 1) // 2, (w + 1) // 2, (stride + 1) // 2
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    u = rng.integers(0, 256, (ch, cw), dtype=np.uint8)
    v = rng.integers(0, 256, (ch, cw), dtype=np.uint8)
    buf = place(y, stride) + place(u, cs) + place(v, cs)
    return buf, y, u, v


@pytest.mark.parametrize(("w", "h", "stride"), [(6, 4, 6), (7, 5, 9), (33, 17, 40), (1, 1, 1)])
def test_frame_rgb_of_yuv420p_is_bt601_full_range(w: int, h: int, stride: int) -> None:
    buf, y, u, v = yuv420p_frame(w, w, h, stride)
    frame = frame_from_raw(buf, PixelFormat.YUV420P, w, h, stride)
    want = yuv_ref(y, u, v, full_range=True)
    assert_close(frame.rgb(), want)
    assert_close(frame.rgb((3, 2)), bilinear_ref(frame.rgb(), 3, 2))
    np.testing.assert_array_equal(frame.luma(), y)  # luma still reads the Y plane


def test_yuv420p_kernel_limited_range() -> None:
    _, y, u, v = yuv420p_frame(3, 10, 6, 10)
    out = np.empty((6, 10, 3), np.uint8)
    kernels.rgb_yuv420p(y, u, v, False, out)
    assert_close(out, yuv_ref(y, u, v, full_range=False))
    # Limited range: 16 is black, 235 white.
    gray = np.full((1, 1), 128, np.uint8)
    small = np.empty((2, 2, 3), np.uint8)
    for level, expected in [(16, 0), (235, 255)]:
        kernels.rgb_yuv420p(np.full((2, 2), level, np.uint8), gray, gray, False, small)
        assert (small == expected).all()


# -- encoded frames, decoded as the processor needs ---------------------------------------


def pillow_bytes(rgb: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt)
    return out.getvalue()


def blocks_rgb(h: int, w: int) -> np.ndarray:
    """Four flat colour quadrants: JPEG keeps them (nearly) exact, and resizing too."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (200, 30, 30)
    rgb[: h // 2, w // 2 :] = (30, 200, 30)
    rgb[h // 2 :, : w // 2] = (30, 30, 200)
    rgb[h // 2 :, w // 2 :] = (220, 220, 220)
    return rgb


class Dominant(Processor):
    """Tags each frame with its dominant channel; records the RGB images it was given."""

    name = "dominant"
    needs = "rgb"
    rgb_size = (16, 12)
    seen: ClassVar[list[np.ndarray]] = []

    def process(self, frames: Sequence[Frame]) -> list[list[Inference]]:
        batch = self.rgb_batch(frames)
        self.seen.append(batch)
        means = batch.reshape(len(frames), -1, 3).mean(axis=1)
        return [[tag("RGB"[int(np.argmax(m))])] for m in means]


@pytest.mark.parametrize("encoding", [Encoding.JPG, Encoding.PNG, Encoding.BMP])
def test_run_batch_hands_rgb_to_an_rgb_processor(encoding: Encoding) -> None:
    images = []
    for colour in [(220, 40, 30), (20, 180, 40), (10, 20, 250)]:
        rgb = blocks_rgb(96, 128) // 4
        rgb[20:76, 20:108] = colour
        images.append(rgb)
    if encoding is Encoding.JPG:
        payloads = [simplejpeg.encode_jpeg(i, quality=95, colorspace="RGB") for i in images]
    else:
        payloads = [pillow_bytes(i, encoding.name) for i in images]
    payloads.append(b"not an image")
    Dominant.seen.clear()
    outcomes = run_batch(Dominant(), FrameFormat(encoding, 0, 128, 96, 0), payloads)
    assert outcomes[:3] == [[tag("R")], [tag("G")], [tag("B")]]
    bad = outcomes[3]
    assert isinstance(bad, Unprocessed) and bad.kind is Outcome.INVALID  # the client's image
    assert encoding.name in bad.reason
    (batch,) = Dominant.seen
    assert batch.shape == (3, 12, 16, 3) and batch.dtype == np.uint8
    tol = 12 if encoding is Encoding.JPG else 1
    for got, image in zip(batch, images, strict=True):
        # At 1/8 scale the JPEG decode itself averaged; compare with the middle.
        assert np.abs(got[6, 8].astype(int) - image[48, 64]).max() <= tol


def test_jpeg_for_rgb_decodes_at_the_smallest_big_enough_scale() -> None:
    jpeg = simplejpeg.encode_jpeg(blocks_rgb(240, 320), quality=95, colorspace="RGB")
    full = frame_from_encoded(jpeg, Encoding.JPG, needs="rgb")
    assert (full.width, full.height, full.data.shape) == (320, 240, (240, 320, 3))
    quarter = frame_from_encoded(jpeg, Encoding.JPG, needs="rgb", rgb_size=(64, 48))
    assert quarter.data.shape == (60, 80, 3)  # 1/4: the smallest scale at least 64x48
    assert quarter.rgb((64, 48)).shape == (48, 64, 3)
    assert_close(quarter.rgb(), quarter.data.astype(np.float64), 0)
    # Luma of an RGB-decoded frame is still BT.601.
    assert full.luma_mean() == pytest.approx(
        frame_from_encoded(jpeg, Encoding.JPG).luma_mean(), abs=1.0
    )


def test_raw_needs_get_the_encoded_bytes_decoded_on_demand() -> None:
    rgb = blocks_rgb(30, 40)
    png = pillow_bytes(rgb, "PNG")
    frame = make_frame(FrameFormat(Encoding.PNG, 0, 40, 30, 0), png, needs="raw")
    assert (frame.width, frame.height, frame.layout, frame.encoding) == (40, 30, None, Encoding.PNG)
    assert frame.data.ndim == 1 and frame.data.tobytes() == png
    np.testing.assert_array_equal(frame.rgb(), rgb)
    np.testing.assert_array_equal(frame.luma(), np.asarray(Image.fromarray(rgb).convert("L")))
    assert frame.rgb((20, 15)).shape == (15, 20, 3)
    raw = make_frame(
        FrameFormat(Encoding.RAW, PixelFormat.RGB24, 40, 30, 0), rgb.tobytes(), needs="raw"
    )
    assert raw.layout is not None and raw.data.shape == (30, 120)  # RAW stays a view


def test_luma_needs_keep_decoding_to_gray() -> None:
    jpeg = simplejpeg.encode_jpeg(blocks_rgb(64, 64), quality=95, colorspace="RGB")
    frame = make_frame(FrameFormat(Encoding.JPG, 0, 64, 64, 0), jpeg, 8)
    assert frame.data.shape == (8, 8)
    assert frame.rgb().shape == (8, 8, 3)  # gray, repeated into three channels


# -- the example plug-in: an ONNX Runtime classifier ----------------------------------------

# A model that mean-pools each channel of a (N, 3, 12, 16) image into its 3 scores, so the
# expected class is the frame's dominant channel. Built with the onnx package when it is
# installed (and checked against these bytes); this is its serialization.
MEAN_RGB_ONNX = bytes.fromhex(
    "0807120d666173746578742d74657374733a93010a220a05696d6167651206706f6f6c65642211476c6f"
    "62616c41766572616765506f6f6c0a260a06706f6f6c6564120673636f7265732207466c617474656e2a"
    "0b0a04617869731801a0010212086d65616e5f7267625a200a05696d61676512170a15080112110a0312"
    "014e0a0208030a02080c0a02081062190a0673636f726573120f0a0d080112090a0312014e0a02080342"
    "040a00100d"
)


def build_mean_rgb_onnx() -> bytes:
    onnx = pytest.importorskip("onnx")
    helper, tensor = onnx.helper, onnx.TensorProto
    image = helper.make_tensor_value_info("image", tensor.FLOAT, ["N", 3, 12, 16])
    scores = helper.make_tensor_value_info("scores", tensor.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(nodes, "mean_rgb", [image], [scores])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fastext-tests"
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.fixture
def onnx_classifier(monkeypatch: pytest.MonkeyPatch) -> type[Processor]:
    pytest.importorskip("onnxruntime")
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from fastext_onnx_classifier import OnnxClassifier

    return OnnxClassifier  # type: ignore[no-any-return]


def test_example_declares_its_entry_point() -> None:
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["fastext.processors"] == {
        "onnx-classifier": "fastext_onnx_classifier:OnnxClassifier"
    }
    assert "onnxruntime" in " ".join(meta["project"]["optional-dependencies"]["onnx"])


def test_onnx_model_bytes_match_their_recipe() -> None:
    ort = pytest.importorskip("onnxruntime")
    built = build_mean_rgb_onnx()
    x = np.random.default_rng(0).random((2, 3, 12, 16), dtype=np.float32)
    outputs = [
        ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        for model in (built, MEAN_RGB_ONNX)
    ]
    np.testing.assert_allclose(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0], x.mean(axis=(2, 3)), rtol=1e-5)


def test_onnx_classifier_plugin_classifies_frames(
    onnx_classifier: type[Processor], plugins: list[EntryPoint], tmp_path: Path
) -> None:
    model = tmp_path / "mean_rgb.onnx"
    model.write_bytes(MEAN_RGB_ONNX)
    plugins.append(plugin("onnx-classifier", "fastext_onnx_classifier:OnnxClassifier"))
    params = {
        "model": str(model),
        "labels": ["red", "green", "blue"],
        "top_k": 2,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }
    classifier = create("onnx-classifier", params)
    assert isinstance(classifier, onnx_classifier)
    assert (classifier.needs, classifier.rgb_size) == ("rgb", (16, 12))  # from the model
    images = [
        np.full((48, 64, 3), colour, np.uint8)
        for colour in [(250, 10, 10), (10, 200, 100), (0, 60, 120)]
    ]
    jpegs = [simplejpeg.encode_jpeg(i, quality=95, colorspace="RGB") for i in images]
    outcomes = run_batch(classifier, FrameFormat(Encoding.JPG, 0, 64, 48, 0), jpegs)
    best = []
    for outcome, image in zip(outcomes, images, strict=True):
        assert isinstance(outcome, list) and len(outcome) == 2
        tags = [i.classification.tag for i in outcome]
        best.append(tags[0].value)
        scores = image[0, 0] / 255.0
        softmax = np.exp(scores) / np.exp(scores).sum()
        assert tags[0].confidence == pytest.approx(softmax.max(), abs=0.01)
        assert tags[0].confidence >= tags[1].confidence
    assert best == ["red", "green", "blue"]
    # RAW frames of another size are resized to the model's input by fastext.
    rgb24 = FrameFormat(Encoding.RAW, PixelFormat.RGB24, 64, 48, 0)
    raw = run_batch(classifier, rgb24, [images[1].tobytes()])
    assert isinstance(raw[0], list) and raw[0][0].classification.tag.value == "green"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": ""}, "needs a model"),
        ({"model": "/nonexistent/m.onnx"}, "cannot be loaded"),
        ({"top_k": 0}, "top_k"),
        ({"mean": [0, 0]}, "mean"),
        ({"std": [1, 0, 1]}, "std"),
        ({"labels": 5}, "labels"),
        ({"softmax": "yes"}, "softmax"),
        ({"colour": 1}, "colour"),
    ],
)
def test_onnx_classifier_bad_parameters(
    onnx_classifier: type[Processor], tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(MEAN_RGB_ONNX)
    with pytest.raises(ValueError, match=message):
        onnx_classifier(**{"model": str(model), **params})


def test_run_batch_keeps_a_fetch_failure_as_that_frames_outcome() -> None:
    fmt = FrameFormat(Encoding.RAW, PixelFormat.RGB24, 4, 2, 0)
    light = np.full(4 * 2 * 3, 250, np.uint8)
    gone = Unprocessed(Outcome.INVALID, "the frame is gone")
    outcomes = run_batch(Brightness(), fmt, [light, gone, light])
    assert outcomes[1] is gone
    assert [o[0].classification.tag.value for o in (outcomes[0], outcomes[2])] == ["light"] * 2
