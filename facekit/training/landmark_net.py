"""LandmarkNet: the landmark CNN as trained by tools/train_landmarks.py.

Inference runs the same weights without torch (facekit.landmarks.NumpyLandmarkNet), which reads
this layout: features.{i}.0 convolution, features.{i}.1 batch norm, head.1 and head.3 linear.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facekit.landmarks import CONV_STRIDES, INPUT_SIZE


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LandmarkNet(nn.Module):
    """Plain conv stack -> 10 coordinates in [0, 1] crop units (x1, y1, ..., x5, y5).

    Flattening the last 4x4 map instead of global pooling keeps where features are,
    which is what a coordinate regressor needs.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        channels = [1, width, 2 * width, 2 * width, 4 * width, 4 * width, 6 * width]  # 64 -> 32, 16, 16, 8, 8, 4 px
        self.features = nn.Sequential(*(_conv(cin, cout, stride) for cin, cout, stride
                                        in zip(channels, channels[1:], CONV_STRIDES)))
        final_side = INPUT_SIZE // math.prod(CONV_STRIDES)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * final_side ** 2, 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) + 0.5
