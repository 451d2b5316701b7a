"""Annotated images: boxes, landmarks and names drawn on a copy of the picture."""

from __future__ import annotations

import unicodedata

import cv2
import numpy as np

KNOWN = (60, 200, 60)
UNKNOWN = (40, 40, 220)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# The one OpenCV font with Cyrillic letters (А to я; not Ё, which is drawn as Е): a name in them is written in it
# rather than as a row of "?".
CYRILLIC_FONT = cv2.FONT_HERSHEY_COMPLEX
CYRILLIC_LETTERS = "".join(chr(code) for code in range(0x410, 0x450))
# Latin letters and punctuation that NFKD leaves whole, common in names ("Łukasz", "Strauß", "O’Brien"): written
# "?" they would make most of a Polish or Scandinavian name unreadable. The Ukrainian and Serbian letters the Cyrillic
# font lacks that look like Latin ones ("Олексій") take that form.
_ASCII_FORMS = str.maketrans({
    "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o", "Ł": "L", "ł": "l",
    "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "Th", "þ": "th", "ı": "i", "Ħ": "H", "ħ": "h", "Ŋ": "N",
    "ŋ": "n", "·": ".", "‘": "'", "’": "'", "‚": ",", "“": '"', "”": '"', "‐": "-", "‑": "-", "–": "-",
    "—": "-", "І": "I", "і": "i", "Ї": "I", "ї": "i", "Ј": "J", "ј": "j", "Ѕ": "S", "ѕ": "s",
})


def draw_results(image: np.ndarray, results: list[dict], fps: float | None = None) -> np.ndarray:
    """results as identify_image returns them: dicts with box, landmarks, identity, similarity.

    A grey (or BGRA) image is drawn on as a BGR copy: in grey, the green of a known face and the red of an
    unknown one are two dark greys that cannot be told apart."""
    canvas = _bgr_copy(image)
    if fps is not None:
        # Sized to the frame (0.7 at 640 px, as before) and outlined, to be read on a 4K frame and a white wall;
        # drawn first, so that a face's label near the corner covers it rather than the other way round.
        scale = max(0.4, max(canvas.shape[:2]) / 900)
        bold = max(2, round(scale * 2.8))
        origin = (round(8 * scale / 0.7), round(24 * scale / 0.7))
        cv2.putText(canvas, f"{fps:.1f} fps", origin, FONT, scale, (0, 0, 0), bold + 2, cv2.LINE_AA)
        cv2.putText(canvas, f"{fps:.1f} fps", origin, FONT, scale, (255, 255, 255), bold, cv2.LINE_AA)
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for face in results:
        x, y, w, h = (int(round(v)) for v in face["box"])
        colour = KNOWN if face.get("identity") else UNKNOWN
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
        for px, py in face.get("landmarks", []):
            # Rounded as the box is: int() put each dot up to a pixel up and left of its point.
            cv2.circle(canvas, (int(round(px)), int(round(py))), thickness + 1, (0, 220, 255), -1)
        name = _drawable(face.get("identity") or "unknown")
        _draw_label(canvas, name, f" {face.get('similarity', 0.0):.2f}", x, y, max(0.4, w / 250), colour)
    return canvas


def _bgr_copy(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _draw_label(canvas: np.ndarray, name: str, score: str, x: int, y: int, scale: float,
                colour: tuple[int, int, int]) -> None:
    """name and score on a band of colour just above (x, y), kept inside the frame: moved in where the box reaches
    past an edge, and the name cut short ("...") where the frame is too narrow for all of it."""
    width = canvas.shape[1]
    weight = max(1, round(scale * 1.6))  # a 1 px stroke in letters 70 px tall is lost once a 4K frame is shown
    font = CYRILLIC_FONT if any(letter in CYRILLIC_LETTERS for letter in name) else FONT
    label = name + score
    (tw, th), base = cv2.getTextSize(label, font, scale, weight)
    while tw + 4 > width and name:
        name = name[:-1]
        label = name.rstrip() + "..." + score
        (tw, th), base = cv2.getTextSize(label, font, scale, weight)
    band = th + base + 4
    left = min(max(0, x), max(0, width - tw - 4))
    top = max(0, y - band)  # a box at the frame's top edge: the band covers the box's top instead
    cv2.rectangle(canvas, (left, top), (left + tw + 4, top + band), colour, -1)
    # Dark letters on a light band: white on the green of a known face has a contrast of about 2 to 1.
    ink = (0, 0, 0) if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 128 else (255, 255, 255)
    cv2.putText(canvas, label, (left + 2, top + th + 2), font, scale, ink, weight, cv2.LINE_AA)


def _drawable(label: str) -> str:
    """The label in the letters OpenCV's fonts can write, ASCII and the Cyrillic А to я: accents are dropped
    ("José Núñez" is drawn as "Jose Nunez", where OpenCV would draw "Jos? N??ez"), letters such as ß, Ł and Ø and
    typographic quotes and dashes take their usual ASCII forms, and other letters become "?". The JSON and text
    output keep the name as enrolled."""
    decomposed = unicodedata.normalize("NFKD", label.translate(_ASCII_FORMS))
    # NFKD splits Й into И and a breve, though the Cyrillic font has Й whole.
    decomposed = decomposed.replace("И\u0306", "Й").replace("и\u0306", "й")
    return "".join(c if c.isascii() or c in CYRILLIC_LETTERS else "?"
                   for c in decomposed if not unicodedata.combining(c))
