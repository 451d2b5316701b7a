"""FacePipeline.load_many, enroll and the Embedder, on real photos: what they hold, and when they stop."""

from __future__ import annotations

import shutil
import threading
import tracemalloc

import cv2
import numpy as np
import pytest

import facekit
from facekit.datastore import Gallery
from facekit.recognition import FacePipeline, collect_people, enroll
from facekit.representation import Embedder


def test_a_caller_that_stops_early_does_not_wait_for_the_photos_loaded_ahead(tmp_path, astronaut_bgr):
    """enroll --workers 8 stopped by Ctrl-C, or identify stopped by an error, decoded and detected the 16 photos
    queued ahead before it could end."""
    real = facekit.pipeline()
    detected: list[int] = []
    release = threading.Event()

    class CountingDetector:
        min_face = None

        def detect(self, image: np.ndarray) -> list:
            detected.append(len(detected))
            if len(detected) > 1:  # the look-ahead thread waits until the caller is about to stop
                release.wait(timeout=60)
            return real.detector.detect(image)

    cv2.imwrite(str(tmp_path / "eileen.png"), astronaut_bgr)
    pipeline = FacePipeline(detector=CountingDetector(), embedder=real.embedder)
    photos = pipeline.load_many([tmp_path / "eileen.png"] * 20, workers=4)
    assert len(next(photos).faces) == 1
    release.set()
    photos.close()
    assert len(detected) <= 3  # the photo given and the one being loaded (a third at most): not the 8 queued


def test_enroll_holds_the_crops_of_a_batch_not_its_photos(tmp_path, astronaut_bgr):
    folder = tmp_path / "people" / "eileen_collins"
    folder.mkdir(parents=True)
    photo = cv2.resize(astronaut_bgr, (2048, 2048))  # 12.6 MB decoded
    for number in range(16):  # one batch
        photo[:16, :16] = number * 16  # another photo's bytes, so that none is taken for a copy of another
        cv2.imwrite(str(folder / f"{number:02d}.jpg"), photo)
    pipeline = facekit.pipeline()
    with Gallery.open(tmp_path / "gallery", dim=512) as gallery:
        tracemalloc.start()  # numpy reports its arrays to tracemalloc
        try:
            report = enroll(pipeline, gallery, tmp_path / "people", workers=0, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.enrolled == 16
    # About 2 photos at a time (the one decoded and its copies); the batch's 16 photos came to 17.
    assert peak / photo.nbytes < 6


def test_a_device_that_is_not_there_is_refused_in_one_line_before_the_weights_load():
    """Embedder(device="cuda") on a machine without CUDA loaded the weights, then failed with torch's
    AssertionError; a name torch does not know failed the same way with a RuntimeError."""
    torch = pytest.importorskip("torch")
    count = torch.cuda.device_count()
    missing = f"cuda:{count}"  # one past the last, on a machine with GPUs or without
    with pytest.raises(ValueError, match=f"^device {missing} is not available: torch finds {count} CUDA device"):
        Embedder(backend="torch", device=missing)
    with pytest.raises(ValueError, match=r"^unknown device: 'gpu' \(cpu, cuda or cuda:N, say\)$"):
        Embedder(device="gpu")


def test_a_symlinked_folder_inside_a_persons_folder_is_reported_as_one_at_the_top_is(tmp_path, grace_hopper_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(grace_hopper_path, elsewhere / "b.jpg")
    person = tmp_path / "people" / "grace_hopper"
    person.mkdir(parents=True)
    shutil.copy(grace_hopper_path, person / "a.jpg")
    (person / "more").symlink_to(elsewhere)
    (tmp_path / "people" / "ada").symlink_to(elsewhere)
    pairs, skipped = collect_people(tmp_path / "people")
    assert pairs == [("grace_hopper", str(person / "a.jpg"))]
    assert skipped == [(str(tmp_path / "people" / "ada"), "symlinked folder not followed"),
                       (str(person / "more"), "symlinked folder not followed")]
