"""The tiny Python API (detect_faces, face_embeddings, compare, verify, enroll, add_face, identify), bundled photos."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

import facekit
from facekit.datastore import Gallery


def test_embeddings_of_colour_grey_and_file_inputs_agree(astronaut_bgr, grace_hopper_path):
    faces = facekit.face_embeddings(astronaut_bgr)
    assert len(faces) == 1 and faces[0][1].shape == (512,)
    # A grey array is detected in and aligned as a grey photo; it is still the same woman.
    grey = facekit.face_embeddings(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY))
    assert len(grey) == 1 and facekit.compare(faces[0][1], grey[0][1]) > 0.8
    from_file = facekit.face_embeddings(grace_hopper_path)
    assert len(from_file) == 1 and facekit.compare(faces[0][1], from_file[0][1]) < 0.5
    assert [face.box for face in facekit.detect_faces(astronaut_bgr)] == [faces[0][0].box]


def test_verify_and_identify(tmp_path, astronaut_bgr, grace_hopper_bgr):
    mirrored = np.ascontiguousarray(astronaut_bgr[:, ::-1])
    assert facekit.verify(astronaut_bgr, mirrored)["same"] is True
    assert facekit.verify(astronaut_bgr, grace_hopper_bgr)["same"] is False
    with pytest.raises(ValueError, match="no face"):
        facekit.verify(astronaut_bgr, np.full((200, 200, 3), 127, np.uint8))
    with Gallery.open(tmp_path / "gallery", dim=512) as gallery:
        gallery.bind_model(facekit.pipeline().embedder.model_id)
        gallery.add("eileen_collins", facekit.face_embeddings(astronaut_bgr)[0][1][None],
                    [{"path": "astronaut.png", "sha256": "0" * 64, "box": [0, 0, 1, 1]}])
        found = facekit.identify(mirrored, gallery)
        assert [face["identity"] for face in found] == ["eileen_collins"]
        assert [face["identity"] for face in facekit.identify(grace_hopper_bgr, gallery)] == [None]


def test_a_face_with_unusable_landmarks_is_dropped_not_embedded(astronaut_bgr):
    """A caller's own detector may give collapsed or NaN points; the pipeline skips that face, keeps the rest."""
    from facekit.detection import Face

    real = facekit.pipeline().detector

    class SloppyDetector:
        min_face = None

        def detect(self, image):
            faces = real.detect(image)
            return faces + [Face((10, 10, 50, 50), 0.9, np.full((5, 2), 30.0, np.float32)),
                            Face((70, 10, 50, 50), 0.9, np.full((5, 2), np.nan, np.float32))]

    pipeline = facekit.FacePipeline(detector=SloppyDetector(), embedder=facekit.pipeline().embedder)
    found = pipeline.analyze(astronaut_bgr)
    assert len(found) == 1 and found[0].face.box == real.detect(astronaut_bgr)[0].box
    assert np.isfinite(found[0].embedding).all()


def test_enroll_and_add_face_then_identify(tmp_path, astronaut_bgr, grace_hopper_path, grace_hopper_bgr):
    people = tmp_path / "people" / "eileen_collins"
    people.mkdir(parents=True)
    cv2.imwrite(str(people / "a.png"), astronaut_bgr)
    (people / "notes.txt").write_text("not a photo")
    with Gallery.open(tmp_path / "gallery", dim=512) as gallery:
        report = facekit.enroll(tmp_path / "people", gallery)
        assert (report.enrolled, [reason for _, reason in report.skipped]) == (1, ["not an image file name"])
        face_id = facekit.add_face(gallery, "grace_hopper", grace_hopper_path)
        [photo] = gallery.photos("grace_hopper")
        assert (photo["path"], photo["sha256"]) == (str(grace_hopper_path),
                                                    hashlib.sha256(grace_hopper_path.read_bytes()).hexdigest())
        assert facekit.enroll(tmp_path / "people", gallery).already_enrolled == 1
        with pytest.raises(ValueError, match="no face"):
            facekit.add_face(gallery, "nobody", np.full((200, 200, 3), 127, np.uint8))
        assert [face["identity"] for face in facekit.identify(cv2.flip(grace_hopper_bgr, 1), gallery)] == [
            "grace_hopper"]
        assert isinstance(face_id, int) and len(gallery) == 2
    # The model was recorded on the first write: another model's embeddings are refused.
    with Gallery.open(tmp_path / "gallery") as gallery, pytest.raises(facekit.GalleryError, match="another model"):
        gallery.bind_model("0" * 64)


def test_add_face_and_enroll_refuse_bad_input_and_store_nothing(tmp_path, astronaut_bgr):
    (tmp_path / "not_an_image.jpg").write_text("hello")
    with Gallery.open(tmp_path / "gallery") as gallery:
        with pytest.raises(facekit.ImageError, match="file not found"):
            facekit.add_face(gallery, "eileen_collins", tmp_path / "missing.jpg")
        with pytest.raises(facekit.ImageError, match="not an image"):
            facekit.add_face(gallery, "eileen_collins", tmp_path / "not_an_image.jpg")
        with pytest.raises(facekit.ImageError, match="not a file"):
            facekit.add_face(gallery, "eileen_collins", tmp_path)
        for bad_name in ("", "a/b", "a\x1b[2Jb"):
            with pytest.raises(facekit.GalleryError, match="identity name"):
                facekit.add_face(gallery, bad_name, astronaut_bgr)
        with pytest.raises(FileNotFoundError, match="folder not found"):
            facekit.enroll(tmp_path / "no_people", gallery)
        assert len(gallery) == 0 and gallery.check() == []
        # A grey photo is enrolled as what it is.
        facekit.add_face(gallery, "eileen_collins", cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY))
        assert [name for name, _ in gallery.identities()] == ["eileen_collins"]


def test_add_face_and_enroll_leave_a_gallery_of_another_size_to_its_own_model(tmp_path, astronaut_bgr):
    """An empty gallery made for a 128-d model: a failed add must not record the shipped model as its own, or the
    model it was made for would be refused from then on."""
    people = tmp_path / "people" / "eileen_collins"
    people.mkdir(parents=True)
    cv2.imwrite(str(people / "a.png"), astronaut_bgr)
    with Gallery.open(tmp_path / "small", dim=128) as gallery:
        with pytest.raises(facekit.GalleryError, match="128"):
            facekit.add_face(gallery, "eileen_collins", astronaut_bgr)
        with pytest.raises(facekit.GalleryError, match="128"):
            facekit.enroll(tmp_path / "people", gallery)
        with gallery.writer():
            gallery.bind_model("f" * 64)  # its own model's fingerprint: still welcome
        assert len(gallery) == 0


def test_add_face_records_a_file_by_absolute_path_and_a_symlink_as_named(tmp_path, monkeypatch, grace_hopper_path):
    (tmp_path / "link.jpg").symlink_to(grace_hopper_path)
    monkeypatch.chdir(tmp_path)
    with Gallery.open(tmp_path / "gallery") as gallery:
        facekit.add_face(gallery, "grace_hopper", "link.jpg")
        assert [photo["path"] for photo in gallery.photos()] == [str(tmp_path / "link.jpg")]


def test_add_face_skips_a_photo_enrolled_already_and_refuses_one_enrolled_as_someone_else(tmp_path,
                                                                                           grace_hopper_path):
    """As enroll does: the same photo twice would only weigh more, and one face under two names would make
    identify's answer a coin toss."""
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(grace_hopper_path.read_bytes())
    with Gallery.open(tmp_path / "gallery") as gallery:
        first = facekit.add_face(gallery, "grace_hopper", grace_hopper_path)
        assert facekit.add_face(gallery, "grace_hopper", copy) == first
        assert gallery.identities() == [("grace_hopper", 1)]
        with pytest.raises(ValueError, match=r"^.*copy.jpg: the same photo is enrolled as grace_hopper; not added to "
                                             r"ada \(gallery.remove_photos takes it out of the gallery\)$"):
            facekit.add_face(gallery, "ada", copy)
        assert gallery.identities() == [("grace_hopper", 1)]
        gallery.remove_photos(hashlib.sha256(copy.read_bytes()).hexdigest())
        facekit.add_face(gallery, "ada", copy)
        assert gallery.identities() == [("ada", 1)]


def test_something_that_is_no_image_says_what_an_image_is(astronaut_bgr):
    with pytest.raises(TypeError, match=r"^an image is a BGR uint8 array or a file's path, not list; pass the images"):
        facekit.face_embeddings([astronaut_bgr, astronaut_bgr])
    with pytest.raises(TypeError, match=r"^an image is a BGR uint8 array or a file's path, not NoneType$"):
        facekit.detect_faces(None)


def test_identify_without_a_gallery_finds_every_face_unknown(astronaut_bgr):
    faces = facekit.identify(astronaut_bgr, None)
    assert len(faces) == 1 and faces[0]["identity"] is None and faces[0]["candidates"] == []
