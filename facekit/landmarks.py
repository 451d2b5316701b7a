"""A tiny CNN that places five face landmarks inside a face box.

It turns the box-only Haar cascade into a detector whose faces can be aligned. The
crop geometry below is shared by training (tools/train_landmarks.py) and inference,
so the network always sees faces framed exactly the way it learnt them.

The network is defined and trained in torch (facekit/training/landmark_net.py); inference
runs it here in numpy and OpenCV with its batch norms folded into the convolutions, so detecting
a face never imports torch (about 1.5 s and 190 MB for a CLI call).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
from safetensors.numpy import load_file

INPUT_SIZE = 64
# Haar boxes clip the mouth corners on some faces; a little margin keeps them in view.
CROP_EXPANSION = 1.15
# Mirroring swaps the eyes and the mouth corners.
FLIP_ORDER = [1, 0, 2, 4, 3]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "landmarks.safetensors"


def face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Face centre, size and roll (radians) from five landmarks.

    Size is the eye-centre to mouth-centre distance, which (unlike the eye distance)
    barely shrinks when the head turns sideways.
    """
    eyes = landmarks[:2].mean(0)
    mouth = landmarks[3:].mean(0)
    eye_vector = landmarks[1] - landmarks[0]
    return (eyes + mouth) / 2, float(np.linalg.norm(mouth - eyes)), math.atan2(eye_vector[1], eye_vector[0])


def rotate(vectors: np.ndarray, angle: float) -> np.ndarray:
    """Rotate row vectors by angle (radians, image axes: y down)."""
    c, s = math.cos(angle), math.sin(angle)
    return vectors @ np.array([[c, s], [-s, c]])


def crop_box(box: tuple[float, float, float, float]) -> tuple[int, int, int]:
    """Square, integer-aligned crop window (x0, y0, side) around a detector box."""
    x, y, w, h = box
    side = max(int(round(CROP_EXPANSION * max(w, h))), 8)
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    return x0, y0, side


def crop_face(gray: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cut the network input for one box: INPUT_SIZE^2 uint8, plus the window to map predictions back.

    Integer windows and INTER_AREA resizing avoid both sub-pixel bookkeeping and aliasing
    when a large face is shrunk to the input size.
    """
    x0, y0, side = crop_box(box)
    height, width = gray.shape[:2]
    left, top = max(0, -x0), max(0, -y0)
    right, bottom = max(0, x0 + side - width), max(0, y0 + side - height)
    window = gray[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    if window.size == 0:
        window = np.zeros((side, side), np.uint8)
    elif left or top or right or bottom:
        window = cv2.copyMakeBorder(window, top, bottom, left, right, cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if side > INPUT_SIZE else cv2.INTER_LINEAR
    return cv2.resize(window, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation), (x0, y0, side)


def to_crop_units(points: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Image pixel coordinates -> [0, 1] crop units of a window.

    Units measure from the window's outer edge (pixel centres sit at +0.5), so mirroring a
    crop is exactly u -> 1 - u, which the flip augmentation and flip test rely on.
    """
    x0, y0, side = window
    return (np.asarray(points, np.float32) + 0.5 - np.array([x0, y0], np.float32)) / side


def to_image_coordinates(points: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Inverse of to_crop_units for (n, 5, 2) points and (n, 3) windows."""
    windows = np.asarray(windows, np.float32).reshape(-1, 3)
    return (windows[:, None, :2] + points * windows[:, None, 2:3] - 0.5).astype(np.float32)


def normalise_crops(crops: np.ndarray) -> np.ndarray:
    """(n, H, W) uint8 -> (n, 1, H, W) float32, standardised per crop so exposure and contrast do not
    move the landmarks."""
    x = np.asarray(crops, np.float32)[:, None]
    mean = x.mean(axis=(2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(2, 3), keepdims=True, ddof=1), 4.0)
    return (x - mean) / std


# Strides of LandmarkNet's six 3x3 convolutions (facekit/training/landmark_net.py).
CONV_STRIDES = (2, 2, 1, 2, 1, 2)
BATCH_NORM_EPS = 1e-5


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b by OpenCV rather than numpy's BLAS, whose worker threads keep spinning after each of these tiny
    products and took a third of the Haar detector's throughput from the cascade on 2 cores."""
    return cv2.gemm(np.ascontiguousarray(a, np.float32), b, 1.0, None, 0.0)


class NumpyLandmarkNet:
    """LandmarkNet's forward pass for inference, from its state dict."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.convs = []
        for i in range(len(CONV_STRIDES)):
            weight = state[f"features.{i}.0.weight"].astype(np.float32)
            gamma, beta, mean, var = (state[f"features.{i}.1.{name}"].astype(np.float32)
                                      for name in ("weight", "bias", "running_mean", "running_var"))
            scale = gamma / np.sqrt(var + BATCH_NORM_EPS)
            # Rows ordered (ky, kx, in_channel) to match the im2col columns below.
            folded = (weight * scale[:, None, None, None]).transpose(2, 3, 1, 0)
            self.convs.append((np.ascontiguousarray(folded.reshape(-1, len(weight))), beta - mean * scale))
        self.hidden = (state["head.1.weight"].T.astype(np.float32).copy(), state["head.1.bias"].astype(np.float32))
        self.output = (state["head.3.weight"].T.astype(np.float32).copy(), state["head.3.bias"].astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, 1, INPUT_SIZE, INPUT_SIZE) normalised crops -> (n, 10) coordinates in crop units."""
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC keeps each window's channels together
        for (weight, bias), stride in zip(self.convs, CONV_STRIDES):
            n, height, width, _ = x.shape
            out_height, out_width = (height + stride - 1) // stride, (width + stride - 1) // stride
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            # im2col: the nine shifted (and strided) copies side by side, so one matmul does the convolution.
            columns = np.concatenate([padded[:, ky:ky + stride * out_height:stride, kx:kx + stride * out_width:stride]
                                      for ky in range(3) for kx in range(3)], axis=3)
            x = np.maximum(_matmul(columns.reshape(-1, len(weight)), weight) + bias, 0.0)
            x = x.reshape(n, out_height, out_width, -1)
        # torch flattens channels first.
        flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        hidden = np.maximum(_matmul(flat, self.hidden[0]) + self.hidden[1], 0.0)
        return _matmul(hidden, self.output[0]) + self.output[1] + 0.5


class LandmarkPredictor:
    """Loads the shipped weights and predicts landmarks for boxes in a grey image."""

    def __init__(self, weights: str | Path = DEFAULT_WEIGHTS, flip_test: bool = True,
                 correct_bias: bool = True) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"landmark weights not found: {weights}")
        card_path = weights.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        geometry = (card.get("input_size", INPUT_SIZE), card.get("crop_expansion", CROP_EXPANSION))
        if geometry != (INPUT_SIZE, CROP_EXPANSION):
            raise ValueError(f"landmark weights {weights.name} were trained with a different crop geometry")
        self.net = NumpyLandmarkNet(load_file(str(weights)))
        # Averaging with the mirrored crop cancels much of the left/right bias for a second tiny forward pass.
        self.flip_test = flip_test
        # Trained on aligned crops, the net places points on real photos with a steady offset (eyes too far
        # apart, mouth too low); the card holds that offset as measured on photos, in eye distances along and
        # across the eye line (remove_bias turns and scales it to each face).
        calibration = card.get("bias_correction", {}).get("offsets") if correct_bias else None
        self.bias = np.asarray(calibration if calibration is not None else np.zeros((5, 2)), np.float32)

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """(n, INPUT_SIZE, INPUT_SIZE) uint8 crops -> (n, 5, 2) coordinates in [0, 1] crop units."""
        inputs = normalise_crops(crops)
        if not self.flip_test:
            return self.remove_bias(self.net(inputs))
        both = self.net(np.concatenate([inputs, inputs[..., ::-1]])).reshape(-1, 5, 2)
        points, mirrored = both[: len(inputs)], both[len(inputs):][:, FLIP_ORDER]
        mirrored[..., 0] = 1.0 - mirrored[..., 0]
        return self.remove_bias((points + mirrored) / 2)

    def remove_bias(self, points: np.ndarray) -> np.ndarray:
        """Subtract the calibrated offset, turned by each face's roll and scaled by its eye distance."""
        points = np.asarray(points, np.float32).reshape(-1, 5, 2)
        if not self.bias.any():
            return points
        # The eye vector is the eye distance times (cos, sin) of the roll, so this is rotate() and the scaling
        # written out: a numpy matmul here would wake BLAS threads that then spin and slow the whole process.
        eye_x, eye_y = (points[:, 1] - points[:, 0]).T[..., None]
        bias_x, bias_y = self.bias[:, 0], self.bias[:, 1]
        offset = np.stack([bias_x * eye_x - bias_y * eye_y, bias_x * eye_y + bias_y * eye_x], axis=-1)
        return (points - offset).astype(np.float32)

    def predict(self, gray: np.ndarray, boxes: list[tuple[float, float, float, float]] | np.ndarray) -> np.ndarray:
        """Landmarks (n, 5, 2) float32 in image pixels for each (x, y, w, h) box; a BGR or BGRA image is taken as
        its grey."""
        if len(boxes) == 0:  # `not boxes` is a ValueError for an (n, 4) array, as OpenCV's detectors give boxes
            return np.zeros((0, 5, 2), np.float32)
        if gray.ndim == 3 and gray.shape[2] in (3, 4):  # else a colour crop reached the net as 3 channels, and failed
            gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY if gray.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
        crops, windows = zip(*(crop_face(gray, box) for box in boxes), strict=True)
        return to_image_coordinates(self.predict_crops(np.stack(crops)), np.asarray(windows))
