"""Live face recognition on a camera or a video file.

    facekit-webcam --headless --output out.mp4   # camera 0, until Ctrl-C
    facekit-webcam --source clip.mp4 --headless --output out.mp4 --max-frames 90
    facekit-webcam                               # a window (q quits): needs opencv-python, not the headless build

The `facekit-webcam` command is installed with facekit; `python -m facekit.webcam` runs the same, and so does
`python tools/webcam.py` in a clone of the repository. Neither `import facekit` nor facekit.cli imports this
module, so that `facekit` commands do not wait for what it imports (OpenCV, the models' runtime, the gallery).

Faces are detected every frame and matched to tracks by box overlap; a track is
re-identified only when it is new, every --reidentify-every frames, or when the face may be another
person's (it comes back after frames unseen, its size jumps, or its look changes: a cut, or someone else in
the same place), because embedding is the expensive step and a face rarely changes identity between frames. With
MTCNN (the default) or Haar, whose full search is the loop's other expensive step, the whole frame is
searched every --search-every frames and, in between, only around the faces being tracked.

Large frames are searched on a smaller copy (the detectors' own) and embedded from the frame itself. From a
camera, each annotated frame is written as often as keeps --output in step with the clock. Ctrl-C, SIGTERM and SIGHUP
stop the loop after the frame in hand (a second one without waiting for it); the video is finished, and the summary
printed before the exit code says what stopped it. A frame that cannot be read (damaged in a file, a camera's
hiccup) is passed over, said on stderr, and the exit code is 1; MAX_FAILED_READS in a row end the run (a file's, once
its frame count is reached). The fps drawn is the last FPS_FRAMES frames', the summary's the whole run's.

The gallery is looked at about once a second (LiveGallery): the default threshold follows its size as people are
enrolled and removed, and a gallery deleted and enrolled again under its path is opened in place of the old one.

--events PATH (or - for stdout) appends an audit log as JSON lines, one event per person's appearance rather than per
frame (EventLog): who was seen when, named how surely, until when.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facekit.cli import CliError, check_threshold, counted, quiet_opencv, report_errors, show_warnings_as_lines
from facekit.datastore import DB_NAME, Gallery, GalleryError, default_gallery_path
from facekit.detection import create_detector
from facekit.detector_names import DETECTOR_BACKENDS, DETECTOR_HELP
from facekit.drawing import draw_results
from facekit.errors import OutputError, json_record
from facekit.recognition import FacePipeline, identify_image

# What --output can hold, by extension, and the codec written to it.
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass
class Track:
    track_id: int
    box: tuple[float, float, float, float]
    result: dict = field(default_factory=dict)
    last_identified: int = -(10**9)
    last_seen: int = 0
    identified_width: float = 0.0
    identified_look: np.ndarray | None = None  # face_look() of the face when it was identified
    resumed: bool = False  # matched after at least one frame unseen


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    width = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    height = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = width * height
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Greedy IoU matching of this frame's faces to last frame's tracks."""

    def __init__(self, min_iou: float = 0.3, max_missing: int = 10) -> None:
        self.tracks: dict[int, Track] = {}
        self.next_id = 0
        self.min_iou, self.max_missing = min_iou, max_missing

    def update(self, boxes: list[tuple[float, float, float, float]], frame: int) -> list[Track]:
        assigned: list[Track] = []
        free = set(self.tracks)
        for box in boxes:
            best = max(free, key=lambda t: iou(self.tracks[t].box, box), default=None)
            if best is not None and iou(self.tracks[best].box, box) >= self.min_iou:
                track = self.tracks[best]
                free.discard(best)
                track.resumed = track.resumed or frame - track.last_seen > 1
            else:
                track = Track(self.next_id, box)
                self.tracks[self.next_id] = track
                self.next_id += 1
            track.box, track.last_seen = box, frame
            assigned.append(track)
        for track_id in [t for t in free if frame - self.tracks[t].last_seen > self.max_missing]:
            del self.tracks[track_id]
        return assigned


# A face whose width changes by more than this factor between identifications may be someone else who stepped
# into the same place: an overlap of 0.3 between a near and a far face's boxes is easily met.
SIZE_JUMP = 1.25


# A face_look() whose correlation with the one at the last identification falls below this is identified again: a cut
# to someone else in the same place (or a stand-in) passes the overlap and size checks, and kept the last name for up
# to --reidentify-every frames. Measured (live MTCNN's boxes in 640x480 clips re-encoded as mp4v, the bundled photos
# and LFW faces pasted 300 px wide): another face in the same box correlates at most 0.86, and 0.75 or more in 0.6%
# of 7,381 pairs of 122 faces; the same face 1-15 frames after its identification, panning 3 px a frame, growing
# 2 px a frame, 2-2.5% brighter or darker a frame, or all at once, falls below 0.75 in 2% of 2,400 frames of 32
# faces, each costing one identification more.
SAME_LOOK = 0.75
LOOK_SIDE = 16  # pixels: enough to tell faces apart, too coarse for a face's few pixels of motion to count


def face_look(frame: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray | None:
    """A LOOK_SIDE-pixel grey thumbnail of the face, mean-subtracted and of unit length, so that the dot product of
    two is their correlation, which exposure drift leaves as it is. It is the square of the box's width about the
    box's centre: MTCNN's box height jitters more than its width. Under 0.1 ms a face of any size, against tens of
    ms for the frame's detection. None where the square holds no contrast (or lies outside the frame)."""
    x, y, width, _ = box
    top, left = round(y + box[3] / 2 - width / 2), round(x)
    # Every few pixels of a large face: 4 a thumbnail pixel each way are as good, and a 600 px face costs 1 ms whole.
    step = max(1, round(width) // (4 * LOOK_SIDE))
    crop = frame[max(0, top):max(0, top + round(width)):step, max(0, left):max(0, left + round(width)):step]
    if crop.size == 0:
        return None
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    look = cv2.resize(grey, (LOOK_SIDE, LOOK_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    look -= look.mean()
    length = float(np.linalg.norm(look))
    return look / length if length > 0 else None


def needs_identifying(track: Track, frame: int, every: int, look: np.ndarray | None = None) -> bool:
    """New, due, back after frames unseen, a size jump, or a change in its look (face_look() of the face now): the
    face may not be whom the track last named."""
    if not track.result or track.resumed or frame - track.last_identified >= every:
        return True
    if look is not None and track.identified_look is not None and np.sum(look * track.identified_look) < SAME_LOOK:
        return True
    return abs(math.log(track.box[2] / track.identified_width)) > math.log(SIZE_JUMP)


def same_file(a: Path, b: Path) -> bool:
    """a and b name one file: a link to it, or the name of one not made yet."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def output_problem(output: str, source: str) -> str | None:
    """Why the annotated video cannot go to output, found before the models load; None if it may."""
    path = Path(output)
    if path.suffix.lower() not in CODECS:
        # OpenCV takes most other names (.jpg, no extension), then writes one frame or none without a word.
        return f"--output must be an .mp4 or .avi file, not {output}"
    if not path.parent.is_dir():
        return f"cannot write {output}: folder {path.parent} not found"
    if not source.isdigit() and path.exists() and same_file(path, Path(source)):
        # The writer would empty the file the capture is still reading: the video would be lost.
        return f"--output {output} is the video being read; choose another file"
    return None


def events_problem(events: str, output: str | None, source: str) -> str | None:
    """Why --events cannot be appended to, found before the models load; None if it may."""
    if events == "-":
        # The command runs on with stdout closed (its results are a video), but these events would go nowhere.
        return "standard output is closed: give --events a file" if sys.stdout is None else None
    path = Path(events)
    if path.is_dir():
        return f"--events {events} is a folder: give a file to append the events to"
    if not path.parent.is_dir():
        return f"cannot write {events}: folder {path.parent} not found"
    # Appending JSON lines to a video would damage it, for the source while it is read.
    if output and same_file(path, Path(output)):
        return f"--events {events} is the --output video; choose another file"
    if not source.isdigit() and same_file(path, Path(source)):
        return f"--events {events} is the video being read; choose another file"
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        return f"cannot write {events}: permission denied"
    return None


def open_source(source: str) -> cv2.VideoCapture | None:
    capture = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    return capture if capture.isOpened() else None


def unopened_source_problem(source: str) -> str:
    """Why open_source found no video at source: OpenCV says only that it did not open."""
    if source.isdigit():
        return f"cannot open camera {source}: none connected, or in use by another program"
    if "://" in source or "%" in source:  # a stream's address, or an image sequence's pattern (frame%04d.png)
        return f"cannot open video source {source!r}"
    path = Path(source)
    if not path.exists():
        return f"not found: {source}"
    if path.is_dir():
        return f"{source} is a folder: --source takes a video file or a camera index"
    return f"cannot read {source} as a video: not a video file, a format this OpenCV cannot read, or a damaged one"


def frame_rate(capture: cv2.VideoCapture) -> float:
    """The source's frames per second; 25 where it gives none (many cameras) or an absurd one."""
    rate = capture.get(cv2.CAP_PROP_FPS)
    return rate if 0 < rate <= 1000 else 25.0


# OpenCV's read fails at a frame it cannot decode as it does at the end of a file, and a camera's at a hiccup (a busy
# USB bus): the loop reads on past a failure, and ends after this many in a row, about a second of a camera's frames.
# A file is read on past more while its frame count says frames are left: each failed read passes over one frame of
# a damaged stretch (FFmpeg's mpeg4 in .mp4), and OpenCV's seeking does not get past one, as it counts decoded frames.
MAX_FAILED_READS = 30
# A frame count can be garbage (a header damaged too): failed reads in a row past this many end the run however many
# frames it claims are left. About 11 minutes of 30 fps footage, a few seconds of reads.
LONGEST_DAMAGED_STRETCH = 20_000
# A file's reads ending with more than this share of the frames its count gives left unread is taken for damage, not
# for a count estimated from the duration (formats that record none), which a steady frame rate keeps close.
ESTIMATED_LENGTH_ERROR = 0.1

# The fps drawn on a frame is over the last this many frames: an average since the start hides a slowdown hours in.
FPS_FRAMES = 30

# How often (seconds, at most) the loop looks at the gallery: for a database replaced under its path, and for its size,
# which the default threshold follows. A stat and a count of its faces, where a frame takes tens of ms.
GALLERY_CHECK_S = 1.0


def database_state(gallery_path: Path) -> tuple[int, ...]:
    """The gallery database's device and inode, then what a write changes (its and its write-ahead log's size and
    time); () where there is none. A database enrolled anew under the path has another inode than the one the loop
    holds open, which SQLite would go on reading, deleted or not."""
    database = gallery_path / DB_NAME
    try:
        found = os.stat(database)
    except OSError:
        return ()
    try:
        log = os.stat(f"{database}-wal")
        written = (log.st_size, log.st_mtime_ns)
    except OSError:
        written = (0, 0)
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, *written


def open_gallery(gallery_path: Path, pipeline: FacePipeline) -> Gallery:
    """The gallery at gallery_path; GalleryError for another model's: by its fingerprint, or (one stored before
    galleries kept it) by its width, which gallery.search would otherwise refuse at the first face."""
    gallery = Gallery.open(gallery_path, create=False, dim=pipeline.embedder.dim)
    try:
        gallery.bind_model(pipeline.embedder.model_id)
    except GalleryError:
        gallery.close()
        raise
    return gallery


class LiveGallery:
    """The gallery as it is now, for a loop that runs for hours while others enroll into it and remove from it, or
    delete its folder and enroll people there again (the README's advice after a weights upgrade). Looked at every
    GALLERY_CHECK_S at most: the default threshold follows its size (a larger gallery needs a stricter one, or
    strangers are named), and a database replaced under its path is opened in place of the deleted one.

    A gallery deleted with nothing in its place leaves every face unknown until one is enrolled there: the folder is
    most often deleted to remove people (or the old model's faces) for good, and a door that greets no one for a
    while errs on the side a door should, where one that goes on greeting the removed does not."""

    def __init__(self, path: Path, gallery: Gallery | None, opened: tuple[int, ...], pipeline: FacePipeline,
                 threshold: float | None) -> None:
        self.path, self.gallery, self.pipeline = path, gallery, pipeline
        self.opened = opened  # database_state() of the database opened, or of the last one that could not be
        self.ever_opened = gallery is not None
        self.fixed_threshold = threshold  # --threshold; None: the default for the gallery's size
        self.threshold = self._current_threshold()
        self.checked = time.perf_counter()
        self.said = ""  # the last line said of the gallery: a database that still cannot be used is not said again

    def check(self) -> None:
        now = time.perf_counter()
        if now - self.checked < GALLERY_CHECK_S:
            return
        self.checked = now
        state = database_state(self.path)
        if self.gallery is not None and state[:2] != self.opened[:2]:
            self.close()
            self.opened = ()
            if not state:
                self.say(f"warning: gallery {self.path} is gone: every face is unknown until people are enrolled there")
        # An open that failed (another model's gallery, or one being made that has no tables yet) is tried again only
        # once the database has been written.
        if self.gallery is None and state and state != self.opened:
            self.opened = state
            what = "was replaced" if self.ever_opened else "was made"
            try:
                self.gallery = open_gallery(self.path, self.pipeline)
            except (GalleryError, OSError) as exc:
                self.say(f"warning: gallery {self.path} {what} but cannot be used, so every face is unknown: {exc}")
            else:
                self.say(f"gallery {self.path} {what}; {'re' if self.ever_opened else ''}opened it: "
                         f"{counted(len(self.gallery), 'face')}")
                self.ever_opened = True
        self.threshold = self._current_threshold()

    def _current_threshold(self) -> float:
        if self.fixed_threshold is not None:
            return self.fixed_threshold
        return self.pipeline.identify_threshold_for(len(self.gallery) if self.gallery is not None else 0)

    def say(self, line: str) -> None:
        if line != self.said:
            print(line, file=sys.stderr)
            self.said = line

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None


def local_time() -> str:
    """Now in ISO 8601, the local time with its offset from UTC: the door's clock as its operator reads it, and
    unambiguous across a change to or from summer time."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass
class Moment:
    """When and where in the source a frame was read."""
    time: str  # local_time()
    frame: int  # the source's frame number from 0, counting frames that could not be read
    video_s: float | None  # the frame's position in a video file, in seconds; None for a camera


@dataclass
class Appearance:
    """What the event log knows of a track: its first and last sight, and the name it now has."""
    first: Moment
    last: Moment
    identity: str | None
    best_similarity: float | None  # the highest of the identifications that gave it this name


class EventLog:
    """--events: JSON lines, each flushed as written, so that a crash or a kill loses nothing seen before it.

    "started" (each run: the file is appended to, and track numbers start again from 0), "appeared" (a track's
    first identification), "renamed" (identified again as someone else, or as unknown), "left" (the track ended,
    or the run did: its time, frame and video_s are its last sight's) and "stopped". A path of None writes
    nothing."""

    def __init__(self, path: str | None) -> None:
        self.name = "standard output" if path == "-" else path
        # Appended to: a log kept across restarts (a service's, or a reboot at night) keeps the days before.
        self.stream = None if path is None else sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self.appearances: dict[int, Appearance] = {}

    def write(self, event: dict) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(json_record(event) + "\n")
            self.stream.flush()
        except (OSError, OutputError) as exc:  # a full disk; OutputError: stdout's, which says the OSError
            self.discard()  # the first failure is the one said: close() does not try again
            reason = exc.__cause__ if isinstance(exc, OutputError) else exc
            raise CliError(f"cannot write the events to {self.name}: "
                           f"{getattr(reason, 'strerror', None) or reason}") from exc

    def started(self, source: str, gallery: Path) -> None:
        self.write({"event": "started", "time": local_time(), "source": source, "gallery": str(gallery)})

    def seen(self, tracks: list[Track], moment: Moment) -> None:
        for track in tracks:
            if track.track_id in self.appearances:
                self.appearances[track.track_id].last = moment

    def identified(self, track: Track, moment: Moment, threshold: float) -> None:
        identity, similarity = track.result["identity"], track.result["similarity"]
        sighting = {"time": moment.time, "frame": moment.frame, "video_s": moment.video_s, "track": track.track_id}
        named = {"identity": identity, "similarity": similarity, "threshold": round(threshold, 4),
                 "box": track.result["box"]}
        appearance = self.appearances.get(track.track_id)
        if appearance is None:
            self.appearances[track.track_id] = Appearance(moment, moment, identity, similarity)
            self.write({"event": "appeared", **sighting, **named})
        elif identity != appearance.identity:
            self.write({"event": "renamed", **sighting, "previous": appearance.identity, **named})
            appearance.identity, appearance.best_similarity = identity, similarity
        elif similarity is not None and (appearance.best_similarity is None
                                         or similarity > appearance.best_similarity):
            appearance.best_similarity = similarity

    def ended(self, open_tracks: Container[int]) -> None:
        """A "left" for each track the tracker has let go."""
        for track_id in [t for t in self.appearances if t not in open_tracks]:
            self.left(track_id)

    def left(self, track_id: int) -> None:
        appearance = self.appearances.pop(track_id)
        last = appearance.last
        # best_similarity and the frames seen let a reader drop a misfire: a stranger named for a frame or two.
        self.write({"event": "left", "time": last.time, "frame": last.frame, "video_s": last.video_s,
                    "track": track_id, "identity": appearance.identity, "best_similarity": appearance.best_similarity,
                    "first_frame": appearance.first.frame})

    def close(self, frames: int) -> None:
        """The end of the run, however it ended: a "left" for each track still open, then "stopped"."""
        for track_id in list(self.appearances):
            self.left(track_id)
        self.write({"event": "stopped", "time": local_time(), "frames": frames})
        self.discard()

    def discard(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None and stream is not sys.stdout:
            try:
                stream.close()
            except OSError:  # what it still held could not be written either: said already
                pass


@dataclass
class StopRequest:
    exit_code: int | None = None  # 128 + the signal that asked the loop to stop


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Ctrl-C, SIGTERM (kill, timeout, service managers) and SIGHUP (a closed terminal) ask the loop to stop after
    the frame in hand: the frame counted is then the frame written, and the writer is released, since an .mp4
    without its index cannot be played. A second signal ends the run without finishing the frame, for a slow
    one; a read blocked inside OpenCV still returns first, since Python runs handlers between its calls."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield request
        return

    def ask_to_stop(signum: int, _frame: object) -> None:
        if request.exit_code is not None:
            sys.exit(128 + signum)
        request.exit_code = 128 + signum

    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {name: signal.signal(getattr(signal, name), ask_to_stop) for name in names}
    try:
        yield request
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def main(argv: list[str] | None = None) -> int:
    """The `facekit-webcam` command: bad input, a missing file or Ctrl-C before the loop is one line, not a
    traceback, as for `facekit`."""
    return report_errors(lambda: run(argv), results_on_stdout=False)  # its results are a window or a video file


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="0", help="camera index or video file (default: 0)")
    parser.add_argument("--gallery", help="gallery folder (default: $FACEKIT_GALLERY or ./galleries/default)")
    parser.add_argument("--threshold", type=float,
                        help="minimum cosine similarity for a name, -1 to 1: higher is stricter (default: the "
                             "model card's identify threshold for the size of the gallery)")
    parser.add_argument("--reidentify-every", type=int, default=15, metavar="N", help="frames (default: 15)")
    parser.add_argument("--search-every", type=int, default=5, metavar="N",
                        help="frames between searches of the whole frame for new faces, not YuNet (default: 5)")
    parser.add_argument("--detector", choices=DETECTOR_BACKENDS, default="auto",
                        help=DETECTOR_HELP)
    parser.add_argument("--yunet-model", help="YuNet ONNX file (or set FACEKIT_YUNET_MODEL)")
    parser.add_argument("--weights", metavar="PATH",
                        help="embedding model (.safetensors + .json card; default: $FACEKIT_WEIGHTS or the shipped "
                             "one): the one the gallery was enrolled with")
    parser.add_argument("--min-face", type=int, metavar="PX",
                        help="smallest face width to find, in pixels (default: the live detector's own)")
    parser.add_argument("--headless", action="store_true", help="no window")
    parser.add_argument("--output", help="write the annotated video here (.mp4 or .avi)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--events", metavar="PATH",
                        help="append a JSON line for each person who appears, is renamed or leaves, with the time, "
                             "the name and its similarity (- for stdout)")
    args = parser.parse_args(argv)
    # A value out of range is one line, as `facekit` says it: the usage lines are for what the parser refuses.
    for option, value in (("--search-every", args.search_every), ("--reidentify-every", args.reidentify_every),
                          ("--max-frames", args.max_frames)):
        if value is not None and value < 1:
            raise CliError(f"{option} must be at least 1, not {value}")
    check_threshold(args.threshold)
    quiet_opencv()  # before the source opens: a file or camera that fails is said in facekit's line alone
    show_warnings_as_lines()  # as `facekit` shows them: a name the font lacks letters for is one line
    problem = (args.output and output_problem(args.output, args.source)
               or args.events and events_problem(args.events, args.output, args.source))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not args.headless:
        try:
            cv2.namedWindow("facekit")
        except cv2.error:  # facekit installs opencv-python-headless, which has no windows
            print("error: this OpenCV cannot open a window (opencv-python-headless): use --headless --output "
                  "out.mp4, or install opencv-python for a window", file=sys.stderr)
            return 2

    try:
        pipeline = FacePipeline(create_detector(args.detector, args.yunet_model, args.min_face, live=True),
                                weights=args.weights, flip=False)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gallery_path = default_gallery_path(args.gallery)
    gallery = None
    opened = database_state(gallery_path)  # before the open: a database replaced meanwhile is opened again
    # A --gallery or $FACEKIT_GALLERY that is not there is a typo, refused as `facekit identify` refuses it. The
    # built-in default may not exist yet: the camera can run before anyone is enrolled.
    from_environment = args.gallery is None and bool(os.environ.get("FACEKIT_GALLERY"))
    if args.gallery is not None or from_environment or (gallery_path / "gallery.sqlite").exists():
        try:
            gallery = open_gallery(gallery_path, pipeline)  # another model's is refused before the loop
        except GalleryError as exc:
            print(f"error: {'$FACEKIT_GALLERY: ' if from_environment else ''}{exc}", file=sys.stderr)
            return 2
        if len(gallery) == 0:
            print(f"warning: the gallery at {gallery_path} is empty; every face will be unknown until people are "
                  "enrolled", file=sys.stderr)
    else:
        print(f"warning: no gallery at {gallery_path}; every face will be unknown", file=sys.stderr)
    live_gallery = LiveGallery(gallery_path, gallery, opened, pipeline, args.threshold)
    capture = open_source(args.source)
    if capture is None:
        live_gallery.close()
        print(f"error: {unopened_source_problem(args.source)}", file=sys.stderr)
        return 2
    # A camera drops the frames a slow loop misses; a file waits for the loop, so its own rate holds.
    camera = args.source.isdigit()
    rate = frame_rate(capture)
    writer, recorded = None, 0
    tracker = FaceTracker()
    # YuNet searches a whole frame about as fast as the others search around one face, so it has no detect_near.
    searches_near = hasattr(pipeline.detector, "detect_near")
    frame_count = 0 if camera else max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))  # 0: not known
    total = frame_count
    if args.max_frames:
        total = min(total, args.max_frames) if total else args.max_frames
    # On a terminal only (disable=None): otherwise a long clip in --headless runs without a word until the end.
    progress = tqdm(total=total or None, unit="frame", disable=None, leave=False, file=sys.stderr)
    frames, faces_seen, started = 0, 0, time.perf_counter()
    frame_times = deque([started], maxlen=FPS_FRAMES + 1)  # when the last frames were done, for the fps drawn
    failed_reads, unread = 0, 0  # failures in a row now; frames passed over, a good one read after them
    events = EventLog(args.events)
    with stop_on_signals() as stop:
        try:
            events.started(args.source, gallery_path)
            while (args.max_frames is None or frames < args.max_frames) and stop.exit_code is None:
                ok, frame = capture.read()
                if not ok:
                    failed_reads += 1
                    if failed_reads >= MAX_FAILED_READS and (frames + unread + failed_reads >= frame_count
                                                             or failed_reads >= LONGEST_DAMAGED_STRETCH):
                        break
                    continue
                unread, failed_reads = unread + failed_reads, 0
                source_frame = frames + unread
                moment = Moment(local_time(), source_frame, None if camera else round(source_frame / rate, 3))
                if not searches_near or frames % args.search_every == 0:
                    faces = pipeline.detect(frame)
                else:
                    faces = pipeline.detect_near(frame, [track.box for track in tracker.tracks.values()])
                faces_seen += len(faces)
                tracks = tracker.update([f.box for f in faces], frames)
                events.seen(tracks, moment)
                events.ended(tracker.tracks)
                looks = [face_look(frame, face.box) for face in faces]
                stale = [i for i, t in enumerate(tracks)
                         if needs_identifying(t, frames, args.reidentify_every, looks[i])]
                live_gallery.check()
                if stale:
                    fresh = identify_image(pipeline, live_gallery.gallery, frame, live_gallery.threshold, top_k=1,
                                           faces=[faces[i] for i in stale])
                    for i, result in zip(stale, fresh):
                        tracks[i].result, tracks[i].last_identified = result, frames
                        tracks[i].identified_width, tracks[i].resumed = tracks[i].box[2], False
                        tracks[i].identified_look = looks[i]
                        events.identified(tracks[i], moment, live_gallery.threshold)
                results = []
                for face, track in zip(faces, tracks):
                    results.append({**track.result, "box": list(face.box), "landmarks": face.landmarks.tolist()})
                frames += 1
                progress.update()
                frame_times.append(time.perf_counter())
                recent_fps = (len(frame_times) - 1) / (frame_times[-1] - frame_times[0])
                annotated = draw_results(frame, results, fps=recent_fps)
                if args.output:
                    if writer is None:
                        fourcc = cv2.VideoWriter_fourcc(*CODECS[Path(args.output).suffix.lower()])
                        writer = cv2.VideoWriter(args.output, fourcc, rate, (frame.shape[1], frame.shape[0]))
                        if not writer.isOpened():
                            print(f"error: cannot write {args.output}", file=sys.stderr)
                            return 2
                        recording = time.perf_counter()
                    # From a camera, a loop at 10 fps recorded at the camera's 30 would play three times too fast.
                    copies = int((time.perf_counter() - recording) * rate) + 1 - recorded if camera else 1
                    for _ in range(copies):
                        writer.write(annotated)
                    recorded += max(0, copies)
                if not args.headless:
                    cv2.imshow("facekit", annotated)
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
        finally:
            progress.close()
            capture.release()
            if writer is not None:
                writer.release()
            live_gallery.close()
            if not args.headless:
                cv2.destroyAllWindows()
            events.close(frames)  # last: a disk that fills here still leaves the video playable
    if frames == 0:
        if stop.exit_code is not None:
            return stop.exit_code
        print(f"error: no frames could be read from {args.source!r}", file=sys.stderr)
        return 1
    gave_up = failed_reads >= MAX_FAILED_READS
    # Frames a file's count says were left when the reads gave up: damage at its end, or a count that OpenCV
    # estimated from the duration (some formats record none). Not counted as frames passed over.
    left_unread = frame_count - (frames + unread) if gave_up and not camera else 0
    damaged_end = left_unread >= MAX_FAILED_READS and left_unread > ESTIMATED_LENGTH_ERROR * frame_count
    written = f", written to {Path(args.output)}" if args.output else ""
    fps = frames / (frame_times[-1] - started)  # the whole run's
    # With the events on stdout, it holds JSON lines alone.
    print(f"{counted(frames, 'frame')}, {fps:.1f} frames per second, {faces_seen / frames:.2f} faces per frame"
          f"{written}", file=sys.stderr if args.events == "-" else sys.stdout)
    # As `facekit identify` exits 1 when a photo failed and the rest were done.
    source = f"camera {args.source}" if camera else repr(args.source)
    if unread:
        print(f"warning: passed over {counted(unread, 'frame')} of {source} that could not be read", file=sys.stderr)
    if damaged_end:
        print(f"warning: the last {left_unread} of the {frame_count} frames {source} gives as its length could not be "
              "read: it may be damaged", file=sys.stderr)
    elif left_unread >= MAX_FAILED_READS:
        print(f"warning: reading {source} stopped after {frames + unread} of the {frame_count} frames it gives as its "
              "length: its end may be damaged, or that length an estimate", file=sys.stderr)
    if camera and gave_up:
        print(f"error: camera {args.source} stopped giving frames ({MAX_FAILED_READS} reads in a row failed)",
              file=sys.stderr)
    if stop.exit_code is not None:
        return stop.exit_code
    return 1 if unread or damaged_end or (camera and gave_up) else 0


if __name__ == "__main__":
    sys.exit(main())
