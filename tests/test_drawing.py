"""Annotated copies: what facekit.drawing puts on a photo."""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from facekit import FacekitWarning, drawing
from facekit.drawing import KNOWN, UNKNOWN, _drawable, draw_results

# Greek, Hebrew and Arabic, but no CJK: shipped with matplotlib, so the same font on every machine.
DEJAVU = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"
SYSTEM_FONTS = drawing.FONT_CANDIDATES  # before no_system_fonts empties it
READABLE_SCALE = 0.4  # the smallest scale a label is written at where the frame has room for its score at it


@pytest.fixture(autouse=True)
def no_system_fonts(monkeypatch):
    # What a label is drawn in must not depend on the fonts this machine has, or on the user's $FACEKIT_FONT.
    monkeypatch.delenv("FACEKIT_FONT", raising=False)
    monkeypatch.setattr(drawing, "FONT_CANDIDATES", ())
    # A name no font has is said once a run: here, once a test.
    monkeypatch.setattr(drawing, "_said_that_no_font_has_a_name", False, raising=False)


def test_labels_are_drawn_in_ascii_without_touching_the_photo(astronaut_bgr):
    # OpenCV's fonts write only ASCII: accents go, letters with no ASCII form become "?".
    assert _drawable("José Núñez 0.93") == "Jose Nunez 0.93"
    assert _drawable("王 0.50") == "? 0.50"
    face = {"box": [180, 60, 110, 120], "landmarks": [[210, 110], [260, 110], [235, 140], [215, 160], [255, 160]],
            "identity": "José", "similarity": 0.9}
    before = astronaut_bgr.copy()
    drawn = draw_results(astronaut_bgr, [face, {**face, "box": [20, 300, 100, 100], "identity": None}])
    assert np.array_equal(astronaut_bgr, before) and drawn.shape == astronaut_bgr.shape
    changed = np.any(drawn != astronaut_bgr, axis=2)
    # The box edges and the label above each face are drawn; the middle of the photo's far corner is not.
    assert changed[60, 180:290].any() and changed[300, 20:120].any() and not changed[450:, 400:].any()


def test_common_latin_letters_and_quotes_keep_an_ascii_form():
    # NFKD leaves these whole; drawn as "?" they made "Łukasz Strauß" "?ukasz Strau?".
    assert _drawable("Łukasz Strauß O’Brien Ørsted–Æbeltoft") == "Lukasz Strauss O'Brien Orsted-AEbeltoft"


def _face(x: int, y: int, name: str | None, similarity: float = 0.9) -> dict:
    return {"box": [x, y, 110, 120], "identity": name, "similarity": similarity}


def test_the_whole_label_is_drawn_inside_the_frame():
    # A label that runs past an edge loses its start (a box partly off the left) or its score (a box at the right,
    # a name longer than the frame is wide): two faces that differ there must still be drawn differently.
    frame = np.full((240, 320, 3), 90, np.uint8)
    long_name = "Maximilian Alexander von Hohenzollern-Sigmaringen"
    for first, second in (
        (_face(-80, 100, "Ann"), _face(-80, 100, "Ada")),  # the name (as wide as the other), off the left edge
        (_face(300, 100, "Ann"), _face(300, 100, "Ann", similarity=0.4)),  # the score, off the right edge
        (_face(20, 100, long_name), _face(20, 100, long_name, similarity=0.4)),  # the score, past a narrow frame
    ):
        assert not np.array_equal(draw_results(frame, [first]), draw_results(frame, [second])), first
    # Where it fits, the label is where it always was: on the box's top left corner, above it.
    drawn = draw_results(frame, [_face(100, 100, "Ann")])
    band = np.all(drawn == KNOWN, axis=2)
    assert band[88:99, 100].all() and not band[:, :100].any() and not band[:80].any()


def test_labels_are_readable_on_grey_and_large_frames(astronaut_bgr):
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    known, unknown = _face(180, 60, "José"), _face(20, 300, None)
    drawn = draw_results(grey, [known, unknown])
    # In grey, a known face's colour and an unknown one's were two dark greys (60 and 40): now in colour.
    assert drawn.shape == astronaut_bgr.shape
    assert tuple(drawn[120, 180]) == KNOWN and tuple(drawn[350, 20]) == UNKNOWN

    def letters(band_colour: tuple[int, int, int], area: tuple[slice, slice]) -> np.ndarray:
        rows, columns = np.nonzero(np.all(drawn[area] == band_colour, axis=2))
        top, left = area[0].start + rows.min(), area[1].start + columns.min()
        return drawn[top:top + int(np.ptp(rows)) + 1, left:left + int(np.ptp(columns)) + 1].reshape(-1, 3)

    # Dark letters on the light orange band (white ones had a contrast of about 2 to 1), white on the dark blue.
    assert letters(UNKNOWN, (slice(240, 300), slice(0, 200))).max(axis=1).min() < 40
    assert letters(KNOWN, (slice(0, 60), slice(180, 512))).min(axis=1).max() > 215
    # The frame rate is written to the frame's size: at 0.7 it was 16 px tall on a 4K frame.
    large = np.full((2160, 3840, 3), 90, np.uint8)
    rows = np.flatnonzero(np.any(draw_results(large, [], fps=12.5)[:, :800] != 90, axis=(1, 2)))
    assert rows.size and rows[-1] - rows[0] > 60


def test_cyrillic_names_are_drawn_in_the_font_that_has_them(astronaut_bgr):
    # OpenCV's COMPLEX font has А to я: "Иван" and "Илья" were both drawn "????". NFKD took the breve off Й.
    assert _drawable("Йозеф Пётр Олексій 0.93") == "Йозеф Петр Олексiй 0.93"
    drawn = {name: draw_results(astronaut_bgr, [_face(180, 60, name)]) for name in ("Иван", "Илья", "????")}
    assert not np.array_equal(drawn["Иван"], drawn["Илья"])
    assert not np.array_equal(drawn["Иван"], drawn["????"])


def test_landmark_dots_sit_on_their_points():
    # int() cut 100.8 to 100: each dot sat up to a pixel up and left of its point, while the box was rounded.
    frame = np.full((240, 320, 3), 90, np.uint8)
    points = np.array([[100.8, 60.8], [140.7, 61.2], [120.6, 90.9], [104.2, 120.7], [136.9, 119.6]])
    drawn = draw_results(frame, [{**_face(200, 150, "Ann"), "landmarks": points.tolist()}])
    dots = np.all(drawn == (0, 220, 255), axis=2).astype(np.uint8)
    count, _, _, centres = cv2.connectedComponentsWithStats(dots)
    assert count == 1 + len(points)
    nearest = [centres[1:][np.argmin(np.linalg.norm(centres[1:] - point, axis=1))] for point in points]
    np.testing.assert_allclose(nearest, points, atol=0.5)


def test_greek_and_hebrew_names_are_written_in_a_font_that_has_them(astronaut_bgr, monkeypatch):
    # OpenCV's fonts have no Greek: "Ελένη" and "Σοφία" were both drawn "?????".
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))
    drawn = {name: draw_results(astronaut_bgr, [_face(180, 60, name)]) for name in ("Ελένη", "Σοφία", "?????")}
    assert not np.array_equal(drawn["Ελένη"], drawn["Σοφία"])
    assert not np.array_equal(drawn["Ελένη"], drawn["?????"])
    # On the band where the OpenCV label is, just above the box's top left corner.
    band = np.all(drawn["Ελένη"][:60] == KNOWN, axis=2)
    assert band[50:60, 180].all() and not band[:, :180].any()
    # A right-to-left name keeps its score on the right, as a Latin one does.
    frame = np.full((240, 320, 3), 90, np.uint8)
    high, low = (draw_results(frame, [_face(20, 100, "שרה כהן", similarity)]) for similarity in (0.9, 0.4))
    columns = np.flatnonzero(np.any(high != low, axis=(0, 2)))
    label = np.flatnonzero(np.all(high[:100] == KNOWN, axis=2).any(axis=0))
    assert columns.size and columns.min() > (label.min() + label.max()) / 2


def test_a_name_no_font_has_is_still_a_row_of_question_marks(astronaut_bgr, monkeypatch):
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))  # no CJK in it
    assert np.array_equal(draw_results(astronaut_bgr, [_face(180, 60, "王小明")]),
                          draw_results(astronaut_bgr, [_face(180, 60, "???")]))


def test_a_line_break_or_a_byte_that_was_not_utf8_is_a_question_mark_in_a_font_too(astronaut_bgr, monkeypatch):
    # Pillow's layout fails on "\n" (or makes it lines), and OpenCV crashes on a lone surrogate.
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))
    for name, shown in (("Ελ\nένη", "Ελ?ένη"), ("Ελ\u2029ένη", "Ελ?ένη"), ("Ελ" + os.fsdecode(b"\xe9"), "Ελ?")):
        assert np.array_equal(draw_results(astronaut_bgr, [_face(180, 60, name)]),
                              draw_results(astronaut_bgr, [_face(180, 60, shown)])), shown


def test_an_unusable_font_setting_warns_once_and_falls_back(astronaut_bgr, monkeypatch, tmp_path):
    question_marks = draw_results(astronaut_bgr, [_face(180, 60, "?????")])
    not_a_font = tmp_path / "notes.ttf"
    not_a_font.write_text("not a font")
    for setting in (tmp_path / "missing.ttf", not_a_font):
        monkeypatch.setenv("FACEKIT_FONT", str(setting))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frames = [draw_results(astronaut_bgr, [_face(180, 60, "Ελένη")]) for _ in range(3)]
        said = [str(w.message) for w in caught if w.category is FacekitWarning]
        # Besides the once a run that no font found has "Ελένη".
        assert [message.count(str(setting)) for message in said if "FACEKIT_FONT names" in message] == [1]
        assert all(np.array_equal(frame, question_marks) for frame in frames)
    # Falls back to the system's fonts, where there is one with the letters.
    monkeypatch.setattr(drawing, "FONT_CANDIDATES", (tmp_path / "absent.ttf", DEJAVU))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.array_equal(draw_results(astronaut_bgr, [_face(180, 60, "Ελένη")]), question_marks)


def test_latin_and_cyrillic_names_are_drawn_by_opencv_as_before(astronaut_bgr, monkeypatch):
    faces = [_face(180, 60, "José Núñez"), _face(20, 300, "Łukasz Иван"), _face(300, 300, None)]
    before = draw_results(astronaut_bgr, faces)
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))
    assert np.array_equal(draw_results(astronaut_bgr, faces), before)


def test_a_face_without_candidates_is_labelled_unknown_without_a_number(astronaut_bgr, grace_hopper_path):
    # facekit.identify with no gallery gives such a face similarity None, and its annotated copy must still draw.
    import facekit

    face = facekit.identify(str(grace_hopper_path), None)[0]
    assert face["similarity"] is None
    drawn = draw_results(astronaut_bgr, [face])
    assert np.any(drawn != astronaut_bgr)


def _overlap(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> int:
    return max(0, min(first[2], second[2]) - max(first[0], second[0])) * max(
        0, min(first[3], second[3]) - max(first[1], second[1]))


def test_labels_of_faces_side_by_side_do_not_cover_each_other(monkeypatch):
    # Two tight faces showed only the right one's label over the left one's ("Κώστας Παπαδόπουλος 0.90 .68"), a
    # long name and its neighbour read as one person with two scores, and a grid's long name ran over its row.
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))
    long_name = "Maximilian Alexander von Hohenzollern"
    tight = np.full((130, 220, 3), 90, np.uint8)
    grid = np.full((400, 1000, 3), 90, np.uint8)
    names = [long_name, "Ann", "Κώστας Παπαδόπουλος", None, "Bob", "شرف الدين عبد الرحمن", "Łukasz", long_name]
    for frame, faces in (
        (tight, [{**_face(0, 10, "Κώστας Παπαδόπουλος"), "box": [0, 10, 110, 110]},
                 {**_face(110, 10, "محمد عبد الرحمن", 0.68), "box": [110, 10, 110, 110]}]),
        (np.full((200, 400, 3), 90, np.uint8), [_face(40, 50, long_name, 0.73), _face(160, 50, "Ann Li", 0.66)]),
        (grid, [{**_face(30 + 250 * (i % 4), 60 + 200 * (i // 4), name), "box": [30 + 250 * (i % 4),
                 60 + 200 * (i // 4), 150, 110]} for i, name in enumerate(names)]),
    ):
        labels = drawing.place_labels(frame.shape, faces)
        for first, second in itertools.combinations(labels, 2):
            assert _overlap(first.rectangle, second.rectangle) == 0, (first.text, second.text)
        for label, face in zip(labels, faces):
            left, top, right, bottom = label.rectangle
            assert 0 <= left and right <= frame.shape[1] and 0 <= top and bottom <= frame.shape[0]
            assert label.text.endswith(f" {face['similarity']:.2f}"), label.text  # the score is never cut
        # Each face's score is seen: another score changes the picture.
        for index, face in enumerate(faces):
            other = [*faces[:index], {**face, "similarity": 0.41}, *faces[index + 1:]]
            assert not np.array_equal(draw_results(frame, faces), draw_results(frame, other)), face["identity"]
    # A face apart keeps its whole name, on its box's top left corner.
    alone = drawing.place_labels(grid.shape, [_face(100, 100, long_name)])[0]
    assert alone.text == f"{long_name} 0.90" and (alone.left, alone.rectangle[3]) == (100, 101)


def test_a_name_no_font_has_is_said_once_with_how_to_draw_it(astronaut_bgr, monkeypatch):
    monkeypatch.setenv("FACEKIT_FONT", str(DEJAVU))  # no CJK in it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            draw_results(astronaut_bgr, [_face(180, 60, "王小明"), _face(20, 300, "李雷"), _face(300, 300, "Ελένη")])
    said = [str(w.message) for w in caught if w.category is FacekitWarning]
    assert len(said) == 1 and "王小明" in said[0] and "$FACEKIT_FONT" in said[0] and "Noto Sans CJK" in said[0]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the Linux font paths")
def test_common_cjk_fonts_are_looked_for():
    names = {path.name for path in SYSTEM_FONTS}
    assert {"NotoSansCJK-Regular.ttc", "DroidSansFallbackFull.ttf"} <= names


def test_letters_and_digits_a_font_lacks_are_drawn_in_opencvs(astronaut_bgr, monkeypatch, tmp_path):
    # DroidSansFallbackFull.ttf, a CJK font, has no digits or Latin letters: the score was drawn as empty boxes,
    # so that 0.90 and 0.40 looked the same. A Greek-only font stands for it here.
    subset = pytest.importorskip("fontTools.subset")
    options = subset.Options(notdef_outline=True)
    greek_only = subset.Subsetter(options)
    greek_only.populate(unicodes=range(0x370, 0x400))
    font = subset.load_font(str(DEJAVU), options)
    greek_only.subset(font)
    subset.save_font(font, str(tmp_path / "greek.ttf"), options)
    monkeypatch.setenv("FACEKIT_FONT", str(tmp_path / "greek.ttf"))
    high, low = (draw_results(astronaut_bgr, [_face(180, 60, "Ελένη", similarity)]) for similarity in (0.9, 0.4))
    assert not np.array_equal(high, low)
    latin, other_latin = (draw_results(astronaut_bgr, [_face(180, 60, name)]) for name in ("Ελένη Li", "Ελένη Ab"))
    assert not np.array_equal(latin, other_latin)


def test_a_right_to_left_name_is_cut_at_its_end_as_it_reads():
    # "..." went after the name in the label's order, which a right-to-left layout puts at the name's start (its
    # right), so an Arabic reader saw the first name cut, not the last.
    from PIL import ImageFont as PilFont
    from PIL import features

    if not features.check("raqm"):
        pytest.skip("Pillow without libraqm lays a right-to-left name out left to right: its end is on the right")
    font = PilFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), 20,
                            layout_engine=PilFont.Layout.RAQM)
    assert drawing._cut_name("محمد عبد الرحمن", 8, font) == "...محمد عبد"
    assert drawing._cut_name("Maximilian Alexander", 11, font) == "Maximilian..."
    # Without the layout engine the letters go left to right, the end on the right.
    basic = PilFont.truetype(font.path, 20, layout_engine=PilFont.Layout.BASIC)
    assert drawing._cut_name("محمد عبد الرحمن", 8, basic) == "محمد عبد..."


def _written(drawn: np.ndarray, text: str, colour: tuple[int, int, int], scale: float = READABLE_SCALE) -> bool:
    """Whether every pixel of text, as a label on colour writes it at scale, is somewhere in drawn. The whole
    label's text: OpenCV puts a letter at a fraction of a pixel, so that "0.42" is not drawn alone as in "... 0.42"."""
    ink = (0, 0, 0) if colour == UNKNOWN else (255, 255, 255)
    (width, height), base = cv2.getTextSize(text, drawing.FONT, scale, 1)
    patch = np.full((height + base + 8, width + 8, 3), colour, np.uint8)
    cv2.putText(patch, text, (4, height + 4), drawing.FONT, scale, ink, 1, cv2.LINE_AA)
    rows, columns = np.nonzero(np.any(patch != colour, axis=2))
    letters = patch[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    return cv2.minMaxLoc(cv2.matchTemplate(drawn, letters, cv2.TM_SQDIFF))[0] < 0.5


@pytest.mark.parametrize("photo_width", [8000, 20000])
def test_a_small_face_in_a_very_large_photo_is_seen_under_its_marks(photo_width):
    # Lines and dots were sized from the photo: on an 8000 px one 20 px lines and 42 px dots hid an 86 px face, on
    # a 20000 px one 50 px lines and 102 px dots.
    canvas = np.full((300, photo_width, 3), 90, np.uint8)
    x, y, w, h = photo_width // 2, 150, 86, 100
    points = [[x + 26, y + 40], [x + 60, y + 40], [x + 43, y + 60], [x + 29, y + 78], [x + 57, y + 78]]
    drawn = draw_results(canvas, [{"box": [x, y, w, h], "landmarks": points, "identity": None, "similarity": 0.42}])
    face = drawn[y:y + h, x:x + w]
    assert np.any(face != 90, axis=2).mean() < 0.1  # was all of it
    dots = np.all(face == (0, 220, 255), axis=2).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(dots)
    assert count == 1 + len(points) and stats[1:, cv2.CC_STAT_WIDTH].max() <= w // 10  # five small dots, apart
    # Its label can still be read at full size: written at the smallest readable scale, score and all.
    area = drawn[y - 40:y + h, x - 10:x + 3 * w]
    assert _written(area, "unknown 0.42", UNKNOWN)


def test_marks_on_ordinary_photos_keep_their_size():
    # A face of a 1080p or 4K photo, or one filling a 512 px photo, keeps the lines and dots it had (in drawn
    # pixels: OpenCV draws a line of thickness 5 7 px wide).
    for frame_shape, width, line_width, dot_width in (((512, 512), 89, 1, 5), ((512, 512), 450, 1, 5),
                                                      ((1080, 1920), 250, 7, 13), ((2160, 3840), 600, 11, 23)):
        canvas = np.full((*frame_shape, 3), 90, np.uint8)
        x, y = 20, 40
        drawn = draw_results(canvas, [{"box": [x, y, width, width], "landmarks": [[x + width // 2, y + width // 2]],
                                       "identity": None, "similarity": 0.42}])
        line = np.all(drawn[:, x + width // 2] == UNKNOWN, axis=1)
        assert line[y + width // 2:].sum() == line_width, (frame_shape, width)  # the box's bottom line
        dot = np.all(drawn[y + width // 2] == (0, 220, 255), axis=1)
        assert dot.sum() == dot_width, (frame_shape, width)


def test_a_label_fits_a_tiny_frame_with_its_score_whole():
    # On a 50x50 image the label stayed at its smallest scale and was only moved in: "unknow", the score cut off.
    face = {"box": [10, 12, 30, 30], "landmarks": [[18, 22], [32, 22], [25, 28], [19, 35], [31, 35]],
            "identity": None, "similarity": 0.42}
    frame = np.full((50, 50, 3), 90, np.uint8)
    label, = drawing.place_labels(frame.shape, [face])
    left, top, right, bottom = label.rectangle
    assert 0 <= left and right <= 50 and 0 <= top and bottom <= 50 and label.text == "? 0.42"
    assert _written(draw_results(frame, [face]), "? 0.42", UNKNOWN, label.scale)
    # The name is cut before the score, which stays whole, at the readable scale, in any frame with room for it.
    long_name = "Maximilian Alexander"
    for width in range(34, 160, 3):
        named = {**face, "identity": long_name}
        label, = drawing.place_labels((50, width), [named])
        assert 0 <= label.left and label.rectangle[2] <= width, width
        assert label.scale == READABLE_SCALE and label.text.endswith("0.42"), (width, label.text)
        shown = label.text.removesuffix("0.42").rstrip()
        assert shown in ("", "...") or long_name.startswith(shown.removesuffix("...")), (width, label.text)
        assert _written(draw_results(np.full((50, width, 3), 90, np.uint8), [named]), label.text, KNOWN), width
    # A frame too narrow even for the score at that scale has it whole, smaller, rather than a number cut short.
    narrow = np.full((50, 24, 3), 90, np.uint8)
    small_face = {**face, "box": [2, 12, 20, 20], "landmarks": []}
    label, = drawing.place_labels(narrow.shape, [small_face])
    assert label.text == "? 0.42" and 0 <= label.left and label.rectangle[2] <= 24 and label.scale < 0.4
    assert _written(draw_results(narrow, [small_face]), "? 0.42", UNKNOWN, label.scale)


# Machado, Oliveira and Fernandes (2009), severity 1, on linear RGB: what a viewer without one kind of cone sees.
COLOUR_BLINDNESS = {
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


@pytest.mark.parametrize("kind", COLOUR_BLINDNESS)
def test_known_and_unknown_faces_stay_apart_for_colour_blind_eyes(kind):
    """Green and red were one olive to a deuteranope (75 apart in sRGB, of 441): the band colour was all that told an
    unknown face from a known one whose name was cut short."""
    def seen(bgr: tuple[int, int, int]) -> np.ndarray:
        channel = np.array(bgr[::-1]) / 255
        linear = np.where(channel <= 0.04045, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4)
        simulated = np.clip(np.array(COLOUR_BLINDNESS[kind]) @ linear, 0, 1)
        return 255 * np.where(simulated <= 0.0031308, 12.92 * simulated, 1.055 * simulated ** (1 / 2.4) - 0.055)

    assert np.linalg.norm(seen(KNOWN) - seen(UNKNOWN)) > 150


def test_an_unknown_face_in_a_narrow_frame_is_marked_unknown_not_cut_like_a_name():
    # "unknown" was cut to "u...", as a name is: only the band's colour said which it was.
    face = {"box": [5, 20, 50, 50], "identity": None, "similarity": 0.42}
    label, = drawing.place_labels((80, 62), [face])
    assert label.text == "? 0.42" and label.colour == UNKNOWN
    named, = drawing.place_labels((80, 62), [{**face, "identity": "Maximilian"}])
    assert named.text.endswith("... 0.42") and named.colour == KNOWN
