"""Face detection and cropping on real photos (scikit-image's astronaut: Eileen Collins, NASA)."""

import importlib.util
import sys

import cv2
import numpy as np
import pytest
from skimage import data

from ferlab.data import read_image
from ferlab.faces import (
    MARGIN,
    DlibDetector,
    HaarDetector,
    clip_box,
    create_detector,
    crop_face,
    crop_faces,
    crop_margin,
    find_faces,
    list_detectors,
)

# hairline to chin, ear to ear, checked by eye on the 512x512 photo
FACE = (180, 65, 90, 100)


def _has_mediapipe() -> bool:
    try:
        return importlib.util.find_spec("mediapipe.python.solutions.face_detection") is not None
    except ModuleNotFoundError:
        return False


BACKENDS = [
    "haar",
    pytest.param(
        "mediapipe",
        marks=pytest.mark.skipif(not _has_mediapipe(), reason="needs ferlab[mediapipe]"),
    ),
    "dlib",  # skipped by the fixture when dlib is not installed
]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def centre_in(box, region) -> bool:
    x, y, w, h = box
    rx, ry, rw, rh = region
    return rx <= x + w / 2 <= rx + rw and ry <= y + h / 2 <= ry + rh


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module", params=BACKENDS)
def detector(request):
    if request.param == "dlib":
        pytest.importorskip("dlib", reason="needs ferlab[dlib]")
    return create_detector(request.param)


def test_astronaut_face_found(detector, astronaut):
    boxes = detector.detect(astronaut)
    assert len(boxes) == 1, boxes
    assert centre_in(boxes[0], FACE) and iou(boxes[0], FACE) > 0.6, boxes
    assert all(isinstance(v, int) for v in boxes[0])


def test_grayscale_input_same_face(detector, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    boxes = detector.detect(gray)
    assert len(boxes) == 1 and iou(boxes[0], FACE) > 0.6, boxes


def test_blank_image_has_no_face(detector):
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_two_faces_sorted_left_to_right(detector, astronaut):
    head = astronaut[10:230, 110:340]  # 220x230: the head with some suit and background
    # BlazeFace short-range misses faces under about a tenth of the image width: keep it small
    canvas = np.full((260, 640, 3), 90, np.uint8)
    # the right face is the mirrored photo and sits higher, so a sort by y would swap them
    canvas[30:250, 10:240] = head
    canvas[10:230, 400:630] = head[:, ::-1]
    boxes = detector.detect(canvas)
    assert len(boxes) == 2, boxes
    left, right = boxes
    assert centre_in(left, (10 + 70, 30 + 55, 90, 100)), boxes
    assert centre_in(right, (400 + 70, 10 + 55, 90, 100)), boxes


def test_face_on_a_large_flat_background(detector, astronaut):
    # a flat background filling 95% of the image broke global histogram equalisation
    canvas = np.full((800, 800, 3), 200, np.uint8)
    canvas[290:510, 285:515] = astronaut[10:230, 110:340]
    boxes = detector.detect(canvas)
    assert len(boxes) == 1 and centre_in(boxes[0], (285 + 70, 290 + 55, 90, 100)), boxes


@pytest.mark.parametrize("name", ["haar", "dlib"])
def test_large_image_boxes_scaled_back(astronaut, name):
    if name == "dlib":
        pytest.importorskip("dlib", reason="needs ferlab[dlib]")
    # 1024 px is shrunk to 640 for detection; the box must come back in 1024-px coordinates
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    boxes = create_detector(name, max_side=640).detect(big)
    assert max(iou(b, tuple(2 * v for v in FACE)) for b in boxes) > 0.6, boxes


@pytest.mark.parametrize("name", ["haar", "dlib"])
def test_a_strip_of_an_image_shrinks_to_at_least_one_pixel(name):
    if name == "dlib":
        pytest.importorskip("dlib", reason="needs ferlab[dlib]")
    # shrunk by fx/fy, a 1x5000 strip's short side rounded to 0 and cv2.resize failed
    detector = create_detector(name, max_side=640)
    for shape in ((1, 5000, 3), (5000, 1, 3), (2, 5000)):
        assert detector.detect(np.full(shape, 128, np.uint8)) == [], shape


def test_boxes_reach_past_the_edge_and_reports_clip_them(astronaut):
    from ferlab.faces import _finish

    assert _finish([(-10.4, -5, 50, 60), (90, 90, 40, 40), (-9, 0, 5, 5)], (100, 100)) == [
        (-10, -5, 50, 60),
        (90, 90, 40, 40),
    ]  # kept as found; a box wholly outside is dropped
    assert clip_box((-10, -5, 50, 60), (100, 100)) == (0, 0, 40, 55)
    assert clip_box((90, 90, 40, 40), (100, 100, 3)) == (90, 90, 10, 10)
    assert clip_box((-9, 0, 5, 5), (100, 100)) == (0, 0, 0, 0)
    # a real face cut by the left edge: dlib's box, enlarged to Haar's framing, reaches past
    # x = 0. The crop is centred where the face is (clipping the box first had moved its
    # centre 17 px right of the face's); reports get the part inside the image.
    pytest.importorskip("dlib", reason="needs ferlab[dlib]")
    dlib = create_detector("dlib")
    (whole,) = dlib.detect(astronaut)
    shifted = np.ascontiguousarray(astronaut[:, 200:])
    (box,) = dlib.detect(shifted)
    assert box[0] < 0 and abs(box[0] + box[2] / 2 + 200 - (whole[0] + whole[2] / 2)) < 6, box
    boxes, crops = find_faces(dlib, shifted, MARGIN)
    assert boxes == [clip_box(box, shifted.shape)] and boxes[0][0] == 0, boxes
    np.testing.assert_array_equal(crops, crop_faces(shifted, [box]))


def test_none_detector_takes_the_centre_square_as_folder_datasets_do(astronaut, tmp_path):
    assert create_detector("none").detect(astronaut) == [(0, 0, 512, 512)]
    assert create_detector("none").detect(np.zeros((48, 40), np.uint8)) == [(0, 4, 40, 40)]
    # a 100x60 face crop with black side bands: the centre square is all white, so
    # `predict --no-detect` sees what training and `evaluate` on a folder see
    # (padding the whole frame to a square instead would bring the bands in)
    img = np.zeros((60, 100), np.uint8)
    img[:, 20:80] = 255
    cv2.imwrite(str(tmp_path / "wide.png"), img)
    crop = crop_faces(img, create_detector("none").detect(img), crop_margin("none"))
    assert (crop == 255).all()
    np.testing.assert_array_equal(crop[0], read_image(tmp_path / "wide.png"))
    # and pixel for pixel on a real photo shrunk from 200x160 (PIL's and OpenCV's grey and
    # resampling once differed here: 1 grey level on average, the top class of 4.7% of faces)
    photo = np.ascontiguousarray(astronaut[40:200, 150:350])
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    crop = crop_faces(photo, create_detector("none").detect(photo), crop_margin("none"))
    np.testing.assert_array_equal(crop[0], read_image(tmp_path / "photo.png"))


def test_unknown_detector_lists_valid_names():
    assert list_detectors() == ["haar", "mediapipe", "dlib", "none"]
    with pytest.raises(ValueError, match=r"'yunet'.*haar, mediapipe, dlib, none"):
        create_detector("yunet")


@pytest.mark.skipif(_has_mediapipe(), reason="mediapipe is installed")
def test_mediapipe_missing_says_how_to_install():
    with pytest.raises(ImportError, match=r"pip install 'ferlab\[mediapipe\]'"):
        create_detector("mediapipe")


def test_dlib_upsample_finds_small_faces(astronaut):
    pytest.importorskip("dlib", reason="needs ferlab[dlib]")
    # at 256 px the face is about 50 px, under the HOG window: only upsampling finds it
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    assert DlibDetector().detect(small) == []
    boxes = DlibDetector(upsample=1).detect(small)
    assert len(boxes) == 1 and iou(boxes[0], tuple(v // 2 for v in FACE)) > 0.6, boxes


def test_dlib_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'ferlab\[dlib\]'"):
        create_detector("dlib")
    with pytest.raises(ImportError, match=r"pip install 'ferlab\[dlib\]'"):
        DlibDetector()


def test_missing_cascade_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("cv2.data.haarcascades", str(tmp_path))
    with pytest.raises(RuntimeError, match="opencv-python-headless<5"):
        HaarDetector()


def test_crop_face_rgb_and_gray_agree(astronaut):
    face = crop_face(astronaut, FACE)
    assert face.shape == (48, 48) and face.dtype == np.uint8
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(face, crop_face(gray, FACE))
    assert 0 < MARGIN < 0.1  # FER-2013 frames faces tightly


def test_crop_face_of_a_48px_face_is_identity(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    face = cv2.resize(gray[65:165, 175:275], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop_face(face, (0, 0, 48, 48), margin=0.0), face)


def test_crop_face_pads_at_the_border(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    # a 40 px box in the top-left corner with margin 0.5 is an 80 px square, 20 px outside
    face = crop_face(gray, (0, 0, 40, 40), margin=0.5, size=80)
    assert face.shape == (80, 80) and face.dtype == np.uint8
    # edge padding repeats the first row and column: the top-left 20x20 block is the corner
    assert np.all(face[:20, :20] == gray[0, 0])
    np.testing.assert_array_equal(face[:20, 20:], np.repeat(gray[:1, :60], 20, axis=0))
    np.testing.assert_array_equal(face[20:, 20:], gray[:60, :60])
    # a box half outside the bottom-right corner still gives a full crop
    assert crop_face(gray, (490, 490, 40, 40)).shape == (48, 48)
    with pytest.raises(ValueError, match="outside"):
        crop_face(gray, (600, 10, 40, 40))


def test_crop_faces_stacks(astronaut):
    faces = crop_faces(astronaut, [FACE, (0, 0, 40, 40)])
    assert faces.shape == (2, 48, 48) and faces.dtype == np.uint8
    np.testing.assert_array_equal(faces[0], crop_face(astronaut, FACE))
    assert crop_faces(astronaut, []).shape == (0, 48, 48)


def test_bad_images_rejected():
    with pytest.raises(ValueError, match="uint8"):
        crop_face(np.zeros((48, 48), np.float32), (0, 0, 48, 48))
    with pytest.raises(ValueError, match="shape"):
        create_detector("haar").detect(np.zeros((4, 48, 48, 3), np.uint8))
