"""Recognition: the pipeline from an image to identified faces, and enrolment of a people folder.

image -> detector (boxes + 5 landmarks) -> alignment (112x112) -> embedder -> gallery search
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facekit import FacekitWarning
from facekit.alignment import align_face, landmarks_problem
from facekit.datastore import (
    Gallery,
    GalleryError,
    Match,
    clean_identity,
    look_alike,
    refuse_reserved_name,
    shown_name,
)
from facekit.detection import (
    Detector,
    Face,
    MTCNNDetector,
    YuNetDetector,
    as_bgr,
    create_detector,
    default_narrowest_face,
)
from facekit.errors import printable_path
from facekit.imageio import IMAGE_EXTENSIONS, ImageError, decode_image, read_image_file
from facekit.representation import Embedder

# The turns find_one_face tries on a photo that shows no face as it is (degrees clockwise, and cv2.rotate's code):
# one saved on its side without its EXIF orientation, which some editors and scanners drop.
# The detectors find faces rolled up to about 60 degrees either way, so these cover every roll.
TURNS = {90: cv2.ROTATE_90_CLOCKWISE, 270: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180}
TURN_NAMES = {90: "90° clockwise", 270: "90° anticlockwise", 180: "180°"}
# The narrowest face find_one_face looks for again in a large photo whose default search skipped faces that narrow
# (it finds them from about 1/32 of the longer side: 125 px in a 4,000 px photo). Down to the detectors' own 20 px,
# the search would take a 12 MP photo at full size, seconds a photo; at 40 px MTCNN searched a 4,000x3,000 photo in
# 0.8 s here. A narrower face is blown up more than 2.8 times into the 112 px crop: a blurred enrolment.
RETRY_MIN_FACE = 40
# The score from which find_one_face takes the face it finds in a photo as it lies at its detector's word; under it
# the face is doubtful, the photo's turns are searched too, and a face scored at least this there is taken instead.
# In a photo lying on its side or upside down, MTCNN and YuNet find an "upright" face, mostly the lying face itself
# with its landmarks placed as if it stood (so its crop is not the face), else something in the background: in 866
# (MTCNN) and 1,011 (YuNet) of the 1,875 turned copies of 625 photos (600 from LFW), of which only 99 and 21 crops
# embed over 0.5 similar to the upright face. 95 % and 99.5 % of them score under these, and the face of 2 and 10 of
# the 600 upright LFW photos. Haar's scores overlap (38 of 200 upright LFW faces under 0.9), so Haar, like a
# caller's own detector, is taken at its word.
SURE_SCORE = {MTCNNDetector: 0.99, YuNetDetector: 0.9}
LIKELY_FACE_WIDTH = 0.5  # of the largest face's: a face narrower than that is not taken for the one meant
# The narrowest face enroll and add_face take as a template: its box's width in the photo's own pixels. 200 LFW people's
# first photos (faces 94 px wide), shrunk so the face was W px wide and enrolled as enroll does, against the same face
# at full size and the person's second photo at full size as the probe:
#   W px                  16    20    24    28    32    36    40    48    64   full
#   found upright/turned  0/19 82/32 200/0  (and at every width above)
#   cosine to full size    -   .829  .896  .940  .962  .973  .979  .987  .993
#   same person, mean      -   .630  .674  .699  .711  .718  .720  .726  .728  .730
#   rank-1 of 200 probes   -   .79   .88   .90   .89   .91   .91   .91   .91   .91
# From 32 px a template is about as good as at full size. Under 24 px the detector misses many faces and finds others
# only in a turned copy of the photo (32 of 200 at 20 px, 19 at 16 px), where the crop is not the face (median cosine
# 0.2 to it). Haar's boxes are 1.27 times as wide as MTCNN's (YuNet's as wide), so Haar lets faces of about 25 px by.
ENROLL_MIN_FACE = 32
# The similarity from which a face is taken for a copy of a photo enrolled as someone else (enroll, add_face). Copies of
# 100 LFW photos (JPEG re-saved at quality 60 to 90, resized 0.9 or 1.1 times, 3 to 10 % cropped) are 0.970 to 1.000
# similar to the photo (medians 0.992 to 0.999). Different photos of one person (5,291 pairs, 260 people with 5 or more
# photos): median 0.735, 99.9th percentile 0.950, the highest 0.973, shots of one sitting seconds apart; different
# people (1.46 million pairs): at most 0.827. The copy of a smaller face differs more (60 photos with a 32 px face,
# re-saved at quality 80: median 0.966, lowest 0.907; at quality 60: median 0.913), so many of those pass.
NEAR_DUPLICATE_SIMILARITY = 0.95
# The best similarity to a person's other faces under which enroll warns that a face it added to them may be someone
# else's (unlike_their_person). tools/enroll_outliers.py, on the 3,355 photos of LFW's 747 people with 3 or more, as
# enroll embeds them, each against its person's first k other photos, and every other person's photo (the stranger)
# against them; "false" counts every photo of the person, including 32 group photos whose largest face, the one enroll
# takes, is someone else's (LFW centres the labelled person), and in brackets without those:
#   k other faces               1 (two faces)  2            3            5            8
#   false warnings, 0.40        1.61 (0.95) %  0.85 (0.23)  0.85 (0.06)  0.76 (0.00)  0.85 (0.29)
#   false warnings, 0.42        2.41 (1.76) %  0.94 (0.27)  0.97 (0.12)  0.76 (0.00)  0.85 (0.29)
#   false warnings, 0.45        3.08 (2.36) %  1.16 (0.45)  1.14 (0.29)  0.98 (0.22)  0.85 (0.29)
#   strangers caught, 0.42      96.1 %         94.0         92.4         89.2         85.6
# The more faces a person has, the likelier one of them looks like the stranger: 0.42 catches 76 % with 13 others.
# It is about the model's verify threshold (0.4388): a face that would not verify as any of the person's other faces.
UNLIKE_OTHERS_SIMILARITY = 0.42
# How many of a person's newest other faces each face enroll added is compared with (one query of the gallery per
# person, then a product each): a person with thousands of faces costs what one with 50 does.
UNLIKE_OTHERS_COMPARED = 50


@dataclass
class FaceEmbedding:
    face: Face
    embedding: np.ndarray


@dataclass
class FoundFaces:
    """find_one_face's answer: the faces in the photo's own pixels, largest first; where the face was found only with
    the photo turned, the turn (degrees clockwise, a key of TURNS) and the same faces in the turned photo's pixels."""
    faces: list[Face]
    turn: int = 0
    turned_faces: list[Face] = field(default_factory=list)

    @property
    def likely_faces(self) -> int:
        """How many faces to speak of where the largest was taken: it, and each other face at least
        LIKELY_FACE_WIDTH of its width. MTCNN's misfires, a patch of hair or of a suit beside one person's face (a
        quarter of its width, scored 0.79 and 0.88), made one-person photos "2 faces"; the faces of two people side
        by side, whom a wrong pick would mix up, are 80 to 99 % of each other's width and may score under 0.9."""
        largest = self.faces[0].box[2] if self.faces else 0.0
        return sum(face.box[2] >= LIKELY_FACE_WIDTH * largest for face in self.faces)

    @property
    def warning(self) -> str | None:
        """What to tell the user of a photo that had to be turned."""
        if not self.turn:
            return None
        return f"found the face only with the photo turned {TURN_NAMES[self.turn]}: its EXIF orientation may be missing"

    @property
    def width(self) -> float:
        """The largest face's width in the photo's pixels, across the face (a turned photo's as found turned)."""
        return (self.turned_faces if self.turn else self.faces)[0].box[2]

    def crop(self, image: np.ndarray) -> np.ndarray:
        """The largest face aligned to 112x112. A turned photo's face is cut from the photo turned as it was found
        there, so its crop is pixel for pixel the one aligning that turned photo gives: the landmarks mapped back
        onto the photo as it is warp it through a matrix rounded differently (300 to 650 pixels of a turned portrait's
        crop were up to 5 levels off)."""
        image = as_bgr(image)
        if not self.turn:
            return align_face(image, self.faces[0].landmarks)
        return align_face(cv2.rotate(image, TURNS[self.turn]), self.turned_faces[0].landmarks)


@dataclass
class LoadedImage:
    path: str
    sha256: str
    image: np.ndarray | None
    faces: list[Face]
    error: str | None = None
    found: FoundFaces | None = None  # find_one_face's answer, for a photo loaded expecting a face; faces are its faces
    known: bool = False  # its sha256 was among load's skip_sha256: hashed only, neither decoded nor searched


class FacePipeline:
    """Detect, align and embed. Build once and reuse: loading the models is the slow part.

    Threads may share one pipeline and get what sequential calls give: facekit's detectors each hold a lock around
    their OpenCV objects (FaceDetectorYN, MTCNN's dnn nets and Haar's cascades keep per-call state), while the
    landmark net, alignment and the embedder (ONNX Runtime's InferenceSession.run, torch in inference mode) are safe
    to run at once. A detector of the caller's own must be thread-safe itself."""

    def __init__(self, detector: Detector | None = None, embedder: Embedder | None = None, *,
                 detector_backend: str = "auto", yunet_model: str | os.PathLike[str] | None = None,
                 weights: str | os.PathLike[str] | None = None,
                 min_face: int | None = None, flip: bool = True, device: str | None = None) -> None:
        self.detector = detector or create_detector(detector_backend, yunet_model, min_face)
        self.embedder = embedder or Embedder(weights, device=device)
        self.flip = flip

    @property
    def threshold(self) -> float:
        return self.embedder.threshold

    @property
    def identify_threshold(self) -> float:
        return self.embedder.identify_threshold

    def identify_threshold_for(self, gallery_faces: int) -> float:
        return self.embedder.identify_threshold_for(gallery_faces)

    def detect(self, image: np.ndarray, largest: bool = False) -> list[Face]:
        """largest: only the largest face will be used (enrolment), so a detector that can look for large faces
        first (MTCNN's and Haar's detect_largest) may skip smaller ones."""
        return _detected(self.detector, image, largest)

    def find_one_face(self, image: np.ndarray, largest: bool = False) -> FoundFaces:
        """detect() for a photo that should hold a face (enrolment, verify). Where it finds none, the photo is
        searched once more for faces down to RETRY_MIN_FACE pixels, if the default search of a photo this large
        skipped them, then turned 90° clockwise, 90° anticlockwise and 180°. The largest face found is doubtful
        where it scores under the detector's SURE_SCORE: the turns are then searched too, and their best face taken
        where it scores at least that. The faces are given in the photo's own pixels either way.

        Up to five searches instead of one, but only where no face or a doubtful one was found: a photo with a face
        pays nothing (2 of 600 LFW photos are doubtful to MTCNN, 10 to YuNet), and identify, for which 0 faces is an
        answer, does not call this, so its empty photos do not pay either."""
        faces = self.detect(image, largest)
        if not faces:
            narrowest = default_narrowest_face(self.detector, image.shape)
            if narrowest is not None and narrowest > RETRY_MIN_FACE:
                small_faces = copy.copy(self.detector)  # shares the networks and their lock; only min_face differs
                small_faces.min_face = RETRY_MIN_FACE
                faces = _detected(small_faces, image, largest)
        sure_score = self._sure_score()
        if faces and (sure_score is None or faces[0].score >= sure_score):
            return FoundFaces(faces)
        return self._faces_or_a_sure_turn(image, faces, largest)

    def find_faces(self, image: np.ndarray, faces: list[Face] | None = None) -> FoundFaces:
        """Every face, for identify: detect()'s (or faces, detected already as the photo lies), unless the detector
        doubts each one (under its SURE_SCORE): the photo's turns are then searched as find_one_face searches them,
        and the faces of a turn that shows one the detector is sure of are taken instead. In a photo lying on its
        side or upside down, the "faces" found are mostly the lying face read as if upright, whose crop is not the
        face and was named as a stranger at 0.63. A photo in which no face is found is not searched again: for
        identify 0 faces is an answer, and photos without people would pay four searches."""
        faces = self.detect(image) if faces is None else faces
        sure_score = self._sure_score()
        if not faces or sure_score is None or max(face.score for face in faces) >= sure_score:
            return FoundFaces(faces)
        return self._faces_or_a_sure_turn(image, faces, largest=False)

    def _faces_or_a_sure_turn(self, image: np.ndarray, faces: list[Face], largest: bool) -> FoundFaces:
        """faces, found as the photo lies (doubtful ones, or none), or the faces of the turn of the photo that shows
        the best scored face (_best_turn), in the photo's own pixels: where faces were found, only if the detector is
        sure of that face, since two doubtful faces say nothing of the turn; where none were, whatever its score."""
        best_turn, best_faces = self._best_turn(image, largest)
        if faces and not (best_faces and best_faces[0].score >= self._sure_score()):
            return FoundFaces(faces)
        return FoundFaces([_turned_back(face, image.shape, best_turn) for face in best_faces], best_turn, best_faces)

    def _sure_score(self) -> float | None:
        return next((score for kind, score in SURE_SCORE.items() if isinstance(self.detector, kind)), None)

    def _best_turn(self, image: np.ndarray, largest: bool) -> tuple[int, list[Face]]:
        """The turn (degrees clockwise) whose copy of the photo shows the best scored face, and its faces there.
        Every turn is searched, not the first that shows a face: MTCNN takes scikit-image's astronaut lying with her
        head to the right for an upright face (score 0.985; its embedding 0.31 from hers), so her photo upside down
        showed that face at the quarter turn tried before the half turn that shows her upright (0.99999)."""
        best_turn, best_faces = 0, []
        for turn, code in TURNS.items():
            turned_faces = self.detect(cv2.rotate(image, code), largest)
            if turned_faces and (not best_faces or turned_faces[0].score > best_faces[0].score):
                best_turn, best_faces = turn, turned_faces
        return best_turn, best_faces

    def embed_found(self, image: np.ndarray, found: FoundFaces) -> np.ndarray:
        """The embedding of find_one_face's largest face."""
        return self.embedder.embed(found.crop(image)[None], flip=self.flip)[0]

    def detect_near(self, image: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[Face]:
        """Faces around known boxes (a video's last ones), as the detector's detect_near finds them."""
        return _alignable(self.detector.detect_near(image, boxes))

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        image = as_bgr(image)  # a grey array is detected in, so it must align too
        crops = np.stack([align_face(image, face.landmarks) for face in faces]) if faces else np.zeros((0, 112, 112, 3),
                                                                                                       np.uint8)
        return self.embedder.embed(crops, flip=self.flip)

    def analyze(self, image: np.ndarray) -> list[FaceEmbedding]:
        faces = self.detect(image)
        return [FaceEmbedding(f, e) for f, e in zip(faces, self.embed_faces(image, faces))]

    def load(self, path: str | os.PathLike[str], largest: bool = False, expect_face: bool = False,
             skip_sha256: Container[str] = frozenset()) -> LoadedImage:
        """Read, hash, decode and detect one file; a bad file becomes an error string, never an exception.
        expect_face: the photo should hold a face, so find_one_face looks harder where detect() finds none.
        skip_sha256: digests of content the caller has no use for (enroll's already enrolled photos): such a file is
        returned known, with no image, faces or error, as decoding and detecting it is most of the time it takes."""
        path = str(path)
        try:
            data = read_image_file(path)
        except ImageError as exc:
            return LoadedImage(path, "", None, [], str(exc))
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in skip_sha256:
            return LoadedImage(path, sha256, None, [], known=True)
        try:
            image = decode_image(data, name=path)
        except ImageError as exc:
            return LoadedImage(path, sha256, None, [], str(exc))
        if expect_face:
            found = self.find_one_face(image, largest)
            return LoadedImage(path, sha256, image, found.faces, found=found)
        return LoadedImage(path, sha256, image, self.detect(image, largest))

    def load_many(self, paths: Iterable[str | os.PathLike[str]], workers: int = 1, largest: bool = False,
                  expect_face: bool = False, skip_sha256: Container[str] = frozenset()) -> Iterator[LoadedImage]:
        """load() over many files, decoding and detecting ahead of the caller in a worker thread.

        OpenCV and torch release the GIL, so one thread of look-ahead lets detection of the next
        image overlap with the embedding of this one. skip_sha256 is read in that thread while the caller runs, so it
        must not change meanwhile (a frozenset, say).
        """
        if isinstance(paths, (str, bytes, os.PathLike)):  # list() would take a str's characters as paths
            raise TypeError(f"load_many takes a list of paths, not one {type(paths).__name__}: pass [path], or "
                            "use load(path)")
        paths = list(paths)
        if workers <= 0 or len(paths) < 2:
            yield from (self.load(p, largest, expect_face, skip_sha256) for p in paths)
            return
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            window = max(2, 2 * workers)
            pending = [pool.submit(self.load, p, largest, expect_face, skip_sha256) for p in paths[:window]]
            next_path = len(pending)
            while pending:
                result = pending.pop(0).result()
                if next_path < len(paths):
                    pending.append(pool.submit(self.load, paths[next_path], largest, expect_face, skip_sha256))
                    next_path += 1
                yield result
        finally:
            # A caller that stops early (a break, an error, Ctrl-C) waits for the one load running, not for the
            # whole window queued behind it: decoding and detecting photos no one will look at.
            pool.shutdown(wait=True, cancel_futures=True)


def _alignable(faces: list[Face]) -> list[Face]:
    # A detector (perhaps the caller's own) may give points no warp can use; such a face cannot be embedded.
    return [face for face in faces if landmarks_problem(face.landmarks) is None]


def _detected(detector: Detector, image: np.ndarray, largest: bool) -> list[Face]:
    detect_largest = getattr(detector, "detect_largest", None) if largest else None
    return _alignable(detect_largest(image) if detect_largest else detector.detect(image))


def _turned_back(face: Face, shape: tuple[int, ...], turn: int) -> Face:
    """A face found in the photo turned `turn` degrees clockwise, in the pixels of the photo of this shape."""
    height, width = shape[:2]
    # Where each pixel of the turned photo came from (cv2.rotate moves whole pixels), pixel centres at whole numbers.
    back = np.array({90: [[0, 1, 0], [-1, 0, height - 1]], 270: [[0, -1, width - 1], [1, 0, 0]],
                     180: [[-1, 0, width - 1], [0, -1, height - 1]]}[turn], np.float64)
    x, y, w, h = face.box
    # A box's x and y are its edges, half a pixel before the centre of its first pixel.
    centre_x, centre_y = back[:, :2] @ (x + w / 2 - 0.5, y + h / 2 - 0.5) + back[:, 2] + 0.5
    if turn != 180:
        w, h = h, w
    landmarks = (face.landmarks.astype(np.float64) @ back[:, :2].T + back[:, 2]).astype(np.float32)
    return Face(box=(float(centre_x - w / 2), float(centre_y - h / 2), float(w), float(h)), score=face.score,
                landmarks=landmarks)


def primary_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The face a benchmark photo is about: large and near the centre (LFW centres its subject)."""
    if not faces:
        return None
    height, width = image_shape[:2]
    centre = np.array([width / 2, height / 2])

    def weight(face: Face) -> float:
        x, y, w, h = face.box
        offset = np.linalg.norm(np.array([x + w / 2, y + h / 2]) - centre) / max(width, height)
        return face.area * (1.0 - offset) ** 4

    return max(faces, key=weight)


# --- identification -------------------------------------------------------------------------------------


def identify_image(pipeline: FacePipeline, gallery: Gallery | None, image: np.ndarray, threshold: float,
                   top_k: int = 3, faces: list[Face] | None = None) -> list[dict]:
    """Every face in the image with its identity (or None) and its top-k candidates. One person is in a photo once:
    where two faces' best candidate is the same identity, the more similar face takes it and the other its next
    candidate past the threshold, or None (its similarity is then that candidate's, or its best's).

    faces: the image's, found already (find_faces's, or a video frame's detect()); None: find_faces's."""
    if gallery is not None:
        gallery.bind_model(pipeline.embedder.model_id)
    faces = pipeline.find_faces(image).faces if faces is None else faces
    embeddings = pipeline.embed_faces(image, faces)
    searchable = gallery is not None and len(gallery) > 0 and len(faces) > 0
    matches = gallery.search(embeddings, k=max(1, top_k)) if searchable else [[] for _ in faces]
    named = _one_face_per_identity(matches, threshold)
    results = []
    for index, (face, candidates) in enumerate(zip(faces, matches)):
        chosen = named.get(index) or (candidates[0] if candidates else None)
        results.append({
            "box": [round(float(v), 1) for v in face.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
            "identity": chosen.identity if index in named else None,
            # None, not 0.0 (a cosine a face can have), where there was no one to compare with: an empty gallery.
            "similarity": round(float(chosen.similarity), 4) if chosen else None,
            "candidates": [{"identity": m.identity, "similarity": round(float(m.similarity), 4)}
                           for m in candidates[:top_k]],
        })
    return results


def _one_face_per_identity(matches: list[list[Match]], threshold: float) -> dict[int, Match]:
    """Face index -> the candidate it is named as: the most similar (face, candidate) pairs past the threshold
    first, each face and each identity used once. A stranger who looks like someone standing beside them is then
    unknown rather than a second copy of that person (a group photo holds each person once)."""
    pairs = sorted(((candidate.similarity, index, rank, candidate) for index, candidates in enumerate(matches)
                    for rank, candidate in enumerate(candidates) if candidate.similarity >= threshold),
                   key=lambda pair: (-pair[0], pair[1], pair[2]))
    named: dict[int, Match] = {}
    taken: set[str] = set()
    for _, index, _, candidate in pairs:
        if index not in named and candidate.identity not in taken:
            named[index] = candidate
            taken.add(candidate.identity)
    return named


# --- enrolment ------------------------------------------------------------------------------------------


class HeldInterrupts:
    """A block in which Ctrl-C (SIGINT), once hold() has been called, is noted and raised as KeyboardInterrupt only
    when the block has ended, so that the work held runs whole; before hold() it stops the block at once.

    Outside the main thread, or where SIGINT is ignored or has a handler of the program's own, it changes nothing."""

    def __init__(self, hold: bool = False) -> None:
        self.holding = hold
        self.interrupted = False
        self._previous: object = None

    def hold(self) -> None:
        self.holding = True

    def _note(self, _signum: int, _frame: object) -> None:
        if not self.holding or self.interrupted:  # a second Ctrl-C: whoever pressed it will not wait
            raise KeyboardInterrupt
        self.interrupted = True

    def __enter__(self) -> HeldInterrupts:
        if threading.current_thread() is threading.main_thread() and (
                signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.interrupted and exc_type is None:  # an error of the block's own says more, and stops the run too
            raise KeyboardInterrupt


@dataclass
class EnrollReport:
    people: list[str] = field(default_factory=list)  # sorted: the report is plain data, json.dumps(asdict(report))
    images: int = 0
    files: int = 0  # images and the other files passed over, so enrolled + already_enrolled + skipped add up to it
    enrolled: int = 0
    already_enrolled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (path, identity): faces taken out by sync
    # (path, identity, old path, old identity): faces sync gave to another person, their photo moved to that folder
    moved: list[tuple[str, str, str, str]] = field(default_factory=list)


def template_min_face(pipeline: FacePipeline) -> int:
    """The narrowest face enroll and add_face take: ENROLL_MIN_FACE, or less where the pipeline's detector was asked
    to find smaller faces (`--min-face`): one who asks to find faces that small means to enrol them."""
    asked = getattr(pipeline.detector, "min_face", None)
    return min(ENROLL_MIN_FACE, asked) if asked else ENROLL_MIN_FACE


def too_small_for_template(found: FoundFaces, min_width: int) -> str | None:
    """Why find_one_face's largest face makes no template, if it is narrower than min_width."""
    if found.width >= min_width:
        return None
    return f"the face is {int(found.width)} px wide; a template needs {min_width} px or more"


def near_copy_refusal(name: str, copy_of: Match, identity: str, remover: str) -> str:
    """What enroll and add_face say of a face not added as a near copy (copy_enrolled_as_another). A face added from
    an array or bytes has no file to name, and its path would take out every face so added: its id is named."""
    unnamed = copy_of.source_path in ("<array>", "<bytes>")
    source = f"face {copy_of.embedding_id}, added as {copy_of.source_path}" if unnamed else copy_of.source_path
    return (f"{name}: nearly the same photo ({source}, similarity {copy_of.similarity:.3f}) is enrolled as "
            f"{copy_of.identity}; not added to {identity}" + ("" if unnamed else f" ({remover} takes it out of the "
                                                                                 "gallery)"))


def copy_enrolled_as_another(identity: str, matches: Iterable[Match]) -> Match | None:
    """The most similar of a face's matches enrolled as another identity, where it is similar enough to be a copy of
    the same photo (NEAR_DUPLICATE_SIMILARITY): a re-saved copy under a second name would answer for the first
    person's photos. Near copies under the same identity are that person's."""
    other = max((match for match in matches if match.identity != identity), key=lambda match: match.similarity,
                default=None)
    return other if other is not None and other.similarity >= NEAR_DUPLICATE_SIMILARITY else None


def unlike_their_person(gallery: Gallery, identity: str, added: dict[int, str]) -> list[str]:
    """A warning for each face enroll added to identity (added: face id -> its photo's path as given) that is unlike
    all of the person's other faces, enrolled before or in the same run (best similarity under
    UNLIKE_OTHERS_SIMILARITY): a mislabelled photo, or a group photo whose largest face is someone else's, would name
    that stranger as the person from then on. Only warned of: the labels are the user's. Each face is compared with
    the person's UNLIKE_OTHERS_COMPARED newest other faces, so a person with thousands costs what one with 50 does.
    Where the person has two faces only, one warning names both: it cannot tell which of them is someone else."""
    limit = UNLIKE_OTHERS_COMPARED + len(added)
    ids, paths, vectors = gallery.newest_faces(identity, limit)
    shown = [added.get(face_id) or (path if path not in ("<array>", "<bytes>") else f"face {face_id}, added as {path}")
             for face_id, path in zip(ids, paths)]
    remover = "(`facekit gallery remove-photo` takes it out of the gallery)"
    if len(ids) == 2:  # the person's only two faces (limit is more)
        similarity = float(vectors[0] @ vectors[1])
        if similarity >= UNLIKE_OTHERS_SIMILARITY:
            return []
        return [f"{shown[0]}: unlike {shown[1]}, {identity}'s only other face (similarity {similarity:.2f}): is one "
                f"of the two a photo of someone else? {remover}"]
    reference = vectors[:UNLIKE_OTHERS_COMPARED + 1]
    if len(reference) < 2:
        return []
    rows = [row for row, face_id in enumerate(ids) if face_id in added]
    similarity = vectors[rows] @ reference.T
    for index, row in enumerate(rows):  # a face is not its own other; one older than the reference skips the oldest
        similarity[index, min(row, UNLIKE_OTHERS_COMPARED)] = -np.inf
    others = len(reference) - 1
    whole = len(ids) < limit and len(ids) == len(reference)  # every other face of the person was compared
    compared = f"{identity}'s other {others} faces" if whole else f"{identity}'s {others} newest other faces"
    return [f"{shown[row]}: unlike {compared} (best similarity {best:.2f}): a photo of someone else? {remover}"
            for row, best in zip(rows, similarity.max(axis=1)) if best < UNLIKE_OTHERS_SIMILARITY][::-1]


def refuse_names_the_locale_misreads(names: Iterable[str]) -> None:
    """A ValueError where Python reads file names in an encoding other than UTF-8 (a Latin-1 or ASCII locale) and a
    name is UTF-8 read so: "José_Müller" would be stored as "JosÃ©_MÃ¼ller", a new person, to whom --sync moved her
    photos, or refused as not UTF-8. A name that is not UTF-8 (Latin-1 written under a Latin-1 locale) reads right."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":
        return
    for name in names:
        raw = os.fsencode(name)
        if not raw.isascii():
            try:
                meant = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            raise ValueError(f"file names are read as {encoding} under this locale, which misreads the folder name "
                             f"{meant!r} (UTF-8): run with PYTHONUTF8=1 or a UTF-8 locale (LC_ALL=C.UTF-8)")


def collect_people(people_dir: str | os.PathLike[str], *,
                   keep_reserved: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(identity, image path) pairs from a folder of folders; loose images are named after their stem.

    Returns the pairs and the entries skipped with a reason (a folder that cannot be read among them, and one named
    as no new identity can be, unless keep_reserved: enroll refuses that name only once it knows the folder was not
    renamed in the gallery). Symlinked folders are not followed, so a link loop cannot trap the walk. Entries
    whose names differ only in what clean_identity takes away ("Ann" and "Ann ") are one person, with a
    FacekitWarning, as such names are easily made by mistake.
    """
    root = Path(people_dir)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root} (one sub-folder of photos per person is read: put a photo in "
                                 "a folder named after its person, and give the folder above it)")
    refuse_names_the_locale_misreads(entry.name for entry in root.iterdir())
    pairs: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    spellings: dict[str, set[str]] = {}  # identity -> the entry names that give it

    def add(identity: str, path: Path) -> None:
        try:
            name = clean_identity(identity)
            if not keep_reserved:
                refuse_reserved_name(name)
        except GalleryError as exc:
            skipped.append((str(path), str(exc)))
            return
        pairs.append((name, str(path)))
        spellings.setdefault(name, set()).add(identity)

    def unreadable(error: OSError) -> None:  # os.walk passes over a folder it cannot list without a word
        skipped.append((str(error.filename), f"cannot read folder: {error.strerror or error}"))

    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):  # see _visible
            continue
        if entry.is_dir() and not entry.is_symlink():
            for dirpath, dirnames, filenames in os.walk(entry, onerror=unreadable, followlinks=False):
                dirnames[:] = _visible(dirnames)
                # os.walk lists a symlinked folder and passes over it without a word; one at the top is reported.
                skipped.extend((str(Path(dirpath) / name), "symlinked folder not followed") for name in dirnames
                               if (Path(dirpath) / name).is_symlink())
                for name in _visible(filenames):
                    path = Path(dirpath) / name
                    if path.suffix.lower() in IMAGE_EXTENSIONS:
                        add(entry.name, path)
                    else:
                        skipped.append((str(path), "not an image file name"))
        elif entry.is_dir():
            skipped.append((str(entry), "symlinked folder not followed"))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            add(entry.stem, entry)
        else:
            skipped.append((str(entry), "not an image file name"))
    for name, spelt in spellings.items():
        if len(spelt) > 1:
            warnings.warn(f"{', '.join(map(repr, sorted(spelt)))} in {root} are all enrolled as {name!r}: names are "
                          "compared without the spaces around them and with accents in one Unicode form",
                          FacekitWarning, stacklevel=2)
    return pairs, skipped


# Each batch of enroll ends in a checkpoint that rewrites the whole index (0.79 s at 300,000 faces, where a photo takes
# some 30 ms to embed, so that 16-photo batches took three times as long there): a large gallery's batches take a photo
# more per this many faces enrolled (16 photos up to 32,000 faces, 150 at 300,000), keeping the rewrite a small share.
FACES_PER_BATCH_PHOTO = 2000


def enroll(pipeline: FacePipeline, gallery: Gallery, people_dir: str | os.PathLike[str], *, workers: int = 1,
           progress: bool = True, batch_images: int = 16, sync: bool = False) -> EnrollReport:
    """Enrol one face (the largest) per image, recorded by its absolute path. Files whose content hash is enrolled
    already are skipped: those enrolled when enroll starts are read and hashed only, neither decoded nor searched.

    Faces are embedded in batches across images (batch_images photos, or a photo per FACES_PER_BATCH_PHOTO faces
    enrolled where that is more), and each batch is added under one hold of the gallery's writer
    lock, a photo per transaction, then checkpointed: a kill loses at most the batch in flight, never anything
    committed before it, and a Ctrl-C (KeyboardInterrupt) waits for the batch's commits and checkpoint to end.

    A folder renamed in the gallery only (see _follow_renamed_people) adds to the person it was renamed to.

    With sync, the faces enrolled from a path inside people_dir whose photo is gone from it or has changed are then
    removed (listed in report.removed), unless their photo was renamed or moved inside people_dir: then the face is
    recorded at its new path, and as the person whose folder holds it now (listed in report.moved where that is
    someone else); faces enrolled from anywhere else are left alone, unless people_dir was moved (see _sync_photos
    and _moved_here).

    A face narrower than template_min_face fails; one that is nearly the same photo as a face enrolled as someone
    else (copy_enrolled_as_another) is not added, with a warning, and counted as already enrolled, as an exact copy is.
    A face added that is unlike its person's other faces is warned of once the run has ended (unlike_their_person).
    """
    from tqdm import tqdm

    gallery.bind_model(pipeline.embedder.model_id)  # before any detection: a refusal should come at once
    pairs, skipped = collect_people(people_dir, keep_reserved=True)
    photos_at_start = gallery.photos()
    batch_images = max(batch_images, len(photos_at_start) // FACES_PER_BATCH_PHOTO)
    pairs, refused = _follow_renamed_people(gallery, photos_at_start, people_dir, pairs)
    skipped = [*skipped, *refused]
    report = EnrollReport(skipped=list(skipped), files=len(pairs) + len(skipped))
    report.people = sorted({identity for identity, _ in pairs})
    names_at_start = {photo["identity"] for photo in photos_at_start}
    new_people: set[str] = set()  # the people this run added, who were not enrolled before it
    identity_of = {path: identity for identity, path in pairs}
    hashed: dict[str, str] = {}  # absolute path -> sha256, of every listed photo that could be read
    enrolled_as_another: dict[str, str] = {}  # absolute path -> its warning, which sync withdraws if it moves the face
    added_to: dict[str, dict[int, str]] = {}  # identity -> {face id: path} of each face this run added or moved
    pending: list[tuple[str, LoadedImage, Face, np.ndarray]] = []  # (identity, photo, face, aligned crop)
    # Read once, for the look-ahead thread, which does not query the gallery photo by photo: decoding and detecting
    # took 2.6 s of 3.8 s in a second enroll of 74 LFW photos. already_enrolled still has the last word, for photos
    # enrolled since (by another enroll, or a copy earlier in this one).
    enrolled_at_start = frozenset(photo["sha256"] for photo in photos_at_start)
    min_width = template_min_face(pipeline)
    # With sync, a face enrolled from people_dir whose photo is no longer listed there is about to go (or to follow
    # its photo): it must not keep a re-saved copy filed under another person from being enrolled.
    inside, listed = _recorded_prefix(people_dir), {recorded_path(path): identity for identity, path in pairs}

    def stays(match: Match) -> bool:
        return not (sync and match.source_path.startswith(inside) and match.source_path not in listed)

    def already_enrolled(item: LoadedImage, identity: str) -> bool:
        """Counted as such; a photo enrolled as someone else is said so, as a folder may hold a wrong photo."""
        holder = gallery.source_identity(item.sha256)
        if holder is None:
            return False
        report.already_enrolled += 1
        if holder != identity:
            warning = (f"{item.path}: the same photo is enrolled as {holder}; not added to {identity} "
                       "(`facekit gallery remove-photo` takes it out of the gallery)")
            report.warnings.append(warning)
            enrolled_as_another[recorded_path(item.path)] = warning
        return True

    def flush() -> None:
        if not pending:
            return
        crops = np.stack([crop for *_, crop in pending])
        embeddings = pipeline.embedder.embed(crops, flip=pipeline.flip)
        # Ctrl-C stops the wait for the lock at once, but not the batch's commits and the index checkpoint after
        # them: landing between the two, it left index files that lacked committed faces, which the next open
        # repaired and `gallery check` reported.
        with HeldInterrupts() as interrupts, gallery.writer():
            interrupts.hold()
            gallery.bind_model(pipeline.embedder.model_id)
            # One search for the batch, under the writer lock: no other writer's face lands between it and the adds.
            # k=2: where the best identity is the face's own, the next is the best of the others.
            nearest = gallery.search(embeddings, k=2)
            added: list[tuple[str, int, str, np.ndarray]] = []  # (identity, id, path, embedding): this batch's faces
            for (identity, item, face, _), embedding, matches in zip(pending, embeddings, nearest):
                if already_enrolled(item, identity):  # the same file may sit twice in one batch
                    continue
                # The batch's own faces added so far, which its search came too early to see.
                copy_of = copy_enrolled_as_another(identity, [
                    *filter(stays, matches), *(Match(who, float(vector @ embedding), face_id, path)
                                               for who, face_id, path, vector in added)])
                if copy_of is not None:
                    report.already_enrolled += 1
                    report.warnings.append(near_copy_refusal(item.path, copy_of, identity,
                                                             "`facekit gallery remove-photo`"))
                    continue
                path = recorded_path(item.path)
                face_id = gallery.add(identity, embedding[None], [{"path": path, "sha256": item.sha256,
                                                                   "box": [float(v) for v in face.box]}])[0]
                added.append((identity, face_id, path, embedding))
                added_to.setdefault(identity, {})[face_id] = item.path
                report.enrolled += 1
                if identity not in names_at_start:
                    new_people.add(identity)
        pending.clear()

    # Closed however the loop ends: a Ctrl-C's or an error's line must not be written onto the bar's.
    with tqdm(total=len(pairs), desc="enrolling", unit="img", disable=not progress, file=sys.stderr) as bar:
        for item in pipeline.load_many([path for _, path in pairs], workers=workers, largest=True, expect_face=True,
                                       skip_sha256=enrolled_at_start):
            bar.update(1)
            report.images += 1
            if item.known and not already_enrolled(item, identity_of[item.path]):
                # Taken out of the gallery since enroll started (gallery remove-photo), so not decoded: it is now.
                item = pipeline.load(item.path, largest=True, expect_face=True)
            if item.sha256:
                hashed[recorded_path(item.path)] = item.sha256
            if item.known:  # counted by already_enrolled above
                continue
            if item.error:
                report.skipped.append((item.path, item.error))
                continue
            if already_enrolled(item, identity_of[item.path]):
                continue
            if not item.faces:
                report.skipped.append((item.path, "no face found"))
                continue
            too_small = too_small_for_template(item.found, min_width)
            if too_small:
                report.skipped.append((item.path, too_small))
                continue
            if item.found.likely_faces > 1:
                report.warnings.append(f"{item.path}: {item.found.likely_faces} faces, enrolled the largest")
            if item.found.warning:
                report.warnings.append(f"{item.path}: {item.found.warning}")
            crop = item.found.crop(item.image)
            # A batch waits with its crops, not its photos: 16 decoded 24 MP photos are over a GB.
            item.image = None
            pending.append((identity_of[item.path], item, item.faces[0], crop))
            if len(pending) >= batch_images:
                flush()
        flush()
    if sync:
        # os.walk's error (see collect_people): under such a folder a photo's absence says nothing.
        unlisted = [path for path, reason in skipped if reason.startswith("cannot read folder")]
        report.removed, moved = _sync_photos(gallery, people_dir, listed, hashed, unlisted,
                                             _unnamed_content(skipped))
        report.moved = [(face["path"], face["identity"], face["old_path"], face["old_identity"]) for face in moved
                        if face["identity"] != face["old_identity"]]
        for face in moved:  # a photo moved into another person's folder is checked as one added to them
            if face["identity"] != face["old_identity"]:
                added_to.setdefault(face["identity"], {})[face["id"]] = face["path"]
        withdrawn = {enrolled_as_another.get(path) for path, *_ in report.moved}
        report.warnings = [warning for warning in report.warnings if warning not in withdrawn]
    # After the sync, which takes out the faces of photos gone from people_dir (no one's other faces now) and gives
    # a photo moved to another person's folder to that person, a mislabel as an added photo would be.
    for identity, added in added_to.items():
        report.warnings.extend(unlike_their_person(gallery, identity, added))
    # After the sync: a folder whose case was put right moves its faces, and leaves no other spelling behind.
    if new_people:
        report.warnings.extend(_differs_in_case_only(sorted(new_people), [name for name, _ in gallery.identities()]))
    return report


def _differs_in_case_only(new_people: list[str], enrolled: list[str]) -> list[str]:
    """A warning for each person new in this run whose name only the case tells from other enrolled ones': a folder
    "Obama" beside an enrolled "obama" became a second person without a word."""
    spellings: dict[str, list[str]] = {}  # one pass over the names: a run may add thousands to 100,000 people
    for other in sorted(enrolled):
        spellings.setdefault(other.casefold(), []).append(other)
    warnings = []
    for name in new_people:
        others = [other for other in spellings.get(name.casefold(), []) if other != name]
        if others:
            warnings.append(f"{name!r} is enrolled as a new person, while {', '.join(map(repr, others))} "
                            f"{'is' if len(others) == 1 else 'are'} enrolled too: if they are one person, "
                            f"`facekit gallery rename {name!r} {others[0]!r} --merge` joins them")
    return warnings


def recorded_path(path: str | os.PathLike[str]) -> str:
    """A photo's path as the gallery records it: absolute, so that it still names the photo from another folder
    (abspath, not resolve, keeps a symlink as the user named it), and printable (printable_path)."""
    return printable_path(os.path.abspath(path))


def _recorded_prefix(folder: str | os.PathLike[str]) -> str:
    """What the paths enroll records under folder start with: folder's recorded_path, ending in a separator, so
    that a sibling folder whose name starts with folder's is not taken for it."""
    return os.path.join(recorded_path(folder), "")


def _person_folder(inside: str, path: str) -> str:
    """The entry of people_dir (its _recorded_prefix: inside) a recorded path lies under: its person's folder, or a
    loose photo's own name."""
    return path[len(inside):].split(os.sep, 1)[0]


def _moved_here(path: str, listed_relative: set[str]) -> str | None:
    """Where a face recorded outside people_dir now lies in it, relative to it, if people_dir (or a folder above it)
    was moved: its file is gone, and the end of its recorded path, from its person's folder on, is a listed photo.
    None otherwise: a photo added from elsewhere and then moved into people_dir keeps its face as it was enrolled.
    "<array>" and "<bytes>" are no paths, and an escaped POSIX name cannot be looked up."""
    if not os.path.isabs(path) or (os.name != "nt" and "\\x" in path):
        return None
    parts = path.split(os.sep)
    tail = next((tail for depth in range(1, len(parts)) if (tail := os.sep.join(parts[-depth:])) in listed_relative),
                None)
    return tail if tail and not os.path.lexists(path) else None  # a stat only where a listed photo matches


def _follow_renamed_people(gallery: Gallery, photos: list[dict], people_dir: str | os.PathLike[str],
                           pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """pairs, with a folder's photos under the name `gallery rename` gave its person: a folder whose name is no
    identity in the gallery, while every face enrolled from it is one other identity's. Else each new photo went to a
    new person named after the folder (one person split in two), and every enrolled one was warned of as someone
    else's. A loose photo in people_dir counts as its own folder. photos: the gallery's, as Gallery.photos() gives
    them (enroll reads them once).

    Returns those pairs, and the photos refused as collect_people refuses them: those whose person's name is
    reserved. Refused only here: a folder so named may be a person of a gallery from before the name was reserved,
    whom `gallery rename` has given another name since, and then its photos are that person's."""
    enrolled = {name for name, _ in gallery.identities()}
    followed = pairs
    if not all(identity in enrolled for identity, _ in pairs):
        inside = _recorded_prefix(people_dir)
        listed_relative = {recorded_path(path)[len(inside):] for _, path in pairs}
        holders: dict[str, set[str]] = {}
        for photo in photos:
            # A face recorded in people_dir before it was moved here counts as recorded here (_moved_here).
            relative = (photo["path"][len(inside):] if photo["path"].startswith(inside)
                        else _moved_here(photo["path"], listed_relative))
            if relative:
                holders.setdefault(relative.split(os.sep, 1)[0], set()).add(photo["identity"])
        followed = []
        for identity, path in pairs:
            holder = holders.get(_person_folder(inside, recorded_path(path)), set())
            followed.append((next(iter(holder)) if identity not in enrolled and len(holder) == 1 else identity, path))
    # A new person's name that looks exactly like another's (an enrolled one, or a folder's before it here) would
    # be a second person no list could tell apart: refused as Gallery.add would refuse it, for that folder alone.
    looks: dict[str, str] = {shown_name(name): name for name in enrolled}
    kept, refused = [], []
    for identity, path in followed:
        try:
            refuse_reserved_name(identity)
            if identity not in enrolled and (first := looks.setdefault(shown_name(identity), identity)) != identity:
                raise look_alike(identity, first)
        except GalleryError as exc:
            refused.append((path, str(exc)))
        else:
            kept.append((identity, path))
    return kept, refused


def _unnamed_content(skipped: list[tuple[str, str]]) -> set[str]:
    """The sha256 of the photos collect_people passed over for their folder's name (one no identity can have): a
    photo moved into such a folder is not gone, and sync must not remove its face."""
    digests = set()
    for path, reason in skipped:
        if reason.startswith("identity name") and Path(path).suffix.lower() in IMAGE_EXTENSIONS:
            try:
                digests.add(hashlib.sha256(Path(path).read_bytes()).hexdigest())
            except OSError:
                continue
    return digests


def _sync_photos(gallery: Gallery, people_dir: str | os.PathLike[str], listed: dict[str, str], hashed: dict[str, str],
                 unlisted_folders: list[str], unnamed_content: set[str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """enroll's sync, for the faces recorded from a path inside people_dir where no file is any more, or whose
    content's sha256 is no longer the one recorded. One whose content is now at a listed path (listed: path ->
    identity) that no face records is moved there (Gallery.move_photos), as the person of that path; the others are
    removed. Returns the faces removed, (path, identity), and moved (move_photos's dicts). Paths are compared as
    enroll records them: absolute, symlinks as named.

    Content at several such paths (copies) goes to one in the same person's folder if there is one, else to the first
    by name; a face per path, and the other copies stay unenrolled, as enroll skips them. A face that stays in its
    folder keeps its identity, which `gallery rename` may have made other than the folder's name. Content found only
    under a folder whose name no identity can have (unnamed_content) keeps its face where it was.

    A face recorded outside people_dir is left alone, unless people_dir was moved here (_moved_here): its file is
    gone and its content lies at the same place in people_dir, from its person's folder on. It is then recorded at
    its new path, as the person it was (a `gallery rename` kept), so that a later sync forgets it once its photo is
    deleted."""
    inside = _recorded_prefix(people_dir)
    unreadable = tuple(_recorded_prefix(folder) for folder in unlisted_folders)

    def changed(photo: dict) -> bool:
        path = photo["path"]
        if not path.startswith(inside) or path.startswith(unreadable):
            return False
        if path in listed:
            return path in hashed and hashed[path] != photo["sha256"]  # not hashed: it could not be read, so keep it
        # Not listed is not gone: enroll passes over a symlinked folder and other extensions, and another writer may
        # have added a photo since the folder was listed. Checked under the writer lock. A POSIX name that was not
        # UTF-8 is stored with \xNN escapes and cannot be looked up, so it is kept.
        if os.name != "nt" and "\\x" in path:
            return False
        return not os.path.lexists(path)

    listed_relative = {path[len(inside):] for path in listed}

    with HeldInterrupts() as interrupts, gallery.writer():
        photos = gallery.photos()
        is_changed = [changed(photo) for photo in photos]
        recorded = {photo["path"] for photo, gone in zip(photos, is_changed) if not gone}
        free_paths: dict[str, list[str]] = {}  # sha256 -> the listed paths holding it that no face records
        for path, sha256 in sorted(hashed.items()):
            if path not in recorded:
                free_paths.setdefault(sha256, []).append(path)
        moves = []
        for photo, gone in zip(photos, is_changed):
            free = free_paths.get(photo["sha256"]) if gone else None
            if free:
                folder = _person_folder(inside, photo["path"])
                new = min(free, key=lambda path: (_person_folder(inside, path) != folder,
                                                  listed[path] != photo["identity"], path))
                free.remove(new)
                identity = photo["identity"] if _person_folder(inside, new) == folder else listed[new]
                moves.append((photo["sha256"], photo["path"], new, identity))
            elif not gone and not photo["path"].startswith(inside):
                relative = _moved_here(photo["path"], listed_relative)
                new = inside + relative if relative else None
                if new in free_paths.get(photo["sha256"], []):  # its own content, at its place in the moved tree
                    free_paths[photo["sha256"]].remove(new)
                    moves.append((photo["sha256"], photo["path"], new, photo["identity"]))
        # Removal goes by sha256, which takes every face of that content: one that is kept, or content still in the
        # folder (moved above, or a copy whose path a face records), keeps all of its faces.
        kept = {photo["sha256"] for photo, gone in zip(photos, is_changed) if not gone} | set(hashed.values())
        kept |= unnamed_content
        digests = {photo["sha256"] for photo, gone in zip(photos, is_changed) if gone} - kept
        # Each a transaction, in this order: a kill between them leaves faces moved, and the removals to the next sync.
        interrupts.hold()
        moved = gallery.move_photos(moves) if moves else []
        removed = gallery.remove_photos(sorted(digests)) if digests else []
    return [(face["path"], face["identity"]) for face in removed], moved


def _visible(names: Iterable[str]) -> list[str]:
    """The names a folder walk looks at, sorted: a hidden file or folder (macOS's ._photo.jpg beside each photo on a
    USB drive, .thumbnails, .git) is no photo of the person, and passed over without a word."""
    return sorted(name for name in names if not name.startswith("."))


def iter_image_paths(inputs: Iterable[str], unreadable: Callable[[OSError], None] | None = None,
                     skipped: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Expand files and folders (recursively, not following symlinks) into image paths, in order. A folder that
    cannot be listed is passed to `unreadable` (by default, passed over as os.walk does); what a folder holds and is
    passed over, a file without an image extension or a symlinked folder, to `skipped` with the reason, as enroll
    lists them. Hidden files and folders are passed over without a word (_visible)."""
    for value in inputs:
        path = Path(value)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable, followlinks=False):
                dirnames[:] = _visible(dirnames)
                folder = Path(dirpath)
                if skipped:
                    for name in dirnames:
                        if (folder / name).is_symlink():
                            skipped(str(folder / name), "symlinked folder not followed")
                for name in _visible(filenames):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        yield str(folder / name)
                    elif skipped:
                        skipped(str(folder / name), "not an image file name")
        else:
            yield str(path)
