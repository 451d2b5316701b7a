from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facekit.alignment import CROP_SIZE, TEMPLATE_112, align_face, landmarks_problem, similarity_transform
from facekit.landmarks import LandmarkPredictor


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = math.radians(angle_deg)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]], np.float64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (0.0, 0.0)), (17.0, 2.3, (140.0, 60.0)), (-35.0, 0.6, (-12.5, 300.25)), (180.0, 4.0, (900.0, 700.0))],
)
def test_similarity_transform_recovers_the_template(angle: float, scale: float, shift: tuple[float, float]) -> None:
    landmarks = _apply(_similarity(angle, scale, shift), TEMPLATE_112)
    matrix = similarity_transform(landmarks)
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(_apply(matrix, landmarks), TEMPLATE_112, atol=0.01)


def test_similarity_transform_is_a_similarity() -> None:
    rng = np.random.default_rng(0)
    noisy = _apply(_similarity(10.0, 1.7, (50.0, 80.0)), TEMPLATE_112) + rng.normal(0, 2.0, (5, 2))
    linear = similarity_transform(noisy)[:, :2].astype(np.float64)
    # Equal singular values and a positive determinant: no shear, no mirroring.
    singular = np.linalg.svd(linear, compute_uv=False)
    assert singular[0] == pytest.approx(singular[1], rel=1e-5)
    assert np.linalg.det(linear) > 0


def _dot_centres(image: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity-weighted centroid of the bright dot around each expected position."""
    centres = []
    for x, y in near:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        window = image[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1].astype(np.float64)
        ys, xs = np.mgrid[0:window.shape[0], 0:window.shape[1]]
        total = window.sum()
        assert total > 0, f"no dot near ({x:.1f}, {y:.1f})"
        centres.append((x0 + (xs * window).sum() / total, y0 + (ys * window).sum() / total))
    return np.array(centres)


@pytest.mark.parametrize("size", [CROP_SIZE, 224])
def test_align_face_moves_dots_onto_the_template(size: int) -> None:
    matrix = _similarity(-20.0, 2.5, (180.0, 90.0))
    landmarks = _apply(matrix, TEMPLATE_112)
    # Gaussian dots drawn analytically, so each dot's centre is exactly its landmark.
    ys, xs = np.mgrid[0:500, 0:500]
    image = np.zeros((500, 500), np.float64)
    for x, y in landmarks:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 3.0**2))
    image_bgr = cv2.cvtColor((255 * image).astype(np.uint8), cv2.COLOR_GRAY2BGR)

    aligned = align_face(image_bgr, landmarks.astype(np.float32), size=size)

    assert aligned.shape == (size, size, 3)
    # The template scaled as cv2.resize scales the 112 crop: about its outer corner, half a pixel out.
    expected = (TEMPLATE_112 + 0.5) * (size / CROP_SIZE) - 0.5
    found = _dot_centres(cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY), expected)
    np.testing.assert_allclose(found, expected, atol=0.3)


@pytest.mark.filterwarnings("error")  # 1e308 overflowed in the warp's arithmetic, with RuntimeWarnings
@pytest.mark.parametrize(("landmarks", "message"), [
    (np.full((5, 2), 40.0), "within"),  # a detector that put every point on one pixel
    (np.where(np.eye(5, 2, dtype=bool), np.nan, TEMPLATE_112), "not finite"),
    (TEMPLATE_112[:4], "5 landmarks"),
    (TEMPLATE_112 * 1e30, "from the image origin"),  # gave a crop of the border colour
    (np.full((5, 2), 1e308) * [[1], [-1], [1], [-1], [1]], "from the image origin"),
    ([[38, 51], [73, 51], [56], [41, 92], [70, 92]], "not numbers"),  # numpy's own ValueError, not a reason
])
def test_align_face_refuses_landmarks_no_warp_can_use(landmarks: np.ndarray, message: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (120, 120, 3), np.uint8)
    assert message in landmarks_problem(landmarks)  # the pipeline drops such a face with this, so it must not raise
    with pytest.raises(ValueError, match=message):
        align_face(image, landmarks)


@pytest.mark.parametrize(("height", "width", "scale", "angle", "shift"), [
    (300, 400, 2.0, 15.0, (100.0, 50.0)),
    (128, 40_000, 0.5, -10.0, (39_000.0, 20.0)),  # a 5 MP panorama: cv2.warpAffine refuses 32767 px or more
])
def test_align_face_samples_where_its_warp_says(
    height: int, width: int, scale: float, angle: float, shift: tuple[float, float]
) -> None:
    # Each pixel holds its own (x, y), so the crop shows where it sampled, to a fraction of a pixel.
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    image = np.dstack([xs, ys])
    landmarks = _apply(_similarity(angle, scale, shift), TEMPLATE_112)

    aligned = align_face(image, landmarks)

    inverse = cv2.invertAffineTransform(similarity_transform(landmarks).astype(np.float64))
    v, u = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
    sampled = np.dstack([u, v, np.ones_like(u)]) @ inverse.T
    inside = ((sampled > 1) & (sampled < [width - 2, height - 2])).all(axis=2)
    assert inside.sum() > 20
    np.testing.assert_allclose(aligned[inside], sampled[inside], atol=0.06)


def test_a_face_wider_than_the_warp_limit_is_refused() -> None:
    image = np.zeros((128, 40_000, 3), np.uint8)
    landmarks = _apply(_similarity(5.0, 320.0, (2_000.0, -10_000.0)), TEMPLATE_112)
    with pytest.raises(ValueError, match="too large to align"):
        align_face(image, landmarks)


def test_a_larger_crop_frames_the_face_as_the_112_crop_does(grace_hopper_bgr: np.ndarray) -> None:
    # The Haar detector's landmarks for Grace Hopper. The 224 crop, shrunk to 112, was a quarter pixel up and left
    # of the 112 crop: its template was scaled about the centre of the corner pixel, not the corner.
    landmarks = np.array([[221.5, 192.2], [310.7, 189.5], [268.2, 240.2], [231.8, 276.9], [307.8, 274.3]], np.float32)
    crop = align_face(grace_hopper_bgr, landmarks)
    shrunk = cv2.resize(align_face(grace_hopper_bgr, landmarks, size=224), (CROP_SIZE, CROP_SIZE),
                        interpolation=cv2.INTER_AREA)
    grey = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64) for image in (crop, shrunk)]
    (dx, dy), _ = cv2.phaseCorrelate(*grey, cv2.createHanningWindow((CROP_SIZE, CROP_SIZE), cv2.CV_64F))
    assert abs(dx) < 0.1 and abs(dy) < 0.1


def test_the_landmark_net_takes_a_colour_photo_and_boxes_as_an_array(astronaut_bgr: np.ndarray) -> None:
    # A colour image reached the net as three channels ("axes don't match array"); an (n, 4) array of boxes, as
    # cv2.CascadeClassifier gives them, was a ValueError ("truth value of an array ... is ambiguous").
    predictor = LandmarkPredictor()
    boxes = [(170.0, 40.0, 120.0, 140.0)]  # Eileen Collins' face
    grey = predictor.predict(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), boxes)
    np.testing.assert_array_equal(predictor.predict(astronaut_bgr, boxes), grey)
    np.testing.assert_array_equal(predictor.predict(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2BGRA), boxes), grey)
    np.testing.assert_array_equal(predictor.predict(astronaut_bgr, np.array(boxes)), grey)
    assert predictor.predict(astronaut_bgr, np.zeros((0, 4))).shape == (0, 5, 2)
