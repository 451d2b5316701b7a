"""Annotated images: boxes, landmarks and names drawn on a copy of the picture."""

from __future__ import annotations

import functools
import math
import os
import sys
import unicodedata
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facekit import FacekitWarning

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
FONT_ENV_VAR = "FACEKIT_FONT"
_WINDOWS_FONTS = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"
# Names in other scripts (Greek, Arabic, CJK, ...) are written with Pillow in whichever of these has most of their
# letters: files the OS or its usual font packages put in fixed places, widest coverage first. A fixed handful, not a
# fontconfig or registry search, which would take another dependency or a scan of every installed font.
FONT_CANDIDATES: tuple[Path, ...] = {
    "win32": (_WINDOWS_FONTS / "ARIALUNI.TTF", _WINDOWS_FONTS / "segoeui.ttf", _WINDOWS_FONTS / "msyh.ttc"),
    "darwin": (Path("/System/Library/Fonts/Supplemental/Arial Unicode.ttf"), Path("/Library/Fonts/Arial Unicode.ttf"),
               Path("/System/Library/Fonts/PingFang.ttc"), Path("/System/Library/Fonts/Hiragino Sans GB.ttc")),
}.get(sys.platform, (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
))
# The last code point, a noncharacter that no font maps: drawn, it is the font's .notdef glyph (an empty box, mostly),
# which is what Pillow draws for any character the font has no glyph for.
_UNMAPPED = "\U0010ffff"
_LEFT_TO_RIGHT_MARK = "\u200e"
# Unicode's paragraph separators ("\n" among them): Pillow's raqm layout fails on them, and "\n" makes lines.
_PARAGRAPH_BREAKS = str.maketrans(dict.fromkeys("\n\r\x1c\x1d\x1e\x85\u2029", "?"))
_PROBE_SIZE = 32


def draw_results(image: np.ndarray, results: list[dict], fps: float | None = None) -> np.ndarray:
    """results as identify_image returns them: dicts with box, landmarks, identity, similarity.

    A grey (or BGRA) image is drawn on as a BGR copy: in grey, the green of a known face and the red of an
    unknown one are two dark greys that cannot be told apart."""
    canvas = _bgr_copy(image)
    if fps is not None:
        # Sized to the frame (about 0.7 at 640 px, the scale the origin's 8 and 24 px are given for) and outlined,
        # to be read on a 4K frame and a white wall; drawn first, so that a face's label near the corner covers it
        # rather than the other way round.
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
        name = face.get("identity") or "unknown"
        similarity = face.get("similarity")  # None where there was no candidate (facekit.identify, no gallery)
        _draw_label(canvas, name, "" if similarity is None else f" {similarity:.2f}", x, y, max(0.4, w / 250), colour)
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
    font = _label_font(name, scale, weight)
    name = _drawable(name, font)
    if not isinstance(font, int) and font.layout_engine == ImageFont.Layout.RAQM:
        # Written left to right as OpenCV writes: an Arabic or Hebrew name still reads right to left, but the score
        # stays on its right, where its digits would otherwise join the name's run. The marks are not drawn.
        name, score = _LEFT_TO_RIGHT_MARK + name, _LEFT_TO_RIGHT_MARK + score
    label = name + score
    (tw, th), base = _text_size(label, font, scale, weight)
    while tw + 4 > width and name:
        name = name[:-1]
        label = name.rstrip() + "..." + score
        (tw, th), base = _text_size(label, font, scale, weight)
    band = th + base + 4
    left = min(max(0, x), max(0, width - tw - 4))
    top = max(0, y - band)  # a box at the frame's top edge: the band covers the box's top instead
    cv2.rectangle(canvas, (left, top), (left + tw + 4, top + band), colour, -1)
    # Dark letters on a light band: white on the green of a known face has a contrast of about 2 to 1.
    ink = (0, 0, 0) if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 128 else (255, 255, 255)
    _put_text(canvas, label, (left + 2, top + th + 2), font, scale, ink, weight)


def _label_font(name: str, scale: float, weight: int) -> int | ImageFont.FreeTypeFont:
    """OpenCV's font for a name it can write (in ASCII forms, or Cyrillic); else a TrueType font at a size that makes
    its capitals about as tall as OpenCV's, where one has letters OpenCV would write as "?"."""
    lacking = "".join(c for c in name.translate(_PARAGRAPH_BREAKS) if c != "?" and "?" in _drawable(c))
    font_file = _font_file(lacking) if lacking else None
    if font_file is None:
        return CYRILLIC_FONT if any(letter in CYRILLIC_LETTERS for letter in _drawable(name)) else FONT
    height, base = _opencv_height(scale, weight)
    return _font(font_file, height + base)


def _text_size(label: str, font: int | ImageFont.FreeTypeFont, scale: float,
               weight: int) -> tuple[tuple[int, int], int]:
    """cv2.getTextSize's ((width, height), baseline); a TrueType label's band is as tall as OpenCV's, or taller where
    its accents or ideographs reach further."""
    if isinstance(font, int):
        return cv2.getTextSize(label, font, scale, weight)
    height, base = _opencv_height(scale, weight)
    _, top, right, bottom = font.getbbox(label, anchor="ls")
    return (max(right, math.ceil(font.getlength(label))), max(height, -top)), max(base, bottom)


def _opencv_height(scale: float, weight: int) -> tuple[int, int]:
    """Height above and below the baseline of OpenCV's letters: the same for any text, so measured on ASCII (a lone
    surrogate, from a name that was not UTF-8, crashes OpenCV)."""
    (_, height), base = cv2.getTextSize("A", FONT, scale, weight)
    return height, base


def _put_text(canvas: np.ndarray, label: str, origin: tuple[int, int], font: int | ImageFont.FreeTypeFont,
              scale: float, ink: tuple[int, int, int], weight: int) -> None:
    if isinstance(font, int):
        cv2.putText(canvas, label, origin, font, scale, ink, weight, cv2.LINE_AA)
        return
    left, top, right, bottom = font.getbbox(label, anchor="ls")
    x0, y0 = max(0, origin[0] + left), max(0, origin[1] + top)
    area = canvas[y0:origin[1] + bottom, x0:origin[0] + right]  # only the label's pixels go through Pillow
    if area.size == 0:
        return
    image = Image.fromarray(np.ascontiguousarray(area))
    ImageDraw.Draw(image).text((origin[0] - x0, origin[1] - y0), label, ink, font=font, anchor="ls")
    area[:] = np.asarray(image)


def _font_file(characters: str) -> str | None:
    """The font file to write these characters in: $FACEKIT_FONT, else the candidate with the most of them; None
    where none has any."""
    chosen = os.environ.get(FONT_ENV_VAR)
    if chosen and _user_font_opens(chosen):
        files = [chosen]
    else:
        files = [str(path) for path in FONT_CANDIDATES if path.is_file() and _opens(str(path))]
    best, best_count = None, 0
    for font_file in files:
        count = sum(_has_glyph(font_file, c) for c in characters)
        if count > best_count:
            best, best_count = font_file, count
        if count == len(characters):
            break
    return best


@functools.lru_cache(maxsize=32)
def _font(font_file: str, size: int) -> ImageFont.FreeTypeFont:
    # Cached: a video's frames would otherwise read the font file again for every label.
    return ImageFont.truetype(font_file, size)


@functools.cache
def _opens(font_file: str) -> bool:
    try:
        _font(font_file, _PROBE_SIZE)
    except OSError:
        return False
    return True


@functools.cache
def _user_font_opens(font_file: str) -> bool:
    # Cached, so that the warning is given once, not for every label of every frame.
    if _opens(font_file):
        return True
    warnings.warn(f"${FONT_ENV_VAR} names no font file that can be opened ({font_file}); names in other scripts are "
                  f"drawn with a system font or as \"?\"", FacekitWarning, stacklevel=2)
    return False


@functools.lru_cache(maxsize=4096)
def _has_glyph(font_file: str, character: str) -> bool:
    # Pillow has no look-up in a font's character map: a character it lacks is drawn as .notdef is, at .notdef's width.
    # A lone surrogate (a byte of a name that was not UTF-8) it draws as "�": it stays "?", as OpenCV writes it.
    if unicodedata.category(character) == "Cs":
        return False
    return _rendering(font_file, character) != _rendering(font_file, _UNMAPPED)


@functools.lru_cache(maxsize=4096)
def _rendering(font_file: str, text: str) -> tuple[bytes, float]:
    font = _font(font_file, _PROBE_SIZE)
    image = Image.new("L", (3 * _PROBE_SIZE, 2 * _PROBE_SIZE))
    ImageDraw.Draw(image).text((_PROBE_SIZE, 3 * _PROBE_SIZE // 2), text, 255, font=font, anchor="ls")
    return image.tobytes(), font.getlength(text)


def _drawable(label: str, font: int | ImageFont.FreeTypeFont = FONT) -> str:
    """The label in the letters OpenCV's fonts can write, ASCII and the Cyrillic А to я: accents are dropped
    ("José Núñez" is drawn as "Jose Nunez", where OpenCV would draw "Jos? N??ez"), letters such as ß, Ł and Ø and
    typographic quotes and dashes take their usual ASCII forms, and other letters become "?". With a TrueType font,
    the letters it has are kept as they are, and only the others take those forms. The JSON and text output keep
    the name as enrolled."""
    if not isinstance(font, int):
        return "".join(c if _has_glyph(font.path, c) else _drawable(c) for c in label.translate(_PARAGRAPH_BREAKS))
    decomposed = unicodedata.normalize("NFKD", label.translate(_ASCII_FORMS))
    # NFKD splits Й into И and a breve, though the Cyrillic font has Й whole.
    decomposed = decomposed.replace("И\u0306", "Й").replace("и\u0306", "й")
    return "".join(c if c.isascii() or c in CYRILLIC_LETTERS else "?"
                   for c in decomposed if not unicodedata.combining(c))
