"""A tiny CNN that places five face landmarks inside a face box.

It turns the box-only Haar cascade into a detector whose faces can be aligned. The
crop geometry below is shared by training (tools/train_landmarks.py) and inference,
so the network always sees faces framed exactly the way it learnt them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

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


def normalise_crops(crops: np.ndarray) -> torch.Tensor:
    """Per-crop standardisation, so exposure and contrast do not move the landmarks."""
    tensor = torch.from_numpy(np.ascontiguousarray(crops)).float().unsqueeze(1)
    mean = tensor.mean(dim=(2, 3), keepdim=True)
    std = tensor.std(dim=(2, 3), keepdim=True).clamp_min(4.0)
    return (tensor - mean) / std


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LandmarkNet(nn.Module):
    """Plain conv stack -> 10 coordinates in [0, 1] crop units (x1, y1, ..., x5, y5).

    Flattening the last 4x4 map instead of global pooling keeps where features are,
    which is what a coordinate regressor needs.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(1, w, 2),  # 32x32
            _conv(w, 2 * w, 2),  # 16x16
            _conv(2 * w, 2 * w, 1),
            _conv(2 * w, 4 * w, 2),  # 8x8
            _conv(4 * w, 4 * w, 1),
            _conv(4 * w, 6 * w, 2),  # 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * w * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) + 0.5


class LandmarkPredictor:
    """Loads the shipped weights and predicts landmarks for boxes in a grey image."""

    def __init__(self, weights: str | Path = DEFAULT_WEIGHTS, flip_test: bool = True) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"landmark weights not found: {weights}")
        card_path = weights.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        geometry = (card.get("input_size", INPUT_SIZE), card.get("crop_expansion", CROP_EXPANSION))
        if geometry != (INPUT_SIZE, CROP_EXPANSION):
            raise ValueError(f"landmark weights {weights.name} were trained with a different crop geometry")
        self.net = LandmarkNet(width=card.get("width", 16))
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval()
        # Averaging with the mirrored crop cancels much of the left/right bias for a second tiny forward pass.
        self.flip_test = flip_test

    @torch.inference_mode()
    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """(n, INPUT_SIZE, INPUT_SIZE) uint8 crops -> (n, 5, 2) coordinates in [0, 1] crop units."""
        inputs = normalise_crops(crops)
        points = self.net(inputs).reshape(-1, 5, 2)
        if self.flip_test:
            mirrored = self.net(torch.flip(inputs, dims=[3])).reshape(-1, 5, 2)[:, FLIP_ORDER]
            mirrored[..., 0] = 1.0 - mirrored[..., 0]
            points = (points + mirrored) / 2
        return points.numpy()

    def predict(self, gray: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
        """Landmarks (n, 5, 2) float32 in image pixels for each (x, y, w, h) box."""
        if not boxes:
            return np.zeros((0, 5, 2), np.float32)
        crops, windows = zip(*(crop_face(gray, box) for box in boxes), strict=True)
        return to_image_coordinates(self.predict_crops(np.stack(crops)), np.asarray(windows))
