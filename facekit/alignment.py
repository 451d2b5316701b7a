"""Five-point face alignment onto the standard 112x112 ArcFace template."""

from __future__ import annotations

import cv2
import numpy as np

# Left eye, right eye (as seen in the image), nose tip, left and right mouth corner.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112
# Five points closer together than this cannot fix a scale: the warp would blow one pixel up into the whole crop.
MIN_LANDMARK_SPREAD = 2.0
# The warp matrix is float32, which cannot place a point farther out than this to the nearest pixel; no image facekit
# loads comes near it, so such landmarks are nonsense (1e30 gives a crop of the image's border colour).
MAX_LANDMARK_COORDINATE = 2.0**24
# cv2.warpAffine refuses a source image this wide or tall (SHRT_MAX), though a 64 MP panorama is within the pixel limit.
WARP_MAX_SIDE = 32767


def similarity_transform(src: np.ndarray, dst: np.ndarray = TEMPLATE_112) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst (Umeyama 1991).

    Returns a 2x3 matrix for cv2.warpAffine. Closed form rather than RANSAC: five points
    from a landmark model carry no outliers worth rejecting, and the result is deterministic.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1
    rotation = u @ reflection @ vt
    src_var = (src_c**2).sum() / len(src)
    scale = (singular * np.diag(reflection)).sum() / max(src_var, 1e-12)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def landmarks_problem(landmarks: np.ndarray) -> str | None:
    """Why these landmarks cannot be aligned (not five finite points, all within a pixel or two, or absurdly far
    out), else None."""
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists, strings: a reason, as for any other landmarks no warp can use
        return "landmarks are not numbers"
    if points.shape != (5, 2):
        return f"expected 5 landmarks as a (5, 2) array, got shape {points.shape}"
    if not np.isfinite(points).all():
        return "landmarks are not finite"
    if np.abs(points).max() > MAX_LANDMARK_COORDINATE:
        return f"landmarks lie over {MAX_LANDMARK_COORDINATE:.0f} px from the image origin"
    if np.ptp(points, axis=0).max() < MIN_LANDMARK_SPREAD:
        return f"landmarks lie within {MIN_LANDMARK_SPREAD:g} px of each other"
    return None


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a face so its five landmarks land on the template; returns a size x size crop.

    Landmarks that cannot fix the warp (landmarks_problem) are a ValueError rather than a one-colour crop."""
    problem = landmarks_problem(landmarks)
    if problem:
        raise ValueError(problem)
    scale = size / CROP_SIZE
    # Scaled about the crop's outer corner, (-0.5, -0.5) with pixel centres at whole numbers, as cv2.resize scales:
    # about (0, 0) a 224 crop would frame the face half a pixel off the 112 one. At 112 the template is unchanged.
    template = TEMPLATE_112 * scale + (scale - 1) / 2
    matrix = similarity_transform(landmarks, template)
    if max(image.shape[:2]) >= WARP_MAX_SIDE:
        image, matrix = _within_warp_limit(image, matrix, size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _within_warp_limit(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of an image too large for cv2.warpAffine that a size x size crop through matrix covers, and the
    matrix that warps that part the same way. A face that itself spans the limit is a ValueError: no photo holds one."""
    matrix = matrix.astype(np.float64)
    left, top, right, bottom = _covered_box(matrix, size, image.shape[:2])
    if max(right - left, bottom - top) >= WARP_MAX_SIDE:
        raise ValueError(f"the face spans {WARP_MAX_SIDE} px or more; too large to align")
    matrix[:, 2] += matrix[:, :2] @ (left, top)
    return image[top:bottom, left:right], matrix.astype(np.float32)


def _covered_box(matrix: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Left, top, right, bottom of the image pixels a size x size crop samples, with a pixel to interpolate
    with on each side; at least the nearest edge pixel, which the border replicates."""
    height, width = shape
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    source = corners @ cv2.invertAffineTransform(matrix).T
    left, top = (int(v) - 1 for v in np.floor(source.min(0)))
    right, bottom = (int(v) + 2 for v in np.ceil(source.max(0)))
    left, top = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    return left, top, max(min(right, width), left + 1), max(min(bottom, height), top + 1)
