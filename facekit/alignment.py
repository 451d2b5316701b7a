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
    """Why these landmarks cannot be aligned (not five finite points, or all within a pixel or two), else None."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        return f"expected 5 landmarks as a (5, 2) array, got shape {points.shape}"
    if not np.isfinite(points).all():
        return "landmarks are not finite"
    if np.ptp(points, axis=0).max() < MIN_LANDMARK_SPREAD:
        return f"landmarks lie within {MIN_LANDMARK_SPREAD:g} px of each other"
    return None


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a face so its five landmarks land on the template; returns a size x size crop.

    Landmarks that cannot fix the warp (landmarks_problem) are a ValueError rather than a one-colour crop."""
    problem = landmarks_problem(landmarks)
    if problem:
        raise ValueError(problem)
    template = TEMPLATE_112 * (size / CROP_SIZE)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
