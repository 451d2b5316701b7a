"""Annotated images: boxes, landmarks and names drawn on a copy of the picture."""

from __future__ import annotations

import unicodedata

import cv2
import numpy as np

KNOWN = (60, 200, 60)
UNKNOWN = (40, 40, 220)


def draw_results(image: np.ndarray, results: list[dict], fps: float | None = None) -> np.ndarray:
    """results as identify_image returns them: dicts with box, landmarks, identity, similarity."""
    canvas = image.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for face in results:
        x, y, w, h = (int(round(v)) for v in face["box"])
        colour = KNOWN if face.get("identity") else UNKNOWN
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        for px, py in face.get("landmarks", []):
            cv2.circle(canvas, (int(px), int(py)), thickness + 1, (0, 220, 255), -1)
        label = _drawable(f"{face.get('identity') or 'unknown'} {face.get('similarity', 0.0):.2f}")
        scale = max(0.4, w / 250)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y - th - base - 4)
        cv2.rectangle(canvas, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(canvas, label, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    if fps is not None:
        cv2.putText(canvas, f"{fps:.1f} fps", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


def _drawable(label: str) -> str:
    """The label in the ASCII that OpenCV's fonts can write: accents are dropped ("José Núñez" is drawn as
    "Jose Nunez", where OpenCV would draw "Jos? N??ez"), and letters with no ASCII form become "?". The JSON
    and text output keep the name as enrolled."""
    decomposed = unicodedata.normalize("NFKD", label)
    return "".join(c if c.isascii() else "?" for c in decomposed if not unicodedata.combining(c))
