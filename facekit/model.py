"""Inception-ResNet-v2 face embedder.

The trunk follows Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning" (2016): stem, Inception-ResNet-A, Reduction-A,
Inception-ResNet-B, Reduction-B, Inception-ResNet-C, each residual branch scaled
before it is added. The ImageNet softmax is replaced by an embedding head
(linear -> BatchNorm1d -> L2 normalisation).

Faces are 112x112 rather than 299x299, so the stem pads its convolutions ("same")
instead of shrinking them ("valid"): the A blocks then see a 14x14 grid and the C
blocks a 4x4 grid, close to the proportions of the original network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, as a model card's "model" block records it. dropout acts in training only, and
    input_size records the crops' size: the network pools whatever size it is given."""

    width: float = 1.0
    blocks: tuple[int, int, int] = (5, 10, 5)
    embedding_size: int = 512
    dropout: float = 0.2
    input_size: int = 112
    scales: tuple[float, float, float] = (0.17, 0.10, 0.20)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The architecture in a model card's "model" block; keys it does not know are ignored.

        A value of the wrong kind is a ValueError that names it, not a TypeError from deep inside the model."""
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = cls(**known)
        wrong = [f"{name}={getattr(config, name)!r}" for name, right in (
            ("width", _number(config.width) and config.width > 0),
            ("blocks", _numbers(config.blocks, int) and min(config.blocks) >= 0),
            ("embedding_size", _number(config.embedding_size, int) and config.embedding_size > 0),
            ("dropout", _number(config.dropout) and 0 <= config.dropout < 1),
            ("input_size", _number(config.input_size, int) and config.input_size > 0),
            ("scales", _numbers(config.scales)),
        ) if not right]
        if wrong:
            raise ValueError(f"not an architecture facekit can build: {', '.join(wrong)}")
        return config


def _number(value: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """A finite number of that kind; JSON's true and false are not numbers here, though Python's bool is an int."""
    return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(values: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """Three numbers, one per stage (A, B, C)."""
    return isinstance(values, tuple) and len(values) == 3 and all(_number(value, kind) for value in values)


def _ch(channels: int, width: float) -> int:
    """Scale a channel count, keeping it a multiple of 8 for fast kernels."""
    return max(8, round(channels * width / 8) * 8)


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] | str = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class Stem(nn.Module):
    """Stem plus Mixed_5b, at 1/8 resolution: 320 channels at width 1, and at other widths the sum of its four
    branches' counts, each rounded to a multiple of 8 (out_channels)."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            ConvBN(3, _ch(32, w), 3, stride=2, padding=1),
            ConvBN(_ch(32, w), _ch(32, w), 3, padding=1),
            ConvBN(_ch(32, w), _ch(64, w), 3, padding=1),
            nn.MaxPool2d(3, stride=2, padding=1),
            ConvBN(_ch(64, w), _ch(80, w), 1),
            ConvBN(_ch(80, w), _ch(192, w), 3, padding=1),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        c = _ch(192, w)
        self.branch0 = ConvBN(c, _ch(96, w), 1)
        self.branch1 = nn.Sequential(ConvBN(c, _ch(48, w), 1), ConvBN(_ch(48, w), _ch(64, w), 5, padding=2))
        self.branch2 = nn.Sequential(
            ConvBN(c, _ch(64, w), 1), ConvBN(_ch(64, w), _ch(96, w), 3, padding=1),
            ConvBN(_ch(96, w), _ch(96, w), 3, padding=1),
        )
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                     ConvBN(c, _ch(64, w), 1))
        self.out_channels = _ch(96, w) + _ch(64, w) + _ch(96, w) + _ch(64, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ResidualInception(nn.Module):
    """Shared shape of the A, B and C blocks: parallel branches, 1x1 up-projection, scaled residual."""

    def __init__(self, channels: int, branches: list[nn.Module], branch_channels: int, scale: float,
                 activate: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.project = nn.Conv2d(branch_channels, channels, 1, bias=True)
        self.scale = scale
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([branch(x) for branch in self.branches], 1)
        out = x + self.scale * self.project(mixed)
        return F.relu(out) if self.activate else out


def block_a(c: int, w: float, scale: float) -> ResidualInception:
    b0 = ConvBN(c, _ch(32, w), 1)
    b1 = nn.Sequential(ConvBN(c, _ch(32, w), 1), ConvBN(_ch(32, w), _ch(32, w), 3, padding=1))
    b2 = nn.Sequential(ConvBN(c, _ch(32, w), 1), ConvBN(_ch(32, w), _ch(48, w), 3, padding=1),
                       ConvBN(_ch(48, w), _ch(64, w), 3, padding=1))
    return ResidualInception(c, [b0, b1, b2], _ch(32, w) * 2 + _ch(64, w), scale)


def block_b(c: int, w: float, scale: float) -> ResidualInception:
    b0 = ConvBN(c, _ch(192, w), 1)
    b1 = nn.Sequential(ConvBN(c, _ch(128, w), 1), ConvBN(_ch(128, w), _ch(160, w), (1, 7), padding=(0, 3)),
                       ConvBN(_ch(160, w), _ch(192, w), (7, 1), padding=(3, 0)))
    return ResidualInception(c, [b0, b1], _ch(192, w) * 2, scale)


def block_c(c: int, w: float, scale: float, activate: bool = True) -> ResidualInception:
    b0 = ConvBN(c, _ch(192, w), 1)
    b1 = nn.Sequential(ConvBN(c, _ch(192, w), 1), ConvBN(_ch(192, w), _ch(224, w), (1, 3), padding=(0, 1)),
                       ConvBN(_ch(224, w), _ch(256, w), (3, 1), padding=(1, 0)))
    return ResidualInception(c, [b0, b1], _ch(192, w) + _ch(256, w), scale, activate)


class ReductionA(nn.Module):
    def __init__(self, c: int, w: float) -> None:
        super().__init__()
        self.branch0 = ConvBN(c, _ch(384, w), 3, stride=2, padding=1)
        self.branch1 = nn.Sequential(ConvBN(c, _ch(256, w), 1), ConvBN(_ch(256, w), _ch(256, w), 3, padding=1),
                                     ConvBN(_ch(256, w), _ch(384, w), 3, stride=2, padding=1))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c + 2 * _ch(384, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.pool(x)], 1)


class ReductionB(nn.Module):
    def __init__(self, c: int, w: float) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(ConvBN(c, _ch(256, w), 1),
                                     ConvBN(_ch(256, w), _ch(384, w), 3, stride=2, padding=1))
        self.branch1 = nn.Sequential(ConvBN(c, _ch(256, w), 1),
                                     ConvBN(_ch(256, w), _ch(288, w), 3, stride=2, padding=1))
        self.branch2 = nn.Sequential(ConvBN(c, _ch(256, w), 1), ConvBN(_ch(256, w), _ch(288, w), 3, padding=1),
                                     ConvBN(_ch(288, w), _ch(320, w), 3, stride=2, padding=1))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c + _ch(384, w) + _ch(288, w) + _ch(320, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.pool(x)], 1)


class InceptionResNetV2(nn.Module):
    """Trunk plus L2-normalised embedding head. Input: (N, 3, 112, 112) RGB scaled to [-1, 1]."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        w = config.width
        n_a, n_b, n_c = config.blocks
        s_a, s_b, s_c = config.scales
        self.stem = Stem(w)
        c = self.stem.out_channels
        self.blocks_a = nn.Sequential(*[block_a(c, w, s_a) for _ in range(n_a)])
        self.reduction_a = ReductionA(c, w)
        c = self.reduction_a.out_channels
        self.blocks_b = nn.Sequential(*[block_b(c, w, s_b) for _ in range(n_b)])
        self.reduction_b = ReductionB(c, w)
        c = self.reduction_b.out_channels
        # The seed network ends without a ReLU on its last C block.
        self.blocks_c = nn.Sequential(*[block_c(c, w, s_c, activate=i < n_c - 1) for i in range(n_c)])
        self.head_conv = ConvBN(c, _ch(1536, w), 1)
        self.dropout = nn.Dropout(config.dropout)
        self.embedding = nn.Linear(_ch(1536, w), config.embedding_size, bias=False)
        self.embedding_bn = nn.BatchNorm1d(config.embedding_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.reduction_a(self.blocks_a(x))
        x = self.reduction_b(self.blocks_b(x))
        return self.head_conv(self.blocks_c(x))

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        x = self.embedding_bn(self.embedding(self.dropout(x)))
        return F.normalize(x, dim=1) if normalize else x


def build_model(width: float = 1.0, blocks: tuple[int, int, int] = (5, 10, 5),
                embedding_size: int = 512, dropout: float = 0.2) -> InceptionResNetV2:
    """InceptionResNetV2 from training's options; the residual scales stay the paper's."""
    return InceptionResNetV2(ModelConfig(width=width, blocks=tuple(blocks), embedding_size=embedding_size,
                                         dropout=dropout))
