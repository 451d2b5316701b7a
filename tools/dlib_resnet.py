"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) read into PyTorch.

dlib-bin, the wheel that installs without a compiler, is built without BLAS: its network takes about
145 ms per face on one core here, so a teacher table of the 91k-crop training pool took one to two
hours. The same weights run in PyTorch take about 11 ms per face in a batch on 2 cores and give the same
descriptors (largest difference under 1e-6 on 20 LFW faces; tests/test_dlib_resnet.py checks them
against dlib itself).

dlib writes a network's input layer first and each layer above it in turn, each as a version string
followed by its settings, and every tensor as a small header and raw little-endian float32. Only the
layers this network uses are read, in the order dlib's example (dnn_face_recognition_ex.cpp) builds them;
anything else is refused rather than guessed:

    input 150x150 RGB, minus the mean colour, / 256
    conv 7x7/2 (32), affine, relu, max-pool 3x3/2
    3 residual blocks of 32 channels, then 4 of 64, 3 of 128, 3 of 256 and 1 of 256, the first of each
    group halving the size
    global average pool, fully connected 256 -> 128 without bias

A residual block is relu(x + affine(conv3x3(relu(affine(conv3x3(x)))))). A halving block's first conv has
stride 2 and no padding, and its shortcut is a 2x2 average pool; where the two differ in size, dlib adds
them as if the smaller were zero-padded at the bottom and right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekit.representation import torch_or_exit

torch = torch_or_exit("tools/dlib_resnet.py")  # one line where it is missing, not a traceback
import torch.nn.functional as F

CHIP_SIZE = 150  # dlib.get_face_chip(image, landmarks, 150, 0.25) gives the network's input


class DlibFormatError(ValueError):
    pass


class _Reader:
    """dlib's serialisation primitives (dlib/serialize.h, dlib/cuda/tensor.h)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def integer(self) -> int:
        # One control byte: the low nibble is how many little-endian bytes follow, bit 7 the sign.
        control = self.data[self.at]
        size = control & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer at byte {self.at}")
        value = int.from_bytes(self.data[self.at + 1:self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if control & 0x80 else value

    def real(self) -> float:
        # float_details: an integer mantissa and an integer exponent of 2.
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        size = self.integer()
        text = self.data[self.at:self.at + size].decode("ascii")
        self.at += size
        return text

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at byte {self.at}; only version 2 is read")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        if self.at + 4 * count > len(self.data):
            raise DlibFormatError(f"a tensor of {count} values at byte {self.at} runs past the end of the file")
        values = np.frombuffer(self.data, "<f4", count, self.at).reshape(shape)
        self.at += 4 * count
        return values.astype(np.float32)

    def expect(self, text: str) -> None:
        found = self.string()
        if found != text:
            raise DlibFormatError(f"expected {text!r} at byte {self.at}, found {found!r}")


@dataclass
class _Conv:
    weight: np.ndarray  # (out, in, kh, kw)
    bias: np.ndarray
    stride: int
    padding: int


def _read_conv(reader: _Reader) -> _Conv:
    params = reader.tensor().ravel()
    filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(7))
    if rows != cols or stride_y != stride_x or pad_y != pad_x:
        raise DlibFormatError("only square filters, strides and paddings are read")
    inputs = (len(params) - filters) // (filters * rows * cols)
    if inputs * filters * rows * cols + filters != len(params):
        raise DlibFormatError(f"a convolution of {len(params)} parameters is not {filters} {rows}x{cols} filters "
                              "with biases")
    weight = params[:-filters].reshape(filters, inputs, rows, cols)
    return _Conv(weight, params[-filters:], stride_y, pad_y)


def _read_affine(reader: _Reader) -> tuple[np.ndarray, np.ndarray]:
    params = reader.tensor().ravel()
    half = len(params) // 2
    return params[:half], params[half:]  # gamma, beta


def _read_pool(reader: _Reader) -> tuple[int, int, int]:
    rows, cols, stride_y, stride_x, pad_y, pad_x = (reader.integer() for _ in range(6))
    if (rows, stride_y, pad_y) != (cols, stride_x, pad_x):
        raise DlibFormatError("only square pooling windows are read")
    return rows, stride_y, pad_y


class DlibResNet(torch.nn.Module):
    """dlib_face_recognition_resnet_model_v1 in PyTorch: (N, 150, 150, 3) uint8 RGB chips -> (N, 128)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        reader = _Reader(Path(path).read_bytes())
        self._read(reader)

    def _read(self, reader: _Reader) -> None:
        # The file holds the loss layer's settings, then the input layer and each layer above it in turn,
        # each wrapped in add_layer's version and state. Each layer is found by its serialised name
        # (a one-byte length, then the name), in order, so the wrappers' own bytes (versions, flags, tags,
        # skips) need no model here; a name is 6 to 23 bytes, which no stretch of weights repeats by chance.
        def find_next(*names: str) -> tuple[int, str]:
            found = [(at, name) for name in names
                     if (at := reader.data.find(bytes([1, len(name)]) + name.encode(), reader.at)) >= 0]
            if not found:
                raise DlibFormatError(f"no {' or '.join(names)} layer after byte {reader.at}")
            return min(found)

        def at_next(*names: str) -> None:
            reader.at, name = find_next(*names)
            reader.expect(name)

        at_next("input_rgb_image_sized")
        self.register_buffer("mean", torch.tensor([reader.real() for _ in range(3)]).view(1, 3, 1, 1))
        size = (reader.integer(), reader.integer())
        if size != (CHIP_SIZE, CHIP_SIZE):
            raise DlibFormatError(f"input size {size}; expected {CHIP_SIZE}x{CHIP_SIZE}")

        def conv_affine() -> tuple[torch.nn.Conv2d, int]:
            at_next("con_4", "con_5")
            conv = _read_conv(reader)
            at_next("affine_")
            gamma, beta = _read_affine(reader)
            # affine(conv(x)) is one convolution with scaled filters and a shifted bias.
            layer = torch.nn.Conv2d(conv.weight.shape[1], conv.weight.shape[0], conv.weight.shape[2],
                                    conv.stride, conv.padding)
            layer.weight.data = torch.from_numpy(conv.weight * gamma[:, None, None, None])
            layer.bias.data = torch.from_numpy(conv.bias * gamma + beta)
            return layer, conv.stride

        self.stem, _ = conv_affine()
        at_next("max_pool_2")
        self.stem_pool = _read_pool(reader)
        self.blocks = torch.nn.ModuleList()
        self.halving: list[bool] = []
        while find_next("con_4", "con_5", "avg_pool_2")[1] != "avg_pool_2":
            first, stride = conv_affine()
            second, _ = conv_affine()
            if stride == 2:
                at_next("avg_pool_2")
                if _read_pool(reader) != (2, 2, 0):
                    raise DlibFormatError("a halving block's shortcut must be a 2x2 average pool")
            at_next("add_prev_")
            self.blocks.append(torch.nn.ModuleList([first, second]))
            self.halving.append(stride == 2)
        at_next("avg_pool_2")
        if _read_pool(reader)[0] != 0:
            raise DlibFormatError("expected the global average pool before the last layer")
        at_next("fc_2")
        outputs, inputs = reader.integer(), reader.integer()
        weights = reader.tensor().reshape(-1, outputs)  # (inputs [+ a bias row], outputs)
        if len(weights) != inputs or inputs != self.blocks[-1][1].out_channels:
            raise DlibFormatError(f"the last layer has {len(weights)} rows for {inputs} inputs from "
                                  f"{self.blocks[-1][1].out_channels} channels: a bias or another network")
        self.embed = torch.nn.Linear(inputs, outputs, bias=False)
        self.embed.weight.data = torch.from_numpy(np.ascontiguousarray(weights.T))

    @torch.no_grad()
    def forward(self, chips_rgb: torch.Tensor) -> torch.Tensor:
        x = (chips_rgb.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        window, stride, padding = self.stem_pool
        x = F.max_pool2d(F.relu(self.stem(x)), window, stride, padding)
        for (first, second), halving in zip(self.blocks, self.halving, strict=True):
            residual = second(F.relu(first(x)))
            shortcut = F.avg_pool2d(x, 2, 2) if halving else x
            x = F.relu(_add_zero_padded(residual, shortcut))
        return self.embed(x.mean(dim=(2, 3)))


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b as dlib's add_prev does it: the smaller padded with zeros at the end of each dimension."""
    channels, rows, cols = (max(s, t) for s, t in zip(a.shape[1:], b.shape[1:], strict=True))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, cols - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)

