"""tools/webcam.py runs headless on a short clip made from bundled photos and writes an annotated video."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def make_clip(path: Path, astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray, frames: int = 30) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for index in range(frames):
        frame = np.full((480, 640, 3), 90, np.uint8)
        x = 10 + 2 * index  # the face moves, so tracking has something to follow
        frame[100:400, x:x + 300] = cv2.resize(astronaut_bgr, (300, 300))
        frame[150:406, 420:620] = cv2.resize(grace_hopper_bgr, (200, 256))
        writer.write(frame)
    writer.release()


def test_webcam_headless_writes_annotated_video(tmp_path, astronaut_bgr, grace_hopper_bgr, tool_script):
    clip, out = tmp_path / "clip.avi", tmp_path / "out.mp4"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr)
    people = tmp_path / "people"
    (people / "grace_hopper").mkdir(parents=True)
    cv2.imwrite(str(people / "grace_hopper" / "a.jpg"), grace_hopper_bgr)
    gallery = tmp_path / "gallery"
    enroll = subprocess.run([sys.executable, "-m", "facekit.cli", "enroll", str(people), "--gallery", str(gallery),
                             "--quiet"], capture_output=True, text=True)
    assert enroll.returncode == 0, enroll.stderr
    result = subprocess.run([sys.executable, tool_script("webcam"), "--headless", "--source", str(clip),
                             "--output", str(out), "--max-frames", "20", "--gallery", str(gallery)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    match = re.search(r"(\d+) frames, ([\d.]+) frames per second, ([\d.]+) faces per frame", result.stdout)
    assert match and int(match.group(1)) == 20 and float(match.group(2)) > 0
    # Both faces are in every frame; four frames in five search only around them (MTCNN, --search-every 5).
    assert float(match.group(3)) >= 1.9
    video = cv2.VideoCapture(str(out))
    ok, frame = video.read()
    assert ok and frame.shape == (480, 640, 3)
    count = 1
    while video.read()[0]:
        count += 1
    assert count == 20
    # Annotation changes pixels: the box around Grace Hopper's face is drawn in green.
    source = cv2.VideoCapture(str(clip))
    original = source.read()[1]
    assert np.abs(frame.astype(int) - original.astype(int)).sum() > 10_000


def test_webcam_rejects_a_search_interval_below_one(tool_script):
    result = subprocess.run([sys.executable, tool_script("webcam"), "--headless", "--search-every", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--search-every" in result.stderr and "Traceback" not in result.stderr


def test_webcam_reports_a_bad_source(tmp_path, tool_script):
    result = subprocess.run([sys.executable, tool_script("webcam"), "--headless", "--source",
                             str(tmp_path / "missing.mp4")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_a_track_is_identified_again_when_its_face_may_be_someone_else(load_tool):
    webcam = load_tool("webcam")
    tracker = webcam.FaceTracker()
    (track,) = tracker.update([(100, 100, 100, 140)], frame=0)
    assert webcam.needs_identifying(track, 0, every=15)  # new
    track.result, track.last_identified, track.identified_width = {"identity": "obama"}, 0, 100
    (same,) = tracker.update([(102, 100, 100, 140)], frame=1)
    assert same is track and not webcam.needs_identifying(track, 1, every=15)
    # A smaller face in the same place still overlaps the track's box by more than 0.3: the same track, but
    # a size jump, so it is named afresh rather than inheriting the last name for up to 15 frames.
    (smaller,) = tracker.update([(115, 120, 70, 95)], frame=2)
    assert smaller is track and webcam.needs_identifying(track, 2, every=15)
    # Identified again, then unseen for frames and found in the same place: it may be someone else.
    track.last_identified, track.identified_width = 2, 70
    assert not webcam.needs_identifying(tracker.update([(115, 120, 70, 95)], frame=3)[0], 3, every=15)
    (back,) = tracker.update([(116, 120, 70, 95)], frame=8)
    assert back is track and webcam.needs_identifying(track, 8, every=15)
    assert webcam.needs_identifying(track, 3 + 15, every=15)


def test_webcam_bad_output_or_gallery_is_one_error_line(tmp_path, astronaut_bgr, grace_hopper_bgr, tool_script):
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gallery.sqlite").write_text("not a database")
    for options in (["--output", str(tmp_path / "missing" / "out.mp4")], ["--gallery", str(broken)]):
        result = subprocess.run([sys.executable, tool_script("webcam"), "--headless", "--source", str(clip),
                                 "--gallery", str(tmp_path / "none"), *options], capture_output=True, text=True,
                                timeout=300)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
