"""Recognition: the pipeline from an image to identified faces, and enrolment of a people folder.

image -> detector (boxes + 5 landmarks) -> alignment (112x112) -> embedder -> gallery search
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facekit.alignment import align_face, landmarks_problem
from facekit.datastore import Gallery, GalleryError, clean_identity
from facekit.detection import Detector, Face, as_bgr, create_detector
from facekit.imageio import IMAGE_EXTENSIONS, ImageError, decode_image, read_image_file
from facekit.representation import Embedder


@dataclass
class FaceEmbedding:
    face: Face
    embedding: np.ndarray


@dataclass
class LoadedImage:
    path: str
    sha256: str
    image: np.ndarray | None
    faces: list[Face]
    error: str | None = None


class FacePipeline:
    """Detect, align and embed. Build once and reuse: loading the models is the slow part."""

    def __init__(self, detector: Detector | None = None, embedder: Embedder | None = None, *,
                 detector_backend: str = "auto", yunet_model: str | None = None, weights: str | None = None,
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
        detect_largest = getattr(self.detector, "detect_largest", None) if largest else None
        return _alignable(detect_largest(image) if detect_largest else self.detector.detect(image))

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

    def load(self, path: str | os.PathLike, largest: bool = False) -> LoadedImage:
        """Read, hash, decode and detect one file; a bad file becomes an error string, never an exception."""
        path = str(path)
        try:
            data = read_image_file(path)
        except ImageError as exc:
            return LoadedImage(path, "", None, [], str(exc))
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            image = decode_image(data, name=path)
        except ImageError as exc:
            return LoadedImage(path, sha256, None, [], str(exc))
        return LoadedImage(path, sha256, image, self.detect(image, largest))

    def load_many(self, paths: Iterable[str | os.PathLike], workers: int = 1,
                  largest: bool = False) -> Iterator[LoadedImage]:
        """load() over many files, decoding and detecting ahead of the caller in a worker thread.

        OpenCV and torch release the GIL, so one thread of look-ahead lets detection of the next
        image overlap with the embedding of this one.
        """
        paths = list(paths)
        if workers <= 0 or len(paths) < 2:
            yield from (self.load(p, largest) for p in paths)
            return
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            window = max(2, 2 * workers)
            pending = [pool.submit(self.load, p, largest) for p in paths[:window]]
            next_path = len(pending)
            while pending:
                result = pending.pop(0).result()
                if next_path < len(paths):
                    pending.append(pool.submit(self.load, paths[next_path], largest))
                    next_path += 1
                yield result
        finally:
            # A caller that stops early (a break, an error, Ctrl-C) waits for the one load running, not for the
            # whole window queued behind it: decoding and detecting photos no one will look at.
            pool.shutdown(wait=True, cancel_futures=True)


def _alignable(faces: list[Face]) -> list[Face]:
    # A detector (perhaps the caller's own) may give points no warp can use; such a face cannot be embedded.
    return [face for face in faces if landmarks_problem(face.landmarks) is None]


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
    """Every face in the image with its identity (or None) and its top-k candidates."""
    if gallery is not None:
        gallery.bind_model(pipeline.embedder.model_id)
    faces = pipeline.detect(image) if faces is None else faces
    embeddings = pipeline.embed_faces(image, faces)
    searchable = gallery is not None and len(gallery) > 0 and len(faces) > 0
    matches = gallery.search(embeddings, k=max(1, top_k)) if searchable else [[] for _ in faces]
    results = []
    for face, candidates in zip(faces, matches):
        best = candidates[0] if candidates else None
        similarity = float(best.similarity) if best else 0.0
        results.append({
            "box": [round(float(v), 1) for v in face.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
            "identity": best.identity if best and similarity >= threshold else None,
            "similarity": round(similarity, 4),
            "candidates": [{"identity": m.identity, "similarity": round(float(m.similarity), 4)}
                           for m in candidates[:top_k]],
        })
    return results


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
    people: set[str] = field(default_factory=set)
    images: int = 0
    files: int = 0  # images and the other files passed over, so enrolled + already_enrolled + skipped add up to it
    enrolled: int = 0
    already_enrolled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)


def collect_people(people_dir: str | os.PathLike) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(identity, image path) pairs from a folder of folders; loose images are named after their stem.

    Returns the pairs and the entries skipped with a reason (a folder that cannot be read among them). Symlinked
    folders are not followed, so a link loop cannot trap the walk.
    """
    root = Path(people_dir)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    pairs: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []

    def add(identity: str, path: Path) -> None:
        try:
            pairs.append((clean_identity(identity), str(path)))
        except GalleryError as exc:
            skipped.append((str(path), str(exc)))

    def unreadable(error: OSError) -> None:  # os.walk passes over a folder it cannot list without a word
        skipped.append((str(error.filename), f"cannot read folder: {error.strerror or error}"))

    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            for dirpath, dirnames, filenames in os.walk(entry, onerror=unreadable, followlinks=False):
                dirnames.sort()
                # os.walk lists a symlinked folder and passes over it without a word; one at the top is reported.
                skipped.extend((str(Path(dirpath) / name), "symlinked folder not followed") for name in dirnames
                               if (Path(dirpath) / name).is_symlink())
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    if path.suffix.lower() in IMAGE_EXTENSIONS:
                        add(entry.name, path)
                    elif not name.startswith("."):
                        skipped.append((str(path), "not an image file name"))
        elif entry.is_dir():
            skipped.append((str(entry), "symlinked folder not followed"))
        elif entry.suffix.lower() in IMAGE_EXTENSIONS:
            add(entry.stem, entry)
        elif not entry.name.startswith("."):
            skipped.append((str(entry), "not an image file name"))
    return pairs, skipped


def enroll(pipeline: FacePipeline, gallery: Gallery, people_dir: str | os.PathLike, *, workers: int = 1,
           progress: bool = True, batch_images: int = 16) -> EnrollReport:
    """Enrol one face (the largest) per image, recorded by its absolute path. Files whose content hash is enrolled
    already are skipped.

    Faces are embedded in batches across images, and each batch is added under one hold of the gallery's writer
    lock, a photo per transaction, then checkpointed: a kill loses at most the batch in flight, never anything
    committed before it, and a Ctrl-C (KeyboardInterrupt) waits for the batch's commits and checkpoint to end.
    """
    from tqdm import tqdm

    gallery.bind_model(pipeline.embedder.model_id)  # before any detection: a refusal should come at once
    pairs, skipped = collect_people(people_dir)
    report = EnrollReport(skipped=list(skipped), files=len(pairs) + len(skipped))
    report.people = {identity for identity, _ in pairs}
    identity_of = {path: identity for identity, path in pairs}
    pending: list[tuple[str, LoadedImage, Face, np.ndarray]] = []  # (identity, photo, face, aligned crop)

    def already_enrolled(item: LoadedImage, identity: str) -> bool:
        """Counted as such; a photo enrolled as someone else is said so, as a folder may hold a wrong photo."""
        holder = gallery.source_identity(item.sha256)
        if holder is None:
            return False
        report.already_enrolled += 1
        if holder != identity:
            report.warnings.append(f"{item.path}: the same photo is enrolled as {holder}; not added to {identity} "
                                   "(`facekit gallery remove-photo` takes it out of the gallery)")
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
            for (identity, item, face, _), embedding in zip(pending, embeddings):
                if already_enrolled(item, identity):  # the same file may sit twice in one batch
                    continue
                # Absolute, so that the path still names the photo from another folder; abspath, not resolve, keeps
                # a symlink as the user named it.
                gallery.add(identity, embedding[None], [{"path": os.path.abspath(item.path), "sha256": item.sha256,
                                                         "box": [float(v) for v in face.box]}])
                report.enrolled += 1
        pending.clear()

    # Closed however the loop ends: a Ctrl-C's or an error's line must not be written onto the bar's.
    with tqdm(total=len(pairs), desc="enrolling", unit="img", disable=not progress, file=sys.stderr) as bar:
        for item in pipeline.load_many([path for _, path in pairs], workers=workers, largest=True):
            bar.update(1)
            report.images += 1
            if item.error:
                report.skipped.append((item.path, item.error))
                continue
            if already_enrolled(item, identity_of[item.path]):
                continue
            if not item.faces:
                report.skipped.append((item.path, "no face found"))
                continue
            if len(item.faces) > 1:
                report.warnings.append(f"{item.path}: {len(item.faces)} faces, enrolled the largest")
            crop = align_face(item.image, item.faces[0].landmarks)
            # A batch waits with its crops, not its photos: 16 decoded 24 MP photos are over a GB.
            item.image = None
            pending.append((identity_of[item.path], item, item.faces[0], crop))
            if len(pending) >= batch_images:
                flush()
        flush()
    return report


def iter_image_paths(inputs: Iterable[str], unreadable: Callable[[OSError], None] | None = None) -> Iterator[str]:
    """Expand files and folders (recursively, not following symlinks) into image paths, in order. A folder that
    cannot be listed is passed to `unreadable` (by default, passed over as os.walk does)."""
    for value in inputs:
        path = Path(value)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        yield str(Path(dirpath) / name)
        else:
            yield str(path)
