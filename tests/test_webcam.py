"""facekit.webcam (the `facekit-webcam` command, and tools/webcam.py in a clone) runs headless on a short clip made
from bundled photos and writes an annotated video."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import sysconfig
import termios
import time
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


def without_gallery(tmp_path: Path) -> dict[str, str]:
    """An environment whose default gallery ($FACEKIT_GALLERY) is not there: a warning, where a --gallery given
    that is not there is an error."""
    return {**os.environ, "FACEKIT_GALLERY": str(tmp_path / "none")}


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
    assert result.stderr.splitlines()[-1] == f"error: cannot open video source '{tmp_path / 'missing.mp4'}'"


def test_webcam_says_a_source_it_cannot_read_in_its_own_line_alone(tmp_path):
    # OpenCV's "[ WARN:0@0.4] ... can't open camera by index" lines, and FFmpeg's "[mjpeg @ 0x...] No JPEG data
    # found" twice, came before facekit's error.
    text = tmp_path / "text.jpg"
    text.write_text("not a video\n")
    for source, error in ((str(text), f"error: no frames could be read from '{text}'"),
                          ("99", "error: cannot open video source '99'")):
        result = subprocess.run([*WEBCAM, "--headless", "--source", source],
                                capture_output=True, text=True, timeout=300, env=without_gallery(tmp_path))
        assert result.returncode in (1, 2) and result.stderr.splitlines() == [
            f"warning: no gallery at {tmp_path / 'none'}; every face will be unknown", error], result.stderr


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
                                   env=without_gallery(tmp_path))
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
                                capture_output=True, text=True, timeout=300, env=without_gallery(tmp_path))
        assert result.returncode == 0 and result.stdout.startswith("2 frames, "), (command, result.stderr)
        refused = subprocess.run([*command, "--headless", "--source", str(missing)], capture_output=True, text=True,
                                 timeout=300, env=without_gallery(tmp_path))
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stderr.splitlines()[-1] == f"error: cannot open video source '{missing}'", command


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
    """cv2.VideoCapture's part that the loop uses, over given frames; delay: seconds each read takes."""

    def __init__(self, frames: list[np.ndarray], fps: float = 25.0, delay: float = 0.0) -> None:
        self.frames, self.fps, self.delay, self.reads = list(frames), fps, delay, []

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.delay)
        self.reads.append(time.perf_counter())
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: 0.0}.get(prop, 0.0)

    def release(self) -> None:
        pass


def test_a_camera_recording_keeps_to_the_clock(tmp_path, monkeypatch):
    # A camera drops the frames a slow loop misses: each annotated frame written once at the camera's rate
    # played the recording too fast (here 100 fps claimed, about 20 processed: 5 times too fast).
    camera = FakeCapture([np.full((240, 320, 3), 90, np.uint8)] * 15, fps=100.0, delay=0.05)
    monkeypatch.setattr(webcam, "open_source", lambda source: camera)
    out = tmp_path / "out.avi"
    monkeypatch.setenv("FACEKIT_GALLERY", str(tmp_path / "none"))
    assert webcam.main(["--headless", "--source", "0", "--output", str(out)]) == 0
    video = cv2.VideoCapture(str(out))
    count = 0
    while video.read()[0]:
        count += 1
    # The recording's clock starts as the first frame, processed, is written, just before the second read: the
    # first frame's work (the detector's first call, slowest on a loaded machine) is not in it. From there to the
    # last read it spans the loop's time, to within a frame of the camera's (and a little writing).
    recorded = camera.reads[-1] - camera.reads[1]
    assert abs(count / video.get(cv2.CAP_PROP_FPS) - recorded) < 0.1 * recorded + 2 / camera.fps, (count, recorded)


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
    monkeypatch.setenv("FACEKIT_GALLERY", str(tmp_path / "none"))
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


def test_one_frame_is_summed_up_as_one_frame(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture([np.full((240, 320, 3), 90, np.uint8)]))
    monkeypatch.setenv("FACEKIT_GALLERY", str(tmp_path / "none"))
    assert webcam.main(["--headless", "--source", "clip"]) == 0
    assert capsys.readouterr().out.startswith("1 frame, ")  # not "1 frames"


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
    monkeypatch.setenv("FACEKIT_GALLERY", str(tmp_path / "none"))
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
                          stdout=subprocess.PIPE, stderr=secondary, env=without_gallery(tmp_path)) as run:
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
    monkeypatch.delenv("FACEKIT_GALLERY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert webcam.main(["--headless", "--source", "clip"]) == 0
    default = tmp_path / "galleries" / "default"
    assert capsys.readouterr().err == f"warning: no gallery at {default}; every face will be unknown\n"


def test_webcam_takes_the_embedding_model_and_smallest_face_as_the_cli_does(tmp_path, monkeypatch, capsys):
    # The README's upgrade note says to pass the old model with --weights, which the script did not take.
    from facekit.representation import DEFAULT_MODEL

    monkeypatch.setattr(webcam, "open_source", lambda source: FakeCapture([np.full((240, 320, 3), 90, np.uint8)]))
    monkeypatch.setenv("FACEKIT_GALLERY", str(tmp_path / "none"))
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
