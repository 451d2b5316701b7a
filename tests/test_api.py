"""The tiny Python API (detect_faces, face_embeddings, compare, verify, enroll, add_face, identify), bundled photos."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

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
        with gallery.writer():  # a writer records the model, which every later search then checks
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
        assert json.loads(json.dumps(dataclasses.asdict(report)))["people"] == ["eileen_collins"]  # plain data
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
    with pytest.raises(TypeError, match=r"^an image is a BGR uint8 array, a PIL image, a file's path or its bytes, "
                                        r"not list; pass the images one at a time"):
        facekit.face_embeddings([astronaut_bgr, astronaut_bgr])
    with pytest.raises(TypeError, match=r"^an image is a BGR uint8 array, a PIL image, a file's path or its bytes, "
                                        r"not NoneType$"):
        facekit.detect_faces(None)


def test_identify_without_a_gallery_finds_every_face_unknown_with_no_similarity(tmp_path, astronaut_bgr):
    """0.0 would read as a real cosine: with no candidate at all the similarity is None."""
    faces = facekit.identify(astronaut_bgr, None)
    assert len(faces) == 1 and faces[0]["identity"] is None and faces[0]["candidates"] == []
    assert faces[0]["similarity"] is None and faces[0]["threshold"] == facekit.pipeline().identify_threshold_for(0)
    with Gallery.open(tmp_path / "gallery") as empty:
        assert [face["similarity"] for face in facekit.identify(astronaut_bgr, empty)] == [None]
    json.dumps(faces)


def test_identify_gives_each_face_the_threshold_it_was_decided_by(tmp_path, astronaut_bgr, grace_hopper_bgr):
    with Gallery.open(tmp_path / "gallery") as gallery:
        facekit.add_face(gallery, "eileen_collins", astronaut_bgr)
        [face] = facekit.identify(grace_hopper_bgr, gallery)
        assert face["identity"] is None and face["similarity"] == face["candidates"][0]["similarity"] < 0.5
        assert face["threshold"] == facekit.pipeline().identify_threshold_for(1)
        [face] = facekit.identify(grace_hopper_bgr, gallery, threshold=-1.0, top_k=1)
        assert (face["identity"], len(face["candidates"]), face["threshold"]) == ("eileen_collins", 1, -1.0)
        assert isinstance(face["similarity"], float)


def test_a_pil_image_is_taken_by_its_mode(tmp_path, shared_data, astronaut_bgr):
    """A PIL image says its channel order, so it needs no reversing; an RGB array taken for BGR matches worse."""
    rgb = astronaut_bgr[:, :, ::-1]
    expected = facekit.face_embeddings(astronaut_bgr)[0][1]
    for image in (Image.fromarray(rgb), Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))):
        [(face, embedding)] = facekit.face_embeddings(image)
        assert np.array_equal(embedding, expected) and facekit.detect_faces(image)[0].box == face.box
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    assert facekit.compare(facekit.face_embeddings(Image.fromarray(grey))[0][1],
                           facekit.face_embeddings(grey)[0][1]) > 0.999
    # The README's remedy for an RGB array: reverse its channels.
    assert np.array_equal(facekit.face_embeddings(np.ascontiguousarray(rgb[..., ::-1]))[0][1], expected)
    lfw = shared_data / "lfw" / "images" / "Colin_Powell"
    a, b = lfw / "Colin_Powell_0040.jpg", lfw / "Colin_Powell_0049.jpg"
    with Image.open(a) as image_a, Image.open(b) as image_b:
        assert facekit.verify(image_a, image_b) == facekit.verify(a, b)
        with Gallery.open(tmp_path / "gallery") as gallery:
            face_id = facekit.add_face(gallery, "colin_powell", image_a)
            # Hashed as its BGR pixels, so the same photo as a BGR array is the same photo.
            assert facekit.add_face(gallery, "colin_powell", facekit.load_image(a)) == face_id


def test_an_encoded_file_s_bytes_are_an_image(tmp_path, grace_hopper_path):
    data = grace_hopper_path.read_bytes()
    expected = facekit.face_embeddings(grace_hopper_path)[0][1]
    for image in (data, bytearray(data), memoryview(data)):
        assert np.array_equal(facekit.face_embeddings(image)[0][1], expected)
    with pytest.raises(facekit.ImageError, match=r"^not an image: the second image$"):
        facekit.verify(data, b"hello")
    with Gallery.open(tmp_path / "gallery") as gallery:
        face_id = facekit.add_face(gallery, "grace_hopper", data)
        [photo] = gallery.photos()
        assert (photo["path"], photo["sha256"]) == ("<bytes>", hashlib.sha256(data).hexdigest())
        # Its file is the same photo.
        assert facekit.add_face(gallery, "grace_hopper", grace_hopper_path) == face_id


def test_compare_gives_a_similarity_one_against_many_and_refuses_what_is_no_embedding(astronaut_bgr,
                                                                                    grace_hopper_path):
    eileen = facekit.face_embeddings(astronaut_bgr)[0][1]
    grace = facekit.face_embeddings(grace_hopper_path)[0][1]
    known = np.stack([eileen, grace])
    for similarities in (facekit.compare(known, eileen), facekit.compare(eileen, known)):
        assert similarities.shape == (2,)
        assert np.allclose(similarities, [facekit.compare(eileen, eileen), facekit.compare(grace, eileen)], atol=1e-6)
    assert facekit.compare(known[:0], eileen).shape == (0,)
    with pytest.raises(ValueError, match=r"^compare takes two embeddings of one size .*not shapes \(512,\) and "
                                         r"\(10,\)$"):
        facekit.compare(eileen, eileen[:10])
    with pytest.raises(ValueError, match=r"not shapes \(2, 512\) and \(2, 512\)$"):
        facekit.compare(known, known)
    with pytest.raises(ValueError, match=r"^compare takes unit-length embeddings, .*; one has norm 3$"):
        facekit.compare(eileen * 3, eileen * 3)
    with pytest.raises(ValueError, match=r"one has norm 0$"):
        facekit.compare(np.vstack([eileen, np.zeros(512, np.float32)]), grace)


def test_verify_says_which_image_has_no_face_and_how_to_convert_a_float_one(astronaut_bgr, grace_hopper_path):
    blank = np.full((200, 200, 3), 127, np.uint8)
    with pytest.raises(ValueError, match=r"^no face found in the second image$"):
        facekit.verify(astronaut_bgr, blank)
    with pytest.raises(ValueError, match=r"^no face found in the first image$"):
        facekit.verify(blank, grace_hopper_path)
    with pytest.raises(ValueError, match=r"^the first image is a float64 array, not uint8: "
                                         r"\(img \* 255\).astype\(np.uint8\) converts one in \[0, 1\]"):
        facekit.verify(astronaut_bgr / 255.0, grace_hopper_path)
    with pytest.raises(ValueError, match=r"^the image is a int64 array, not uint8: img.astype\(np.uint8\)"):
        facekit.face_embeddings(astronaut_bgr.astype(np.int64))


def test_a_gallery_path_is_refused_with_how_to_open_it(tmp_path, astronaut_bgr):
    path = str(tmp_path / "gallery")
    expected = "^" + re.escape(f"a gallery is a facekit.Gallery, not str: pass facekit.Gallery.open({path!r})") + "$"
    with pytest.raises(TypeError, match=expected):
        facekit.identify(astronaut_bgr, path)
    with pytest.raises(TypeError, match=expected):
        facekit.add_face(path, "eileen_collins", astronaut_bgr)
    with pytest.raises(TypeError, match=expected):
        facekit.enroll(tmp_path, path)
    assert not (tmp_path / "gallery").exists()


def test_writing_to_a_closed_gallery_says_it_is_closed(tmp_path, astronaut_bgr, grace_hopper_path):
    with Gallery.open(tmp_path / "gallery") as gallery:
        facekit.add_face(gallery, "eileen_collins", astronaut_bgr)
    for write in (lambda: facekit.add_face(gallery, "grace_hopper", grace_hopper_path),
                  lambda: gallery.add("grace_hopper", facekit.face_embeddings(grace_hopper_path)[0][1][None],
                                      [{"path": "g.jpg", "sha256": "0" * 64, "box": [0, 0, 1, 1]}]),
                  lambda: gallery.remove("eileen_collins"), lambda: gallery.rename("eileen_collins", "eileen"),
                  lambda: facekit.identify(astronaut_bgr, gallery)):
        with pytest.raises(facekit.GalleryError, match=r"^the gallery is closed$"):
            write()


def test_many_photos_are_embedded_through_load_many_as_the_readme_says(grace_hopper_path, tmp_path):
    """The README's way to embed many photos: load_many reads and detects one photo ahead of the embedding."""
    pipeline = facekit.pipeline()
    paths = [grace_hopper_path, tmp_path / "missing.jpg", grace_hopper_path]
    found = [(item.error, pipeline.embed_faces(item.image, item.faces)) if not item.error else (item.error, None)
             for item in pipeline.load_many(paths)]
    assert [error is None for error, _ in found] == [True, False, True]
    assert np.array_equal(found[0][1][0], facekit.face_embeddings(grace_hopper_path)[0][1])


def test_verify_and_add_face_warn_when_an_image_holds_several_faces(tmp_path, astronaut_bgr, grace_hopper_bgr):
    # The CLI's verify and enroll say that a group photo's largest face was taken; the API took it without a word.
    height = astronaut_bgr.shape[0]
    grace = cv2.resize(grace_hopper_bgr, (round(grace_hopper_bgr.shape[1] * height / grace_hopper_bgr.shape[0]),
                                          height))
    group = np.hstack([astronaut_bgr, grace])
    with pytest.warns(facekit.FacekitWarning, match="the first image: 2 faces, used the largest"):
        facekit.verify(group, astronaut_bgr)
    with Gallery.open(tmp_path / "gallery", dim=facekit.pipeline().embedder.dim) as gallery:
        with pytest.warns(facekit.FacekitWarning, match="the image: 2 faces, used the largest"):
            facekit.add_face(gallery, "astronaut", group)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        facekit.verify(astronaut_bgr, astronaut_bgr)


def test_a_four_channel_array_is_refused_with_how_to_drop_its_alpha(astronaut_bgr):
    rgb = astronaut_bgr[:, :, ::-1]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])  # np.asarray of an RGBA PNG opened with PIL
    with pytest.raises(ValueError, match=r"^expected an HxWx3 BGR image, got shape \(512, 512, 4\); drop the alpha "
                                         r"channel \(arr\[\.\.\., :3\] of BGRA, arr\[\.\.\., 2::-1\] of RGBA"):
        facekit.face_embeddings(rgba)
    expected = facekit.face_embeddings(astronaut_bgr)[0][1]
    assert np.array_equal(facekit.face_embeddings(rgba[..., 2::-1])[0][1], expected)  # the hint's remedy works
    assert np.array_equal(facekit.face_embeddings(Image.fromarray(rgba))[0][1], expected)


def test_verify_and_identify_refuse_a_threshold_or_top_k_the_cli_refuses(tmp_path, astronaut_bgr):
    for threshold in (55, 1.5, -1.01, float("nan")):
        with pytest.raises(ValueError, match=rf"^threshold is a cosine similarity, between -1 and 1, not {threshold}$"):
            facekit.verify(astronaut_bgr, astronaut_bgr, threshold=threshold)
        with pytest.raises(ValueError, match=rf"^threshold is a cosine similarity, between -1 and 1, not {threshold}$"):
            facekit.identify(astronaut_bgr, None, threshold=threshold)
    for top_k in (0, -1):
        with pytest.raises(ValueError, match=r"^top_k must be at least 1$"):
            facekit.identify(astronaut_bgr, None, top_k=top_k)
    # Of the wrong type, each is one line naming it, not a comparison's or a slice's own complaint.
    for threshold, given in (("0.5", "str"), (True, "bool")):
        with pytest.raises(TypeError, match=rf"^threshold is a cosine similarity, a number between -1 and 1, not "
                                            rf"{given}$"):
            facekit.verify(astronaut_bgr, astronaut_bgr, threshold=threshold)
    for top_k, given in ((2.5, "float"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"^top_k is a number of candidates, an integer, not {given}$"):
            facekit.identify(astronaut_bgr, None, top_k=top_k)
    # numpy's numbers are numbers: a search takes them, and the results stay JSON (np.float32 made same a np.bool_,
    # and the gallery refused np.int64 as k).
    with facekit.Gallery.open(tmp_path / "gallery", dim=facekit.pipeline().embedder.dim) as gallery:
        facekit.add_face(gallery, "eileen", astronaut_bgr)
        results = facekit.identify(astronaut_bgr, gallery, threshold=np.float32(0.5), top_k=np.int64(2))
    assert results[0]["identity"] == "eileen" and json.loads(json.dumps(results))[0]["threshold"] == 0.5
    assert json.dumps(facekit.verify(astronaut_bgr, astronaut_bgr, threshold=np.float32(0.5)))
    assert facekit.verify(astronaut_bgr, astronaut_bgr, threshold=1.0)["threshold"] == 1.0
    # The module docstring's compare_faces: compare against the pipeline's threshold, as verify decides.
    mirrored = np.ascontiguousarray(astronaut_bgr[:, ::-1])
    result = facekit.verify(astronaut_bgr, mirrored)
    same = facekit.compare(facekit.face_embeddings(astronaut_bgr)[0][1],
                           facekit.face_embeddings(mirrored)[0][1]) >= facekit.pipeline().threshold
    assert result["same"] is True and same == result["same"] and result["threshold"] == facekit.pipeline().threshold


def test_help_on_face_gives_the_box_format_and_the_landmark_order_the_detector_gives(astronaut_bgr):
    doc = " ".join(facekit.Face.__doc__.split())  # as help() shows it, less its line breaks
    assert "(x, y, width, height) in pixels of the image given" in doc
    assert "left eye, right eye (left and right as seen in the image), nose, left and right mouth corner" in doc
    [face] = facekit.detect_faces(astronaut_bgr)
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    x, y, width, height = face.box
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert all(x < px < x + width and y < py < y + height for px, py in face.landmarks)
    assert 0 <= face.score <= 1


def test_face_embeddings_of_faces_given_embed_those_as_detected_ones_are(astronaut_bgr, grace_hopper_bgr):
    """face_recognition's face_encodings(image, known_face_locations): detect once, keep some, embed those; or bring
    another detector's five points as a Face."""
    [(detected, embedding)] = facekit.face_embeddings(astronaut_bgr)
    [(given, again)] = facekit.face_embeddings(astronaut_bgr, facekit.detect_faces(astronaut_bgr))
    assert given.box == detected.box and np.allclose(again, embedding, atol=1e-6)
    own = facekit.Face(box=(0.0, 0.0, 1.0, 1.0), score=1.0, landmarks=detected.landmarks + 0.5)  # another detector's
    [(_, own_embedding)] = facekit.face_embeddings(astronaut_bgr, [own])
    assert facekit.compare(own_embedding, embedding) > 0.95  # half a pixel off: the same face
    other = facekit.face_embeddings(grace_hopper_bgr)[0][1]
    assert facekit.compare(own_embedding, other) < 0.5
    assert facekit.face_embeddings(astronaut_bgr, []) == []
    with pytest.raises(TypeError, match=r"^faces must be facekit\.Face objects .* not tuple$"):
        facekit.face_embeddings(astronaut_bgr, [detected.box])
    flat = facekit.Face(box=detected.box, score=1.0, landmarks=np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match=r"^landmarks lie within 2 px of each other$"):
        facekit.face_embeddings(astronaut_bgr, [flat])
    # A face of another image, off this one: its crop would be this image's edge pixels repeated, embedded silently.
    away = facekit.Face(box=detected.box, score=1.0, landmarks=detected.landmarks + 5000)
    with pytest.raises(ValueError, match=r"^a face's landmarks lie outside the 512x512 image \(centred at "):
        facekit.face_embeddings(astronaut_bgr, [away])
    with pytest.raises(TypeError, match=r"^faces is a list of Faces: pass \[face\] for one$"):
        facekit.face_embeddings(astronaut_bgr, detected)
    assert len(facekit.face_embeddings(astronaut_bgr, (face for face in [detected]))) == 1  # any iterable


def test_embedding_writes_nothing_to_the_home_folder(tmp_path, grace_hopper_path):
    # ONNX Runtime's telemetry, on unless ORT_DISABLE_TELEMETRY is set before its import, wrote a device id under
    # ~/.cache/Microsoft and, some seconds later, looked up Microsoft's event server: the README promises no
    # network connection. The id file is the trace a test can see without a network.
    env = {name: value for name, value in os.environ.items() if name not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    code = "import sys, facekit; assert len(facekit.face_embeddings(sys.argv[1])) == 1"
    subprocess.run([sys.executable, "-c", code, str(grace_hopper_path)], env=env, check=True, timeout=300)
    assert sorted(tmp_path.rglob("*")) == []


def test_a_16_bit_array_is_refused_with_a_conversion_that_keeps_its_picture(astronaut_bgr):
    # img.astype(np.uint8), the advice once given, keeps the low byte of each 16-bit value: noise without a face.
    sixteen_bit = astronaut_bgr.astype(np.uint16) * 257  # as a 16-bit PNG or camera raw holds the photo
    with pytest.raises(ValueError, match=r"^the image is a uint16 array, not uint8: \(img // 257\)\.astype\(np\."
                                         r"uint8\) converts 16-bit samples \(0 to 65535\); img\.astype\(np\.uint8\) "
                                         r"only one whose values are already 0 to 255$"):
        facekit.face_embeddings(sixteen_bit)
    assert np.array_equal((sixteen_bit // 257).astype(np.uint8), astronaut_bgr)  # the advice gives the photo back
    with pytest.raises(ValueError, match=r"^the image is a int32 array, not uint8: img\.astype\(np\.uint8\) converts "
                                         r"one whose values are already 0 to 255"):
        facekit.face_embeddings(astronaut_bgr.astype(np.int32))


def test_every_function_that_finds_faces_takes_a_pipeline_of_one_s_own(tmp_path, astronaut_bgr, small_face_photo):
    default = facekit.pipeline()
    # The README's FacePipeline(min_face=PX): a face too small for the default search is found.
    small_faces = facekit.FacePipeline(min_face=40, embedder=default.embedder)
    assert facekit.detect_faces(small_face_photo) == [] and facekit.identify(small_face_photo, None) == []
    assert len(facekit.detect_faces(small_face_photo, pipeline=small_faces)) == 1
    assert [face["identity"] for face in facekit.identify(small_face_photo, None, pipeline=small_faces)] == [None]

    class CountingDetector:  # the default's detector, counting the images it is given
        min_face = None
        images = 0

        def detect(self, image):
            self.images += 1
            return default.detector.detect(image)

    detector = CountingDetector()
    own = facekit.FacePipeline(detector=detector, embedder=default.embedder)
    people = tmp_path / "people" / "eileen_collins"
    people.mkdir(parents=True)
    cv2.imwrite(str(people / "a.png"), astronaut_bgr)
    with Gallery.open(tmp_path / "gallery") as gallery:
        for call in (lambda: facekit.face_embeddings(astronaut_bgr, pipeline=own),
                     lambda: facekit.verify(astronaut_bgr, astronaut_bgr, pipeline=own),
                     lambda: facekit.enroll(tmp_path / "people", gallery, pipeline=own),
                     lambda: facekit.add_face(gallery, "eileen_collins", astronaut_bgr[:, ::-1], pipeline=own),
                     lambda: facekit.identify(astronaut_bgr, gallery, pipeline=own)):
            before = detector.images
            call()
            assert detector.images > before
        assert len(gallery) == 2
    with pytest.raises(TypeError):  # keyword-only: a positional one would be taken for top_k's neighbour
        facekit.identify(astronaut_bgr, None, None, 3, own)


def test_faces_compare_by_value_so_a_copy_is_found_in_a_list():
    import copy
    import pickle

    face = facekit.Face((10.0, 20.0, 30.0, 40.0), 0.99, np.arange(10, dtype=np.float32).reshape(5, 2))
    copied = copy.deepcopy(face)
    assert face == copied and copied in [face] and [face].index(copied) == 0
    assert pickle.loads(pickle.dumps(face)) == face
    for other in (dataclasses.replace(face, landmarks=face.landmarks + 1), dataclasses.replace(face, score=0.5),
                  dataclasses.replace(face, box=(11.0, 20.0, 30.0, 40.0))):
        assert face != other and other not in [face]
    assert face != face.box and face not in [None, "face"]


def test_a_pil_image_whose_pixels_cannot_be_read_is_an_image_error(tmp_path, astronaut_bgr):
    path = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut_bgr)
    with Image.open(path) as closed_by_pillow:
        pass
    with open(path, "rb") as file:
        closed_by_its_file = Image.open(file)
    for image in (closed_by_pillow, closed_by_its_file):
        with pytest.raises(facekit.ImageError, match=r"^the PIL image's file was closed before its pixels were "
                                                     r"read: call image\.load\(\) before closing it, or pass the "
                                                     r"file's path$"):
            facekit.face_embeddings(image)
    truncated = path.read_bytes()[:len(path.read_bytes()) // 2]
    with pytest.raises(facekit.ImageError, match=r"^corrupt or truncated image: the PIL image \(image file is "
                                                 r"truncated"):
        facekit.face_embeddings(Image.open(io.BytesIO(truncated)))
    with pytest.raises(facekit.ImageError, match=r"^corrupt or truncated image: the image "):  # its bytes, as before
        facekit.face_embeddings(truncated)
    with Image.open(path) as loaded:
        loaded.load()
    assert len(facekit.face_embeddings(loaded)) == 1


def test_add_face_documents_the_gallery_error_of_a_bad_name(tmp_path, astronaut_bgr):
    from pathlib import Path

    assert "An identity that is no usable name" in facekit.add_face.__doc__
    assert "is a facekit.GalleryError, not a ValueError" in " ".join(facekit.add_face.__doc__.split())
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert "`add_face` raises `facekit.GalleryError` (a `RuntimeError`, not a `ValueError`) for an identity" in readme
    with Gallery.open(tmp_path / "gallery") as gallery, pytest.raises(facekit.GalleryError):
        facekit.add_face(gallery, "a/b", astronaut_bgr)


def test_the_package_is_typed_and_lists_its_lazy_names():
    from pathlib import Path

    root = Path(facekit.__file__).parent
    assert (root / "py.typed").is_file()
    package_data = re.search(r"(?m)^\[tool\.setuptools\.package-data\]\n(?:#.*\n)*facekit = \[(.*)\]$",
                             (root.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert package_data and '"py.typed"' in package_data.group(1)
    assert set(facekit.__all__) <= set(dir(facekit))
    get_overloads = getattr(__import__("typing"), "get_overloads", None)
    if get_overloads is not None:  # Python 3.11 and later
        returns = [overload.__annotations__["return"] for overload in get_overloads(facekit.compare)]
        assert returns[0] == "float" and "float" not in returns[1:3]


def test_a_grey_array_with_a_channel_axis_is_grey(astronaut_bgr):
    grey = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    [(face, embedding)] = facekit.face_embeddings(grey)
    [(face_hw1, embedding_hw1)] = facekit.face_embeddings(grey[:, :, None])
    assert face_hw1 == face and np.array_equal(embedding_hw1, embedding)
    assert facekit.verify(grey[:, :, None], astronaut_bgr)["same"] is True


def test_load_many_refuses_one_path_with_how_to_pass_it(grace_hopper_path):
    # A str is iterable: each of its characters was read as a path ("file not found: w").
    for one in (str(grace_hopper_path), grace_hopper_path):
        with pytest.raises(TypeError, match=r"^load_many takes a list of paths, not one \w+: pass \[path\]"):
            next(facekit.pipeline().load_many(one))


def test_the_aligned_crop_is_public_and_is_what_the_model_embeds(astronaut_bgr):
    """deepface's extract_faces has no counterpart one could find: the crop lay in facekit.alignment, not exported."""
    [(face, embedding)] = facekit.face_embeddings(astronaut_bgr)
    crop = facekit.align_face(astronaut_bgr, face.landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    pipeline = facekit.pipeline()
    again = pipeline.embedder.embed(crop[None], flip=pipeline.flip)[0]
    assert float(again @ embedding) > 0.999
