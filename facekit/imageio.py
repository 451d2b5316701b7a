"""Loading photos as upright 8-bit BGR arrays, with one-line errors for bad files.

Pillow reads the header first, so oversized images are refused before any pixel
buffer is allocated; it also applies the EXIF orientation and understands the many
pixel modes (palette, grey+alpha, CMYK, 16-bit) that real photo folders contain.
OpenCV is only a fallback for files whose header Pillow read but could not decode.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from facekit.errors import one_line

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 40_000_000
TIFF_SIGNATURES = (b"II*\0", b"MM\0*")


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is a one-line reason."""


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 BGR array, upright according to its EXIF orientation."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"file not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror or error}") from None
    return decode_image(data, name=str(path), max_pixels=max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes as an HxWx3 uint8 BGR array; see load_image."""
    if not data:
        raise ImageError(f"empty file: {name}")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's warning, and our one-line error its complaints
            # about a damaged header (a photo that still decodes needs no complaint).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise ImageError(f"image too large: {size} (limit {max_pixels / 1e6:g} megapixels): {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        # Pillow cannot open some TIFFs at all (float32 colour); OpenCV can, once their size is known to fit.
        pixels = None
        if data[:4] in TIFF_SIGNATURES:
            width, height = _tiff_size(data)
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} pixels "
                                 f"(limit {max_pixels / 1e6:g} megapixels): {name}") from None
            pixels = _decode_with_opencv(data) if width * height > 0 else None
        if pixels is None:
            raise ImageError(f"not an image: {name}") from None
        return pixels

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt or truncated image: {name} (size {width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels (limit {max_pixels / 1e6:g} megapixels): {name}"
        )
    try:
        image.load()
    except Exception as error:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error ...)
        # Only TIFF: OpenCV would happily return the grey remainder of a truncated JPEG or PNG.
        pixels = _decode_with_opencv(data) if image.format == "TIFF" else None
        if pixels is None:
            raise ImageError(f"corrupt or truncated image: {name} ({one_line(error)})") from None
        return pixels
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # A broken EXIF block should not cost the photo itself.
        pass
    return _to_bgr(image)


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # Mode I is 32 bits wide whatever the samples hold: a TIFF of 8-bit values in it must not come out black.
        grey = _to_uint8(np.asarray(image), eight_bit_wide=mode == "I")
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        # Composite on white: transparent areas of logos and cut-outs are meant as background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _to_uint8(values: np.ndarray, eight_bit_wide: bool = False) -> np.ndarray:
    """16-bit and float samples to 8 bits, keeping relative brightness.

    eight_bit_wide: integer samples of unknown width; those that all fit in 8 bits are taken as 8-bit."""
    if values.dtype.kind == "f":
        values = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
        return np.clip(values, 0, 255).astype(np.uint8)
    if eight_bit_wide and values.max(initial=0) <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    return np.clip(values.astype(np.int64) // 257, 0, 255).astype(np.uint8)


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Width and height from a TIFF's first directory, without decoding it; (0, 0) if it cannot be read."""
    try:
        directory = TiffImagePlugin.ImageFileDirectory_v2(ifh=data[:8])
        stream = io.BytesIO(data)
        stream.seek(directory.next)
        with warnings.catch_warnings():  # Pillow warns of a short directory; the caller's error says it once
            warnings.simplefilter("ignore")
            directory.load(stream)
        return int(directory.get(256, 0)), int(directory.get(257, 0))
    except Exception:  # a broken header is "not an image", however Pillow's parser fails on it
        return 0, 0


def _decode_with_opencv(data: bytes) -> np.ndarray | None:
    """Fallback for TIFFs Pillow only half supports (some 16-bit and float colour ones). Size is checked already."""
    # A file this fails on is reported as one error line; OpenCV would add its codec's own lines to stderr.
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if pixels is None or pixels.ndim != 3:
        return None
    if pixels.dtype != np.uint8:
        pixels = _to_uint8(pixels)
    return pixels


