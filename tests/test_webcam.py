"""facekit.webcam (the `facekit-webcam` command, and tools/webcam.py in a clone) runs headless on a short clip made
from bundled photos and writes an annotated video."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import termios
import time
import types
import warnings
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import CTRL_C_IN_IMPORT

from facekit import webcam

# As run from a clone or an installed package alike; the installed command is tested on its own below.
WEBCAM = [sys.executable, "-m", "facekit.webcam"]


def make_clip(path: Path, astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray, frames: int = 30) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for index in range(frames):
        frame = np.full((480, 640, 3), 90, np.uint8)
        x = 10 + 2 * index  # the face moves, so tracking has something to follow
        frame[100:400, x:x + 300] = cv2.resize(astronaut_bgr, (300, 300))
        frame[150:406, 420:620] = cv2.resize(grace_hopper_bgr, (200, 256))
        writer.write(frame)
    writer.release()


def without_gallery() -> dict[str, str]:
    """An environment without $FACEKIT_GALLERY: run in a folder without galleries/default (cwd=tmp_path), the
    built-in default gallery is not there, a warning, where a --gallery or $FACEKIT_GALLERY given that is not there
    is an error."""
    return {name: value for name, value in os.environ.items() if name != "FACEKIT_GALLERY"}


@pytest.fixture()
def in_a_folder_without_a_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """without_gallery() for webcam.main in this process: the test's folder, without $FACEKIT_GALLERY."""
    monkeypatch.delenv("FACEKIT_GALLERY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_webcam_headless_writes_annotated_video(tmp_path, astronaut_bgr, grace_hopper_bgr):
    clip, out = tmp_path / "clip.avi", tmp_path / "out.mp4"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr)
    people = tmp_path / "people"
    (people / "grace_hopper").mkdir(parents=True)
    cv2.imwrite(str(people / "grace_hopper" / "a.jpg"), grace_hopper_bgr)
    gallery = tmp_path / "gallery"
    enroll = subprocess.run([sys.executable, "-m", "facekit.cli", "enroll", str(people), "--gallery", str(gallery),
                             "--quiet"], capture_output=True, text=True)
    assert enroll.returncode == 0, enroll.stderr
    result = subprocess.run([*WEBCAM, "--headless", "--source", str(clip),
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
    # Annotation changes pixels: the box around Grace Hopper's face is drawn in green (she is enrolled), the one
    # around the astronaut's in red (a stranger). Re-encoding alone changes far more than 10,000 in all, so the
    # colours are counted where each face is, against the same places in the clip's own first frame.
    from facekit.drawing import KNOWN, UNKNOWN

    source = cv2.VideoCapture(str(clip))
    original = source.read()[1]

    def added(colour: tuple[int, int, int], rows: slice, columns: slice) -> int:
        def count(image: np.ndarray) -> int:
            return int((np.abs(image[rows, columns].astype(int) - colour) < 40).all(axis=2).sum())

        return count(frame) - count(original)

    assert added(KNOWN, slice(100, 420), slice(400, 640)) > 500  # Grace Hopper, x 420-620: her box and label
    assert added(UNKNOWN, slice(50, 420), slice(0, 340)) > 500  # the astronaut, x 10-310 in the first frame
    assert added(KNOWN, slice(50, 420), slice(0, 340)) < 50  # and not named Grace Hopper


@pytest.mark.parametrize("option", ["--search-every", "--reidentify-every", "--max-frames"])
def test_webcam_refuses_an_interval_or_frame_count_below_one_in_one_line(option):
    # As `facekit` says a value out of range: the usage lines went with it (the parser's own error).
    result = subprocess.run([*WEBCAM, "--headless", option, "0"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (2, f"error: {option} must be at least 1, not 0\n")


def test_webcam_reports_a_bad_source(tmp_path):
    result = subprocess.run([*WEBCAM, "--headless", "--source",
                             str(tmp_path / "missing.mp4")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    # Said of the source given, not of something else (the gallery's warning may come first).
    assert result.stderr.splitlines()[-1] == f"error: not found: {tmp_path / 'missing.mp4'}"


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_webcam_says_why_a_source_did_not_open(tmp_path, monkeypatch, capsys):
    # No camera, a missing file, a folder, a file that is no video and a truncated .mp4 were all "cannot open
    # video source": the one to fix was left to guess.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 15, (64, 48))
    for _ in range(30):
        writer.write(np.full((48, 64, 3), 90, np.uint8))
    writer.release()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:clip.stat().st_size // 2])  # its index, at the end, is gone
    (tmp_path / "notes.txt").write_text("not a video\n")
    opened: list[str] = []
    monkeypatch.setattr(webcam, "open_source", lambda source: opened.append(source))  # none opens, as with OpenCV
    cannot_read = "as a video: not a video file, a format this OpenCV cannot read, or a damaged one"
    for source, error in (("3", "cannot open camera 3: none connected, or in use by another program"),
                          (str(tmp_path / "missing.mp4"), f"not found: {tmp_path / 'missing.mp4'}"),
                          (str(tmp_path), f"{tmp_path} is a folder: --source takes a video file or a camera index"),
                          (str(tmp_path / "notes.txt"), f"cannot read {tmp_path / 'notes.txt'} {cannot_read}"),
                          (str(truncated), f"cannot read {truncated} {cannot_read}")):
        assert webcam.main(["--headless", "--source", source]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"error: {error}", err
    assert len(opened) == 5
    # OpenCV opens none of them.
    assert not any(webcam.cv2.VideoCapture(source).isOpened() for source in map(str, (
        tmp_path / "missing.mp4", tmp_path, tmp_path / "notes.txt", truncated)))


def test_webcam_says_a_source_it_cannot_read_in_its_own_line_alone(tmp_path):
    # OpenCV's "[ WARN:0@0.4] ... can't open camera by index" lines, and FFmpeg's "[mjpeg @ 0x...] No JPEG data
    # found" twice, came before facekit's error.
    text = tmp_path / "text.jpg"
    text.write_text("not a video\n")
    for source, error in ((str(text), f"error: no frames could be read from '{text}'"),
                          ("99", "error: cannot open camera 99: none connected, or in use by another program")):
        result = subprocess.run([*WEBCAM, "--headless", "--source", source],
                                capture_output=True, text=True, timeout=300, env=without_gallery(), cwd=tmp_path)
        assert result.returncode in (1, 2) and result.stderr.splitlines() == [
            f"warning: no gallery at {tmp_path / 'galleries' / 'default'}; every face will be unknown", error], \
            result.stderr


def test_webcam_refuses_a_threshold_no_similarity_can_meet(tmp_path, astronaut_bgr):
    # As `facekit identify` does: nan or 5 named every face unknown, exit 0.
    photo = tmp_path / "a.jpg"
    cv2.imwrite(str(photo), astronaut_bgr)
    for threshold in ("nan", "5"):
        result = subprocess.run([*WEBCAM, "--headless", "--source", str(photo),
                                 "--threshold", threshold, "--gallery", str(tmp_path / "none")], capture_output=True,
                                text=True, timeout=300)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == f"error: --threshold is a cosine similarity, between -1 and 1, not {float(threshold)}\n"


def test_a_track_is_identified_again_when_its_face_may_be_someone_else():
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


def test_webcam_bad_output_or_gallery_is_one_error_line(tmp_path, astronaut_bgr, grace_hopper_bgr):
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gallery.sqlite").write_text("not a database")
    for options in (["--output", str(tmp_path / "missing" / "out.mp4")], ["--gallery", str(broken)]):
        result = subprocess.run([*WEBCAM, "--headless", "--source", str(clip),
                                 "--gallery", str(tmp_path / "none"), *options], capture_output=True, text=True,
                                timeout=300)
        lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_webcam_refuses_an_output_it_would_not_write_or_its_own_source(tmp_path, astronaut_bgr, grace_hopper_bgr):
    # Refused before the models load: the same file as --source was emptied by the writer while being read (a
    # 90-frame clip became 2 frames, exit 0), .jpg wrote one frame and said "written", 0 frames read "no frames".
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    original = clip.read_bytes()
    (tmp_path / "link.avi").symlink_to(clip)
    for options in (["--output", str(clip)], ["--output", str(tmp_path / "link.avi")],
                    ["--output", str(tmp_path / "out.jpg")], ["--output", str(tmp_path)], ["--max-frames", "0"]):
        result = subprocess.run([*WEBCAM, "--headless", "--source", str(clip),
                                 "--gallery", str(tmp_path / "none"), *options], capture_output=True, text=True,
                                timeout=300)
        lines = result.stderr.splitlines()
        # argparse's own errors start with the program's name: "webcam.py: error:" here.
        assert result.returncode == 2 and re.match(r"(\S+: )?error:", lines[-1]), (options, lines)
        assert clip.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "link.avi"]


def test_webcam_finishes_the_video_and_sums_up_when_stopped(tmp_path, astronaut_bgr, grace_hopper_bgr):
    # SIGTERM (kill, timeout, a service manager) ended the process before the writer was released: an .mp4
    # without its index, which nothing can play. Ctrl-C and SIGTERM, the usual end of a camera run, then said
    # nothing of what was recorded: no summary, only "interrupted" or not a word.
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=150)
    for stop in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / f"{stop.name}.mp4"
        process = subprocess.Popen([*WEBCAM, "--headless", "--source", str(clip),
                                    "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=without_gallery(), cwd=tmp_path)
        deadline = time.monotonic() + 120
        while not out.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few frames into the loop
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 128 + stop and "Traceback" not in stderr, (stop, stderr)
        video = cv2.VideoCapture(str(out))
        count = 0
        while video.read()[0]:
            count += 1
        assert 0 < count < 150
        summary = re.fullmatch(rf"(\d+) frames, [\d.]+ frames per second, [\d.]+ faces per frame, written to "
                               rf"{re.escape(str(out))}\n", stdout)
        assert summary and int(summary.group(1)) == count, (stop, stdout)


def test_the_installed_command_the_module_and_the_clone_script_all_run_the_webcam(tmp_path, astronaut_bgr,
                                                                                   grace_hopper_bgr, tool_script):
    # A wheel holds facekit's package alone, and the loop lived only in tools/webcam.py: one who installed facekit
    # had no webcam script, where the README told them to run it ("can't open file", exit 2).
    installed = Path(sysconfig.get_path("scripts")) / "facekit-webcam"
    assert installed.is_file(), f"no {installed}: install facekit again (pip install -e .) for its commands"
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    missing = tmp_path / "missing.mp4"
    for command in ([str(installed)], WEBCAM, [sys.executable, tool_script("webcam")]):
        shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300)
        assert shown.returncode == 0 and "--reidentify-every" in shown.stdout, (command, shown.stderr)
        result = subprocess.run([*command, "--headless", "--source", str(clip), "--max-frames", "2"],
                                capture_output=True, text=True, timeout=300, env=without_gallery(), cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("2 frames, "), (command, result.stderr)
        refused = subprocess.run([*command, "--headless", "--source", str(missing)], capture_output=True, text=True,
                                 timeout=300, env=without_gallery(), cwd=tmp_path)
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stderr.splitlines()[-1] == f"error: not found: {missing}", command


@pytest.mark.parametrize("importing", ["facekit.webcam", "cv2"])
def test_a_ctrl_c_while_the_webcam_command_is_still_importing_is_one_line(importing):
    """The console script called facekit.webcam's main, so a Ctrl-C while that module imported OpenCV, numpy and the
    models' runtime, before its handling was in place, printed a traceback."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    entry = re.search(r'^facekit-webcam = "(.+)"$', pyproject, re.MULTILINE).group(1)
    command = [sys.executable, "-c", CTRL_C_IN_IMPORT, importing, entry, "--headless", "--source", "none.avi"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")


def test_the_facekit_command_does_not_import_the_webcam_loop():
    # It imports OpenCV, the models' runtime and the gallery as it loads: `facekit --help` would wait for them.
    probe = "import sys, facekit.__main__, facekit.cli; facekit.cli.build_parser(); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "'facekit.cli'" in result.stdout, result.stderr
    assert "'facekit.webcam'" not in result.stdout


class FakeCapture:
    """cv2.VideoCapture's part that the loop uses, over given frames (None: a read that fails, as every read after
    the last); delay: seconds each read takes; frame_count: the length it gives (0: none, as a camera)."""

    def __init__(self, frames: list[np.ndarray | None], fps: float = 25.0, delay: float = 0.0,
                 frame_count: int = 0) -> None:
        self.frames, self.fps, self.delay, self.reads = list(frames), fps, delay, []
        self.frame_count = frame_count

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.delay)
        self.reads.append(time.perf_counter())
        frame = self.frames.pop(0) if self.frames else None
        return frame is not None, frame

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: float(self.frame_count)}.get(prop, 0.0)

    def release(self) -> None:
        pass


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_camera_recording_keeps_to_the_clock(tmp_path, monkeypatch):
    # A camera drops the frames a slow loop misses: each annotated frame written once at the camera's rate
    # played the recording too fast (here 100 fps claimed, about 20 processed: 5 times too fast).
    camera = FakeCapture([np.full((240, 320, 3), 90, np.uint8)] * 15, fps=100.0, delay=0.05)
    monkeypatch.setattr(webcam, "open_source", lambda source: camera)
    out = tmp_path / "out.avi"
    # 1: this camera stops giving frames after its 15, which the run says.
    assert webcam.main(["--headless", "--source", "0", "--output", str(out)]) == 1
    video = cv2.VideoCapture(str(out))
    count = 0
    while video.read()[0]:
        count += 1
    # The recording's clock starts as the first frame, processed, is written, just before the second read: the
    # first frame's work (the detector's first call, slowest on a loaded machine) is not in it. From there to the
    # first failed read, after the last frame was written, it spans the loop's time, to within a frame of the
    # camera's (and a little writing).
    recorded = camera.reads[15] - camera.reads[1]
    assert abs(count / video.get(cv2.CAP_PROP_FPS) - recorded) < 0.1 * recorded + 2 / camera.fps, (count, recorded)


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_signal_mid_frame_still_writes_the_frame_it_counted(tmp_path, monkeypatch, capsys):
    # A signal landing between the frame's count and its writing (here Ctrl-C while it is drawn) summed up one
    # frame more than the video held: the loop now stops after the frame in hand, not inside it.
    monkeypatch.setattr(webcam, "open_source",
                        lambda source: FakeCapture([np.full((240, 320, 3), 90, np.uint8)] * 10))
    draw_results = webcam.draw_results

    def interrupted_at_the_fourth(frame, results, fps):
        if len(drawn) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        drawn.append(frame)
        return draw_results(frame, results, fps=fps)

    drawn: list[np.ndarray] = []
    monkeypatch.setattr(webcam, "draw_results", interrupted_at_the_fourth)
    out = tmp_path / "out.avi"
    before = signal.getsignal(signal.SIGINT)  # ignored where a shell started the tests in the background
    assert webcam.main(["--headless", "--source", "clip", "--output", str(out)]) == 128 + signal.SIGINT
    video = cv2.VideoCapture(str(out))
    count = 0
    while video.read()[0]:
        count += 1
    assert count == len(drawn) == 4
    assert capsys.readouterr().out.startswith("4 frames, ")
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is put back


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_one_frame_is_summed_up_as_one_frame(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture([np.full((240, 320, 3), 90, np.uint8)]))
    assert webcam.main(["--headless", "--source", "clip"]) == 0
    assert capsys.readouterr().out.startswith("1 frame, ")  # not "1 frames"


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_large_frames_are_searched_on_a_smaller_copy(tmp_path, monkeypatch, astronaut_bgr, grace_hopper_bgr):
    # Live MTCNN looked for faces from 32 px of the frame, which had it search a 4K frame on a 2,400 px copy:
    # 530-830 ms a search, against about 100 on a copy of its max_side (the detector's own, the frame's coordinates
    # mapped back by it).
    from facekit import detection

    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    source = cv2.VideoCapture(str(clip))
    frames = [cv2.resize(source.read()[1], (3840, 2880), interpolation=cv2.INTER_LINEAR) for _ in range(3)]
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames))
    searched: list[int] = []
    downscale = detection._downscale

    def recorded_downscale(*args, **kwargs):
        small, scale = downscale(*args, **kwargs)
        searched.append(max(small.shape[:2]))
        return small, scale

    monkeypatch.setattr(detection, "_downscale", recorded_downscale)
    detectors = []
    create_detector = webcam.create_detector

    def recorded_create_detector(*args, **kwargs):
        detectors.append(create_detector(*args, **kwargs))
        return detectors[-1]

    monkeypatch.setattr(webcam, "create_detector", recorded_create_detector)
    drawn: list[list[dict]] = []
    monkeypatch.setattr(webcam, "draw_results", lambda frame, results, fps: drawn.append(results) or frame)
    assert webcam.main(["--headless", "--source", "clip", "--detector", "mtcnn"]) == 0
    assert len(searched) == 3 and max(searched) <= detectors[0].max_side
    # Found all the same, in the frame's coordinates: Grace Hopper's face lies in x 420-620 of the 640 px clip.
    assert [len(results) for results in drawn] == [2, 2, 2]
    for results in drawn:
        hopper = max(results, key=lambda face: face["box"][0])
        x, y, w, h = hopper["box"]
        assert 420 * 6 < x and x + w < 620 * 6 and w > 200 and 0 < hopper["landmarks"][0][0] - x < w


def test_webcam_shows_progress_on_a_terminal(tmp_path, astronaut_bgr, grace_hopper_bgr):
    # In --headless, a long clip ran without a word until its summary; a pipe or a log still gets none.
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=10)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a pty is 0 wide until told
    with subprocess.Popen([*WEBCAM, "--headless", "--source", str(clip)],
                          stdout=subprocess.PIPE, stderr=secondary, env=without_gallery(), cwd=tmp_path) as run:
        os.close(secondary)
        shown = b""
        while chunk := _read_pty(primary):
            shown += chunk
        assert run.wait(timeout=120) == 0
    os.close(primary)
    assert re.search(rb"\d+/10 \[", shown), shown


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end closed
        return b""


def test_webcam_checks_the_gallery_before_the_first_frame(tmp_path, monkeypatch, capsys):
    # A gallery of 128-d embeddings stored without a model fingerprint passed the check and ended the run at the
    # first face ("queries must have shape (n, 128)"); an empty one said nothing, as if faces were strangers.
    from facekit.datastore import Gallery

    narrow, empty = tmp_path / "narrow", tmp_path / "empty"
    with Gallery.open(narrow, dim=128) as gallery, gallery.writer():
        gallery.add("someone", np.eye(1, 128, dtype=np.float32), [{"path": "a.jpg", "sha256": "0" * 64}])
    Gallery.open(empty).close()
    camera = FakeCapture([np.full((240, 320, 3), 90, np.uint8)] * 2)
    monkeypatch.setattr(webcam, "open_source", lambda source: camera)
    assert webcam.main(["--headless", "--source", "clip", "--gallery", str(narrow)]) == 2
    assert "128-d" in capsys.readouterr().err and not camera.reads
    assert webcam.main(["--headless", "--source", "clip", "--gallery", str(empty)]) == 0
    assert "is empty" in capsys.readouterr().err


def test_webcam_refuses_a_gallery_given_that_is_not_there(tmp_path, monkeypatch, capsys):
    # A mistyped --gallery only warned that every face would be unknown and ran to the end, exit 0, where
    # `facekit identify` refuses it. The default gallery may not exist yet: the camera can run before enrolling.
    camera = FakeCapture([np.full((240, 320, 3), 90, np.uint8)] * 2)
    monkeypatch.setattr(webcam, "open_source", lambda source: camera)
    mistyped = tmp_path / "galeries" / "defualt"
    assert webcam.main(["--headless", "--source", "clip", "--gallery", str(mistyped)]) == 2
    assert capsys.readouterr().err == f"error: no gallery at {mistyped} (no gallery.sqlite there)\n"
    assert not camera.reads and not mistyped.exists()
    # So is a mistyped $FACEKIT_GALLERY, a choice made as --gallery is: it warned, then named no one, exit 0.
    monkeypatch.setenv("FACEKIT_GALLERY", str(mistyped))
    assert webcam.main(["--headless", "--source", "clip"]) == 2
    assert capsys.readouterr().err == f"error: $FACEKIT_GALLERY: no gallery at {mistyped} (no gallery.sqlite there)\n"
    assert not camera.reads and not mistyped.exists()
    monkeypatch.delenv("FACEKIT_GALLERY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert webcam.main(["--headless", "--source", "clip"]) == 0
    default = tmp_path / "galleries" / "default"
    assert capsys.readouterr().err == f"warning: no gallery at {default}; every face will be unknown\n"


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_webcam_takes_the_embedding_model_and_smallest_face_as_the_cli_does(tmp_path, monkeypatch, capsys):
    # The README's upgrade note says to pass the old model with --weights, which the script did not take.
    from facekit.representation import DEFAULT_MODEL

    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture([np.full((240, 320, 3), 90, np.uint8)]))
    missing = tmp_path / "old-model.safetensors"
    assert webcam.main(["--headless", "--source", "clip", "--weights", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: model file not found: {missing}\n"
    pipelines = []
    pipeline_class = webcam.FacePipeline
    monkeypatch.setattr(webcam, "FacePipeline", lambda *args, **kwargs: pipelines.append(
        pipeline_class(*args, **kwargs)) or pipelines[-1])
    monkeypatch.setenv("FACEKIT_WEIGHTS", str(missing))  # --weights wins over it, as in the CLI
    assert webcam.main(["--headless", "--source", "clip", "--weights", f"{DEFAULT_MODEL}.safetensors",
                        "--detector", "haar", "--min-face", "60"]) == 0
    assert pipelines[0].detector.min_face == 60 and pipelines[0].embedder.model_id


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_frames_that_cannot_be_read_are_passed_over_and_said(monkeypatch, capsys):
    # The loop ended at the first failed read, exit 0: a clip damaged a third of the way in was summed up as "46
    # frames", though frames 54-149 decoded past the damage.
    grey = np.full((240, 320, 3), 90, np.uint8)
    damaged = [grey] * 3 + [None] * 4 + [grey] * 5
    clip = FakeCapture(damaged)
    monkeypatch.setattr(webcam, "open_source", lambda source: clip)
    assert webcam.main(["--headless", "--source", "clip.mp4"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("8 frames, ")  # the summary as ever: the frames read
    assert err.splitlines()[-1] == "warning: passed over 4 frames of 'clip.mp4' that could not be read"
    # The end of a file is failed reads too, MAX_FAILED_READS of them: not counted.
    assert len(clip.reads) == len(damaged) + webcam.MAX_FAILED_READS
    # Where the file's frame count says frames are left, it is read on to that count, and the frames left unread
    # are said. Most of them left is damage, exit 1: it ended a clip damaged in its middle, exit 0, at its 30th
    # failed read, with 58% of its frames left, as if the count were an estimate.
    no_gallery = f"warning: no gallery at {Path.cwd() / 'galleries' / 'default'}; every face will be unknown"
    damaged_end = ("warning: the last 88 of the 100 frames 'clip.mp4' gives as its length could not be read: it may be "
                   "damaged")
    clip = FakeCapture(damaged, frame_count=100)
    assert webcam.main(["--headless", "--source", "clip.mp4"]) == 1
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "warning: passed over 4 frames of 'clip.mp4' that could not be read", damaged_end]
    assert len(clip.reads) == 100
    clip = FakeCapture([grey] * 12, frame_count=100)
    assert webcam.main(["--headless", "--source", "clip.mp4"]) == 1
    assert capsys.readouterr().err.splitlines() == [no_gallery, damaged_end]
    # A few left may be a count OpenCV estimated from the duration (in formats that record none): said, not counted
    # in the exit code.
    tiny = np.full((48, 64, 3), 90, np.uint8)
    clip = FakeCapture([tiny] * 330, frame_count=360)
    assert webcam.main(["--headless", "--source", "clip.mp4"]) == 0
    assert capsys.readouterr().err.splitlines() == [no_gallery, (
        "warning: reading 'clip.mp4' stopped after 330 of the 360 frames it gives as its length: its end may be "
        "damaged, or that length an estimate")]
    # A count a few frames off is not said.
    clip = FakeCapture([grey] * 8, frame_count=12)
    assert webcam.main(["--headless", "--source", "clip.mp4"]) == 0
    assert capsys.readouterr().err == f"{no_gallery}\n"


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_camera_reads_on_past_a_hiccup_and_says_when_it_stops(monkeypatch, capsys):
    # A USB hiccup ended a live session, exit 0, as if the camera had been closed.
    grey = np.full((240, 320, 3), 90, np.uint8)
    camera = FakeCapture([grey] * 3 + [None] * 5 + [grey] * 2)
    monkeypatch.setattr(webcam, "open_source", lambda source: camera)
    assert webcam.main(["--headless", "--source", "0"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("5 frames, ")
    assert err.splitlines()[-2:] == ["warning: passed over 5 frames of camera 0 that could not be read",
                                     f"error: camera 0 stopped giving frames ({webcam.MAX_FAILED_READS} reads in a "
                                     "row failed)"]


def test_a_damaged_clip_is_read_past_its_damage(tmp_path, astronaut_bgr):
    # 20 KB of random bytes a third of the way into a 150-frame clip ended the run there: "46 frames", exit 0.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 15, (320, 240))
    for index in range(60):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[48:198, 5 + index:155 + index] = cv2.resize(astronaut_bgr, (150, 150))
        writer.write(frame)
    writer.release()
    data = bytearray(clip.read_bytes())
    data[len(data) // 3:len(data) // 3 + 4000] = np.random.default_rng(0).bytes(4000)
    clip.write_bytes(bytes(data))
    result = subprocess.run([*WEBCAM, "--headless", "--source", str(clip)], capture_output=True, text=True,
                            timeout=600, env=without_gallery(), cwd=tmp_path)
    read = re.match(r"(\d+) frames, ", result.stdout)
    passed = re.fullmatch(rf"warning: passed over (\d+) frames of '{re.escape(str(clip))}' that could not be read",
                          result.stderr.splitlines()[-1])
    assert result.returncode == 1 and read and passed, (result.stdout, result.stderr)
    # Here (FFmpeg's mpeg4) frames 13-22 fail and the other 50 are read.
    assert int(read.group(1)) > 30 and int(read.group(1)) + int(passed.group(1)) == 60


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_clip_damaged_over_more_frames_than_give_up_a_read_is_read_to_its_end(tmp_path, astronaut_bgr,
                                                                              grace_hopper_bgr, capsys):
    # 200 kB overwritten a third of the way into an .mp4 ended the run at its 30th failed read, exit 0, "its end may
    # be damaged", with 58% of its frames left: frames past the damage decode, and a file's count says they are there.
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 15, (320, 240))
    for index in range(90):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[40:190, 5 + index:155 + index] = cv2.resize(astronaut_bgr, (150, 150))
        frame[60:188, 240:310] = cv2.resize(grace_hopper_bgr, (70, 128))
        writer.write(frame)
    writer.release()
    data = bytearray(clip.read_bytes())
    start, length = len(data) // 3, len(data) * 4 // 10  # the index, at the end, is left whole
    data[start:start + length] = np.random.default_rng(0).bytes(length)
    clip.write_bytes(bytes(data))
    assert webcam.main(["--headless", "--source", str(clip)]) == 1
    out, err = capsys.readouterr()
    read = re.match(r"(\d+) frames, ", out)
    passed = re.fullmatch(rf"warning: passed over (\d+) frames of '{re.escape(str(clip))}' that could not be read",
                          err.splitlines()[-1])
    assert read and passed, (out, err)
    # Here (FFmpeg's mpeg4) frames 25-63 fail: more in a row than a camera's reads are given.
    assert int(passed.group(1)) > webcam.MAX_FAILED_READS and int(read.group(1)) + int(passed.group(1)) == 90


def face_crops(astronaut_bgr: np.ndarray, grace_hopper_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each photo cropped to a square twice its face's width about the face and made 240 px wide, so that the two
    faces are of a size, and at one place in a frame (MTCNN: the astronaut's face at x 178-264, y 62-171 of her
    512x512 photo; Grace Hopper's at x 169-353, y 109-329 of her 512x600)."""
    return (cv2.resize(astronaut_bgr[30:202, 135:307], (240, 240)),
            cv2.resize(grace_hopper_bgr[35:403, 77:445], (240, 240)))


def test_a_face_that_changes_its_look_is_identified_again(astronaut_bgr, grace_hopper_bgr):
    astronaut, hopper = face_crops(astronaut_bgr, grace_hopper_bgr)

    def frame_of(face: np.ndarray, x: int = 200, gain: float = 1.0) -> np.ndarray:
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[120:360, x:x + 240] = face
        return np.clip(frame * gain, 0, 255).astype(np.uint8)

    box = (260.0, 160.0, 120.0, 150.0)
    track = webcam.Track(0, box, result={"identity": "astronaut"}, last_identified=0, identified_width=120.0,
                         identified_look=webcam.face_look(frame_of(astronaut), box))
    # The same face moved 4 px or 20% darker is the same look; another in its place is not.
    for moved in (frame_of(astronaut, x=204), frame_of(astronaut, gain=0.8)):
        assert not webcam.needs_identifying(track, 1, every=15, look=webcam.face_look(moved, box))
    assert webcam.needs_identifying(track, 1, every=15, look=webcam.face_look(frame_of(hopper), box))
    # A box with nothing to compare is no change.
    assert webcam.face_look(frame_of(astronaut), (700.0, 500.0, 50.0, 60.0)) is None
    assert webcam.face_look(np.full((480, 640, 3), 90, np.uint8), box) is None


def frames_of(face: np.ndarray, count: int) -> list[np.ndarray]:
    """count 640x480 frames of the face (a face_crops one), moving a pixel a frame, as a face does."""
    frames = []
    for index in range(count):
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[120:360, 200 + index:440 + index] = face
        frames.append(frame)
    return frames


def enroll_both(gallery_path: Path, astronaut: np.ndarray, hopper: np.ndarray) -> None:
    """A gallery of the two face_crops faces, as astronaut and grace_hopper."""
    import facekit
    from facekit.datastore import Gallery

    with Gallery.open(gallery_path) as gallery:
        facekit.add_face(gallery, "astronaut", astronaut)
        facekit.add_face(gallery, "grace_hopper", hopper)


def test_a_cut_to_someone_else_in_the_same_place_is_named_at_the_cut(tmp_path, monkeypatch, astronaut_bgr,
                                                                     grace_hopper_bgr):
    # A cut from one person to another in the same place passed the overlap and size checks: Colin Powell was
    # labelled Tony_Blair for 10 frames after the cut, an unenrolled stranger George_W_Bush for 7.

    astronaut, hopper = face_crops(astronaut_bgr, grace_hopper_bgr)
    enroll_both(tmp_path / "gallery", astronaut, hopper)
    frames = frames_of(astronaut, 8) + frames_of(hopper, 16)[8:]
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames))
    drawn: list[list[dict]] = []
    monkeypatch.setattr(webcam, "draw_results", lambda frame, results, fps: drawn.append(results) or frame)
    assert webcam.main(["--headless", "--source", "clip", "--gallery", str(tmp_path / "gallery")]) == 0
    assert [[face["identity"] for face in results] for results in drawn] == [["astronaut"]] * 8 + [["grace_hopper"]] * 8


def test_the_default_threshold_follows_the_gallery_as_it_grows(tmp_path, monkeypatch, astronaut_bgr,
                                                               grace_hopper_bgr):
    # The threshold was the one for the gallery's size when the webcam started: a gallery that grew from 2 faces to
    # 1,002 while it ran kept the small one's looser threshold, and named strangers (36 of 36 appearances).
    from facekit.datastore import Gallery

    astronaut, hopper = face_crops(astronaut_bgr, grace_hopper_bgr)
    enroll_both(tmp_path / "gallery", astronaut, hopper)
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames_of(astronaut, 6)))
    monkeypatch.setattr(webcam, "GALLERY_CHECK_S", 0.0)  # looked at every frame, rather than once a second
    thresholds, pipelines = [], []
    identify_image = webcam.identify_image

    def enrolling_after_the_third(pipeline, gallery, image, threshold, **kwargs):
        thresholds.append(threshold)
        pipelines.append(pipeline)
        if len(thresholds) == 3:  # another process enrolls a thousand faces
            others = np.random.default_rng(0).standard_normal((1000, pipeline.embedder.dim)).astype(np.float32)
            with Gallery.open(tmp_path / "gallery") as enrolling:
                enrolling.add("others", others / np.linalg.norm(others, axis=1, keepdims=True),
                              [{"path": f"{i}.jpg", "sha256": f"{i:064x}"} for i in range(1000)])
        return identify_image(pipeline, gallery, image, threshold, **kwargs)

    monkeypatch.setattr(webcam, "identify_image", enrolling_after_the_third)
    arguments = ["--headless", "--source", "clip", "--gallery", str(tmp_path / "gallery"), "--reidentify-every", "1"]
    assert webcam.main(arguments) == 0
    small, large = pipelines[0].identify_threshold_for(2), pipelines[0].identify_threshold_for(1002)
    assert large > small and thresholds == [small] * 3 + [large] * 3
    # --threshold given holds, whatever the gallery's size.
    thresholds.clear()
    assert webcam.main([*arguments, "--threshold", "0.6"]) == 0
    assert thresholds == [0.6] * 6


def test_a_gallery_enrolled_again_under_its_path_is_opened_in_place_of_the_old(tmp_path, monkeypatch, capsys,
                                                                               astronaut_bgr):
    # `rm -rf gal; facekit enroll people --gallery gal` (the README's advice after a weights upgrade) went unseen:
    # the webcam read on from the deleted database, and greeted the people removed, until it was restarted.
    import facekit
    from facekit.datastore import Gallery

    astronaut, _ = face_crops(astronaut_bgr, astronaut_bgr)
    path = tmp_path / "gallery"

    def enroll(name: str) -> None:
        with Gallery.open(path) as gallery:
            facekit.add_face(gallery, name, astronaut)

    enroll("astronaut")
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames_of(astronaut, 9)))
    monkeypatch.setattr(webcam, "GALLERY_CHECK_S", 0.0)  # looked at every frame, rather than once a second
    drawn: list[list[dict]] = []

    def replaced_then_deleted(frame, results, fps):
        drawn.append(results)
        if len(drawn) in (3, 6):
            shutil.rmtree(path)
        if len(drawn) == 3:
            enroll("eileen_collins")
        return frame

    monkeypatch.setattr(webcam, "draw_results", replaced_then_deleted)
    assert webcam.main(["--headless", "--source", "clip", "--gallery", str(path), "--reidentify-every", "1"]) == 0
    # Deleted with nothing in its place, the gallery's faces are no longer named: the folder was deleted to remove them.
    assert [[face["identity"] for face in results] for results in drawn] == (
        [["astronaut"]] * 3 + [["eileen_collins"]] * 3 + [[None]] * 3)
    assert capsys.readouterr().err.splitlines() == [
        f"gallery {path} was replaced; reopened it: 1 face",
        f"warning: gallery {path} is gone: every face is unknown until people are enrolled there"]


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_the_fps_drawn_is_the_last_frames_rate(monkeypatch, capsys):
    # The fps drawn was the average since the start, which hours in hides a slowdown: here a loop that fell from
    # 100 frames a second to 10 still drew 25. The summary stays the whole run's.
    clock = [0.0]

    class SlowingCapture(FakeCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            clock[0] += 0.01 if len(self.reads) < 60 else 0.1
            return super().read()

    monkeypatch.setattr(webcam, "open_source",
                        lambda source: SlowingCapture([np.full((48, 64, 3), 90, np.uint8)] * 90))
    monkeypatch.setattr(webcam, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    drawn: list[float] = []
    monkeypatch.setattr(webcam, "draw_results", lambda frame, results, fps: drawn.append(fps) or frame)
    assert webcam.main(["--headless", "--source", "clip"]) == 0
    assert drawn[59] == pytest.approx(100) and drawn[-1] == pytest.approx(10)
    assert capsys.readouterr().out.startswith("90 frames, 25.0 frames per second, ")


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_facekit_warning_is_one_line_as_identify_says_it(tmp_path, monkeypatch, capsys, astronaut_bgr):
    # A name the font lacks letters for (or a $FACEKIT_FONT that cannot be opened) was warned of in Python's two
    # lines, with drawing.py's path and source line, where `facekit identify` says one `warning:` line.
    import facekit
    from facekit.datastore import Gallery

    astronaut, _ = face_crops(astronaut_bgr, astronaut_bgr)
    with Gallery.open(tmp_path / "gallery") as gallery:
        facekit.add_face(gallery, "李雷", astronaut)
    missing_font = tmp_path / "missing.ttf"
    monkeypatch.setenv("FACEKIT_FONT", str(missing_font))
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames_of(astronaut, 2)))
    with warnings.catch_warnings():  # the run sets how warnings are shown for the rest of the process, as facekit's
        assert webcam.main(["--headless", "--source", "clip", "--gallery", str(tmp_path / "gallery")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: $FACEKIT_FONT names no font file that can be opened ({missing_font}); names in other scripts "
            'are drawn with a system font or as "?"') in err.splitlines()
    assert all(line.startswith("warning: ") for line in err.splitlines()), err


def logged(lines: str) -> list[dict]:
    """--events lines as JSON, each checked to give its time with its offset from UTC; without the times, which
    differ from run to run."""
    events = [json.loads(line) for line in lines.splitlines()]
    assert all(datetime.fromisoformat(event.pop("time")).utcoffset() is not None for event in events), lines
    return events


def test_the_events_say_who_appeared_when_and_how_surely_once_an_appearance(tmp_path, monkeypatch, capsys,
                                                                            astronaut_bgr, grace_hopper_bgr):
    # At a door for hours, the webcam's only record was its annotated video: no times, no names in text.

    astronaut, hopper = face_crops(astronaut_bgr, grace_hopper_bgr)
    enroll_both(tmp_path / "gallery", astronaut, hopper)
    # The astronaut for 6 frames; no one for 14, in which her track ends (10 frames unseen); Grace Hopper from frame
    # 20, a whole-frame search's; at 26 a cut to the astronaut in her place: the same track, named anew.
    clip = (frames_of(astronaut, 6) + [np.full((480, 640, 3), 90, np.uint8)] * 14 + frames_of(hopper, 6)
            + frames_of(astronaut, 6))
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(clip, fps=25.0, frame_count=len(clip)))
    log = tmp_path / "door.jsonl"
    arguments = ["--headless", "--source", "clip", "--gallery", str(tmp_path / "gallery"), "--threshold", "0.4"]
    assert webcam.main([*arguments, "--events", str(log)]) == 0
    events = logged(log.read_text())
    assert [{key: event.get(key) for key in ("event", "track", "frame", "identity", "previous", "first_frame")}
            for event in events] == [
        {"event": "started", "track": None, "frame": None, "identity": None, "previous": None, "first_frame": None},
        {"event": "appeared", "track": 0, "frame": 0, "identity": "astronaut", "previous": None, "first_frame": None},
        {"event": "left", "track": 0, "frame": 5, "identity": "astronaut", "previous": None, "first_frame": 0},
        {"event": "appeared", "track": 1, "frame": 20, "identity": "grace_hopper", "previous": None,
         "first_frame": None},
        {"event": "renamed", "track": 1, "frame": 26, "identity": "astronaut", "previous": "grace_hopper",
         "first_frame": None},
        {"event": "left", "track": 1, "frame": 31, "identity": "astronaut", "previous": None, "first_frame": 20},
        {"event": "stopped", "track": None, "frame": None, "identity": None, "previous": None, "first_frame": None}]
    started, appeared, left, _, renamed, _, stopped = events
    assert started == {"event": "started", "source": "clip", "gallery": str(tmp_path / "gallery")}
    assert stopped == {"event": "stopped", "frames": 32}
    # How surely: the similarity against the threshold it met, and the best the track had under its last name.
    assert appeared["threshold"] == renamed["threshold"] == 0.4 and appeared["similarity"] > 0.4
    assert left["best_similarity"] >= appeared["similarity"]
    assert appeared["video_s"] == 0.0 and renamed["video_s"] == 26 / 25 and left["video_s"] == 5 / 25
    x, y, w, h = appeared["box"]
    assert 200 < x < x + w < 440 and 120 < y < y + h < 360
    # Appended to, run after run; with - on stdout, which then holds the events alone (the summary goes to stderr).
    assert webcam.main([*arguments, "--events", str(log)]) == 0
    assert logged(log.read_text()) == events * 2
    capsys.readouterr()
    assert webcam.main([*arguments, "--events", "-"]) == 0
    out, err = capsys.readouterr()
    assert logged(out) == events and err.startswith("32 frames, ")


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_a_stopped_run_says_who_was_still_there_and_loses_no_event(tmp_path, monkeypatch, astronaut_bgr):
    # Ctrl-C, SIGTERM and the end of a clip close the tracks still open; each line is written as it happens, not
    # when the run ends, so that a crash or a kill loses none seen before it.
    astronaut, _ = face_crops(astronaut_bgr, astronaut_bgr)
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames_of(astronaut, 10)))
    log = tmp_path / "door.jsonl"
    draw_results = webcam.draw_results
    written_by_the_second_frame: list[list[dict]] = []

    def interrupted_at_the_fourth(frame, results, fps):
        if len(drawn) == 1:
            written_by_the_second_frame.append(logged(log.read_text()))
        if len(drawn) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        drawn.append(frame)
        return draw_results(frame, results, fps=fps)

    drawn: list[np.ndarray] = []
    monkeypatch.setattr(webcam, "draw_results", interrupted_at_the_fourth)
    assert webcam.main(["--headless", "--source", "clip", "--events", str(log)]) == 128 + signal.SIGINT
    events = logged(log.read_text())
    assert [event["event"] for event in events] == ["started", "appeared", "left", "stopped"]
    _, appeared, left, stopped = events
    assert written_by_the_second_frame == [events[:2]]
    # No gallery: unknown, with no one to compare with.
    assert (appeared["identity"], appeared["similarity"], appeared["frame"]) == (None, None, 0)
    assert (left["identity"], left["first_frame"], left["frame"], stopped["frames"]) == (None, 0, 3, 4)


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
def test_webcam_refuses_events_it_would_not_append_to_in_one_line(tmp_path, monkeypatch, capsys, astronaut_bgr,
                                                                  grace_hopper_bgr):
    clip = tmp_path / "clip.avi"
    make_clip(clip, astronaut_bgr, grace_hopper_bgr, frames=3)
    original = clip.read_bytes()
    (tmp_path / "link.avi").symlink_to(clip)
    (tmp_path / "logs").mkdir()
    out = tmp_path / "out.mp4"
    for events, error in (
            (tmp_path / "logs", f"--events {tmp_path / 'logs'} is a folder: give a file to append the events to"),
            (tmp_path / "missing" / "a.jsonl", f"cannot write {tmp_path / 'missing' / 'a.jsonl'}: folder "
                                               f"{tmp_path / 'missing'} not found"),
            (out, f"--events {out} is the --output video; choose another file"),
            (tmp_path / "link.avi", f"--events {tmp_path / 'link.avi'} is the video being read; choose another file")):
        assert webcam.main(["--headless", "--source", str(clip), "--output", str(out), "--events", str(events)]) == 2
        assert capsys.readouterr().err == f"error: {error}\n"
    assert clip.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "link.avi", "logs"]
    assert not any((tmp_path / "logs").iterdir())
    monkeypatch.setattr(sys, "stdout", None)  # started with stdout closed (>&-)
    assert webcam.main(["--headless", "--source", str(clip), "--events", "-"]) == 2
    assert capsys.readouterr().err == "error: standard output is closed: give --events a file\n"


@pytest.mark.usefixtures("in_a_folder_without_a_gallery")
@pytest.mark.parametrize("to_stdout", [False, True])
def test_events_that_cannot_be_written_are_one_error_line(monkeypatch, capsys, astronaut_bgr, to_stdout):
    # A full disk: the run stops with one line and exit 2, as `facekit` does when its output cannot be written.
    astronaut, _ = face_crops(astronaut_bgr, astronaut_bgr)
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture(frames_of(astronaut, 3)))
    with open("/dev/full", "w") as full, monkeypatch.context() as patch:
        if to_stdout:
            patch.setattr(sys, "stdout", full)
        code = webcam.main(["--headless", "--source", "clip", "--events", "-" if to_stdout else "/dev/full"])
    assert code == 2
    where = "standard output" if to_stdout else "/dev/full"
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"error: cannot write the events to {where}: No space left on device"
