"""MS3D tailor strategy (Eq. 7-8) and its box sources (motion, YOLO ONNX)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import pytest

from models.tailor import (
    MotionBoxSource,
    OnnxYoloBoxSource,
    band_index,
    decode_yolo_output,
    motion_boxes,
    tailor_frame,
    tailor_frames,
    tailor_video,
    tailor_weights,
)

_T = TypeVar("_T")


def _found(value: _T | None) -> _T:
    """A result the case under test must produce (not ``None``)."""
    assert value is not None
    return value


def test_weights_in_bands_along_a_row_by_hand() -> None:
    # Box over columns 2-3; band width 2; eta 2, xi 0.5.
    # Distance:  2  1  in in  1  2  3  4  5  6  7  8  9  10
    # Band d:    1  1  -  -   1  1  2  2  3  3  4  4  5  5
    w = tailor_weights(1, 14, (2, 0, 4, 1), eta=2.0, xi=0.5, band=2)
    expected = [
        0.5,
        0.5,
        2,
        2,
        0.5,
        0.5,
        0.25,
        0.25,
        0.125,
        0.125,
        0.0625,
        0.0625,
        0.03125,
        0.03125,
    ]
    np.testing.assert_allclose(w[0], expected)


def test_weights_are_rectangular_rings_in_2d() -> None:
    w = tailor_weights(5, 5, (2, 2, 3, 3), eta=3.0, xi=0.5, band=1)
    q, h = 0.25, 0.5
    expected = np.array(
        [
            [q, q, q, q, q],
            [q, h, h, h, q],
            [q, h, 3, h, q],
            [q, h, h, h, q],
            [q, q, q, q, q],
        ]
    )
    np.testing.assert_allclose(w, expected)


def test_default_band_is_five_pixels() -> None:
    d = _found(band_index(1, 12, (0, 0, 1, 1)))
    assert d[0].tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]


def test_fractional_box_covers_overlapped_pixels() -> None:
    d = _found(band_index(1, 5, (1.5, 0.0, 2.2, 1.0), band=1))
    assert d[0].tolist() == [1, 0, 0, 1, 2]


def test_uint8_frame_is_scaled_rounded_and_clipped() -> None:
    frame = np.full((1, 4, 3), 90, dtype=np.uint8)
    frame[0, 1] = 200
    out = tailor_frame(frame, (0, 0, 2, 1), eta=2.0, xi=0.5, band=1)
    assert out.dtype == np.uint8
    # Inside: 90 * 2 = 180 and 200 * 2 = 400 -> 255; outside bands 1, 2: 45 and 22.5 -> 22.
    assert out[0, :, 0].tolist() == [180, 255, 45, 22]


def test_float_frames_are_scaled_without_clipping() -> None:
    frames = np.ones((2, 1, 3), dtype=np.float32)
    boxes = np.array([[0, 0, 1, 1], [np.nan] * 4])
    out = tailor_frames(frames, boxes, eta=1.5, xi=0.5, band=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [1.5, 0.5, 0.25])
    np.testing.assert_allclose(out[1, 0], [1, 1, 1])  # NaN row: no box, unchanged


def test_missing_or_outside_box_leaves_frame_unchanged() -> None:
    frame = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(tailor_frame(frame, None), frame)
    np.testing.assert_array_equal(tailor_frame(frame, (10, 10, 20, 20)), frame)
    np.testing.assert_array_equal(tailor_frames(frame[None], None)[0], frame)
    with pytest.raises(ValueError):
        tailor_frames(frame[None], np.zeros((2, 4)))


def _moving_block(background: int = 0) -> np.ndarray:
    frames = np.full((4, 10, 12, 3), background, dtype=np.uint8)
    frames[1, 2:4, 4:7] = 255  # rows 2-3, cols 4-6
    frames[2, 2:4, 5:8] = 255  # moved right by one column
    return frames


def test_motion_boxes_by_hand() -> None:
    boxes = motion_boxes(_moving_block(), threshold=25, min_pixels=1)
    np.testing.assert_array_equal(boxes[0], [4, 2, 7, 4])  # first frame: |F1 - F0|
    np.testing.assert_array_equal(boxes[1], [4, 2, 7, 4])  # |F1 - F0|
    np.testing.assert_array_equal(boxes[2], [4, 2, 8, 4])  # |F2 - F1|: both positions
    np.testing.assert_array_equal(boxes[3], [5, 2, 8, 4])  # |F3 - F2|: the block leaves
    assert np.isnan(motion_boxes(_moving_block()[:1])).all()
    # Too few moving pixels: no box.
    assert np.isnan(motion_boxes(_moving_block(), min_pixels=100)).all()


def test_tailor_video_uses_motion_boxes_by_default() -> None:
    frames = _moving_block(background=50)
    src = MotionBoxSource(threshold=25, min_pixels=1)
    out = tailor_video(frames, src, eta=2.0, xi=0.5, band=1)
    expected = tailor_frames(frames, src(frames), eta=2.0, xi=0.5, band=1)
    np.testing.assert_array_equal(out, expected)
    # Frame 1, box cols 4-6 rows 2-3: the block saturates; pixel (0, 0) is 4 columns away,
    # band 4: 50 * 0.5^4 = 3.125 -> 3. Pixel (3, 2) is one column away: 25.
    assert out[1, 2, 4, 0] == 255 and out[1, 0, 0, 0] == 3 and out[1, 2, 3, 0] == 25
    np.testing.assert_array_equal(tailor_video(frames, eta=2.0, xi=0.5, band=1), out)


# --- YOLO outputs

V5 = np.array(
    [
        # cx, cy, w, h, obj, person, other
        [16, 16, 8, 8, 0.9, 0.2, 0.9],  # person score 0.18
        [10, 12, 4, 8, 0.8, 0.9, 0.1],  # 0.72: the best person
        [20, 20, 10, 10, 0.9, 0.5, 0.5],  # 0.45
    ],
    dtype=np.float32,
)
V8 = np.array(
    [
        # cx, cy, w, h, person, other (no objectness)
        [16, 16, 8, 8, 0.2, 0.9],
        [10, 12, 4, 8, 0.6, 0.1],
        [20, 20, 10, 10, 0.7, 0.5],  # the best person
    ],
    dtype=np.float32,
).T
NMS = np.array([[5, 6, 15, 20, 0.8, 1], [8, 8, 12, 16, 0.6, 0]], dtype=np.float32)


def test_decode_layouts_pick_best_person() -> None:
    box, score = _found(decode_yolo_output(V5[None], layout="yolov5"))
    np.testing.assert_allclose(box, [8, 8, 12, 16])
    assert score == pytest.approx(0.72)
    box, score = _found(decode_yolo_output(V8[None], layout="yolov8"))
    np.testing.assert_allclose(box, [15, 15, 25, 25])
    assert score == pytest.approx(0.7)
    box, score = _found(decode_yolo_output(NMS[None], layout="nms"))
    np.testing.assert_allclose(box, [8, 8, 12, 16])
    assert score == pytest.approx(0.6)
    assert decode_yolo_output(NMS, layout="nms", person_class=3) is None
    with pytest.raises(ValueError, match="no class 5"):
        decode_yolo_output(V5, layout="yolov5", person_class=5)


def test_decode_auto_layout_on_realistic_shapes() -> None:
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 0.5, size=(20, 7))  # 20 candidates, 2 classes
    many[13] = [30, 30, 10, 20, 1.0, 1.0, 0.0]
    box, _ = _found(decode_yolo_output(many[None]))  # rows > columns: yolov5
    np.testing.assert_allclose(box, [25, 20, 35, 40])
    box, _ = _found(decode_yolo_output(np.delete(many, 4, axis=1).T[None]))  # (6, 20): yolov8
    np.testing.assert_allclose(box, [25, 20, 35, 40])


def _fixed_output_onnx(path, output: np.ndarray, size: int = 32) -> None:
    """A detector stand-in: ``output0 = constant + 0 * mean(images)``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(output, "cv")),
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node(
            "Constant", [], ["z"], value=numpy_helper.from_array(np.array(0, np.float32), "zv")
        ),
        helper.make_node("Mul", ["m", "z"], ["mz"]),
        helper.make_node("Add", ["c", "mz"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.parametrize(
    ("layout", "output", "expected"),
    [
        # Frame 48x64 letterboxed into 32x32: r = 0.5, pad_x = 0, pad_y = 4;
        # frame = (net - pad) / r. (8, 8, 12, 16) -> (16, 8, 24, 24).
        ("yolov5", V5[None], [16, 8, 24, 24]),
        # (15, 15, 25, 25) -> (30, 22, 50, 42).
        ("yolov8", V8[None], [30, 22, 50, 42]),
        ("nms", NMS[None], [16, 8, 24, 24]),
    ],
)
def test_onnx_yolo_source_maps_box_back_to_frame(tmp_path, layout, output, expected) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "yolo.onnx"
    _fixed_output_onnx(path, output)
    src = OnnxYoloBoxSource(path, layout=layout)
    assert src._session is None  # nothing loaded until the first frame
    frames = np.zeros((3, 48, 64, 3), dtype=np.uint8)
    boxes = src(frames)
    assert src._session is not None
    np.testing.assert_allclose(boxes, np.tile(expected, (3, 1)), atol=1e-4)


def test_onnx_yolo_source_threshold_and_every(tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "yolo.onnx"
    _fixed_output_onnx(path, V5[None])
    frames = np.zeros((2, 48, 64, 3), dtype=np.uint8)
    assert np.isnan(OnnxYoloBoxSource(path, layout="yolov5", score_threshold=0.8)(frames)).all()

    src = OnnxYoloBoxSource(path, layout="yolov5", every=2)
    calls = []
    detect = src.detect

    def counting_detect(frame: np.ndarray) -> np.ndarray:
        calls.append(1)
        return detect(frame)

    monkeypatch.setattr(src, "detect", counting_detect)
    boxes = src(np.zeros((5, 48, 64, 3), dtype=np.uint8))
    assert len(calls) == 3  # frames 0, 2, 4
    np.testing.assert_allclose(boxes[1], boxes[0])

    tailored = tailor_video(frames + 100, src, eta=2.0, xi=0.5, band=5)
    assert tailored[0, 10, 20, 0] == 200  # inside (16, 8, 24, 24)
    assert tailored[0, 10, 26, 0] == 50  # 3 pixels right of the box: band 1


def test_onnx_yolo_source_refuses_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        OnnxYoloBoxSource(tmp_path / "none.onnx")
