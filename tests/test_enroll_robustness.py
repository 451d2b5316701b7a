"""`facekit enroll` and `facekit identify` end to end, each in a process of its own, on real photos: stopped by Ctrl-C
or SIGKILL part way and run again, run twice at once beside an identify, and given folders they cannot read.

Where a Ctrl-C must land at one moment, a short script sends it from inside the real CLI (signal.raise_signal), as the
terminal would; everything else is the `facekit` command as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import COPIES_AS_OTHER_PEOPLE, unprivileged
from test_cli import variant

from facekit import FacekitWarning
from facekit.recognition import collect_people

FACEKIT = [sys.executable, "-m", "facekit.cli"]
INTERRUPTED = "interrupted; everything committed before this point is kept"
PHOTOS = 40
# Runs facekit.cli's main after the patch given as argv[1], a statement that may use os, signal, sys and facekit.
PATCHED_CLI = """
import os, signal, sys
# A test run started in the background by a non-interactive shell inherits SIGINT ignored; a terminal's Ctrl-C it means.
signal.signal(signal.SIGINT, signal.default_int_handler)
import facekit.cli, facekit.datastore, facekit.recognition
exec(sys.argv[1])
sys.exit(facekit.cli.main(sys.argv[2:]))
"""
# A Ctrl-C in the first index checkpoint after a batch was committed: between the commit and the index files.
CTRL_C_IN_CHECKPOINT = """
write_index, pressed = facekit.datastore.Gallery._write_index, []
def interrupted(self):
    if len(self) and not pressed:
        pressed.append(True)
        signal.raise_signal(signal.SIGINT)
    write_index(self)
facekit.datastore.Gallery._write_index = interrupted
"""
# A Ctrl-C while the models load, landing in a library that turns it into an error of its own and goes on, as ONNX
# Runtime's import does (an ImportError, "initialization failed"; facekit then took the runtime for missing).
CTRL_C_SWALLOWED_WHILE_LOADING = """
load = facekit.recognition.FacePipeline.__init__
def swallowing(self, *args, **kwargs):
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass
    load(self, *args, **kwargs)
facekit.recognition.FacePipeline.__init__ = swallowing
"""
# A Ctrl-C while the parser is built.
CTRL_C_IN_PARSER = """
def interrupted():
    raise KeyboardInterrupt
facekit.cli.build_parser = interrupted
"""


def facekit(*args: str | Path, patch: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", PATCHED_CLI, patch] if patch else FACEKIT
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=300)


def enrolled(gallery: Path) -> list[tuple[str, str, str]]:
    """(identity, path, sha256) of every face, as the database holds them; duplicates stay."""
    with sqlite3.connect(f"file:{gallery / 'gallery.sqlite'}?mode=ro", uri=True) as db:
        return sorted(db.execute("SELECT i.name, e.source_path, e.sha256 FROM embeddings e "
                                 "JOIN identities i ON i.id = e.identity_id"))


def vectors(gallery: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(f"file:{gallery / 'gallery.sqlite'}?mode=ro", uri=True) as db:
        return {sha: np.frombuffer(blob, "<f4") for sha, blob in db.execute("SELECT sha256, vector FROM embeddings")}


def assert_checks_clean(gallery: Path, faces: int) -> None:
    check = facekit("gallery", "check", "--gallery", gallery)
    assert (check.returncode, check.stdout, check.stderr) == (
        0, f"ok: {faces} faces, index and database agree\n", ""), check.stdout + check.stderr


@pytest.fixture(scope="module")
def people(tmp_path_factory, astronaut_bgr, grace_hopper_bgr) -> Path:
    """40 photos, alternately of Eileen Collins and Grace Hopper, each a different variant."""
    root = tmp_path_factory.mktemp("robustness") / "people"
    for number in range(PHOTOS):
        name = ("eileen", "grace")[number % 2]
        (root / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name / f"{number:02d}.jpg"),
                    variant((astronaut_bgr, grace_hopper_bgr)[number % 2], number))
    return root


@pytest.fixture(scope="module")
def uninterrupted(people, tmp_path_factory) -> Path:
    """The gallery an enroll of `people` makes when nothing stops it (one photo decoded ahead, the default)."""
    gallery = tmp_path_factory.mktemp("uninterrupted") / "gallery"
    result = facekit("enroll", people, "--gallery", gallery, "--quiet")
    assert result.returncode == 0 and f"{PHOTOS} faces enrolled" in result.stdout, result.stderr
    assert len(enrolled(gallery)) == PHOTOS
    return gallery


def test_ctrl_c_between_a_commit_and_its_index_checkpoint_leaves_a_clean_gallery(tmp_path, people, uninterrupted):
    gallery = tmp_path / "gallery"
    result = facekit("enroll", people, "--gallery", gallery, patch=CTRL_C_IN_CHECKPOINT)
    assert result.returncode == 130 and result.stdout == "", result.stderr
    # No progress bar into a pipe: the message is the one line on stderr.
    assert result.stderr == f"{INTERRUPTED}\n"
    # The batch held when the key was pressed was committed and checkpointed whole: nothing to repair.
    committed = enrolled(gallery)
    assert 0 < len(committed) < PHOTOS and set(committed) < set(enrolled(uninterrupted))
    assert_checks_clean(gallery, len(committed))
    rerun = facekit("enroll", people, "--gallery", gallery, "--quiet")
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    assert f"{PHOTOS - len(committed)} faces enrolled, {len(committed)} already enrolled" in rerun.stdout
    assert enrolled(gallery) == enrolled(uninterrupted)
    assert_checks_clean(gallery, PHOTOS)


@pytest.mark.parametrize("patch", [CTRL_C_SWALLOWED_WHILE_LOADING, CTRL_C_IN_PARSER], ids=["loading", "parser"])
def test_a_ctrl_c_before_any_photo_is_read_ends_the_command_in_one_line(tmp_path, people, patch):
    gallery = tmp_path / "gallery"
    result = facekit("enroll", people, "--gallery", gallery, "--quiet", patch=patch)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", f"{INTERRUPTED}\n")
    assert not gallery.exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_enroll_stopped_part_way_and_run_again_makes_the_uninterrupted_gallery(tmp_path, people, uninterrupted,
                                                                                 stop):
    gallery = tmp_path / "gallery"
    command = [*FACEKIT, "enroll", str(people), "--gallery", str(gallery), "--quiet", "--workers", "2"]
    # SIGINT as a terminal leaves it, even where this run inherited it ignored (a shell's background job).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    committed: list = []
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and len(committed) < 16:
        try:
            committed = enrolled(gallery)
        except sqlite3.Error:  # not created yet, or its tables not yet
            pass
        time.sleep(0.02)
    assert process.poll() is None, "enroll ended before it could be stopped; give it more photos"
    assert committed, "nothing was committed before the stop"
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    if stop == signal.SIGINT:
        assert (process.returncode, out, err) == (130, "", f"{INTERRUPTED}\n")
        assert_checks_clean(gallery, len(enrolled(gallery)))  # a Ctrl-C waits for the batch it lands in
    else:
        # A kill between a batch's commit and its index checkpoint (likelier on a busy machine) leaves an index that
        # the next open rebuilds from the database, and check says so: then the only problems are those repairs.
        check = facekit("gallery", "check", "--gallery", gallery)
        problems = [line for line in check.stdout.splitlines() if line.startswith("problem:")]
        assert check.returncode == 0 or (check.returncode == 1 and problems and all(
            line.endswith("(repaired on opening)") for line in problems)), check.stdout + check.stderr
        assert_checks_clean(gallery, len(enrolled(gallery)))
    assert set(committed) <= set(enrolled(gallery)) < set(enrolled(uninterrupted))
    rerun = facekit("enroll", people, "--gallery", gallery, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert enrolled(gallery) == enrolled(uninterrupted)  # the same photos as the same people, none twice
    assert_checks_clean(gallery, PHOTOS)


def test_photos_decoded_ahead_or_not_make_the_same_gallery(tmp_path, people, uninterrupted):
    expected = vectors(uninterrupted)
    for workers in ("0", "2"):
        gallery = tmp_path / f"workers-{workers}"
        result = facekit("enroll", people, "--gallery", gallery, "--quiet", "--workers", workers)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert enrolled(gallery) == enrolled(uninterrupted)
        found = vectors(gallery)
        assert all(np.allclose(found[sha], expected[sha], atol=1e-6) for sha in expected)


def test_two_enrolls_at_once_and_an_identify_beside_them(tmp_path, people, uninterrupted, astronaut_bgr):
    # Other photos of the same two people, filed under other names, for a second folder enrolled at the same time.
    others = tmp_path / "others"
    for number in range(8):
        (others / f"person{number % 2}").mkdir(parents=True, exist_ok=True)
        source = people / ("eileen", "grace")[number % 2] / f"{number:02d}.jpg"
        cv2.imwrite(str(others / f"person{number % 2}" / f"{number}.jpg"), cv2.flip(cv2.imread(str(source)), 1))
    probe = tmp_path / "seed" / "collins" / "probe.jpg"
    probe.parent.mkdir(parents=True)
    cv2.imwrite(str(probe), variant(astronaut_bgr, 100))
    gallery = tmp_path / "gallery"
    # Made first: processes that all find no gallery and make one at once are another matter (datastore's).
    first = facekit("enroll", tmp_path / "seed", "--gallery", gallery, "--quiet")
    assert first.returncode == 0, first.stderr
    before = enrolled(gallery)

    # The second folder's copies of the first's photos are filed as other people: not refused as near copies.
    enrolls = [subprocess.Popen([sys.executable, "-c", PATCHED_CLI, COPIES_AS_OTHER_PEOPLE, "enroll", str(folder),
                                 "--gallery", str(gallery), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for folder in (people, people, others)]
    identified = []
    deadline = time.monotonic() + 240
    while any(process.poll() is None for process in enrolls) and time.monotonic() < deadline:
        result = facekit("identify", probe, "--gallery", gallery, "--json")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        identified.extend(json.loads(line) for line in result.stdout.splitlines())
    finished = [(process.returncode, *process.communicate()) for process in enrolls]
    assert all(code == 0 and err == "" for code, _, err in finished), finished
    assert identified and all(len(record["faces"]) == 1 for record in identified)
    # Each photo once, under the name of the first folder that held it: nothing lost, nothing twice.
    faces = enrolled(gallery)
    assert set(before) < set(faces) and len(faces) == len({sha for _, _, sha in faces}) == len(before) + PHOTOS + 8
    assert {(path, sha) for _, path, sha in enrolled(uninterrupted)} <= {(path, sha) for _, path, sha in faces}
    assert sum(int(out.split(" faces enrolled")[0].split()[-1]) for _, out, _ in finished) == PHOTOS + 8
    assert_checks_clean(gallery, len(faces))


def test_identify_on_a_folder_of_good_and_bad_files_gives_a_record_per_photo_and_an_error_per_bad_file(
        tmp_path, uninterrupted, astronaut_bgr, grace_hopper_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = grace_hopper_path.read_bytes()
    cv2.imwrite(str(folder / "a_eileen.jpg"), astronaut_bgr)
    (folder / "b_grace.jpg").write_bytes(good)
    (folder / "c_truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "d_text.jpg").write_text("not a photo\n")
    (folder / "e_empty.jpg").write_bytes(b"")
    cv2.imwrite(str(folder / "f_no_face.png"), np.full((300, 400, 3), 120, np.uint8))
    cv2.imwrite(str(folder / "g_grey.png"), cv2.imread(str(grace_hopper_path), cv2.IMREAD_GRAYSCALE))
    cv2.imwrite(str(folder / "h_16_bit.png"), astronaut_bgr.astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side, shown upright
    Image.fromarray(astronaut_bgr[:, :, ::-1]).transpose(Image.Transpose.ROTATE_90).save(folder / "i_exif.jpg",
                                                                                          exif=exif)
    (folder / "notes.txt").write_text("passed over: not an image file name")
    (folder / "loop").symlink_to(".")  # a folder link loop: not followed
    (folder / "j_self.jpg").symlink_to("j_self.jpg")  # a file link loop
    readable = {"a_eileen.jpg": "eileen", "b_grace.jpg": "grace", "f_no_face.png": None, "g_grey.png": "grace",
                "h_16_bit.png": "eileen", "i_exif.jpg": "eileen"}
    bad = ["c_truncated.jpg", "d_text.jpg", "e_empty.jpg", "j_self.jpg"]

    runs = {form: facekit("identify", folder, "--gallery", uninterrupted, *option)
            for form, option in (("text", []), ("json", ["--json"]), ("csv", ["--csv"]))}
    failed = sorted([*bad, "f_no_face.png"])  # a photo without a face is said too, and its record still given
    for form, result in runs.items():
        assert result.returncode == 1
        errors = result.stderr.splitlines()
        if form == "text":  # what the folder holds and identify passes over is listed first, as enroll lists it
            skipped = [f"skipped {folder / 'loop'}: symlinked folder not followed",
                       f"skipped {folder / 'notes.txt'}: not an image file name"]
            assert errors[:2] == skipped, result.stderr
            errors = errors[2:]
        assert len(errors) == len(failed) and all(line.startswith("error: ") for line in errors), result.stderr
        assert [name for name in failed if any(name in line for line in errors)] == failed
    # JSON gives a bad file a record too, with the error stderr shows; so does CSV, a row per face or else one.
    records = [json.loads(line) for line in runs["json"].stdout.splitlines()]
    assert [record["image"] for record in records] == [str(folder / name) for name in sorted([*readable, *bad])]
    # A record without faces says why (its error); stderr names a faceless photo, which the record already does.
    assert runs["json"].stderr.splitlines() == [
        f"error: no face found in {record['image']}" if "faces" in record else f"error: {record['error']}"
        for record in records if not record.get("faces")]
    assert all(record["error"] for record in records if not record.get("faces"))
    for record in records:
        name = Path(record["image"]).name
        if name in bad:
            assert set(record) == {"image", "error"}
            if name == "d_text.jpg":
                assert record["error"] == f"not an image: {folder / name}"
        else:
            expected = readable[name]
            assert [face["identity"] for face in record["faces"]] == ([expected] if expected else [])
    rows = list(csv.reader(io.StringIO(runs["csv"].stdout)))
    assert rows[0] == ["image", "face", "x", "y", "w", "h", "identity", "similarity", "error", "threshold"]
    assert [(Path(row[0]).name, row[6], bool(row[8])) for row in rows[1:]] == sorted(
        [(name, who or "", not who) for name, who in readable.items()] + [(name, "", True) for name in bad])
    summaries = [line for line in runs["text"].stdout.splitlines() if not line.startswith("  at ")]
    assert summaries == [f"{folder / name}: {'1 face' if who else '0 faces'}" for name, who in readable.items()]


def test_folders_that_cannot_be_read_are_reported_not_passed_over(tmp_path, people):
    folder = tmp_path / "people"
    shutil.copytree(people / "eileen", folder / "eileen", ignore=lambda _dir, names: names[2:])
    for locked in (folder / "carol", folder / "eileen" / "older"):
        locked.mkdir()
        shutil.copy(people / "grace" / "01.jpg", locked / "1.jpg")
    gallery = tmp_path / "gallery"
    (folder / "carol").chmod(0)
    (folder / "eileen" / "older").chmod(0)
    try:
        def run(*args: str | Path) -> subprocess.CompletedProcess:
            return subprocess.run(unprivileged([*FACEKIT, *map(str, args)]), capture_output=True, text=True,
                                  timeout=300)

        result = run("enroll", folder, "--gallery", gallery, "--quiet")  # their photos not enrolled: exit 1
        assert result.returncode == 1 and "1 person, 4 files: 2 faces enrolled" in result.stdout, result.stderr
        assert result.stderr.splitlines() == [f"failed {folder / 'carol'}: cannot read folder: Permission denied",
                                              f"failed {folder / 'eileen' / 'older'}: cannot read folder: "
                                              "Permission denied"]
        result = run("identify", folder, "--gallery", gallery)
        assert result.returncode == 1 and result.stdout.count(": 1 face\n") == 2
        assert result.stderr.splitlines() == [f"error: cannot read folder {folder / 'carol'}: Permission denied",
                                              f"error: cannot read folder {folder / 'eileen' / 'older'}: "
                                              "Permission denied"]
        result = run("identify", folder / "carol", "--gallery", gallery)
        assert result.returncode == 1 and result.stderr.splitlines() == [
            f"error: cannot read folder {folder / 'carol'}: Permission denied", "error: no image could be read"]
        # A people folder that cannot be listed at all is a usage error, as a missing one is.
        result = run("enroll", folder / "carol", "--gallery", gallery)
        assert result.returncode == 2 and result.stderr == f"error: Permission denied: {folder / 'carol'}\n"
        (folder / "eileen" / "older").chmod(0o700)
        shutil.rmtree(folder / "eileen")
        result = run("enroll", folder, "--gallery", gallery)
        assert result.returncode == 1 and result.stderr == (
            f"error: no photos to enroll in {folder} (one sub-folder of photos per person); failed "
            f"{folder / 'carol'}: cannot read folder: Permission denied\n")
    finally:
        for locked in (folder / "carol", folder / "eileen" / "older"):
            if locked.exists():
                locked.chmod(0o700)


def test_folders_whose_names_differ_only_in_spaces_or_unicode_form_are_one_person_with_a_warning(tmp_path,
                                                                                                grace_hopper_path):
    """They were merged into one identity without a word."""
    people = tmp_path / "people"
    for folder in ("Ann", "Ann ", " Ann", "Zo\u00eb", "Zoe\u0308", "Bob"):  # Zoë composed, and decomposed
        (people / folder).mkdir(parents=True)
        shutil.copy(grace_hopper_path, people / folder / "1.jpg")
    with pytest.warns(FacekitWarning) as told:
        pairs, skipped = collect_people(people)
    assert [identity for identity, _ in pairs] == ["Ann"] * 3 + ["Bob"] + ["Zo\u00eb"] * 2 and skipped == []
    why = "names are compared without the spaces around them and with accents in one Unicode form"
    assert [str(warning.message) for warning in told] == [
        f"' Ann', 'Ann', 'Ann ' in {people} are all enrolled as 'Ann': {why}",
        f"'Zoe\u0308', 'Zo\u00eb' in {people} are all enrolled as 'Zo\u00eb': {why}"]


def test_a_folder_named_unknown_is_not_enrolled_and_enroll_says_why(tmp_path, people):
    """identify prints "unknown" for a face no one matches: a person enrolled under that name could not be told from
    a stranger."""
    folder = tmp_path / "people"
    shutil.copytree(people / "eileen", folder / "eileen", ignore=lambda _dir, names: sorted(names)[2:])
    shutil.copytree(people / "grace", folder / "Unknown", ignore=lambda _dir, names: sorted(names)[1:])
    (photo,) = (folder / "Unknown").iterdir()
    result = facekit("enroll", folder, "--gallery", tmp_path / "gallery", "--quiet")
    assert result.returncode == 1 and "1 person, 3 files: 2 faces enrolled" in result.stdout, result.stderr
    assert result.stderr == (f"failed {photo}: identity name 'Unknown' is reserved: it is what identify prints for a "
                             "face no one matches\n")
    assert {identity for identity, *_ in enrolled(tmp_path / "gallery")} == {"eileen"}


# Enrols as facekit did before the name 'unknown' was reserved.
BEFORE_UNKNOWN_WAS_RESERVED = """
facekit.recognition.refuse_reserved_name = facekit.datastore.refuse_reserved_name = lambda name: None
"""


def test_a_folder_named_unknown_enrols_as_the_name_gallery_rename_gave_its_person_and_else_is_refused(tmp_path,
                                                                                                      people):
    """The refusal came before enroll followed the gallery's renames: once an old gallery's 'unknown' was renamed, as
    the refusal advises, every photo in the folder unknown/ still failed, and enroll exited 1."""
    folder, gallery = tmp_path / "people", tmp_path / "gallery"
    shutil.copytree(people / "eileen", folder / "eileen", ignore=lambda _dir, names: sorted(names)[2:])
    shutil.copytree(people / "grace", folder / "unknown", ignore=lambda _dir, names: sorted(names)[1:])
    result = facekit("enroll", folder, "--gallery", gallery, "--quiet", patch=BEFORE_UNKNOWN_WAS_RESERVED)
    assert result.returncode == 0 and "3 faces enrolled" in result.stdout, result.stderr
    (old,) = (folder / "unknown").iterdir()
    new = folder / "unknown" / "new.jpg"
    shutil.copy(sorted((people / "grace").iterdir())[1], new)
    result = facekit("enroll", folder, "--gallery", gallery, "--quiet")
    why = "identity name 'unknown' is reserved: it is what identify prints for a face no one matches"
    assert result.returncode == 1 and result.stderr == f"failed {old}: {why}\nfailed {new}: {why}\n"
    assert "0 faces enrolled, 2 already enrolled, 2 failed" in result.stdout
    assert facekit("gallery", "rename", "unknown", "carol", "--gallery", gallery).returncode == 0
    result = facekit("enroll", folder, "--gallery", gallery, "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "2 people, 4 files: 1 face enrolled, 3 already enrolled, 0 failed" in result.stdout
    assert [(identity, Path(path).name) for identity, path, _ in enrolled(gallery) if identity != "eileen"] == [
        ("carol", old.name), ("carol", "new.jpg")]
    # A people folder holding only that folder: the CLI's own first look must not stop at "no photos" either.
    shutil.rmtree(folder / "eileen")
    result = facekit("enroll", folder, "--gallery", gallery, "--quiet")
    assert result.returncode == 0 and "1 person, 2 files: 0 faces enrolled, 2 already enrolled" in result.stdout, \
        result.stderr


def test_enroll_says_a_merge_of_folder_names_once(tmp_path, grace_hopper_path):
    """cmd_enroll and enroll() each collect the folder: the warning was printed twice."""
    people = tmp_path / "people"
    for folder in ("Ann", "Ann "):
        (people / folder).mkdir(parents=True)
        shutil.copy(grace_hopper_path, people / folder / "1.jpg")
    result = facekit("enroll", people, "--gallery", tmp_path / "gallery", "--quiet")
    assert result.returncode == 0 and result.stderr.count("are all enrolled as 'Ann'") == 1, result.stderr


def test_enroll_under_a_locale_that_misreads_utf8_folder_names_is_refused_before_anything_is_stored(
        tmp_path, grace_hopper_bgr, astronaut_bgr):
    """Under a Latin-1 or ASCII locale Python reads file names in that encoding: José_Müller's folder was read as
    'JosÃ©_MÃ¼ller', a new person to whom --sync moved her photos (ASCII: refused as "not valid UTF-8 (a folder name
    in another encoding?)", which it was not)."""
    people = tmp_path / "people"
    for name in ("José_Müller", "ada"):
        (people / name).mkdir(parents=True)
        cv2.imwrite(str(people / name / "a.jpg"), grace_hopper_bgr if name == "ada" else astronaut_bgr)
    gallery = tmp_path / "gallery"
    ascii_locale = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    command = [*FACEKIT, "enroll", str(people), "--gallery", str(gallery)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ascii_locale)
    assert refused.returncode == 2 and refused.stdout == "" and refused.stderr == (
        "error: file names are read as ascii under this locale, which misreads the folder name 'Jos\\xe9_M\\xfcller' "
        "(UTF-8): run with PYTHONUTF8=1 or a UTF-8 locale (LC_ALL=C.UTF-8)\n")
    assert not (gallery / "gallery.sqlite").exists()
    # Python's UTF-8 mode, as the error says, reads them right.
    utf8_mode = {**ascii_locale, "PYTHONUTF8": "1"}
    fixed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=utf8_mode)
    assert fixed.returncode == 0, fixed.stderr
    assert sorted({name for name, _, _ in enrolled(gallery)}) == ["José_Müller", "ada"]
