"""Annotated images: boxes, landmarks and names drawn on a copy of the picture."""

from __future__ import annotations

import functools
import math
import os
import sys
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facekit import FacekitWarning
from facekit.errors import printable_path

# Blue and orange (BGR; Okabe and Ito's pair): green and red, as drawn before, are one olive to the one man in
# twelve with red-green colour blindness, and these also differ in lightness, so that a grey print keeps them apart.
KNOWN = (178, 114, 0)
UNKNOWN = (0, 159, 230)
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
    # CJK, which DejaVu lacks: Noto Sans CJK (Debian and Ubuntu, Arch, Fedora), Droid Sans Fallback (Debian and
    # Ubuntu's fonts-droid-fallback, Fedora), WenQuanYi Zen Hei (Debian and Ubuntu).
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/google-droid-sans-fonts/DroidSansFallbackFull.ttf"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
))
# The last code point, a noncharacter that no font maps: drawn, it is the font's .notdef glyph (an empty box, mostly),
# which is what Pillow draws for any character the font has no glyph for.
_UNMAPPED = "\U0010ffff"
_LEFT_TO_RIGHT_MARK = "\u200e"
# Unicode's paragraph separators ("\n" among them): Pillow's raqm layout fails on them, and "\n" makes lines.
_PARAGRAPH_BREAKS = str.maketrans(dict.fromkeys("\n\r\x1c\x1d\x1e\x85\u2029", "?"))
_PROBE_SIZE = 32
# The smallest scale of a label: its letters, 9 px tall, can be read when the image is shown at full size. A label
# is written smaller only where the frame is too narrow for its score at it.
READABLE_SCALE = 0.4
_SMALLEST_SCALE = 0.1  # letters 2 px tall: no smaller, in a frame too narrow for even these (a few px wide)
Font = int | ImageFont.FreeTypeFont  # an OpenCV font's number, or a TrueType font Pillow writes with
Rectangle = tuple[int, int, int, int]  # left, top, right, bottom; right and bottom just outside it


def draw_results(image: np.ndarray, results: list[dict], fps: float | None = None) -> np.ndarray:
    """results as identify_image returns them: dicts with box, landmarks, identity, similarity.

    A grey (or BGRA) image is drawn on as a BGR copy, in the colours of a colour one."""
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
    for face in results:
        x, y, w, h = _box(face)
        thickness, dot_radius = _mark_sizes(w, max(canvas.shape[:2]))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), _colour(face), thickness)
        for px, py in face.get("landmarks", []):
            # Rounded as the box is: int() put each dot up to a pixel up and left of its point.
            cv2.circle(canvas, (int(round(px)), int(round(py))), dot_radius, (0, 220, 255), -1)
    # After every box: a label moved below or into its box is not crossed by another face's lines.
    for label in place_labels(canvas.shape, results):
        _draw_label(canvas, label)
    return canvas


def _mark_sizes(box_width: int, frame_side: int) -> tuple[int, int]:
    """A face's box line thickness and landmark dot radius: a small share of its box's width (lines a 50th, dots
    about a 16th across), so that the face is seen under its marks in a photo of any size (sized from the photo, an
    86 px face in an 8000 px one was hidden under 42 px dots); at least 1 px, and no bolder than the photo's size
    made them, so that a face filling a 512 px photo keeps its thin lines and ordinary photos look as they did."""
    frame_thickness = max(1, round(frame_side / 400))
    thickness = max(1, min(round(box_width / 50), frame_thickness))
    dot_radius = max(1, min(round(box_width / 33), frame_thickness + 1))
    return thickness, dot_radius


def _bgr_copy(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _box(face: dict) -> tuple[int, int, int, int]:
    x, y, w, h = (int(round(v)) for v in face["box"])
    return x, y, w, h


def _colour(face: dict) -> tuple[int, int, int]:
    return KNOWN if face.get("identity") else UNKNOWN


@dataclass(frozen=True)
class Label:
    """A face's name and score as drawn: runs of text, each in a font that has its letters, on a band of colour
    whose top left pixel is (left, top)."""

    runs: tuple[tuple[str, Font], ...]
    left: int
    top: int
    width: int
    height: int
    ascent: int  # from the band's top to the letters' baseline
    colour: tuple[int, int, int]
    scale: float
    weight: int

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.runs).replace(_LEFT_TO_RIGHT_MARK, "")

    @property
    def rectangle(self) -> Rectangle:
        return self.left, self.top, self.left + self.width, self.top + self.height


def place_labels(frame_shape: tuple[int, ...], results: list[dict]) -> list[Label]:
    """Each face's label, in results' order, inside the frame. The largest face's is placed first, each in the first
    place where it covers no label placed before it, no other face and not the place above it (_label_places); where
    none is free (a crowd of faces that overlap), in the one that covers least. Where faces are apart, a label is
    where it has always been: on its box's top left corner, above it."""
    frame_height, frame_width = frame_shape[:2]
    boxes = [_box(face) for face in results]
    first_choices = [_fitted_label(face, 3 * box[2], frame_width) for face, box in zip(results, boxes)]
    # What a label must not cover: another face, and the place above it where that face's label would go.
    faces_and_their_labels = [(x + 1, y - label.height, x + w, y + h)
                              for (x, y, w, h), label in zip(boxes, first_choices)]
    placed: dict[int, Label] = {}
    for index in sorted(range(len(results)), key=lambda i: -boxes[i][2] * boxes[i][3]):
        other_faces = faces_and_their_labels[:index] + faces_and_their_labels[index + 1:]
        best, best_cover = None, None
        for label in _label_places(results[index], first_choices[index], boxes[index], frame_width):
            # Kept inside the frame: a box at its top edge has its label over its top instead, one past its left
            # or right edge has it moved in.
            moved = replace(label, left=min(max(0, label.left), max(0, frame_width - label.width)),
                            top=min(max(0, label.top), max(0, frame_height - label.height)))
            cover = (sum(_overlap(moved.rectangle, other.rectangle) for other in placed.values()),
                     sum(_overlap(moved.rectangle, face) for face in other_faces))
            if best_cover is None or cover < best_cover:
                best, best_cover = moved, cover
            if cover == (0, 0):
                break
        placed[index] = best
    return [placed[index] for index in range(len(results))]


def _label_places(face: dict, first_choice: Label, box: tuple[int, int, int, int],
                  frame_width: int) -> Iterator[Label]:
    """The label where it may go, best first: above the box, below it, inside its bottom; in each, on the box's
    left edge, then ending at its right edge, then (where the label is wider than the box) its name cut short to
    the box's width."""
    x, y, w, h = box
    cut = None
    for place in ("above", "below", "inside"):
        yield from (_placed(first_choice, left, place, box) for left in (x, x + w + 1 - first_choice.width))
        if first_choice.width > w:
            # Only where the whole name has no free place: cutting a long name takes a measure per letter.
            cut = cut or _fitted_label(face, w, frame_width)
            yield _placed(cut, x, place, box)


def _placed(label: Label, left: int, place: str, box: tuple[int, int, int, int]) -> Label:
    _, y, _, h = box
    # Above and below, the band's edge row is the box's line, as the label has always been drawn.
    top = {"above": y - label.height + 1, "below": y + h, "inside": y + h - label.height + 1}[place]
    return replace(label, left=left, top=top)


def _overlap(first: Rectangle, second: Rectangle) -> int:
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    return max(0, width) * max(0, height)


def _fitted_label(face: dict, widest: int, frame_width: int) -> Label:
    """The face's label at (0, 0), its name cut short ("...") where the label would be wider than widest (or than
    room for "unknown" and the score, where that is wider) or than the frame. The score is never cut: in a frame
    too narrow for it beside "...", it is written alone, and in one too narrow for it at the smallest readable
    scale, smaller, as wide as the frame."""
    known = bool(face.get("identity"))
    name = face.get("identity") or "unknown"
    similarity = face.get("similarity")  # None where there was no candidate (facekit.identify, no gallery)
    score = "" if similarity is None else f" {similarity:.2f}"
    scale = max(READABLE_SCALE, _box(face)[2] / 250)
    weight = _weight(scale)
    widest = min(frame_width, max(widest, cv2.getTextSize("unknown" + score, FONT, scale, weight)[0][0] + 5))
    font = _label_font(name, scale, weight)
    runs = _label_runs(name, score, font)
    (text_width, text_height), base = _runs_size(runs, scale, weight)
    if text_width + 5 > widest and not known:
        # "u..." would read as a cut name: "?" says unknown without the colour, which not every eye tells.
        runs = _label_runs("?", score, FONT)
        (text_width, text_height), base = _runs_size(runs, scale, weight)
    elif text_width + 5 > widest and name:
        # The longest start of the name that fits with "...", found by halving: measuring a label costs about 0.1
        # ms, and a letter at a time made a long name a few ms of each webcam frame.
        def fits(length: int) -> bool:
            runs = _label_runs(_cut_name(name, length, font), score, font)
            return _runs_size(runs, scale, weight)[0][0] + 5 <= widest

        shortest, longest = 0, len(name) - 1
        while shortest < longest:
            middle = (shortest + longest + 1) // 2
            shortest, longest = (middle, longest) if fits(middle) else (shortest, middle - 1)
        runs = _label_runs(_cut_name(name, shortest, font), score, font)
        (text_width, text_height), base = _runs_size(runs, scale, weight)
    if text_width + 5 > widest:
        # Not even "..." and the score fit (a face in a frame some 50 px wide): the score alone, in OpenCV's font,
        # which has its digits, "?" before it for an unknown face.
        alone = (score.strip() or "...") if known else "?" + score
        scale = _scale_to_fit(alone, scale, widest)
        weight = _weight(scale)
        runs = [(alone, FONT)]
        (text_width, text_height), base = _runs_size(runs, scale, weight)
    return Label(tuple(runs), 0, 0, text_width + 5, text_height + base + 5, text_height + 2, _colour(face), scale,
                 weight)


def _weight(scale: float) -> int:
    return max(1, round(scale * 1.6))  # a 1 px stroke in letters 70 px tall is lost once a 4K frame is shown


def _scale_to_fit(text: str, scale: float, widest: int) -> float:
    """The largest scale up to scale at which text in OpenCV's font fits in widest with its band's margins: below
    READABLE_SCALE only where the frame is narrower than the text at it, since cutting digits would show another
    number. At least _SMALLEST_SCALE, where it may still be wider."""
    width = cv2.getTextSize(text, FONT, scale, _weight(scale))[0][0]
    # The width is about in proportion to the scale; stepped down from there where rounding left it too wide.
    scale = max(_SMALLEST_SCALE, min(scale, scale * (widest - 5) / max(1, width)))
    while scale > _SMALLEST_SCALE and cv2.getTextSize(text, FONT, scale, _weight(scale))[0][0] + 5 > widest:
        scale = max(_SMALLEST_SCALE, scale - 0.02)
    return scale


def _cut_name(name: str, length: int, font: Font) -> str:
    """The name's first length characters and "..." where it was cut: at its end as it reads, which for a name laid out
    right to left (Arabic, Hebrew, with a layout engine that does so) is its left, before it in the label's order."""
    cut = name[:length].rstrip()
    laid_out_right_to_left = not isinstance(font, int) and font.layout_engine == ImageFont.Layout.RAQM and next(
        (unicodedata.bidirectional(c) in ("R", "AL") for c in name if unicodedata.bidirectional(c) in ("L", "R", "AL")),
        False)
    return "..." + cut if laid_out_right_to_left else cut + "..."


def _label_runs(name: str, score: str, font: Font) -> list[tuple[str, Font]]:
    """name and score in runs of one font each. With a TrueType font, a letter it lacks (a CJK-only font has no
    digits or Latin letters) is written in OpenCV's, in the form _drawable gives it, unless the TrueType font has
    that form; with one of OpenCV's fonts, the whole label is in its letters."""
    if isinstance(font, int):
        return [(_drawable(name + score), font)]
    runs: list[tuple[str, Font]] = []
    for part in (name, score):
        if font.layout_engine == ImageFont.Layout.RAQM:
            # Written left to right as OpenCV writes: an Arabic or Hebrew name still reads right to left, but the
            # score stays on its right, where its digits would otherwise join the name's run. The marks are not
            # drawn.
            runs.append((_LEFT_TO_RIGHT_MARK, font))
        for character in part.translate(_PARAGRAPH_BREAKS):
            shown, shown_in = character, font
            if not _has_glyph(font.path, character):
                shown = _drawable(character)
                if not all(_has_glyph(font.path, c) for c in shown):
                    shown_in = CYRILLIC_FONT if any(c in CYRILLIC_LETTERS for c in shown) else FONT
            if runs[-1:] and runs[-1][1] is shown_in:
                runs[-1] = (runs[-1][0] + shown, shown_in)
            else:
                runs.append((shown, shown_in))
    return [(text, run_font) for text, run_font in runs if text.strip(_LEFT_TO_RIGHT_MARK)]


def _runs_size(runs: list[tuple[str, Font]], scale: float, weight: int) -> tuple[tuple[int, int], int]:
    """The runs' width side by side, and the tallest one's height and baseline, as _text_size gives them."""
    sizes = [_text_size(text, font, scale, weight) for text, font in runs]
    return ((sum(width for (width, _), _ in sizes), max(height for (_, height), _ in sizes)),
            max(base for _, base in sizes))


def _draw_label(canvas: np.ndarray, label: Label) -> None:
    cv2.rectangle(canvas, (label.left, label.top), (label.left + label.width - 1, label.top + label.height - 1),
                  label.colour, -1)
    # Dark letters on a light band: white on the orange of an unknown face has a contrast of about 2 to 1.
    colour = label.colour
    ink = (0, 0, 0) if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 128 else (255, 255, 255)
    x = label.left + 2
    for text, font in label.runs:
        _put_text(canvas, text, (x, label.top + label.ascent), font, label.scale, ink, label.weight)
        x += _text_size(text, font, label.scale, label.weight)[0][0]


def _label_font(name: str, scale: float, weight: int) -> Font:
    """OpenCV's font for a name it can write (in ASCII forms, or Cyrillic); else a TrueType font at a size that makes
    its capitals about as tall as OpenCV's, where one has letters OpenCV would write as "?"."""
    lacking = "".join(c for c in name.translate(_PARAGRAPH_BREAKS) if c != "?" and "?" in _drawable(c))
    font_file = _font_file(lacking) if lacking else None
    # A byte of a name that was not UTF-8 is "?" whatever the font.
    if any(unicodedata.category(c) != "Cs" and (font_file is None or not _has_glyph(font_file, c)) for c in lacking):
        _say_once_that_no_font_has(name)
    if font_file is None:
        return CYRILLIC_FONT if any(letter in CYRILLIC_LETTERS for letter in _drawable(name)) else FONT
    height, base = _opencv_height(scale, weight)
    return _font(font_file, height + base)


_said_that_no_font_has_a_name = False


def _say_once_that_no_font_has(name: str) -> None:
    # Once a run: a gallery of Chinese names would otherwise warn for every face of every photo or frame.
    global _said_that_no_font_has_a_name
    if _said_that_no_font_has_a_name:
        return
    _said_that_no_font_has_a_name = True
    warnings.warn(f"no font found has all the letters of \"{printable_path(name)}\": they are drawn as \"?\" on "
                  f"annotated images; set ${FONT_ENV_VAR} to a .ttf/.otf/.ttc font that has them, or install one "
                  f"such as Noto Sans CJK or Droid Sans Fallback (Debian and Ubuntu: fonts-noto-cjk, "
                  f"fonts-droid-fallback)", FacekitWarning, stacklevel=2)


def _text_size(label: str, font: Font, scale: float, weight: int) -> tuple[tuple[int, int], int]:
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


def _put_text(canvas: np.ndarray, label: str, origin: tuple[int, int], font: Font,
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
