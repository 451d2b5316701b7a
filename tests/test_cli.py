"""The `facekit` CLI end to end on real faces: enroll, identify, verify, gallery, bad input."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CTRL_C_IN_IMPORT, unprivileged
from PIL import Image

import facekit
from facekit.cli import INTERRUPTED, main
from facekit.datastore import Gallery
from facekit.imageio import IMAGE_EXTENSIONS
from facekit.representation import DEFAULT_MODEL

FACE_KEYS = {"box", "landmarks", "identity", "similarity", "candidates"}


def variant(image: np.ndarray, seed: int) -> np.ndarray:
    """A plausibly different photo of the same face: rotation, scale, brightness, noise."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
    out = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture()
def people(tmp_path, astronaut_bgr, grace_hopper_bgr) -> Path:
    root = tmp_path / "people"
    for name, image in (("eileen_collins", astronaut_bgr), ("grace_hopper", grace_hopper_bgr)):
        (root / name).mkdir(parents=True)
        cv2.imwrite(str(root / name / "a.jpg"), image)
        cv2.imwrite(str(root / name / "b.jpg"), variant(image, 1))
    return root


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_round_trip_on_bundled_photos(tmp_path, people, capsys, astronaut_bgr, grace_hopper_bgr):
    gallery = str(tmp_path / "gallery")
    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 0 and "4 faces enrolled" in out
    probes = tmp_path / "probes"
    probes.mkdir()
    cv2.imwrite(str(probes / "eileen.jpg"), variant(astronaut_bgr, 7))
    cv2.imwrite(str(probes / "grace.jpg"), variant(grace_hopper_bgr, 7))
    code, out, _ = run_cli(capsys, "identify", str(probes), "--gallery", gallery, "--json", "--top-k", "2")
    assert code == 0
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [Path(r["image"]).name for r in lines] == ["eileen.jpg", "grace.jpg"]
    for record, expected in zip(lines, ["eileen_collins", "grace_hopper"]):
        # The threshold names were decided by, which a reader could not learn (the default grows with the gallery).
        assert set(record) == {"image", "threshold", "faces"}
        assert record["threshold"] == round(facekit.pipeline().identify_threshold_for(4), 4)
        assert len(record["faces"]) == 1
        face = record["faces"][0]
        assert set(face) == FACE_KEYS
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
        assert all(len(point) == 2 for point in face["landmarks"])
        assert face["identity"] == expected
        assert face["candidates"][0] == {"identity": expected, "similarity": face["similarity"]}
        assert len(face["candidates"]) == 2 and face["candidates"][1]["similarity"] < face["similarity"]

    # Re-enrolling the same files changes nothing.
    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 0 and "0 faces enrolled, 4 already enrolled" in out

    code, out, _ = run_cli(capsys, "identify", str(probes / "grace.jpg"), "--gallery", gallery, "--csv")
    rows = out.strip().splitlines()
    assert rows[0] == "image,face,x,y,w,h,identity,similarity,error,threshold"
    assert rows[1].split(",")[6] == "grace_hopper"

    annotated = tmp_path / "annotated"
    code, out, _ = run_cli(capsys, "identify", str(probes), "--gallery", gallery, "--annotate", str(annotated))
    assert code == 0 and "eileen_collins" in out
    drawn = cv2.imread(str(annotated / "eileen.annotated.jpg"))
    assert drawn is not None and drawn.shape == astronaut_bgr.shape


def test_annotated_copies_never_overwrite_a_photo_or_each_other(tmp_path, people, capsys):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    # Two photos of one name in two folders, annotated into the folder of one of them.
    photos = [people / "eileen_collins" / "a.jpg", people / "grace_hopper" / "a.jpg"]
    originals = [photo.read_bytes() for photo in photos]
    out_dir = photos[0].parent
    code, out, _ = run_cli(capsys, "identify", *map(str, photos), "--gallery", gallery, "--annotate", str(out_dir))
    assert code == 0 and [photo.read_bytes() for photo in photos] == originals
    copies = sorted(path.name for path in out_dir.glob("*.annotated.jpg"))
    assert copies == ["a-2.annotated.jpg", "a.annotated.jpg"]
    # Each copy's name is said under its photo: the second "a.jpg" got a name the user could not guess.
    said = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("  annotated copy: ")]
    assert said == [str(out_dir / "a.annotated.jpg"), str(out_dir / "a-2.annotated.jpg")]
    # --json says it too: only the human output did, and a script had to guess the "-2".
    code, out, _ = run_cli(capsys, "identify", *map(str, photos), "--gallery", gallery, "--annotate", str(out_dir),
                           "--json")
    assert code == 0 and [json.loads(line)["annotated"] for line in out.splitlines()] == said
    # A folder that cannot be made (a file is in the way) or written is one line and a non-zero exit.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for target in (blocker, blocker / "sub"):
        code, _, err = run_cli(capsys, "identify", str(photos[0]), "--gallery", gallery, "--annotate", str(target))
        assert code == 2 and err.startswith("error: cannot write annotated copies to") and err.count("\n") == 1


def test_an_annotated_copy_never_replaces_another_photo_and_is_not_identified_again(tmp_path, capsys, astronaut_bgr,
                                                                                     grace_hopper_bgr):
    # A user's own photo named b.annotated.jpg was replaced by b.jpg's copy, and each run again took the copies
    # beside the photos for photos: b.annotated.annotated.annotated.jpg after three.
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    folder = tmp_path / "photos"
    folder.mkdir()
    photo, own = folder / "b.jpg", folder / "b.annotated.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    cv2.imwrite(str(own), grace_hopper_bgr)
    originals = {path: path.read_bytes() for path in (photo, own)}
    for _ in range(3):
        code, out, _ = run_cli(capsys, "identify", str(folder), "--gallery", str(gallery), "--annotate", str(folder))
        assert code == 0 and {path: path.read_bytes() for path in originals} == originals
        assert [line.split(": ")[0] for line in out.splitlines() if not line.startswith("  ")] == [str(own), str(photo)]
        assert sorted(path.name for path in folder.iterdir()) == [
            "b-2.annotated.jpg", "b.annotated.annotated.jpg", "b.annotated.jpg", "b.jpg"]
    # A copy named as a photo is read, not replaced first by the copy of the photo before it.
    copy = folder / "b-2.annotated.jpg"
    drawn = copy.read_bytes()
    code, out, _ = run_cli(capsys, "identify", str(photo), str(copy), "--gallery", str(gallery), "--annotate",
                           str(folder), "--json")
    assert code == 0 and copy.read_bytes() == drawn
    assert [json.loads(line)["annotated"] for line in out.splitlines()] == [
        str(folder / "b-3.annotated.jpg"), str(folder / "b-2.annotated.annotated.jpg")]


def test_a_folder_of_only_annotated_copies_says_so_not_no_images(tmp_path, capsys, astronaut_bgr):
    # Identified again into the folder that holds only its copies, identify said "no images (...) in OUT",
    # beside a folder that visibly holds one.
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    photo, out_dir = tmp_path / "photo.jpg", tmp_path / "annotated"
    cv2.imwrite(str(photo), astronaut_bgr)
    assert run_cli(capsys, "identify", str(photo), "--gallery", str(gallery), "--annotate", str(out_dir))[0] == 0
    code, out, err = run_cli(capsys, "identify", str(out_dir), "--gallery", str(gallery), "--annotate", str(out_dir))
    assert code == 1 and out == ""
    assert err.strip() == (f"error: no photos to identify in {out_dir}, only annotated copies facekit wrote (1), "
                           "which are not identified again: name one to identify it")


def test_annotate_naming_a_file_says_it_is_not_a_folder(tmp_path, capsys, astronaut_bgr):
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    code, out, err = run_cli(capsys, "identify", str(photo), "--gallery", str(gallery), "--annotate", str(photo))
    assert (code, out) == (2, "") and err == f"error: cannot write annotated copies to {photo}: a file, not a folder\n"
    # One not there yet, named as an image, was made a folder of that name with the copy inside it.
    wanted = tmp_path / "result.PNG"
    code, out, err = run_cli(capsys, "identify", str(photo), "--gallery", str(gallery), "--annotate", str(wanted))
    assert (code, out) == (2, "") and err.startswith(f"error: --annotate takes a folder for the annotated copies, "
                                                     f"not a file name: {wanted} (")
    assert not wanted.exists()
    code, out, _ = run_cli(capsys, "identify", str(photo), "--gallery", str(gallery), "--annotate", f"{wanted}/")
    assert code == 0 and (wanted / "a.annotated.jpg").is_file()


def test_an_annotated_copy_that_cannot_be_written_is_said_and_the_other_images_still_identified(
        tmp_path, capfd, astronaut_bgr, grace_hopper_bgr):
    # The first failed copy ended the run: the images after it were never identified, the error gave no reason,
    # and OpenCV's own "[ WARN ...] imwrite_" line came before it.
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for photo, image in zip(photos, (astronaut_bgr, grace_hopper_bgr)):
        cv2.imwrite(str(photo), image)
    out_dir = tmp_path / "out"
    (out_dir / "a.annotated.jpg").mkdir(parents=True)  # a folder where a's copy would go
    code, out, err = run_cli(capfd, "identify", *map(str, photos), "--gallery", str(gallery), "--annotate",
                             str(out_dir))
    assert code == 1 and err == f"error: cannot write {out_dir / 'a.annotated.jpg'}: Is a directory\n"
    assert f"{photos[0]}: 1 face" in out and f"{photos[1]}: 1 face" in out
    assert cv2.imread(str(out_dir / "b.annotated.jpg")) is not None
    # JSON and CSV say which photo it was, as they do for a photo without a face: the exit code alone did not.
    why = f"cannot write {out_dir / 'a.annotated.jpg'}: Is a directory"
    code, out, _ = run_cli(capfd, "identify", *map(str, photos), "--gallery", str(gallery), "--annotate",
                           str(out_dir), "--json")
    assert code == 1 and [json.loads(line).get("error") for line in out.splitlines()] == [why, None]
    assert [json.loads(line).get("annotated") for line in out.splitlines()] == [None, str(out_dir / "b.annotated.jpg")]
    code, out, _ = run_cli(capfd, "identify", *map(str, photos), "--gallery", str(gallery), "--annotate",
                           str(out_dir), "--csv")
    assert code == 1 and [row["error"] for row in csv.DictReader(io.StringIO(out, newline=""))] == [why, ""]


def test_annotate_to_a_folder_that_cannot_be_written_is_one_line_with_the_reason(tmp_path, astronaut_bgr):
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    command = [sys.executable, "-m", "facekit", "identify", str(photo), "--gallery", str(gallery), "--annotate",
               str(locked)]
    result = subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: cannot write annotated copies to {locked}: Permission denied\n"


def test_an_empty_annotate_folder_is_a_usage_error(tmp_path, capsys, astronaut_bgr):
    # "--annotate $OUT" with OUT unset: identify ran and wrote no copy, without a word.
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    code, out, err = run_cli(capsys, "identify", str(photo), "--gallery", str(gallery), "--annotate", "")
    assert (code, out) == (2, "") and err.startswith("error: --annotate is empty") and err.count("\n") == 1


def test_a_file_that_is_not_a_yunet_model_is_one_line_naming_it(tmp_path, astronaut_bgr):
    # A cv2.error traceback, from loading a text file, or from the first photo with another network's ONNX file.
    from facekit.detection import YUNET_ENV_VAR, mtcnn_model_dir

    photo, text = tmp_path / "a.jpg", tmp_path / "text.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    text.write_text("not a model\n")
    other_network = mtcnn_model_dir() / "pnet.onnx"
    for model, given in ((text, ["--yunet-model", str(text)]), (other_network, ["--yunet-model", str(other_network)]),
                         (text, [])):
        environment = {**os.environ, YUNET_ENV_VAR: str(text)}
        result = subprocess.run([sys.executable, "-m", "facekit", "verify", str(photo), str(photo), *given],
                                capture_output=True, text=True, timeout=300, env=environment)
        named = f"{model}" if given else f"${YUNET_ENV_VAR}: {model}"
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.startswith(f"error: {named} is not a YuNet face detector model (")
        assert result.stderr.count("\n") == 1, result.stderr


def test_one_of_a_thing_is_counted_in_the_singular(tmp_path, capsys, astronaut_bgr):
    (tmp_path / "people" / "eileen").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "people" / "eileen" / "a.jpg"), astronaut_bgr)
    gallery = str(tmp_path / "gallery")
    code, out, _ = run_cli(capsys, "enroll", str(tmp_path / "people"), "--gallery", gallery, "--quiet")
    assert code == 0 and out.startswith("1 person, 1 file: 1 face enrolled, ") and out.endswith("holds 1 face\n"), out
    check = run_cli(capsys, "gallery", "--gallery", gallery, "check")
    assert check == (0, "ok: 1 face, index and database agree\n", "")


@pytest.mark.parametrize("threshold", ["2", "-1.5", "nan"])
def test_a_threshold_that_no_cosine_similarity_can_meet_is_a_usage_error(tmp_path, capsys, threshold):
    photo = str(tmp_path / "x.jpg")
    for command in (["identify", photo], ["verify", photo, photo]):
        code, out, err = run_cli(capsys, *command, "--threshold", threshold)
        assert (code, out) == (2, "") and err == f"error: --threshold is a cosine similarity, between -1 and 1, not " \
            f"{float(threshold)}\n"


def test_verify(tmp_path, capsys, astronaut_bgr, grace_hopper_bgr):
    paths = {}
    for name, image in (("a1", astronaut_bgr), ("a2", variant(astronaut_bgr, 3)), ("g", grace_hopper_bgr)):
        paths[name] = str(tmp_path / f"{name}.jpg")
        cv2.imwrite(paths[name], image)
    code, out, _ = run_cli(capsys, "verify", paths["a1"], paths["a2"], "--json")
    same = json.loads(out)
    assert code == 0 and same["same"] is True and set(same) == {"same", "similarity", "threshold"}
    code, out, _ = run_cli(capsys, "verify", paths["a1"], paths["g"], "--json")
    different = json.loads(out)
    assert different["same"] == (different["similarity"] >= different["threshold"])
    # Two different women must score well below two photos of one. The verdict is not asserted on one pair:
    # verification accuracy is measured on LFW (`facekit eval lfw`, README), a rate rather than a single case.
    assert different["similarity"] < same["similarity"] - 0.2
    code, out, err = run_cli(capsys, "verify", paths["a1"], str(tmp_path / "missing.jpg"))
    assert (code, err) == (2, f"error: not found: {tmp_path / 'missing.jpg'}\n")  # a usage error, as for identify


def test_verify_json_gives_a_photo_without_a_face_or_unreadable_a_record_with_its_error(tmp_path, capsys,
                                                                                      astronaut_bgr):
    """As identify --json does: stdout held nothing, and a script reading it had only the exit code."""
    face, blank, text = tmp_path / "face.jpg", tmp_path / "blank.png", tmp_path / "text.jpg"
    cv2.imwrite(str(face), astronaut_bgr)
    cv2.imwrite(str(blank), np.full((300, 300, 3), 127, np.uint8))
    text.write_text("not a photo")
    code, out, err = run_cli(capsys, "verify", str(face), str(blank), "--json")
    assert (code, json.loads(out), err) == (1, {"image": str(blank), "error": "no face found"},
                                            f"error: no face found in {blank}\n")
    code, out, err = run_cli(capsys, "verify", str(text), str(face), "--json")
    assert (code, json.loads(out), err) == (1, {"image": str(text), "error": f"not an image: {text}"},
                                            f"error: not an image: {text}\n")


def test_min_face_finds_small_faces_in_a_large_photo(tmp_path, capsys, astronaut_bgr, small_face_photo):
    large, portrait = str(tmp_path / "large.jpg"), str(tmp_path / "portrait.jpg")
    cv2.imwrite(large, small_face_photo)
    cv2.imwrite(portrait, astronaut_bgr)
    # The default search skips so small a face in so large a photo; verify, which needs a face, looks again for
    # faces down to 40 px (FacePipeline.find_one_face).
    code, out, err = run_cli(capsys, "verify", large, portrait, "--json")
    assert code == 0 and json.loads(out)["same"] is True and err == ""
    code, out, _ = run_cli(capsys, "verify", large, portrait, "--min-face", "36", "--json")
    assert code == 0 and json.loads(out)["same"] is True
    code, _, err = run_cli(capsys, "verify", large, portrait, "--min-face", "0")
    assert code == 2 and err.strip() == "error: the smallest face width must be at least 1 pixel, not 0"


def test_identify_and_verify_default_to_their_own_card_thresholds(tmp_path, people, capsys, astronaut_bgr):
    # identify (1:N) takes the card's identify_threshold, verify (1:1) its LFW threshold. A copy of the
    # shipped model with an impossible identify_threshold shows which one each command used.
    weights = tmp_path / "strict"
    shutil.copy(DEFAULT_MODEL.with_suffix(".safetensors"), weights.with_suffix(".safetensors"))
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    card["identify_threshold"] = 0.999
    weights.with_suffix(".json").write_text(json.dumps(card))
    options = ["--gallery", str(tmp_path / "gallery"), "--weights", str(weights)]
    assert run_cli(capsys, "enroll", str(people), *options, "--quiet")[0] == 0
    probe = tmp_path / "probe.jpg"
    cv2.imwrite(str(probe), variant(astronaut_bgr, 7))
    code, out, _ = run_cli(capsys, "identify", str(probe), *options, "--json")
    face = json.loads(out)["faces"][0]
    assert code == 0 and face["identity"] is None
    assert face["candidates"][0]["identity"] == "eileen_collins" and face["similarity"] > card["threshold"]
    code, out, _ = run_cli(capsys, "identify", str(probe), *options, "--json", "--threshold", str(card["threshold"]))
    assert json.loads(out)["faces"][0]["identity"] == "eileen_collins"
    code, out, _ = run_cli(capsys, "verify", str(probe), str(people / "eileen_collins" / "a.jpg"), "--json",
                           "--weights", str(weights))
    assert code == 0 and json.loads(out)["threshold"] == card["threshold"]


def test_a_gallery_refuses_another_models_embeddings(tmp_path, people, capsys, astronaut_bgr):
    pytest.importorskip("torch", reason="weights without an ONNX file beside them run on torch: the train extra")
    from safetensors.torch import load_file, save_file

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    # Other weights of the same architecture and size (a later release, say): its similarities with the
    # stored embeddings would look plausible and mean nothing.
    other = tmp_path / "other"
    tensors = load_file(str(DEFAULT_MODEL.with_suffix(".safetensors")))
    first = next(iter(tensors))
    tensors[first] = tensors[first] * 1.01
    save_file(tensors, str(other.with_suffix(".safetensors")))
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), other.with_suffix(".json"))
    probe = tmp_path / "probe.jpg"
    cv2.imwrite(str(probe), variant(astronaut_bgr, 7))
    for command in (["identify", str(probe)], ["enroll", str(people), "--quiet"]):
        code, out, err = run_cli(capsys, *command, "--gallery", gallery, "--weights", str(other))
        assert code != 0 and out == ""
        assert len(err.strip().splitlines()) == 1 and "another model" in err
    with Gallery.open(gallery, create=False) as stored:
        assert stored.identities() == [("eileen_collins", 2), ("grace_hopper", 2)] and stored.check() == []
    code, out, _ = run_cli(capsys, "identify", str(probe), "--gallery", gallery, "--json")
    assert code == 0 and json.loads(out)["faces"][0]["identity"] == "eileen_collins"


def test_a_photo_enrolled_as_someone_else_is_said_so(tmp_path, people, capsys):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    (people / "eileen_collins" / "b.jpg").rename(people / "grace_hopper" / "c.jpg")  # filed under the wrong name
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 0 and "4 already enrolled" in out
    assert f"{people / 'grace_hopper' / 'c.jpg'}: the same photo is enrolled as eileen_collins" in err


def test_gallery_commands(tmp_path, people, capsys):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "list")
    assert out.split() == ["eileen_collins", "grace_hopper"]
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "list", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [{"identity": "eileen_collins", "faces": 2},
                                                               {"identity": "grace_hopper", "faces": 2}]
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "list", "--csv")
    assert out.splitlines() == ["identity,faces", "eileen_collins,2", "grace_hopper,2"]
    assert run_cli(capsys, "gallery", "--gallery", gallery, "rename", "grace_hopper", "Grace Hopper")[0] == 0
    assert run_cli(capsys, "gallery", "--gallery", gallery, "remove", "eileen_collins")[0] == 0
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "list")
    assert out.strip().splitlines() == ["Grace Hopper"]
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "stats", "--json")
    assert json.loads(out)["embeddings"] == 2
    assert run_cli(capsys, "gallery", "--gallery", gallery, "check")[0] == 0
    assert run_cli(capsys, "gallery", "--gallery", gallery, "rebuild")[0] == 0
    code, _, err = run_cli(capsys, "gallery", "--gallery", gallery, "remove", "nobody")
    assert code != 0 and "nobody" in err
    code, _, err = run_cli(capsys, "gallery", "--gallery", str(tmp_path / "nothing-here"), "list")
    assert code != 0 and err.startswith("error:")
    # check reports damage it found, though opening the gallery repaired it.
    for index_file in Path(gallery).glob("index-*.faiss"):
        index_file.write_bytes(b"damaged")
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "check", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["faces"] == 2
    assert len(report["problems"]) == 1 and report["problems"][0].endswith("(repaired on opening)")
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "check", "--json")  # the repair was saved
    assert code == 0 and json.loads(out) == {"ok": True, "faces": 2, "problems": []}
    for index_file in Path(gallery).glob("index-*.faiss"):
        index_file.write_bytes(b"damaged")
    code, out, _ = run_cli(capsys, "gallery", "--gallery", gallery, "check")
    assert code == 1 and "(repaired on opening)" in out
    assert run_cli(capsys, "gallery", "--gallery", gallery, "check")[0] == 0
    # --gallery also goes after the action, as it does after every other command.
    code, out, _ = run_cli(capsys, "gallery", "list", "--gallery", gallery)
    assert code == 0 and out.strip().splitlines() == ["Grace Hopper"]
    # rebuild --index changes the kind of index, and the gallery keeps it.
    code, out, _ = run_cli(capsys, "gallery", "rebuild", "--index", "hnsw", "--gallery", gallery)
    assert code == 0 and "hnsw" in out
    code, out, _ = run_cli(capsys, "gallery", "stats", "--json", "--gallery", gallery)
    assert (json.loads(out)["index"], json.loads(out)["index_request"]) == ("hnsw", "hnsw")
    # The model its embeddings came from, which a refusal of other weights names by 12 digits only: whole here.
    shipped = Path(DEFAULT_MODEL).with_suffix(".safetensors")
    assert json.loads(out)["model"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    # IVF on a gallery too small to train it is a flat index for now, which rebuild says rather than leave a puzzle.
    code, out, _ = run_cli(capsys, "gallery", "rebuild", "--index", "ivf", "--gallery", gallery)
    assert (code, out) == (0, "rebuilt the flat index from 2 faces (ivf once it holds 100 faces)\n")
    # A gallery of another embedding size (a model trained with --embedding-size 128) is maintained as well.
    with Gallery.open(tmp_path / "small", dim=128) as small:
        small.add("ada", np.eye(1, 128, dtype=np.float32), [{"path": "a.jpg", "sha256": "1" * 64, "box": [0, 0, 9, 9]}])
    code, out, _ = run_cli(capsys, "gallery", "list", "--gallery", str(tmp_path / "small"))
    assert code == 0 and out.split() == ["ada"]


def test_identify_and_gallery_actions_without_a_gallery_say_how_to_make_one(tmp_path, capsys, monkeypatch,
                                                                           astronaut_bgr):
    """Run before any enroll, identify only said there was no gallery, and left the newcomer to guess the next step."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEKIT_GALLERY", raising=False)
    cv2.imwrite(str(tmp_path / "photo.jpg"), astronaut_bgr)
    hint = "enroll people first with `facekit enroll PEOPLE_DIR`, or point --gallery (or $FACEKIT_GALLERY) at one"
    default = tmp_path / "galleries" / "default"
    assert run_cli(capsys, "identify", "photo.jpg") == (
        2, "", f"error: no gallery at {default} (no gallery.sqlite there): {hint}\n")
    mistyped = tmp_path / "galeries"
    for action in (["list"], ["photos"], ["rename", "a", "b"], ["check"]):
        assert run_cli(capsys, "gallery", *action, "--gallery", str(mistyped)) == (
            2, "", f"error: no gallery at {mistyped} (no gallery.sqlite there): {hint}\n")
    assert not default.exists() and not mistyped.exists()
    # A folder holding other files is one enroll would make a gallery in: the hint stands there.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert run_cli(capsys, "gallery", "list", "--gallery", str(tmp_path / "notes")) == (
        2, "", f"error: no gallery at {tmp_path / 'notes'} (no gallery.sqlite there): {hint}\n")
    # Not where something else lies there: enrolling would not help a folder whose database was deleted, or a file.
    (tmp_path / "index-00000001-0.faiss").write_bytes(b"")
    assert run_cli(capsys, "identify", "photo.jpg", "--gallery", str(tmp_path)) == (
        2, "", f"error: gallery.sqlite is missing from {tmp_path}, which holds index files: restore the database "
               "from a backup; nothing was changed\n")
    assert run_cli(capsys, "gallery", "list", "--gallery", str(tmp_path / "photo.jpg")) == (
        2, "", f"error: {tmp_path / 'photo.jpg'} exists and is not a folder\n")


def test_a_database_error_after_opening_is_one_line(tmp_path, people, capsys, monkeypatch):
    # A page damaged where opening does not read, or a full disk, surfaces from SQLite mid-command.
    import sqlite3

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0

    def damaged(*_args):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(Gallery, "identities", damaged)
    code, out, err = run_cli(capsys, "gallery", "list", "--gallery", gallery)
    assert code == 2 and out == "" and err == "error: gallery database: database disk image is malformed\n"


def test_usage_errors_are_one_line_and_leave_the_gallery_intact(tmp_path, people, capsys):
    """Bad photos through enroll and identify are test_fuzz_inputs.py's corpus; these are the commands refused
    before any photo is read."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    # A path that is not there is a usage error before any work, as for enroll.
    code, _, err = run_cli(capsys, "identify", str(tmp_path / "missing.jpg"), "--gallery", gallery)
    assert code == 2 and err == f"error: not found: {tmp_path / 'missing.jpg'}\n"
    code, _, err = run_cli(capsys, "enroll", str(tmp_path / "missing_dir"), "--gallery", gallery)
    assert code == 2 and err.strip() == f"error: folder not found: {tmp_path / 'missing_dir'}"
    code, _, err = run_cli(capsys, "enroll", str(empty_file), "--gallery", gallery)
    assert (code, err) == (2, f"error: not a folder: {empty_file} (one sub-folder of photos per person is read: put "
                              "a photo in a folder named after its person, and give the folder above it)\n")
    # A folder without photos says so, and makes no empty gallery where none was.
    (tmp_path / "empty_people" / "nobody").mkdir(parents=True)
    code, _, err = run_cli(capsys, "enroll", str(tmp_path / "empty_people"), "--gallery", str(tmp_path / "new"))
    assert code == 1 and err.strip().startswith("error: no photos to enroll in") and not (tmp_path / "new").exists()
    # Only a file passed over by rule: named as enroll's report names it, skipped (a failure would be "failed").
    (tmp_path / "empty_people" / "nobody" / "notes.txt").write_text("")
    code, _, err = run_cli(capsys, "enroll", str(tmp_path / "empty_people"), "--gallery", str(tmp_path / "new"))
    assert (code, err) == (1, f"error: no photos to enroll in {tmp_path / 'empty_people'} (one sub-folder of photos "
                              f"per person); skipped {tmp_path / 'empty_people' / 'nobody' / 'notes.txt'}: not an "
                              "image file name\n")
    # Several: each is listed, in every output mode, where naming the first alone hid the others' reasons.
    (tmp_path / "empty_people" / "nobody" / "scan.pdf").write_text("")
    for mode in ((), ("--json",)):
        code, _, err = run_cli(capsys, "enroll", str(tmp_path / "empty_people"), "--gallery", str(tmp_path / "new"),
                               *mode)
        nobody = tmp_path / "empty_people" / "nobody"
        assert (code, err.splitlines()) == (1, [
            f"skipped {nobody / 'notes.txt'}: not an image file name",
            f"skipped {nobody / 'scan.pdf'}: not an image file name",
            f"error: no photos to enroll in {tmp_path / 'empty_people'} (one sub-folder of photos per person); the 2 "
            "files and folders above were passed over"])
    # A gallery that cannot be created (a file is in the way) is one line too.
    (tmp_path / "a_file").write_text("")
    code, _, err = run_cli(capsys, "enroll", str(people), "--gallery", str(tmp_path / "a_file" / "gallery"))
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    with Gallery.open(gallery, create=False) as opened:
        assert len(opened) == 4 and opened.check() == []


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "facekit.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("enroll", "identify", "verify", "gallery", "train", "eval"):
        assert command in result.stdout
    for command in ("enroll", "identify", "verify", "gallery", "train", "eval"):
        sub = subprocess.run([sys.executable, "-m", "facekit.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage:" in sub.stdout
    bad = subprocess.run([sys.executable, "-m", "facekit.cli", "identify"], capture_output=True, text=True)
    assert bad.returncode == 2


def console_script() -> str:
    """The `facekit` command's "module:function" as pyproject.toml names it; an editable install's may be older."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    return re.search(r'^facekit = "(.+)"$', pyproject, re.MULTILINE).group(1)


@pytest.mark.parametrize("launch", ["python -m facekit", "console script"])
@pytest.mark.parametrize("importing", ["facekit.cli", "numpy"])
def test_a_ctrl_c_while_the_cli_is_still_importing_is_one_line(tmp_path, launch, importing):
    """Pressed before facekit.cli's own handling is in place, a Ctrl-C ends the command as a later one does; numpy,
    the slowest import, is where a Ctrl-C pressed at once lands."""
    entry = "-m" if launch == "python -m facekit" else console_script()
    command = [sys.executable, "-c", CTRL_C_IN_IMPORT, importing, entry, "identify", str(tmp_path / "x.jpg")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", f"{INTERRUPTED}\n")


def test_a_damaged_tiff_is_one_error_line_even_at_the_file_descriptor(tmp_path, capfd, astronaut_bgr):
    # Pillow opens it and fails to decode it; neither its libtiff nor OpenCV's may add lines of their own.
    from PIL import Image

    damaged, portrait = tmp_path / "damaged.tif", tmp_path / "portrait.jpg"
    Image.fromarray(astronaut_bgr[:, :, ::-1]).save(damaged)  # Pillow puts the directory first: it still opens
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    cv2.imwrite(str(portrait), astronaut_bgr)
    code, out, err = run_cli(capfd, "verify", str(damaged), str(portrait))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err


def test_enroll_counts_a_failed_photo_apart_from_a_file_passed_over_by_rule(tmp_path, people, capsys):
    """Only the faceless photo makes the exit code 1: it alone is `failed`, the file without an image extension is
    `skipped`, so that a user seeing exit 1 knows which line caused it; the counts add up over both people."""
    blank, notes = people / "eileen_collins" / "blank.png", people / "grace_hopper" / "notes.txt"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 127, np.uint8))
    notes.write_text("not a photo")
    gallery = str(tmp_path / "gallery")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 1
    assert sorted(err.splitlines()) == [f"failed {blank}: no face found", f"skipped {notes}: not an image file name"]
    assert out.splitlines() == ["2 people, 6 files: 4 faces enrolled, 0 already enrolled, 1 failed, 1 skipped; "
                                "gallery now holds 4 faces"]
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json")
    summary = json.loads(out)
    assert code == 1 and err.splitlines() == [f"failed {blank}: no face found"]
    assert (summary["files"], summary["images"], summary["already_enrolled"]) == (6, 5, 4)
    assert (summary["failed"], summary["skipped"], len(summary["skipped_files"])) == (1, 2, 2)


@pytest.mark.usefixtures("copies_as_other_people")
def test_one_wrong_photo_is_listed_and_removed_without_its_person(tmp_path, people, capsys, astronaut_bgr):
    """A folder that holds someone else's photo: photos shows it, remove-photo takes it out, the rest stays."""
    wrong = people / "grace_hopper" / "c.jpg"
    cv2.imwrite(str(wrong), variant(astronaut_bgr, 3))
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    code, out, _ = run_cli(capsys, "gallery", "photos", "grace_hopper", "--json", "--gallery", gallery)
    listed = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [Path(p["path"]).name for p in listed] == ["a.jpg", "b.jpg", "c.jpg"]
    assert {p["identity"] for p in listed} == {"grace_hopper"} and listed[0]["created"].startswith("20")
    code, out, _ = run_cli(capsys, "gallery", "photos", "--csv", "--gallery", gallery)
    assert out.splitlines()[0] == "identity,created,sha256,path" and len(out.splitlines()) == 6

    # By content: the photo moved since it was enrolled.
    moved = tmp_path / "moved.jpg"
    wrong.rename(moved)
    code, out, _ = run_cli(capsys, "gallery", "remove-photo", str(moved), "--gallery", gallery)
    assert code == 0 and "from grace_hopper" in out
    code, out, _ = run_cli(capsys, "gallery", "photos", "grace_hopper", "--gallery", gallery)
    assert [Path(line.split()[-1]).name for line in out.splitlines()] == ["a.jpg", "b.jpg"]
    probe = tmp_path / "probe.jpg"
    cv2.imwrite(str(probe), variant(astronaut_bgr, 9))
    code, out, _ = run_cli(capsys, "identify", str(probe), "--json", "--gallery", gallery)
    assert json.loads(out)["faces"][0]["identity"] == "eileen_collins"

    # By the path it was enrolled from, or its sha256; the last photo of a person takes the person along.
    with Gallery.open(gallery) as opened:
        eileen = opened.photos("eileen_collins")
    code, out, err = run_cli(capsys, "gallery", "remove-photo", eileen[0]["path"], eileen[1]["sha256"], "nothing.jpg",
                             "--gallery", gallery)
    assert code == 1 and out.count("from eileen_collins") == 2
    assert err.strip() == f"error: not enrolled in {gallery}: nothing.jpg"
    code, out, _ = run_cli(capsys, "gallery", "list", "--gallery", gallery)
    assert out.split() == ["grace_hopper"]
    assert run_cli(capsys, "gallery", "check", "--gallery", gallery)[0] == 0
    code, _, err = run_cli(capsys, "gallery", "photos", "nobody", "--gallery", gallery)
    assert code != 0 and "nobody" in err


def test_photos_are_recorded_by_absolute_path_and_a_symlink_as_named(tmp_path, people, capsys, monkeypatch,
                                                                     grace_hopper_bgr):
    """Enrolled from a relative folder, each photo is listed by a path that still names it from another folder; a
    symlinked photo by its link, which the user put in the person's folder, not by its target."""
    outside = tmp_path / "outside.jpg"
    cv2.imwrite(str(outside), variant(grace_hopper_bgr, 4))
    (people / "grace_hopper" / "c.jpg").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", "people", "--gallery", gallery, "--quiet")[0] == 0
    monkeypatch.chdir(people / "grace_hopper")
    code, out, _ = run_cli(capsys, "gallery", "photos", "--json", "--gallery", gallery)
    assert code == 0 and [json.loads(line)["path"] for line in out.splitlines()] == [
        str(people / photo) for photo in ("eileen_collins/a.jpg", "eileen_collins/b.jpg", "grace_hopper/a.jpg",
                                          "grace_hopper/b.jpg", "grace_hopper/c.jpg")]


def test_remove_photo_knows_a_photo_by_any_spelling(tmp_path, people, capsys, monkeypatch):
    """A sha256 in capitals, one photo named twice, a path given relative where it was enrolled absolute, and
    absolute where a gallery enrolled before holds it relative, once the file is gone: each is removed, and none is
    then called not enrolled."""
    monkeypatch.chdir(tmp_path)
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", "people", "--gallery", gallery, "--quiet")[0] == 0  # paths recorded absolute
    old_photo = people / "grace_hopper" / "a.jpg"
    # As enroll recorded a path before it made it absolute: as given, here relative.
    with contextlib.closing(sqlite3.connect(Path(gallery) / "gallery.sqlite")) as db, db:
        db.execute("UPDATE embeddings SET source_path = ? WHERE source_path = ?",
                   ("people/grace_hopper/a.jpg", str(old_photo)))

    def remove(*photos: str) -> str:
        code, out, err = run_cli(capsys, "gallery", "remove-photo", *photos, "--gallery", gallery)
        assert (code, err) == (0, ""), err
        return out

    sha = hashlib.sha256((people / "eileen_collins" / "a.jpg").read_bytes()).hexdigest()
    assert remove(sha.upper()) == f"removed {people / 'eileen_collins' / 'a.jpg'} from eileen_collins\n"
    twice = remove(str(people / "eileen_collins" / "b.jpg"), "./people/eileen_collins/b.jpg")
    assert twice == f"removed {people / 'eileen_collins' / 'b.jpg'} from eileen_collins\n"
    old_photo.unlink()
    assert remove(str(old_photo)) == "removed people/grace_hopper/a.jpg from grace_hopper\n"
    (people / "grace_hopper" / "b.jpg").unlink()
    assert remove("people/grace_hopper/b.jpg") == f"removed {people / 'grace_hopper' / 'b.jpg'} from grace_hopper\n"
    with Gallery.open(gallery, create=False) as opened:
        assert opened.photos() == [] and opened.check() == []


def test_remove_photo_refuses_a_folder_and_reads_a_huge_file_in_pieces(tmp_path, people, capsys):
    import tracemalloc

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    enrolled = str(people / "eileen_collins" / "a.jpg")
    # A folder is a mistake on the command line: said so before anything is removed, as identify does.
    code, out, err = run_cli(capsys, "gallery", "remove-photo", enrolled, str(people), "--gallery", gallery)
    assert (code, out, err) == (2, "", f"error: a folder, not a photo: {people}\n")
    code, out, err = run_cli(capsys, "gallery", "remove-photo", enrolled, "", "--gallery", gallery)  # "$UNSET"
    assert (code, out) == (2, "") and err.startswith("error: a PHOTO argument is empty")
    # A huge file is hashed a piece at a time, not read whole into memory (a few GB took as much, or a MemoryError).
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(256 << 20)  # sparse: no disk space taken
    tracemalloc.start()
    try:
        code, _, err = run_cli(capsys, "gallery", "remove-photo", str(huge), "--gallery", gallery)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 1 and err == f"error: not enrolled in {gallery}: {huge}\n" and peak < 32 << 20
    # A copy of an enrolled photo under a name that is not UTF-8 (which no gallery can store) matches by content.
    copy = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(enrolled, copy)
    code, out, err = run_cli(capsys, "gallery", "remove-photo", str(copy), "--gallery", gallery)
    assert (code, out, err) == (0, f"removed {enrolled} from eileen_collins\n", "")
    # A gallery that is not there is an error, and none is made.
    code, _, err = run_cli(capsys, "gallery", "remove-photo", enrolled, "--gallery", str(tmp_path / "none"))
    assert code == 2 and err.startswith("error: no gallery at") and not (tmp_path / "none").exists()
    with Gallery.open(gallery, create=False) as opened:
        assert len(opened) == 3 and opened.check() == []


def test_gallery_photos_lists_any_path_as_csv_and_json(tmp_path, capsys, astronaut_bgr, grace_hopper_bgr):
    """Commas, quotes, a line break and non-ASCII letters in names and paths survive --csv and --json (--csv spells
    the line break as text does, \\n); the CSV is written as identify --csv writes it; an empty gallery lists no
    photo."""
    folder = tmp_path / "people" / 'Zoë, "the" one'
    folder.mkdir(parents=True)
    names = ['a,b "c".jpg', "new\nline.jpg"]
    for name, image in zip(names, (astronaut_bgr, grace_hopper_bgr)):
        cv2.imwrite(str(folder / name), image)
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(tmp_path / "people"), "--gallery", gallery, "--quiet")[0] == 0
    with Gallery.open(gallery, create=False) as opened:
        expected = [(photo["identity"], photo["path"], photo["sha256"]) for photo in opened.photos()]
    assert sorted(Path(path).name for _, path, _ in expected) == sorted(names)

    code, listed, _ = run_cli(capsys, "gallery", "photos", "--csv", "--gallery", gallery)
    rows = list(csv.DictReader(io.StringIO(listed, newline="")))
    assert code == 0 and [(row["identity"], row["path"], row["sha256"]) for row in rows] == [
        (identity, path.replace("\n", "\\n"), sha256) for identity, path, sha256 in expected]
    code, out, _ = run_cli(capsys, "gallery", "photos", "--json", "--gallery", gallery)
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(record["identity"], record["path"], record["sha256"]) for record in records] == expected
    assert [record["created"] for record in records] == [row["created"] for row in rows]
    # The csv module's dialect, as identify --csv writes: \r\n line ends.
    code, identified, _ = run_cli(capsys, "identify", str(folder / names[0]), "--csv", "--gallery", gallery)
    assert identified.splitlines(keepends=True)[0][-2:] == listed.splitlines(keepends=True)[0][-2:] == "\r\n"

    Gallery.open(tmp_path / "empty").close()
    for option, expected_out in (("--json", ""), ("--csv", "identity,created,sha256,path\r\n")):
        code, out, err = run_cli(capsys, "gallery", "photos", option, "--gallery", str(tmp_path / "empty"))
        assert (code, out, err) == (0, expected_out, "")
    # Text output escapes a line break in a path, as everywhere: one line per photo removed.
    code, out, err = run_cli(capsys, "gallery", "remove-photo", str(folder / names[1]), "--gallery", gallery)
    assert (code, out, err) == (0, f'removed {folder}/new\\nline.jpg from Zoë, "the" one\n', "")


def test_file_and_folder_names_that_are_not_utf8_are_enrolled_or_skipped_not_fatal(tmp_path, people, capsys):
    """A name in another encoding (Latin-1 é) reaches Python as a lone surrogate, which SQLite cannot store."""
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(people / "grace_hopper" / "a.jpg", people / "grace_hopper" / latin1)
    cv2.imwrite(str(people / "grace_hopper" / "c.jpg"), cv2.flip(cv2.imread(str(people / "grace_hopper" / "a.jpg")), 1))
    (people / os.fsdecode(b"Jos\xe9")).mkdir()
    shutil.copy(people / "eileen_collins" / "b.jpg", people / os.fsdecode(b"Jos\xe9") / "1.jpg")
    gallery = str(tmp_path / "gallery")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    # The Latin-1 file is a.jpg's twin, so already enrolled; c.jpg after it was still enrolled.
    assert code == 1 and "5 faces enrolled, 1 already enrolled, 1 failed, 0 skipped" in out, err  # José's photo
    assert "not valid UTF-8" in err
    code, out, _ = run_cli(capsys, "gallery", "photos", "grace_hopper", "--gallery", gallery)
    assert "c.jpg" in out
    os.remove(people / "grace_hopper" / "a.jpg")
    code, out, _ = run_cli(capsys, "gallery", "remove-photo", str(people / "grace_hopper" / latin1),
                           "--gallery", gallery)
    assert code == 0 and "a.jpg from grace_hopper" in out  # by content: the Latin-1 name was never enrolled
    code, out, err = run_cli(capsys, "identify", str(people / "grace_hopper"), "--gallery", gallery)
    assert code == 0 and "caf\\xe9.jpg" in out and "grace_hopper" in out
    # JSON names it as text does: a lone surrogate escape (\udce9) is rejected by strict JSON readers.
    code, out, err = run_cli(capsys, "identify", str(people / "grace_hopper"), "--gallery", gallery, "--json")
    images = [json.loads(line)["image"] for line in out.splitlines()]
    assert code == 0 and "\\udc" not in out and str(people / "grace_hopper" / "caf\\xe9.jpg") in images


def test_a_folder_whose_name_looks_like_another_persons_fails_alone(tmp_path, people, capsys):
    # "grace_hopper" with an invisible left-to-right mark was enrolled as a second Grace Hopper, the two listed alike.
    look_alike = people / "grace_hopper\u200e"
    look_alike.mkdir()
    shutil.copy(people / "eileen_collins" / "b.jpg", look_alike / "1.jpg")
    gallery = str(tmp_path / "gallery")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 1 and "4 faces enrolled, 0 already enrolled, 1 failed" in out
    assert err.splitlines() == [f"failed {look_alike / '1.jpg'}: identity name 'grace_hopper\\u200e' looks the same "
                                "as 'grace_hopper', enrolled already: they differ only in invisible joiners or "
                                "directional marks"]
    assert run_cli(capsys, "gallery", "list", "--gallery", gallery)[1] == "eileen_collins\ngrace_hopper\n"


def test_a_newline_or_escape_in_a_file_name_keeps_each_error_and_record_one_line(tmp_path, people, capsys):
    gallery = str(tmp_path / "gallery")
    folder = people / "grace_hopper"
    (folder / "not\na photo.jpg").write_text("text named .jpg")
    shutil.copy(folder / "a.jpg", folder / "two\nlines\x1b[2J.jpg")  # \x1b[2J: a terminal's clear-screen
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 1 and "1 failed, 0 skipped" in out
    assert err.splitlines() == [f"failed {folder}/not\\na photo.jpg: not an image"]  # the path once, not twice
    code, out, err = run_cli(capsys, "identify", str(folder), "--gallery", gallery)
    assert code == 1 and err == f"error: not an image: {folder}/not\\na photo.jpg\n"
    assert f"{folder}/two\\nlines\\x1b[2J.jpg: 1 face\n" in out and "\x1b" not in out
    assert len(out.splitlines()) == 6  # three photos, one face each: a line per photo, a line per face
    code, _, err = run_cli(capsys, "identify", str(tmp_path / "gone\n.jpg"), "--gallery", gallery)
    assert code == 2 and err == f"error: not found: {tmp_path}/gone\\n.jpg\n"
    # JSON escapes a name itself: one record per photo still, the unreadable one too.
    code, out, _ = run_cli(capsys, "identify", str(folder), "--gallery", gallery, "--json")
    assert [json.loads(line)["image"] for line in out.splitlines()] == [
        str(folder / name) for name in ("a.jpg", "b.jpg", "not\na photo.jpg", "two\nlines\x1b[2J.jpg")]
    # CSV spells them as text does: its quoting kept a row whole, but a terminal showing it ran the ESC.
    code, out, _ = run_cli(capsys, "identify", str(folder), "--gallery", gallery, "--csv")
    assert "\x1b" not in out and len(out.splitlines()) == 5
    assert [row[0] for row in csv.reader(io.StringIO(out))][1:] == [
        f"{folder}/{name}" for name in ("a.jpg", "b.jpg", "not\\na photo.jpg", "two\\nlines\\x1b[2J.jpg")]


def test_an_escape_or_a_bidi_mark_in_a_file_name_is_spelled_out_in_text_and_csv_alike(tmp_path, people, capsys):
    """--csv wrote a photo named bad\\x1b]0;T\\x07.jpg raw, in its image and error columns: a terminal showing the
    CSV took it for a new window title. A right-to-left override (U+202E), which shows the rest of a line reversed,
    is spelled out as a control character is."""
    folder = people / "grace_hopper"
    shutil.copy(folder / "a.jpg", folder / "\x1b[31mred.jpg")
    shutil.copy(folder / "b.jpg", folder / "\u202egpj.jpg")
    (folder / "bad\x1b]0;T\x07.jpg").write_text("not a photo")
    (folder / "\u202etxt.jpg").write_text("not a photo")
    unreadable = [f"{folder}/bad\\x1b]0;T\\x07.jpg", f"{folder}/\\u202etxt.jpg"]
    gallery = str(tmp_path / "gallery")
    code, _, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 1 and {line for line in err.splitlines() if line.startswith("failed ")} == {
        f"failed {path}: not an image" for path in unreadable}
    steering = ("\x1b", "\x07", "\u202e")
    code, out, err = run_cli(capsys, "identify", str(folder), "--gallery", gallery)
    assert code == 1 and not any(character in out + err for character in steering)
    assert set(err.splitlines()) == {f"error: not an image: {path}" for path in unreadable}
    assert f"{folder}/\\x1b[31mred.jpg: 1 face\n" in out and f"{folder}/\\u202egpj.jpg: 1 face\n" in out
    code, out, _ = run_cli(capsys, "identify", str(folder), "--gallery", gallery, "--csv")
    assert code == 1 and not any(character in out for character in steering) and len(out.splitlines()) == 7
    errors = {row["image"]: row["error"] for row in csv.DictReader(io.StringIO(out, newline=""))}
    assert errors == {f"{folder}/{name}": "" for name in ("a.jpg", "b.jpg", "\\x1b[31mred.jpg", "\\u202egpj.jpg")} | {
        path: f"not an image: {path}" for path in unreadable}


def test_a_negative_number_of_workers_is_a_usage_error(tmp_path, people, capsys):
    code, _, err = run_cli(capsys, "enroll", str(people), "--gallery", str(tmp_path / "gallery"), "--workers", "-2")
    assert code == 2 and err == "error: --workers must be 0 or more\n" and not (tmp_path / "gallery").exists()


def test_identify_on_a_folder_without_images_says_so(tmp_path, people, capsys):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos here")
    code, _, err = run_cli(capsys, "identify", str(tmp_path / "notes"), "--gallery", gallery)
    notes = tmp_path / "notes"
    assert code == 1 and err.splitlines() == [f"skipped {notes / 'readme.txt'}: not an image file name",
                                              f"error: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {notes}"]
    (tmp_path / "notes" / "bad.jpg").write_text("not a photo")
    code, _, err = run_cli(capsys, "identify", str(tmp_path / "notes"), "--gallery", gallery)
    assert code == 1 and err.strip().splitlines()[-1] == "error: no image could be read"


def test_identify_says_what_a_folder_holds_and_it_passes_over_and_reads_jpeg_and_gif_by_their_other_names(
        tmp_path, people, capsys, astronaut_bgr):
    """identify passed over a folder's files without an image extension, .jfif (a browser's JPEG) and .gif among
    them, without a word and exiting 0, where enroll lists them."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    photos = tmp_path / "photos"
    (photos / "linked").mkdir(parents=True)
    cv2.imwrite(str(photos / "a.jpg"), astronaut_bgr)
    Image.fromarray(astronaut_bgr[:, :, ::-1]).save(photos / "b.jfif", format="JPEG")
    Image.fromarray(astronaut_bgr[:, :, ::-1]).save(photos / "c.gif")
    (photos / "c.json").write_text("{}")
    (photos / ".DS_Store").write_bytes(b"")
    (photos / "link").symlink_to(photos / "linked", target_is_directory=True)
    code, out, err = run_cli(capsys, "identify", str(photos), "--gallery", gallery)
    assert code == 0 and err.splitlines() == [f"skipped {photos / 'link'}: symlinked folder not followed",
                                              f"skipped {photos / 'c.json'}: not an image file name"]
    assert [line.split(": ")[0] for line in out.splitlines() if not line.startswith("  ")] == [
        str(photos / name) for name in ("a.jpg", "b.jfif", "c.gif")]
    code, out, err = run_cli(capsys, "identify", str(photos), "--gallery", gallery, "--json")
    assert code == 0 and err == ""  # machine output: the skipped are not listed
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["image"] for record in records] == [str(photos / name) for name in ("a.jpg", "b.jfif", "c.gif")]
    assert all("eileen_collins" in [face["identity"] for face in record["faces"]] for record in records)


def test_hidden_files_and_folders_are_passed_over_without_a_word_by_identify_and_enroll(tmp_path, people, capsys,
                                                                                      astronaut_bgr):
    """macOS leaves ._photo.jpg beside each photo on a USB drive: identify said 'not an image' of each and exited 1,
    and a .hidden.jpg or a .thumbnails folder's pictures were enrolled as the person."""
    gallery = str(tmp_path / "gallery")
    hidden = [people / "eileen_collins" / ".hidden.jpg", people / "eileen_collins" / ".thumbnails" / "t.jpg",
              people / ".Trash" / "old.jpg"]
    for path in hidden:
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), astronaut_bgr)
    (people / "eileen_collins" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json")
    assert (code, err, json.loads(out)["enrolled"], json.loads(out)["skipped_files"]) == (0, "", 4, [])
    with Gallery.open(gallery, create=False) as opened:
        assert sorted(Path(photo["path"]).name for photo in opened.photos()) == ["a.jpg", "a.jpg", "b.jpg", "b.jpg"]
    code, out, err = run_cli(capsys, "identify", str(people / "eileen_collins"), "--gallery", gallery)
    assert (code, err) == (0, "")
    assert [line.split(": ")[0] for line in out.splitlines() if not line.startswith("  ")] == [
        str(people / "eileen_collins" / name) for name in ("a.jpg", "b.jpg")]
    code, out, _ = run_cli(capsys, "identify", str(hidden[0]), "--gallery", gallery, "--json")  # named: read
    assert code == 0 and json.loads(out)["faces"][0]["identity"] == "eileen_collins"


def test_identify_takes_a_stricter_default_threshold_for_a_larger_gallery(tmp_path, people, capsys, monkeypatch):
    """400 faces more: the default is the card's threshold for 404 faces, not its 40-face one; --threshold wins."""
    import facekit.recognition
    from facekit.representation import Embedder

    gallery = tmp_path / "gallery"
    assert run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--quiet")[0] == 0
    rng = np.random.default_rng(0)
    filler = rng.normal(size=(400, 512)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    with Gallery.open(gallery, create=False) as opened:
        opened.add("filler", filler, [{"path": f"f{i}.jpg", "sha256": f"{i:064x}", "box": [0, 0, 9, 9]}
                                      for i in range(400)])
    used: list[float] = []
    identify_image = facekit.recognition.identify_image
    monkeypatch.setattr(facekit.recognition, "identify_image",
                        lambda *args, **kwargs: used.append(args[3]) or identify_image(*args, **kwargs))
    probe = str(people / "grace_hopper" / "a.jpg")
    assert run_cli(capsys, "identify", probe, "--gallery", str(gallery), "--json")[0] == 0
    assert run_cli(capsys, "identify", probe, "--gallery", str(gallery), "--json", "--threshold", "0.5")[0] == 0
    embedder = Embedder()
    assert used == [embedder.identify_threshold_for(404), 0.5] and used[0] > embedder.identify_threshold


@pytest.mark.usefixtures("copies_as_other_people")
def test_enroll_sync_removes_the_faces_of_deleted_and_replaced_photos_and_no_others(tmp_path, people, capsys,
                                                                                      astronaut_bgr, grace_hopper_bgr):
    """Without --sync a deleted or replaced photo's face stays; with it, exactly those faces go, and a face enrolled
    from outside PEOPLE_DIR (a sibling folder whose name starts with its name, or an array) stays even when gone."""
    import facekit

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    sibling = tmp_path / "people-elsewhere" / "ada.jpg"
    sibling.parent.mkdir()
    cv2.imwrite(str(sibling), variant(grace_hopper_bgr, 7))
    with Gallery.open(gallery) as opened:
        facekit.add_face(opened, "ada", sibling)
        facekit.add_face(opened, "ada", variant(astronaut_bgr, 8))
        before = opened.photos()
    sibling.unlink()
    deleted, replaced = people / "eileen_collins" / "b.jpg", people / "grace_hopper" / "a.jpg"
    deleted.unlink()
    cv2.imwrite(str(replaced), variant(astronaut_bgr, 5))
    new_sha256 = hashlib.sha256(replaced.read_bytes()).hexdigest()

    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json")
    summary = json.loads(out)
    assert code == 0 and (summary["enrolled"], summary["gallery_faces"]) == (1, 7)
    assert "removed" not in summary and "removed_files" not in summary
    with Gallery.open(gallery) as opened:
        assert opened.photos()[:6] == before

    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    summary = json.loads(out)
    assert code == 0 and (summary["already_enrolled"], summary["removed"], summary["gallery_faces"]) == (3, 2, 5)
    assert summary["removed_files"] == [{"path": str(deleted), "identity": "eileen_collins"},
                                        {"path": str(replaced), "identity": "grace_hopper"}]
    with Gallery.open(gallery) as opened:
        after = opened.photos()
    gone = [photo for photo in before if photo not in after]
    assert [(photo["path"], photo["sha256"]) for photo in gone] == [
        (str(deleted), before[3]["sha256"]), (str(replaced), before[4]["sha256"])]
    assert [(photo["identity"], photo["path"]) for photo in after] == [
        ("ada", str(sibling)), ("ada", "<array>"), ("eileen_collins", str(people / "eileen_collins" / "a.jpg")),
        ("grace_hopper", str(people / "grace_hopper" / "b.jpg")), ("grace_hopper", str(replaced))]
    assert after[-1]["sha256"] == new_sha256

    # The Python API has it too; a person whose folder is gone goes with it, and a renamed photo, which enroll
    # skips as enrolled already, keeps its face.
    shutil.rmtree(people / "grace_hopper")
    (people / "eileen_collins" / "a.jpg").rename(people / "eileen_collins" / "renamed.jpg")
    with Gallery.open(gallery) as opened:
        report = facekit.enroll(people, opened, sync=True)
        assert report.removed == [(str(people / "grace_hopper" / "b.jpg"), "grace_hopper"),
                                  (str(replaced), "grace_hopper")]
        assert [name for name, _ in opened.identities()] == ["ada", "eileen_collins"]


def test_enroll_sync_removes_nothing_under_a_folder_it_cannot_read(tmp_path, people, capsys, astronaut_bgr):
    """A folder that cannot be listed says nothing of its photos: --sync keeps their faces, and still removes one
    whose photo was deleted from a folder it could read."""
    older = people / "eileen_collins" / "older"
    older.mkdir()
    cv2.imwrite(str(older / "c.jpg"), variant(astronaut_bgr, 6))
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    with Gallery.open(gallery) as opened:
        before = opened.photos()
    deleted = people / "eileen_collins" / "b.jpg"
    deleted.unlink()
    (people / "grace_hopper").chmod(0)
    older.chmod(0)
    try:
        result = subprocess.run(unprivileged([sys.executable, "-m", "facekit.cli", "enroll", str(people), "--sync",
                                              "--gallery", gallery, "--quiet"]),
                                capture_output=True, text=True, timeout=300)
    finally:
        (people / "grace_hopper").chmod(0o700)
        older.chmod(0o700)
    assert result.returncode == 1, result.stderr  # the photos under those folders were not enrolled
    assert f"failed {people / 'grace_hopper'}: cannot read folder: Permission denied" in result.stderr
    assert f"failed {older}: cannot read folder: Permission denied" in result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"removed {deleted} from eileen_collins", f"--sync: 1 face removed (photo deleted from {people} or changed)"]
    with Gallery.open(gallery) as opened:
        assert opened.photos() == [photo for photo in before if photo["path"] != str(deleted)]


def test_enroll_sync_keeps_a_photo_that_is_still_there_though_enroll_does_not_list_it(tmp_path, people, capsys,
                                                                                      grace_hopper_bgr):
    """--sync removes a face whose file is gone, not one enroll passes over: a person's folder moved elsewhere and
    symlinked back, or a photo added by add_face under a name without an image extension."""
    import facekit

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    scan = people / "grace_hopper" / "scan.raw"
    cv2.imwrite(str(scan.with_suffix(".jpg")), variant(grace_hopper_bgr, 9))
    scan.with_suffix(".jpg").rename(scan)
    with Gallery.open(gallery) as opened:
        facekit.add_face(opened, "grace_hopper", scan)
        before = opened.photos()
    moved = tmp_path / "disk2" / "eileen_collins"
    moved.parent.mkdir()
    (people / "eileen_collins").rename(moved)
    (people / "eileen_collins").symlink_to(moved, target_is_directory=True)
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    assert code == 0 and json.loads(out)["removed"] == 0, err
    with Gallery.open(gallery) as opened:
        assert opened.photos() == before
    (people / "eileen_collins").unlink()  # now gone: the link's photos go, the scan that is still there stays
    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    assert [face["identity"] for face in json.loads(out)["removed_files"]] == ["eileen_collins", "eileen_collins"]
    with Gallery.open(gallery) as opened:
        assert [photo["path"] for photo in opened.photos()] == [p["path"] for p in before if "grace" in p["path"]]


def test_enroll_sync_records_a_photo_renamed_in_its_persons_folder_at_its_new_path(tmp_path, people, capsys):
    """A photo renamed, or moved into a sub-folder of its person's folder, is skipped as enrolled already and keeps
    its face; --sync records it at its new path, so `gallery photos` lists a file that is there and removing the
    photo by that path finds it."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    with Gallery.open(gallery) as opened:
        before = opened.photos()
    renamed, moved = people / "eileen_collins" / "launch.jpg", people / "grace_hopper" / "1984" / "b.jpg"
    (people / "eileen_collins" / "a.jpg").rename(renamed)
    moved.parent.mkdir()
    (people / "grace_hopper" / "b.jpg").rename(moved)
    new_paths = {str(people / "eileen_collins" / "a.jpg"): str(renamed),
                 str(people / "grace_hopper" / "b.jpg"): str(moved)}

    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    assert code == 0, err
    with Gallery.open(gallery) as opened:
        assert opened.photos() == [{**photo, "path": new_paths.get(photo["path"], photo["path"])} for photo in before]
        assert [face["identity"] for face in opened.remove_photos(str(moved))] == ["grace_hopper"]
    summary = json.loads(out)
    assert (summary["enrolled"], summary["already_enrolled"], summary["removed"]) == (0, 4, 0)
    assert summary["moved_files"] == summary["warnings"] == []
    code, out, _ = run_cli(capsys, "gallery", "photos", "eileen_collins", "--gallery", gallery)
    assert [line.split()[-1] for line in out.splitlines()] == [str(renamed), str(people / "eileen_collins" / "b.jpg")]


def test_enroll_sync_keeps_a_renamed_persons_name_and_a_face_moved_under_a_folder_no_name_fits(tmp_path, people,
                                                                                               capsys):
    """A photo renamed in its own folder stays with its person whatever `gallery rename` called them (it was moved
    to a new person named after the folder, as if to another's folder); one moved into a folder whose name no
    identity can have is skipped and said, and its face is kept (it was removed as if the photo were gone)."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    assert run_cli(capsys, "gallery", "rename", "eileen_collins", "Eileen Collins", "--gallery", gallery)[0] == 0
    (people / "eileen_collins" / "a.jpg").rename(people / "eileen_collins" / "launch.jpg")
    unnamed = people / "bad\x01name"
    unnamed.mkdir()
    (people / "grace_hopper" / "b.jpg").rename(unnamed / "b.jpg")

    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    summary = json.loads(out)
    assert code == 1 and (summary["removed"], summary["moved_files"]) == (0, []), out
    shown = str(unnamed / "b.jpg").replace("\x01", "\\x01")  # as the CLI escapes a control character
    assert err.splitlines() == [f"failed {shown}: identity name 'bad\\x01name' contains control characters"]
    with Gallery.open(gallery, create=False) as opened:
        assert opened.identities() == [("Eileen Collins", 2), ("grace_hopper", 2)]
        paths = {Path(photo["path"]).name for photo in opened.photos("Eileen Collins")}
        assert paths == {"launch.jpg", "b.jpg"} and opened.check() == []


@pytest.mark.usefixtures("copies_as_other_people")
def test_enroll_after_gallery_rename_adds_the_folders_new_photos_to_the_renamed_person(tmp_path, people, capsys,
                                                                                       astronaut_bgr):
    """After `gallery rename`, the next enroll warned of every photo in the folder as enrolled as someone else and
    enrolled its new photos under the folder's name: one person split in two. A folder whose name is no longer in
    the gallery, and whose faces are all one other person's, now adds to that person; a new folder is a new person."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    assert run_cli(capsys, "gallery", "rename", "eileen_collins", "Eileen Collins", "--gallery", gallery)[0] == 0
    cv2.imwrite(str(people / "eileen_collins" / "c.jpg"), variant(astronaut_bgr, 5))
    (people / "someone_new").mkdir()
    cv2.imwrite(str(people / "someone_new" / "a.jpg"), variant(astronaut_bgr, 6))
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json")
    summary = json.loads(out)
    assert (code, err, summary["warnings"]) == (0, "", [])
    assert (summary["enrolled"], summary["already_enrolled"]) == (2, 4)
    with Gallery.open(gallery, create=False) as opened:
        assert opened.identities() == [("Eileen Collins", 3), ("grace_hopper", 2), ("someone_new", 1)]


def test_enroll_refuses_to_make_a_gallery_among_the_photos(people, capsys):
    """`--gallery people` made gallery.sqlite, its index and lock among the person folders, which every later enroll
    then listed as files passed over."""
    elsewhere = people.parent / "elsewhere"
    elsewhere.mkdir()
    (people / "link").symlink_to(elsewhere, target_is_directory=True)  # listed by every enroll as passed over
    before = sorted(people.rglob("*"))
    for gallery in (people, people / "eileen_collins" / "gallery", people / "link" / "gallery"):
        code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", str(gallery))
        assert (code, out) == (2, "") and err == (f"error: the gallery {gallery} would be made inside {people}, "
                                                  "among the photos: give --gallery a folder outside it\n")
    assert sorted(people.rglob("*")) == before and not any(elsewhere.iterdir())
    # Beside the photos by way of "..", or in a hidden folder that enroll passes over: made.
    for gallery in (people / ".." / "gallery", people / ".facekit" / "gallery"):
        assert run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--quiet")[0] == 0


def test_enroll_sync_follows_a_moved_people_folder_and_then_forgets_a_photo_deleted_there(tmp_path, people, capsys):
    """Photos are recorded by absolute path: after the people folder was moved, every face was 'enrolled from
    elsewhere', which --sync never touches, so deleting a photo to forget its face did nothing, without a word."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    moved = tmp_path / "library" / "people"
    moved.parent.mkdir()
    people.rename(moved)
    (moved / "eileen_collins" / "b.jpg").unlink()
    code, out, err = run_cli(capsys, "enroll", str(moved), "--gallery", gallery, "--sync", "--json")
    summary = json.loads(out)
    assert (code, err, summary["enrolled"], summary["removed_files"]) == (0, "", 0, [])
    with Gallery.open(gallery, create=False) as opened:
        assert sorted(photo["path"] for photo in opened.photos()) == sorted([
            str(people / "eileen_collins" / "b.jpg"),  # its file was gone before the sync: nothing to follow
            *(str(moved / name) for name in ("eileen_collins/a.jpg", "grace_hopper/a.jpg", "grace_hopper/b.jpg"))])
    (moved / "grace_hopper" / "b.jpg").unlink()
    code, out, _ = run_cli(capsys, "enroll", str(moved), "--gallery", gallery, "--sync", "--json")
    assert [face["path"] for face in json.loads(out)["removed_files"]] == [str(moved / "grace_hopper" / "b.jpg")]


def test_enroll_sync_follows_a_moved_people_folder_under_the_names_gallery_rename_gave(tmp_path, people, capsys,
                                                                                       grace_hopper_bgr):
    """Renamed in the gallery, then moved: each photo was warned of as enrolled as someone else, a new photo went to
    a second person named after the folder, and the old faces stayed recorded where their files no longer were."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    assert run_cli(capsys, "gallery", "rename", "grace_hopper", "Grace Hopper", "--gallery", gallery)[0] == 0
    moved = tmp_path / "library" / "people"
    moved.parent.mkdir()
    people.rename(moved)
    cv2.imwrite(str(moved / "grace_hopper" / "c.jpg"), variant(grace_hopper_bgr, 5))
    code, out, err = run_cli(capsys, "enroll", str(moved), "--gallery", gallery, "--sync", "--json")
    summary = json.loads(out)
    assert (code, err, summary["warnings"], summary["enrolled"], summary["removed"]) == (0, "", [], 1, 0)
    with Gallery.open(gallery, create=False) as opened:
        assert opened.identities() == [("Grace Hopper", 3), ("eileen_collins", 2)]
        assert all(photo["path"].startswith(str(moved)) for photo in opened.photos())


@pytest.mark.usefixtures("copies_as_other_people")
def test_enroll_sync_gives_a_photo_moved_to_another_persons_folder_to_that_person(tmp_path, people, capsys,
                                                                                   astronaut_bgr):
    """A mislabelled photo put right: Eileen's photos enrolled from Grace's folder and from a misspelt folder, then
    moved to hers. Without --sync enroll warns that they are enrolled as someone else and keeps them so; with --sync
    their faces (ids and embeddings as they were) are Eileen's, at their new paths, enroll says so instead of the
    warning, and the misspelt person, left without faces, goes."""
    wrong, misspelt = people / "grace_hopper" / "c.jpg", people / "eileen_colins" / "d.jpg"
    misspelt.parent.mkdir()
    cv2.imwrite(str(wrong), variant(astronaut_bgr, 3))
    cv2.imwrite(str(misspelt), variant(astronaut_bgr, 4))
    gallery = tmp_path / "gallery"
    assert run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--quiet")[0] == 0

    def stored() -> dict[str, tuple]:
        with contextlib.closing(sqlite3.connect(gallery / "gallery.sqlite")) as db:
            rows = db.execute("SELECT e.sha256, e.id, i.name, e.source_path, e.created, e.vector FROM embeddings e"
                              " JOIN identities i ON i.id = e.identity_id")
            return {sha: tuple(rest) for sha, *rest in rows}

    before = stored()
    eileen = people / "eileen_collins"
    wrong.rename(eileen / "c.jpg")
    misspelt.rename(eileen / "d.jpg")
    misspelt.parent.rmdir()

    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--json")
    assert code == 0 and "moved_files" not in json.loads(out)
    assert json.loads(out)["warnings"] == [
        f"{eileen / name}: the same photo is enrolled as {holder}; not added to eileen_collins (`facekit gallery "
        "remove-photo` takes it out of the gallery)" for name, holder in (("c.jpg", "grace_hopper"),
                                                                          ("d.jpg", "eileen_colins"))]
    assert stored() == before

    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--sync", "--quiet")
    assert code == 0 and "warning" not in err, err
    assert out.splitlines()[1:] == [
        f"--sync: 0 faces removed (photo deleted from {people} or changed)",
        f"moved {eileen / 'd.jpg'} from eileen_colins to eileen_collins",
        f"moved {eileen / 'c.jpg'} from grace_hopper to eileen_collins",
        "--sync: 2 faces moved (photo moved to another person's folder)"]
    after = stored()
    moved = {sha: (*row[:1], "eileen_collins", str(eileen / Path(row[2]).name), *row[3:]) for sha, row in before.items()
             if row[1] in ("grace_hopper", "eileen_colins") and Path(row[2]).name in ("c.jpg", "d.jpg")}
    assert len(moved) == 2 and after == {**before, **moved}
    code, out, _ = run_cli(capsys, "gallery", "list", "--gallery", str(gallery))
    assert out.split() == ["eileen_collins", "grace_hopper"]
    assert run_cli(capsys, "gallery", "check", "--gallery", str(gallery))[0] == 0

    code, out, _ = run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--sync", "--json")
    summary = json.loads(out)
    assert code == 0 and (summary["removed"], summary["moved_files"], summary["warnings"]) == (0, [], [])


@pytest.mark.usefixtures("copies_as_other_people")
def test_enroll_sync_follows_a_photo_to_one_copy_and_two_swapped_names(tmp_path, people, capsys, astronaut_bgr):
    """Content deleted from its path but copied to several: its face goes to a copy in its person's folder, the first
    by name, not to one in another's (which enroll warns of as enrolled already); two photos whose names were
    swapped each take the other's path; a photo enrolled from outside PEOPLE_DIR and moved into it stays as it was
    enrolled; nothing is removed."""
    import facekit

    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    outside = tmp_path / "elsewhere" / "ada.jpg"
    outside.parent.mkdir()
    cv2.imwrite(str(outside), variant(astronaut_bgr, 9))
    with Gallery.open(gallery) as opened:
        facekit.add_face(opened, "ada", outside)
        before = {photo["sha256"]: photo for photo in opened.photos()}
    eileen, grace = people / "eileen_collins", people / "grace_hopper"
    outside.rename(eileen / "ada.jpg")
    (grace / "copy").mkdir()
    for copy in (eileen / "a0.jpg", grace / "x.jpg", grace / "copy" / "a.jpg"):
        shutil.copy(grace / "a.jpg", copy)
    (grace / "a.jpg").unlink()
    (eileen / "a.jpg").rename(eileen / "swap.jpg")
    (eileen / "b.jpg").rename(eileen / "a.jpg")
    (eileen / "swap.jpg").rename(eileen / "b.jpg")
    with Gallery.open(gallery) as opened:
        report = facekit.enroll(people, opened, sync=True)
        after = {photo["sha256"]: photo for photo in opened.photos()}
    new_paths = {grace / "a.jpg": grace / "copy" / "a.jpg", eileen / "a.jpg": eileen / "b.jpg",
                 eileen / "b.jpg": eileen / "a.jpg"}
    assert after == {sha: {**photo, "path": str(new_paths.get(Path(photo["path"]), photo["path"]))}
                     for sha, photo in before.items()}
    assert (report.enrolled, report.removed, report.moved) == (0, [], [])
    assert report.warnings == [
        f"{eileen / name}: the same photo is enrolled as {holder}; not added to eileen_collins (`facekit gallery "
        "remove-photo` takes it out of the gallery)"
        for name, holder in (("a0.jpg", "grace_hopper"), ("ada.jpg", "ada"))]


def test_a_face_whose_person_another_face_took_says_so(tmp_path, people, capsys, astronaut_bgr):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    twice = tmp_path / "twice.jpg"
    cv2.imwrite(str(twice), np.hstack([astronaut_bgr, cv2.flip(astronaut_bgr, 1)]))
    code, out, _ = run_cli(capsys, "identify", str(twice), "--gallery", gallery)
    names = sorted(line.split(": ", 1)[1].rsplit("  similarity", 1)[0] for line in out.splitlines()[1:])
    assert code == 0 and names == ["eileen_collins", "unknown (closest: eileen_collins, named on another face in "
                                                     "this photo)"], out
    # The threshold the names were decided by, as verify's text and identify's JSON give it: the default grows
    # with the gallery, and the text gave only the similarity, which a user could not weigh.
    threshold = json.loads(run_cli(capsys, "identify", str(twice), "--gallery", gallery, "--json")[1])["threshold"]
    assert all(line.endswith(f" (threshold {threshold:.3f})") for line in out.splitlines()[1:]), out


def test_identify_with_an_empty_gallery_gives_no_similarity_in_every_output(tmp_path, capsys, grace_hopper_path):
    # 0.0 is a cosine a face can have: where no one is enrolled there is none, in the CLI as in facekit.identify.
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    code, out, _ = run_cli(capsys, "identify", str(grace_hopper_path), "--gallery", str(gallery), "--json")
    assert code == 0 and json.loads(out)["faces"][0]["similarity"] is None
    code, out, _ = run_cli(capsys, "identify", str(grace_hopper_path), "--gallery", str(gallery), "--csv")
    [row] = csv.DictReader(io.StringIO(out, newline=""))
    assert code == 0 and (row["identity"], row["similarity"], row["error"]) == ("", "", "") and float(row["threshold"])
    code, out, _ = run_cli(capsys, "identify", str(grace_hopper_path), "--gallery", str(gallery))
    assert code == 0 and "unknown  no one enrolled to compare with" in out


def test_the_progress_bar_is_for_a_terminal_not_a_redirected_log(tmp_path, people):
    import fcntl
    import pty
    import struct
    import termios

    command = [sys.executable, "-m", "facekit", "enroll", str(people), "--gallery", str(tmp_path / "gallery")]
    logged = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0 and "4 faces enrolled" in logged.stdout
    assert logged.stderr == ""  # the bar's redrawn frames buried the log's lines
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 columns wide
    with os.fdopen(controller, "rb") as screen:
        watched = subprocess.run(command[:-1] + [str(tmp_path / "gallery2")], stdout=subprocess.PIPE,
                                 stderr=terminal, timeout=300)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = screen.read1(65536)
            except OSError:  # EIO: everything the closed terminal held has been read
                break
            if not chunk:
                break
            shown += chunk
    shown = shown.decode(errors="replace")
    assert watched.returncode == 0 and "enrolling" in shown


def test_verify_says_when_a_photo_holds_several_faces(tmp_path, capsys, astronaut_bgr, grace_hopper_bgr):
    # enroll warns that it took a group photo's largest face; verify compared it without a word.
    height = astronaut_bgr.shape[0]
    grace = cv2.resize(grace_hopper_bgr, (round(grace_hopper_bgr.shape[1] * height / grace_hopper_bgr.shape[0]),
                                          height))
    group, single = tmp_path / "group.jpg", tmp_path / "single.jpg"
    cv2.imwrite(str(group), np.hstack([astronaut_bgr, grace]))
    cv2.imwrite(str(single), astronaut_bgr)
    code, out, err = run_cli(capsys, "verify", str(group), str(single))
    assert code == 0 and out.startswith(("same person", "different people"))
    assert err == f"warning: {group}: 2 faces, compared the largest\n"
    code, _, err = run_cli(capsys, "verify", str(single), str(single))
    assert code == 0 and err == ""


def test_a_photo_that_failed_among_good_ones_is_said_and_makes_enroll_and_identify_exit_1(tmp_path, people, capsys):
    """The good photos are still enrolled and identified and printed; each unreadable or faceless one is one line on
    stderr, and the exit code tells a script that not every photo was done."""
    folder = people / "grace_hopper"
    blank, text = folder / "blank.png", folder / "text.jpg"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 127, np.uint8))
    text.write_text("not a photo")
    gallery = str(tmp_path / "gallery")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")
    assert code == 1 and "4 faces enrolled, 0 already enrolled, 2 failed, 0 skipped" in out
    failures = [f"failed {blank}: no face found", f"failed {text}: not an image"]
    assert err.splitlines() == failures
    # --json and --sync: the same rule, and stderr still names what failed.
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--json", "--sync")
    assert (code, err.splitlines()) == (1, failures)
    assert (json.loads(out)["already_enrolled"], json.loads(out)["removed"]) == (4, 0)
    with Gallery.open(gallery, create=False) as opened:
        assert len(opened) == 4 and opened.check() == []

    code, out, err = run_cli(capsys, "identify", str(folder), "--gallery", gallery)
    assert code == 1 and err.splitlines() == [f"error: no face found in {blank}", f"error: not an image: {text}"]
    assert [line for line in out.splitlines() if not line.startswith("  ")] == [
        f"{folder / 'a.jpg'}: 1 face", f"{folder / 'b.jpg'}: 1 face", f"{blank}: 0 faces"]
    code, out, err = run_cli(capsys, "identify", str(folder), "--gallery", gallery, "--json")
    records = {Path(record["image"]).name: record for record in map(json.loads, out.splitlines())}
    assert code == 1 and len(err.splitlines()) == 2
    assert records["blank.png"] == {"image": str(blank), "threshold": records["a.jpg"]["threshold"], "faces": [],
                                    "error": "no face found"}
    assert set(records) == {"a.jpg", "b.jpg", "blank.png", "text.jpg"}
    code, out, err = run_cli(capsys, "identify", str(folder / "a.jpg"), "--gallery", gallery)
    assert (code, err) == (0, "") and "grace_hopper" in out


def test_identify_csv_gives_every_photo_a_row_and_an_unknown_face_no_name(tmp_path, capsys, astronaut_bgr,
                                                                         grace_hopper_bgr):
    """A photo without a face or that cannot be read gets a row with its error; an unknown face's identity is empty,
    as JSON's null, where "unknown" would be the name of someone enrolled as such (a gallery from before the name
    was reserved)."""
    (tmp_path / "people" / "grace").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "people" / "grace" / "a.jpg"), grace_hopper_bgr)
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(tmp_path / "people"), "--gallery", gallery, "--quiet")[0] == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "gallery" / "gallery.sqlite")) as db, db:
        db.execute("UPDATE identities SET name = 'unknown'")
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_astronaut.jpg"), astronaut_bgr)
    cv2.imwrite(str(folder / "b_blank.png"), np.full((300, 300, 3), 127, np.uint8))
    cv2.imwrite(str(folder / "c_grace.jpg"), variant(grace_hopper_bgr, 7))
    (folder / "d_text.jpg").write_text("not a photo")
    code, out, err = run_cli(capsys, "identify", str(folder), "--gallery", gallery, "--csv")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 1 and len(err.splitlines()) == 2
    assert list(rows[0]) == ["image", "face", "x", "y", "w", "h", "identity", "similarity", "error", "threshold"]
    assert [(Path(row["image"]).name, row["face"], row["identity"], row["error"]) for row in rows] == [
        ("a_astronaut.jpg", "0", "", ""), ("b_blank.png", "", "", "no face found"),
        ("c_grace.jpg", "0", "unknown", ""), ("d_text.jpg", "", "", f"not an image: {folder / 'd_text.jpg'}")]
    assert float(rows[0]["similarity"]) < float(rows[2]["similarity"])  # a stranger's is there too, only lower
    blank = ("x", "y", "w", "h", "similarity", "threshold")
    assert all(not any(row[key] for key in blank) for row in (rows[1], rows[3]))


@pytest.mark.parametrize(("command", "prog"), [("identify photo.jpg", "facekit identify"),
                                               ("gallery list", "facekit gallery list")])
def test_a_wrong_flag_after_a_command_gets_that_commands_usage(capsys, command, prog):
    """Not the top-level `usage: facekit [-h] [--version] COMMAND ...`, which shows none of the options meant."""
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"usage: {prog} [-h]")
    assert err.splitlines()[-1] == f"{prog}: error: unrecognized arguments: --bogus"


def test_removing_a_person_or_photo_not_enrolled_exits_1_naming_it(tmp_path, capsys):
    """Valid requests that found nothing to remove, rename or list; a name no identity can have stays a usage
    error."""
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=128) as opened:
        opened.add("ada", np.eye(1, 128, dtype=np.float32),
                   [{"path": "a.jpg", "sha256": "1" * 64, "box": [0, 0, 9, 9]}])
    assert run_cli(capsys, "gallery", "remove", "nobody", "--gallery", str(gallery)) == (
        1, "", f"error: not enrolled in {gallery}: nobody\n")
    assert run_cli(capsys, "gallery", "remove-photo", "b.jpg", "--gallery", str(gallery)) == (
        1, "", f"error: not enrolled in {gallery}: b.jpg\n")
    assert run_cli(capsys, "gallery", "rename", "nobody", "ada2", "--gallery", str(gallery)) == (
        1, "", f"error: not enrolled in {gallery}: nobody\n")
    assert run_cli(capsys, "gallery", "photos", "nobody", "--gallery", str(gallery)) == (
        1, "", f"error: not enrolled in {gallery}: nobody\n")
    code, _, err = run_cli(capsys, "gallery", "remove", "a/b", "--gallery", str(gallery))
    assert code == 2 and err == "error: identity name 'a/b' contains a path separator\n"
    assert run_cli(capsys, "gallery", "remove", "ada", "--gallery", str(gallery)) == (0, "removed ada (1 face)\n", "")


def test_a_name_not_enrolled_is_answered_with_the_enrolled_names_it_likely_meant(tmp_path, capsys):
    """`gallery remove Obama` said only "not enrolled", where the gallery holds Barack_Obama: a user had to list the
    gallery to find the spelling."""
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=128) as opened:
        for number, name in enumerate(["Barack_Obama", "Michelle_Obama", "Grace_Hopper", "ada"]):
            opened.add(name, np.eye(1, 128, number, dtype=np.float32),
                       [{"path": f"{number}.jpg", "sha256": f"{number}" * 64, "box": [0, 0, 9, 9]}])
    at = ("--gallery", str(gallery))
    assert run_cli(capsys, "gallery", "remove", "Obama", *at) == (
        1, "", f"error: not enrolled in {gallery}: Obama (did you mean Barack_Obama or Michelle_Obama?)\n")
    assert run_cli(capsys, "gallery", "rename", "grace_hoper", "Grace", *at) == (
        1, "", f"error: not enrolled in {gallery}: grace_hoper (did you mean Grace_Hopper?)\n")
    assert run_cli(capsys, "gallery", "photos", "ADA", *at) == (
        1, "", f"error: not enrolled in {gallery}: ADA (did you mean ada?)\n")
    assert run_cli(capsys, "gallery", "remove", "zed", *at) == (1, "", f"error: not enrolled in {gallery}: zed\n")
    with Gallery.open(gallery, dim=128) as opened:  # nothing removed or renamed on a guess
        assert [name for name, _ in opened.identities()] == ["Barack_Obama", "Grace_Hopper", "Michelle_Obama", "ada"]


def test_removing_a_person_whose_photos_are_still_there_warns_that_enroll_adds_them_again(tmp_path, people, capsys):
    """A user who removed someone to erase them saw their faces come back, silently, at the next enroll of the
    folder their photos were still in."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    folder = people / "grace_hopper"
    photos = sorted(folder.iterdir())
    code, out, err = run_cli(capsys, "gallery", "remove", "grace_hopper", "--gallery", gallery)
    assert (code, out) == (0, f"removed grace_hopper ({len(photos)} face{'s' if len(photos) > 1 else ''})\n")
    assert err == (f"warning: {len(photos)} photo{'s' if len(photos) > 1 else ''} grace_hopper was enrolled from "
                   f"{'are' if len(photos) > 1 else 'is'} still in {folder}: the next enroll of that folder adds them "
                   "again; delete or move them to keep them out\n")
    # Gone from the disk, nothing is said.
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    for photo in photos:
        photo.unlink()
    assert run_cli(capsys, "gallery", "remove", "grace_hopper", "--gallery", gallery)[2] == ""


def test_rename_onto_a_name_taken_asks_for_merge_and_then_says_it_merged(tmp_path, capsys):
    """The refusal spoke of Python's merge=True, and a merge was reported as a rename."""
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=128) as opened:
        for number, name in enumerate(["ada", "ada", "bob"]):
            opened.add(name, np.eye(1, 128, number, dtype=np.float32),
                       [{"path": f"{number}.jpg", "sha256": f"{number}" * 64, "box": [0, 0, 9, 9]}])
    assert run_cli(capsys, "gallery", "rename", "ada", "bob", "--gallery", str(gallery)) == (
        2, "", "error: identity 'bob' already exists: add --merge to merge ada's faces into it\n")
    assert run_cli(capsys, "gallery", "rename", "ada", "bob", "--merge", "--gallery", str(gallery)) == (
        0, "merged ada into bob (2 faces)\n", "")
    assert run_cli(capsys, "gallery", "list", "--json", "--gallery", str(gallery)) == (
        0, '{"identity": "bob", "faces": 3}\n', "")
    assert run_cli(capsys, "gallery", "rename", "bob", "cy", "--merge", "--gallery", str(gallery)) == (
        0, "renamed bob to cy\n", "")


def test_csv_text_cells_a_spreadsheet_would_run_as_formulas_are_quoted_and_numbers_are_not(
        tmp_path, capsys, monkeypatch, astronaut_bgr):
    """An identity renamed to =HYPERLINK(...) reached a spreadsheet as a formula. Names, paths and errors that start
    with = + - @ get a leading ' (OWASP; a tab or carriage return is escaped, \\t); a negative similarity stays a
    number."""
    import facekit

    embedding = facekit.face_embeddings(astronaut_bgr)[0][1]
    away = -embedding * (np.arange(embedding.size) % 2)  # half of the face's vector, reversed: similarity about -0.7
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=embedding.size) as opened:
        opened.add("=HYPERLINK(1)", away[None], [{"path": "@photo.jpg", "sha256": "1" * 64, "box": [0, 0, 9, 9]}])
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("+astronaut.jpg", astronaut_bgr)
    Path("=text.jpg").write_text("not a photo")
    code, out, _ = run_cli(capsys, "identify", "+astronaut.jpg", "=text.jpg", "--csv", "--threshold", "-1",
                           "--gallery", str(gallery))
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 1 and [(row["image"], row["identity"], row["error"]) for row in rows] == [
        ("'+astronaut.jpg", "'=HYPERLINK(1)", ""), ("'=text.jpg", "", "not an image: =text.jpg")]
    assert -0.9 < float(rows[0]["similarity"]) < -0.5
    code, out, _ = run_cli(capsys, "gallery", "list", "--csv", "--gallery", str(gallery))
    assert (code, out) == (0, "identity,faces\r\n'=HYPERLINK(1),1\r\n")
    code, out, _ = run_cli(capsys, "gallery", "photos", "--csv", "--gallery", str(gallery))
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert code == 0 and [(row["identity"], row["path"]) for row in rows] == [("'=HYPERLINK(1)", "'@photo.jpg")]


def test_csv_keeps_two_names_apart_that_the_formula_quote_made_one(tmp_path, capsys, monkeypatch, astronaut_bgr):
    """A name that starts with ' got no second one: "'@alex" (a name) and "@alex" (quoted) were both written '@alex,
    so that two people read back as one."""
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=128) as opened:
        for number, name in enumerate(["@alex", "'@alex", "'quoted'", "O'Brien"]):
            opened.add(name, np.eye(1, 128, number, dtype=np.float32),
                       [{"path": f"{number}.jpg", "sha256": f"{number}" * 64, "box": [0, 0, 9, 9]}])
    code, out, _ = run_cli(capsys, "gallery", "list", "--csv", "--gallery", str(gallery))
    cells = [row["identity"] for row in csv.DictReader(io.StringIO(out, newline=""))]
    assert code == 0 and cells == ["''@alex", "''quoted'", "'@alex", "O'Brien"]
    # The rule a reader undoes: one leading ' off a cell that starts with one.
    assert [cell[1:] if cell.startswith("'") else cell for cell in cells] == ["'@alex", "'quoted'", "@alex", "O'Brien"]


def test_identify_csv_gives_the_threshold_so_a_name_given_to_another_face_can_be_told(
        tmp_path, people, capsys, astronaut_bgr):
    """identify --csv had no threshold (JSON had): a face unnamed at 0.98 because its person was a more similar face
    of the same photo read as any unknown face."""
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    twice = tmp_path / "twice.jpg"
    cv2.imwrite(str(twice), np.hstack([astronaut_bgr, cv2.flip(astronaut_bgr, 1)]))
    code, out, _ = run_cli(capsys, "identify", str(twice), "--gallery", gallery, "--csv")
    rows = list(csv.DictReader(io.StringIO(out, newline="")))
    threshold = json.loads(run_cli(capsys, "identify", str(twice), "--gallery", gallery, "--json")[1])["threshold"]
    assert code == 0 and [float(row["threshold"]) for row in rows] == [threshold, threshold]
    assert sorted(row["identity"] for row in rows) == ["", "eileen_collins"]
    assert all(float(row["similarity"]) >= threshold for row in rows)  # the unnamed one too: its name was taken


def test_a_name_in_the_gallery_with_control_characters_is_spelled_out_in_every_line_printed(
        tmp_path, capsys, astronaut_bgr):
    """A gallery's database can be written by anyone who can write the file: an identity named with a terminal's
    escapes cleared the screen and set the window's title when `gallery list`, `gallery photos` or `identify`
    printed it, and a newline in it printed a second line that looked like another identity."""
    import facekit

    embedding = facekit.face_embeddings(astronaut_bgr)[0][1]
    away = -embedding * (np.arange(embedding.size) % 2)  # not the face: unknown at the default threshold
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=embedding.size) as opened:
        opened.add("ada", away[None], [{"path": "a.jpg", "sha256": "1" * 64, "box": [0, 0, 9, 9]}])
    with contextlib.closing(sqlite3.connect(gallery / "gallery.sqlite")) as db, db:
        db.execute("UPDATE identities SET name = ?", ("\x1b[2J\x1b]0;PWNED\x07normal\nfake",))
    shown = "\\x1b[2J\\x1b]0;PWNED\\x07normal\\nfake"
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    at = ["--gallery", str(gallery)]
    assert run_cli(capsys, "gallery", "list", *at) == (0, f"{shown}\n", "")
    assert run_cli(capsys, "gallery", "list", "--csv", *at) == (0, f"identity,faces\r\n{shown},1\r\n", "")
    code, out, _ = run_cli(capsys, "gallery", "photos", *at)
    assert code == 0 and re.fullmatch(rf"{re.escape(shown)}  \S+  1{{12}}  a\.jpg\n", out)
    code, out, _ = run_cli(capsys, "gallery", "photos", "--csv", *at)
    assert code == 0 and [row["identity"] for row in csv.DictReader(io.StringIO(out, newline=""))] == [shown]
    code, out, _ = run_cli(capsys, "identify", str(photo), *at, "--threshold", "-1")
    assert code == 0 and len(out.splitlines()) == 2 and f": {shown}  similarity " in out.splitlines()[1]
    code, out, _ = run_cli(capsys, "identify", str(photo), *at)
    assert code == 0 and len(out.splitlines()) == 2 and f": unknown (closest: {shown})  " in out.splitlines()[1]
    # Such a person can be renamed and removed by the name as stored (the CLI refused it as no identity's name).
    raw = "\x1b[2J\x1b]0;PWNED\x07normal\nfake"
    renamed, removed = (["--gallery", str(shutil.copytree(gallery, tmp_path / copy))] for copy in ("a", "b"))
    assert run_cli(capsys, "gallery", "rename", raw, "ada", *renamed) == (0, f"renamed {shown} to ada\n", "")
    assert run_cli(capsys, "gallery", "list", *renamed) == (0, "ada\n", "")
    assert run_cli(capsys, "gallery", "remove", raw, *removed) == (0, f"removed {shown} (1 face)\n", "")
    assert run_cli(capsys, "gallery", "remove-photo", "1" * 64, *at) == (0, f"removed a.jpg from {shown}\n", "")


def test_the_parser_loads_no_opencv_and_looks_the_version_up_only_for_version():
    """`facekit --help` and `facekit gallery list` waited for OpenCV and numpy, imported by facekit.detection for
    --detector's choices, and for importlib.metadata's look-up of a --version not asked for."""
    from importlib.metadata import version

    probe = ("import sys; from facekit.cli import build_parser; build_parser(); "
             "print(sorted({'cv2', 'facekit.detection', 'importlib.metadata'} & set(sys.modules)))")
    built = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert (built.returncode, built.stdout) == (0, "[]\n")
    asked = subprocess.run([sys.executable, "-m", "facekit", "--version"], capture_output=True, text=True, timeout=120)
    assert (asked.returncode, asked.stdout, asked.stderr) == (0, f"facekit {version('facekit')}\n", "")


def test_identify_without_annotate_does_not_load_the_drawing(tmp_path, capsys, monkeypatch, grace_hopper_path):
    """facekit.drawing (PIL's ImageDraw, a font) is for --annotate's copies alone."""
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    monkeypatch.setitem(sys.modules, "facekit.drawing", None)  # importing it now raises ImportError
    code, out, _ = run_cli(capsys, "identify", str(grace_hopper_path), "--gallery", str(gallery))
    assert code == 0 and ": 1 face" in out


def facekit_process(*args: str, **streams: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facekit", *args], text=True, timeout=300, **streams)


def test_output_a_script_cannot_take_ends_in_one_line_and_a_status_it_can_read(tmp_path):
    """Stdout to a full disk, or closed (`>&-`): the results went nowhere, and a script read exit 0 for the
    latter. The full disk's message now says that it was the output that could not be written."""
    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=4) as opened:
        opened.add("ada", np.eye(4, dtype=np.float32)[:1],
                   [{"path": "a.jpg", "sha256": "1" * 64, "box": [1, 2, 30, 40]}])
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        written = facekit_process("gallery", "list", "--gallery", str(gallery), stdout=full, stderr=subprocess.PIPE)
    assert (written.returncode, written.stderr) == (2, "error: cannot write the output: No space left on device\n")

    piped = subprocess.Popen([sys.executable, "-m", "facekit", "gallery", "list", "--gallery", str(gallery)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    piped.stdout.close()  # the reader has gone before the first line
    assert (piped.wait(timeout=300), piped.stderr.read()) == (0, "")
    piped.stderr.close()

    closed = facekit_process("gallery", "list", "--gallery", str(gallery), stderr=subprocess.PIPE,
                             preexec_fn=lambda: os.close(1))
    assert (closed.returncode, closed.stderr) == (
        2, "error: standard output is closed; send it to a file, or to /dev/null to discard it\n")


class OutputThatFailsWhenFlushed(io.StringIO):
    """Output that fails only as what is buffered is written: `| head -1` or a full disk met the last lines as
    Python exited, outside every handler (two lines of 'Exception ignored', exit 120)."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error, self.flushes = error, 0

    def flush(self) -> None:
        self.flushes += 1
        raise self.error


@pytest.mark.parametrize(("error", "expected"), [
    (BrokenPipeError(32, "Broken pipe"), (0, "")),
    (OSError(28, "No space left on device"), (2, "error: cannot write the output: No space left on device\n")),
])
def test_output_still_buffered_is_written_and_its_failure_told_before_exit(tmp_path, capsys, monkeypatch, error,
                                                                          expected):
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    output = OutputThatFailsWhenFlushed(error)
    monkeypatch.setattr(sys, "stdout", output)
    code = main(["gallery", "list", "--gallery", str(gallery)])
    assert output.flushes >= 1 and (code, capsys.readouterr().err) == expected


def test_a_log_that_cannot_be_written_stops_no_work(tmp_path, grace_hopper_path):
    """stderr on a full disk (2>/dev/full): the first warning or error line raised, so identify reported nothing
    after a photo it could not read, and exited 120."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    with open("/dev/full", "w") as full:
        result = facekit_process("identify", str(broken), str(grace_hopper_path), "--gallery", str(gallery),
                                 stdout=subprocess.PIPE, stderr=full)
    assert result.returncode == 1 and f"{grace_hopper_path}: 1 face" in result.stdout


def test_a_closed_stderr_stops_no_work_and_a_closed_stdout_stops_no_video(tmp_path, grace_hopper_path):
    """stderr closed (`2>&-`) is None in Python: the first warning or error line raised, so identify reported nothing
    and exited 1. stdout closed stops a command whose results are printed, but not the webcam, whose results are its
    video: it was refused too."""
    gallery = tmp_path / "gallery"
    Gallery.open(gallery).close()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    result = facekit_process("identify", str(broken), str(grace_hopper_path), "--gallery", str(gallery),
                             stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert result.returncode == 1 and f"{grace_hopper_path}: 1 face" in result.stdout
    missing = facekit_process("gallery", "list", "--gallery", str(tmp_path / "nowhere"), stdout=subprocess.PIPE,
                              preexec_fn=lambda: os.close(2))
    assert missing.returncode == 2
    # An error line holding a file name's byte that is not UTF-8 is written as a real stderr writes it.
    odd = tmp_path / os.fsdecode(b"bad\xe9.jpg")
    odd.write_bytes(b"not a picture")
    result = facekit_process("identify", str(odd), str(grace_hopper_path), "--gallery", str(gallery),
                             stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert result.returncode == 1 and f"{grace_hopper_path}: 1 face" in result.stdout

    clip, video = tmp_path / "clip.avi", tmp_path / "out.avi"
    frame = cv2.resize(cv2.imread(str(grace_hopper_path)), (320, 240))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for _ in range(3):
        writer.write(frame)
    writer.release()
    command = [sys.executable, "-m", "facekit.webcam", "--headless", "--source", str(clip), "--output", str(video),
               "--gallery", str(gallery)]
    webcam = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=lambda: os.close(1))
    assert webcam.returncode == 0, webcam.stderr
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) == 3


def test_verify_given_a_folder_is_a_usage_error(tmp_path, capsys, grace_hopper_path):
    """A folder is no photo: it exited 1, as a photo that failed does, where a path that is not there exits 2."""
    code, out, err = run_cli(capsys, "verify", str(tmp_path), str(grace_hopper_path))
    assert (code, out, err) == (2, "", f"error: not a file: {tmp_path} (verify compares two photos)\n")


@pytest.mark.usefixtures("copies_as_other_people")
def test_a_new_name_that_differs_from_an_enrolled_one_in_case_only_is_warned_of(tmp_path, capsys, people,
                                                                                 grace_hopper_bgr):
    gallery = str(tmp_path / "gallery")
    assert run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    more = tmp_path / "more" / "Grace_Hopper"
    more.mkdir(parents=True)
    cv2.imwrite(str(more / "c.jpg"), variant(grace_hopper_bgr, 5))
    code, out, err = run_cli(capsys, "enroll", str(tmp_path / "more"), "--gallery", gallery, "--quiet")
    assert code == 0 and "1 face enrolled" in out
    assert ("warning: 'Grace_Hopper' is enrolled as a new person, while 'grace_hopper' is enrolled too: if they "
            "are one person, `facekit gallery rename 'Grace_Hopper' 'grace_hopper' --merge` joins them") in err
    # Not where no face was added (an enrolled photo's copy), nor where a folder's case was put right with --sync:
    # its faces move, and no other spelling is left.
    again = tmp_path / "again" / "EILEEN_COLLINS"
    again.mkdir(parents=True)
    (again / "a.jpg").write_bytes((people / "eileen_collins" / "a.jpg").read_bytes())
    code, out, err = run_cli(capsys, "enroll", str(tmp_path / "again"), "--gallery", gallery, "--quiet")
    assert code == 0 and "0 faces enrolled" in out and "enrolled as a new person" not in err
    (people / "eileen_collins").rename(people / "Eileen_Collins")
    code, out, err = run_cli(capsys, "enroll", str(people), "--gallery", gallery, "--quiet", "--sync")
    assert code == 0 and "enrolled as a new person" not in err
    assert run_cli(capsys, "gallery", "list", "--gallery", gallery)[1].splitlines() == [
        "Eileen_Collins", "Grace_Hopper", "grace_hopper"]


def test_a_ctrl_c_during_gallery_remove_is_held_until_the_removal_is_whole(tmp_path, people, capsys, monkeypatch):
    """Ctrl-C during `gallery remove` committed the removal, said only "interrupted", and left the removed faces'
    vectors in the index files until the next writer's open."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is ignored or handled here (the tests were started in the background)")
    gallery = tmp_path / "gallery"
    assert run_cli(capsys, "enroll", str(people), "--gallery", str(gallery), "--quiet")[0] == 0
    remove = Gallery.remove

    def interrupted(self, name):
        os.kill(os.getpid(), signal.SIGINT)  # as the removal starts
        return remove(self, name)

    monkeypatch.setattr(Gallery, "remove", interrupted)
    code, out, err = run_cli(capsys, "gallery", "remove", "grace_hopper", "--gallery", str(gallery))
    assert code == 130 and out.startswith("removed grace_hopper (") and err.endswith(f"{INTERRUPTED}\n")
    monkeypatch.undo()
    # Whole: the index holds no removed face, which opening would have repaired and `check` reported.
    code, out, err = run_cli(capsys, "gallery", "check", "--gallery", str(gallery))
    assert (code, err) == (0, "") and out.endswith(" faces, index and database agree\n")
