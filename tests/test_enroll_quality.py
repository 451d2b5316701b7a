"""What enroll and add_face refuse to store as a template: a face too small to be one, and nearly the same photo as
one enrolled as someone else (re-saved, resized, cropped), which would answer for the first person's photos; and what
enroll warns of: a face unlike its person's other faces, a photo of someone else in their folder."""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import facekit
from facekit.cli import main
from facekit.datastore import Gallery
from facekit.recognition import ENROLL_MIN_FACE, UNLIKE_OTHERS_SIMILARITY

TOO_SMALL = re.compile(rf"the face is (\d+) px wide; a template needs {ENROLL_MIN_FACE} px or more")
REMOVER = re.escape("(`facekit gallery remove-photo` takes it out of the gallery)")
UNLIKE = re.compile(r"(?P<path>.+): unlike (?P<person>.+)'s (?P<others>other \d+|\d+ newest other) faces \(best "
                    rf"similarity (?P<best>-?\d\.\d\d)\): a photo of someone else\? {REMOVER}")


def shrunk(image: np.ndarray, height: int) -> np.ndarray:
    """The photo this many pixels tall: grace_hopper.jpg at 90 px shows her face 26 px wide, found as it stands."""
    width = round(image.shape[1] * height / image.shape[0])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def resaved(image: Image.Image, quality: int = 80, scale: float = 1.0) -> bytes:
    """The photo saved again as a JPEG, as an editor or a messenger does, resized by scale first."""
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def bgr_to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))


def put(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


# --- tiny faces -----------------------------------------------------------------------------------------------


def test_enroll_fails_a_face_too_small_for_a_template_and_stores_nothing_of_it(tmp_path, grace_hopper_bgr,
                                                                               astronaut_bgr):
    people = tmp_path / "people"
    tiny = put(people / "grace_hopper", "tiny.png", cv2.imencode(".png", shrunk(grace_hopper_bgr, 90))[1].tobytes())
    put(people / "eileen_collins", "a.png", cv2.imencode(".png", astronaut_bgr)[1].tobytes())
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert report.enrolled == 1 and gallery.identities() == [("eileen_collins", 1)]
        assert [path for path, _ in report.skipped] == [str(tiny)]
        width = int(TOO_SMALL.fullmatch(report.skipped[0][1]).group(1))
        assert 20 <= width < ENROLL_MIN_FACE
        assert not report.warnings  # neither a turn nor anything else is said of a face that is not enrolled


def test_cli_enroll_says_a_tiny_face_failed_and_min_face_under_the_gate_enrols_it(tmp_path, capsys,
                                                                                   grace_hopper_bgr):
    """`--min-face 20` asks to find faces from 20 px: one who asks for faces that small means to enrol them."""
    people, gallery = tmp_path / "people", str(tmp_path / "gallery")
    tiny = put(people / "grace_hopper", "tiny.png", cv2.imencode(".png", shrunk(grace_hopper_bgr, 90))[1].tobytes())
    assert main(["enroll", str(people), "--gallery", gallery, "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "0 faces enrolled" in out and "1 failed" in out
    assert re.fullmatch(rf"failed {re.escape(str(tiny))}: {TOO_SMALL.pattern}\n", err)
    with Gallery.open(gallery) as opened:
        assert len(opened) == 0
    assert main(["enroll", str(people), "--gallery", gallery, "--quiet", "--min-face", "20"]) == 0
    assert "1 face enrolled" in capsys.readouterr().out


def test_add_face_refuses_a_face_too_small_for_a_template(tmp_path, grace_hopper_bgr):
    with Gallery.open(tmp_path / "gallery") as gallery:
        with pytest.raises(ValueError, match=rf"^the image: {TOO_SMALL.pattern}$"):
            facekit.add_face(gallery, "grace_hopper", shrunk(grace_hopper_bgr, 90))
        assert len(gallery) == 0
        facekit.add_face(gallery, "grace_hopper", grace_hopper_bgr)  # the same photo at full size
        assert gallery.identities() == [("grace_hopper", 1)]


def test_an_lfw_photo_shrunk_to_50_px_is_not_enrolled_as_found_turned(tmp_path, shared_data):
    """The review's case: at 50x50 the face was found only "turned", and that crop scored 0.2 to his own photo."""
    people = tmp_path / "people"
    photo = shared_data / "lfw" / "images" / "Adrien_Brody" / "Adrien_Brody_0002.jpg"
    tiny = people / "Adrien_Brody" / "a.png"
    tiny.parent.mkdir(parents=True)
    Image.open(photo).resize((50, 50)).save(tiny)
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert report.enrolled == 0 and len(gallery) == 0 and not report.warnings
        assert report.skipped[0][0] == str(tiny) and TOO_SMALL.fullmatch(report.skipped[0][1])


# --- near duplicates under another name --------------------------------------------------------------------------


def test_enroll_refuses_a_resaved_copy_under_another_name_and_names_the_first(tmp_path, astronaut_bgr,
                                                                              grace_hopper_path):
    """A copy in the same run (its batch's other faces) and one in a later run (the gallery's search) are refused;
    another person and a copy under the photo's own name are enrolled."""
    people = tmp_path / "people"
    astronaut = bgr_to_pil(astronaut_bgr)
    original = put(people / "eileen_collins", "a.png", cv2.imencode(".png", astronaut_bgr)[1].tobytes())
    put(people / "eileen_collins", "resaved.jpg", resaved(astronaut, 90))  # her own: a template like another
    put(people / "grace_hopper", "a.jpg", grace_hopper_path.read_bytes())
    copy = put(people / "zoe", "copy.jpg", resaved(astronaut, 80))
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert gallery.identities() == [("eileen_collins", 2), ("grace_hopper", 1)]
        assert report.enrolled == 3 and report.already_enrolled == 1 and not report.skipped
        [warning] = report.warnings
        assert re.fullmatch(rf"{re.escape(str(copy))}: nearly the same photo \({re.escape(str(original))}, "
                            r"similarity 0\.9\d\d\) is enrolled as eileen_collins; not added to zoe "
                            r"\(`facekit gallery remove-photo` takes it out of the gallery\)", warning)

        later = tmp_path / "later"
        smaller = put(later / "ada", "smaller.jpg", resaved(astronaut, 70, scale=0.9))
        report = facekit.enroll(later, gallery)
        assert report.enrolled == 0 and report.already_enrolled == 1
        assert report.warnings[0].startswith(f"{smaller}: nearly the same photo (")
        assert "is enrolled as eileen_collins; not added to ada" in report.warnings[0]
        assert len(gallery) == 3


def test_add_face_refuses_a_resaved_copy_under_another_name_and_takes_it_under_the_same(tmp_path,
                                                                                         grace_hopper_path,
                                                                                         astronaut_bgr):
    with Gallery.open(tmp_path / "gallery") as gallery:
        first = facekit.add_face(gallery, "grace_hopper", grace_hopper_path)
        copy = resaved(Image.open(grace_hopper_path), 80)
        with pytest.raises(ValueError, match=rf"^the image: nearly the same photo \({re.escape(str(grace_hopper_path))}"
                                             r", similarity 0\.9\d\d\) is enrolled as grace_hopper; not added to ada "
                                             r"\(gallery.remove_photos takes it out of the gallery\)$"):
            facekit.add_face(gallery, "ada", copy)
        assert gallery.identities() == [("grace_hopper", 1)]
        assert facekit.add_face(gallery, "grace_hopper", copy) != first
        facekit.add_face(gallery, "eileen_collins", astronaut_bgr)
        assert gallery.identities() == [("eileen_collins", 1), ("grace_hopper", 2)]


def test_a_different_photo_of_one_person_under_another_name_is_enrolled_where_a_copy_is_not(tmp_path, shared_data):
    """The threshold is above two photos of one person: Tony_Blair_0102 and _0121 are 0.90 similar, the most of his
    14 photos' pairs. A copy of one, re-saved, is refused under a third name; another person is enrolled."""
    lfw, people = shared_data / "lfw" / "images", tmp_path / "people"
    first = put(people / "tony_blair", "0102.jpg", (lfw / "Tony_Blair" / "Tony_Blair_0102.jpg").read_bytes())
    put(people / "tony_blair_again", "0121.jpg", (lfw / "Tony_Blair" / "Tony_Blair_0121.jpg").read_bytes())
    put(people / "adrien_brody", "0002.jpg", (lfw / "Adrien_Brody" / "Adrien_Brody_0002.jpg").read_bytes())
    copy = put(people / "zz_mislabelled", "0102.jpg",
               resaved(Image.open(lfw / "Tony_Blair" / "Tony_Blair_0102.jpg"), 80))
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert gallery.identities() == [("adrien_brody", 1), ("tony_blair", 1), ("tony_blair_again", 1)]
        assert report.enrolled == 3 and report.already_enrolled == 1
        [warning] = [warning for warning in report.warnings if "nearly the same photo" in warning]
        assert warning.startswith(f"{copy}: nearly the same photo ({first}, similarity 0.9")
        assert "is enrolled as tony_blair; not added to zz_mislabelled" in warning


def test_sync_enrolls_a_resaved_copy_moved_to_another_person_whose_first_photo_is_gone(tmp_path, astronaut_bgr):
    """With --sync the face of the deleted original was still in the gallery when the copy was checked: the copy
    was refused as alice's, then sync removed alice's face, and the gallery held neither."""
    people = tmp_path / "people"
    original = put(people / "alice", "a.png", cv2.imencode(".png", astronaut_bgr)[1].tobytes())
    with Gallery.open(tmp_path / "gallery") as gallery:
        assert facekit.enroll(people, gallery).enrolled == 1
        original.unlink()
        original.parent.rmdir()
        put(people / "bob", "a2.jpg", resaved(bgr_to_pil(astronaut_bgr), 70))
        report = facekit.enroll(people, gallery, sync=True)
        assert (report.enrolled, report.already_enrolled, report.warnings) == (1, 0, [])
        assert gallery.identities() == [("bob", 1)]


def test_add_face_answers_a_photo_enrolled_already_whatever_the_size_of_its_face(tmp_path, grace_hopper_bgr):
    """A face under the gate enrolled before the gate (here with --min-face's lower one) is answered with its id,
    as add_face answers every photo enrolled already, not refused for its size."""
    small = shrunk(grace_hopper_bgr, 90)
    people = tmp_path / "people"
    put(people / "grace_hopper", "small.png", cv2.imencode(".png", small)[1].tobytes())
    with Gallery.open(tmp_path / "gallery") as gallery:
        assert main(["enroll", str(people), "--gallery", str(tmp_path / "gallery"), "--quiet",
                     "--min-face", "20"]) == 0
        [photo] = gallery.photos()
        assert facekit.add_face(gallery, "grace_hopper", people / "grace_hopper" / "small.png") == 1
        with pytest.raises(ValueError, match="the same photo is enrolled as grace_hopper; not added to ada"):
            facekit.add_face(gallery, "ada", people / "grace_hopper" / "small.png")
        assert len(gallery) == 1 and photo["identity"] == "grace_hopper"


def test_a_near_copy_of_a_face_added_from_an_array_is_named_by_its_id_not_a_path_that_removes_all_such(
        tmp_path, astronaut_bgr):
    """The message said '(<array>, ...)' and that gallery.remove_photos takes it out: remove_photos('<array>') takes
    every face added from an array."""
    copy = cv2.imdecode(np.frombuffer(resaved(bgr_to_pil(astronaut_bgr), 80), np.uint8), cv2.IMREAD_COLOR)
    with Gallery.open(tmp_path / "gallery") as gallery:
        first = facekit.add_face(gallery, "eileen_collins", astronaut_bgr)
        with pytest.raises(ValueError, match=rf"^the image: nearly the same photo \(face {first}, added as <array>, "
                                             r"similarity 0\.9\d\d\) is enrolled as eileen_collins; not added to "
                                             r"ada$"):
            facekit.add_face(gallery, "ada", copy)


# --- a face unlike its person's other faces ----------------------------------------------------------------------


def lfw_photo(shared_data: Path, name: str) -> bytes:
    """An LFW photo's bytes by its stem: Tom_Hanks_0001."""
    return (shared_data / "lfw" / "images" / name.rsplit("_", 1)[0] / f"{name}.jpg").read_bytes()


def lfw_photos(shared_data: Path, person: str, folder: Path, count: int) -> None:
    """The person's first count LFW photos by name, put in folder under their own names."""
    for path in sorted((shared_data / "lfw" / "images" / person).glob("*.jpg"))[:count]:
        put(folder, path.name, path.read_bytes())


def unlike_warnings(report: facekit.EnrollReport) -> dict[str, tuple[str, str, float]]:
    """The warnings of faces unlike their person's others: path -> (person, which others, best similarity)."""
    found = {}
    for warning in report.warnings:
        if ": unlike " in warning:
            match = UNLIKE.fullmatch(warning)
            assert match, warning
            found[match["path"]] = (match["person"], match["others"], float(match["best"]))
    return found


def test_enroll_warns_of_a_strangers_photo_in_a_persons_folder_and_not_of_their_own_photos(tmp_path, shared_data):
    """A mislabelled photo was enrolled as the folder's person without a word, and named that stranger as them from
    then on. The stranger's photo sorts first in Tom_Hanks's folder, before any photo of his: it is warned of, and
    none of his. A later run compares its faces with those the gallery holds, and does not warn again of the first
    run's. Each person's photos are 0.55 or more similar to each other, the strangers' 0.32 at most to them."""
    people = tmp_path / "people"
    for person in ("Cameron_Diaz", "Kim_Dae-jung", "Tom_Hanks"):
        lfw_photos(shared_data, person, people / person, 4)
    first = put(people / "Tom_Hanks", "0.jpg", lfw_photo(shared_data, "Lance_Armstrong_0007"))
    last = put(people / "Kim_Dae-jung", "z.jpg", lfw_photo(shared_data, "Jacques_Chirac_0019"))
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert report.enrolled == 14
        warned = unlike_warnings(report)
        assert {path: warning[:2] for path, warning in warned.items()} == {
            str(first): ("Tom_Hanks", "other 4"), str(last): ("Kim_Dae-jung", "other 4")}
        assert all(best < UNLIKE_OTHERS_SIMILARITY for *_, best in warned.values())

        lfw_photos(shared_data, "Cameron_Diaz", people / "Cameron_Diaz", 5)  # her 5th photo, and his
        lfw_photos(shared_data, "Tom_Hanks", people / "Tom_Hanks", 5)
        stranger = put(people / "Cameron_Diaz", "z.jpg", lfw_photo(shared_data, "Noelle_Bush_0001"))
        report = facekit.enroll(people, gallery)
        assert (report.enrolled, report.already_enrolled) == (3, 14)
        assert {path: warning[:2] for path, warning in unlike_warnings(report).items()} == {
            str(stranger): ("Cameron_Diaz", "other 5")}
        assert gallery.identities() == [("Cameron_Diaz", 6), ("Kim_Dae-jung", 5), ("Tom_Hanks", 6)]


def test_a_photo_that_sync_moves_into_another_persons_folder_is_checked_as_one_added(tmp_path, shared_data):
    """A photo of Tom Hanks moved into Cameron Diaz's folder was given to her by --sync without a word, where a copy
    put there was warned of: the same mislabel."""
    people = tmp_path / "people"
    for person in ("Cameron_Diaz", "Tom_Hanks"):
        lfw_photos(shared_data, person, people / person, 4)
    with Gallery.open(tmp_path / "gallery") as gallery:
        assert unlike_warnings(facekit.enroll(people, gallery)) == {}
        moved = people / "Cameron_Diaz" / "Tom_Hanks_0001.jpg"
        (people / "Tom_Hanks" / "Tom_Hanks_0001.jpg").rename(moved)
        report = facekit.enroll(people, gallery, sync=True)
        assert [(path, identity) for path, identity, *_ in report.moved] == [(str(moved), "Cameron_Diaz")]
        assert {path: warning[:2] for path, warning in unlike_warnings(report).items()} == {
            str(moved): ("Cameron_Diaz", "other 4")}


def test_a_face_is_compared_with_its_persons_newest_other_faces_only(tmp_path, shared_data, monkeypatch):
    """A person with thousands of faces costs what one with UNLIKE_OTHERS_COMPARED does; here 2 of Tom_Hanks's 4."""
    import facekit.recognition

    monkeypatch.setattr(facekit.recognition, "UNLIKE_OTHERS_COMPARED", 2)
    people = tmp_path / "people"
    lfw_photos(shared_data, "Tom_Hanks", people / "Tom_Hanks", 4)
    stranger = put(people / "Tom_Hanks", "z.jpg", lfw_photo(shared_data, "Lance_Armstrong_0007"))
    with Gallery.open(tmp_path / "gallery") as gallery:
        report = facekit.enroll(people, gallery)
        assert {path: warning[:2] for path, warning in unlike_warnings(report).items()} == {
            str(stranger): ("Tom_Hanks", "2 newest other")}
        ids, paths, vectors = gallery.newest_faces("Tom_Hanks", 2)
        assert paths == [str(stranger), str(people / "Tom_Hanks" / "Tom_Hanks_0006.jpg")] and ids[0] > ids[1]
        assert vectors.shape == (2, gallery.dim)
        assert gallery.newest_faces("Lance_Armstrong", 2)[0] == []


def test_cli_enroll_warns_once_of_a_persons_only_two_faces_unlike_each_other(tmp_path, capsys, grace_hopper_path,
                                                                              astronaut_bgr):
    """With two faces it cannot tell which is someone else: one warning names both. A third face like one of them
    is not warned of, and the second run does not repeat the first's warning."""
    people, gallery = tmp_path / "people", str(tmp_path / "gallery")
    hers = put(people / "grace_hopper", "a.jpg", grace_hopper_path.read_bytes())
    other = put(people / "grace_hopper", "b.png", cv2.imencode(".png", astronaut_bgr)[1].tobytes())
    assert main(["enroll", str(people), "--gallery", gallery, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "2 faces enrolled" in out
    assert re.fullmatch(rf"warning: {re.escape(str(other))}: unlike {re.escape(str(hers))}, grace_hopper's only other "
                        r"face \(similarity -?0\.\d\d\): is one of the two a photo of someone else\? "
                        rf"{REMOVER}\n", err), err
    put(people / "grace_hopper", "c.jpg", resaved(Image.open(grace_hopper_path), 80, scale=0.9))
    with Gallery.open(gallery) as opened:
        report = facekit.enroll(people, opened)
        assert (report.enrolled, report.already_enrolled, report.warnings) == (1, 2, [])
