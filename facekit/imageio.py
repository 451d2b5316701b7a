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
from PIL import Image, ImageOps, UnidentifiedImageError

from facekit.errors import one_line

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 40_000_000


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
            # Our own max_pixels check below replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise ImageError(f"image too large: {size} (limit {max_pixels / 1e6:g} megapixels): {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"not an image: {name}") from None

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
        grey = _to_uint8(np.asarray(image))
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        # Composite on white: transparent areas of logos and cut-outs are meant as background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit and float samples to 8 bits, keeping relative brightness."""
    if values.dtype.kind == "f":
        values = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
        return np.clip(values, 0, 255).astype(np.uint8)
    return np.clip(values.astype(np.int64) // 257, 0, 255).astype(np.uint8)


def _decode_with_opencv(data: bytes) -> np.ndarray | None:
    """Fallback for formats Pillow only half supports (e.g. some 16-bit colour TIFFs). Size is checked already."""
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


