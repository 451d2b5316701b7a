"""Loading photos as upright 8-bit BGR arrays, with one-line errors for bad files.

Pillow reads the header first, so oversized images are refused before any pixel
buffer is allocated; it also applies the EXIF orientation and understands the many
pixel modes (palette, grey+alpha, CMYK, 16-bit) that real photo folders contain.
OpenCV is only a fallback for TIFFs that Pillow cannot open at all (float colour, for one).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from facekit.errors import one_line

# .jfif and .jpe are JPEG's other names (browsers save .jfif); a GIF is read as its first frame. Pillow reads AVIF
# only in recent releases (facekit allows older ones) and HEIC not without a plugin: those are passed over, and
# said so, rather than failing.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".webp", ".gif",
                                              ".tif", ".tiff"})
# Phones save 50-megapixel photos (8160x6144) and full-frame cameras 61 (9504x6336): both are read (0.3 s and 0.4 GB
# for the 50). A decompression bomb is refused from its header at this size, where decoding it would cost a
# gigabyte or more. Larger photos: load_image(path, max_pixels=...) and pass the array.
DEFAULT_MAX_PIXELS = 64_000_000
# Uncompressed 16-bit RGBA is 8 bytes a pixel, with room for metadata: a file larger than this for the pixel limit is
# no photo (a video named .jpg) and is refused unread, 640 MB at the default. An uncompressed float32 picture that
# large (12 or 16 bytes a pixel) is refused with it; compressed, it is read.
MAX_BYTES_PER_PIXEL = 10
TIFF_SIGNATURES = (b"II*\0", b"MM\0*")
BIGTIFF_SIGNATURES = (b"II+\0", b"MM\0+")
TIFF_WIDTH, TIFF_LENGTH, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = 256, 257, 322, 323  # tag numbers
TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT = 258, 339
TIFF_UNSIGNED, TIFF_SIGNED = 1, 2  # SampleFormat values; unsigned is the default
BAND_PIXELS = 1 << 18  # converted to BGR at a time: a megabyte or so of Pillow's, however large the image


class ImageError(ValueError):
    """A file that cannot be used as an image; the message is a one-line reason."""


def _silence_pillow_libtiff() -> None:
    """Pillow reports a damaged compressed TIFF as an exception, and its libtiff prints the same failure to stderr.

    Pillow mutes libtiff's warnings itself but not its errors; only Pillow's own libtiff is muted here (OpenCV
    has its own copy, silenced per call). Where libtiff is linked in statically its symbols are not found."""
    try:
        from PIL import _imaging

        set_handler = ctypes.CDLL(_imaging.__file__).TIFFSetErrorHandler
    except (ImportError, OSError, AttributeError):
        return
    set_handler.restype = ctypes.c_void_p
    set_handler.argtypes = [ctypes.c_void_p]
    set_handler(None)


_silence_pillow_libtiff()
# Pillow logs some refusals as errors too (a TIFF with absurd samples per pixel); with no logging configured they would
# reach stderr through logging's last resort. An application that configures logging still receives them.
logging.getLogger("PIL").addHandler(logging.NullHandler())


def load_image(path: str | os.PathLike[str] | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file, by its path or from a file object opened in binary mode, as an HxWx3 uint8 BGR array,
    upright according to its EXIF orientation."""
    if isinstance(path, (str, os.PathLike)):
        return decode_image(read_image_file(path, max_pixels), name=str(path), max_pixels=max_pixels)
    if isinstance(path, io.TextIOBase) or not hasattr(path, "read"):
        raise TypeError(f"load_image takes a file's path or a file object opened in binary mode ('rb'), not "
                        f"{type(path).__name__}")
    name = path.name if isinstance(getattr(path, "name", None), str) else "<file object>"
    limit = max_file_bytes(max_pixels)
    chunks: list[bytes] = []
    size = 0
    try:
        # A stream's size is not known before it is read, and an unbuffered one (a pipe) gives what it has so far:
        # read until it ends or passes the limit.
        while size <= limit and (chunk := path.read(limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
    data = b"".join(chunks)
    if len(data) > limit:
        raise ImageError(f"file too large for an image: over {limit / 1e6:.0f} MB: {name}")
    return decode_image(data, name=name, max_pixels=max_pixels)


def read_image_file(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A file's bytes, or ImageError: missing, a folder, unreadable, or larger than any image within max_pixels
    could be (a video or disk image named .jpg would otherwise be read whole into memory)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror or error}") from None
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    limit = max_file_bytes(max_pixels)
    if size > limit:
        raise ImageError(f"file too large for an image: {size / 1e6:.0f} MB (limit {limit / 1e6:.0f} MB): {path}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror or error}") from None


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes an image file within max_pixels can need."""
    # A smaller pixel limit is the header's to enforce: it says the image's size, where this can only guess.
    return max(max_pixels, DEFAULT_MAX_PIXELS) * MAX_BYTES_PER_PIXEL


def header_fits(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether Pillow reads a header in data that states at most max_pixels, without decoding the pixels: the cheap
    guard for a reader that decodes many small files itself (facekit train's crops); decode_image checks more."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return False
    return 0 < width * height <= max_pixels


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes as an HxWx3 uint8 BGR array; see load_image."""
    if not data:
        raise ImageError(f"empty file: {name}")
    with warnings.catch_warnings():
        # Our own max_pixels check replaces Pillow's bomb warning, and our one-line error its complaints about a
        # damaged header or EXIF block, which come while it opens, decodes and turns the photo (one that still
        # decodes needs no complaint).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        return _decode(data, name, max_pixels)


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1))} pixels" if found else "too many pixels"
        raise ImageError(f"image too large: {size} (limit {max_pixels / 1e6:g} megapixels): {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        # Pillow cannot open some TIFFs at all (float colour, big-endian BigTIFF); OpenCV can, once their size is
        # known to fit.
        return _decode_tiff_pillow_cannot_open(data, name, max_pixels)

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt or truncated image: {name} (size {width}x{height})")
    _check_pixels(width, height, max_pixels, name)
    if image.format == "TIFF":
        _check_tiles(image.tag_v2, max_pixels, name)
    try:
        image.load()
    except Exception as error:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error ...)
        # No OpenCV fallback here: it returns the black remainder of a truncated JPEG or PNG, and an all-black
        # image for a TIFF whose compressed data is damaged (it does not check libtiff's read errors).
        raise ImageError(f"corrupt or truncated image: {name} ({one_line(error)})") from None
    # Read before the EXIF turn: the turned copy has no TIFF tags.
    tiff_samples = _tiff_samples(image.tag_v2) if image.format == "TIFF" else None
    image = _upright(image)  # no reference to a turned photo's stored pixels is left to add to the peak memory
    return _to_bgr(image, tiff_samples)


def from_pil(image: Image.Image, tiff_samples: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded PIL image as an HxWx3 uint8 BGR array, turned upright by its EXIF orientation. One whose pixels
    cannot be read (its file closed before they were, or damaged) is an ImageError."""
    return _to_bgr(_upright(image), tiff_samples)


def _upright(image: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation, or the image itself where that needs no turn: exif_transpose
    would copy it (80 ms for 24 megapixels)."""
    try:
        image.load()
    except Exception as error:  # Pillow says it with a bare AssertionError (a closed file) or OSError (a truncated one)
        # Its with block and close() drop the file; a file object of the caller's may have been closed instead.
        if getattr(image, "fp", False) is None or getattr(image.fp, "closed", False):
            raise ImageError("the PIL image's file was closed before its pixels were read: call image.load() "
                             "before closing it, or pass the file's path") from None
        raise ImageError(f"corrupt or truncated image: the PIL image ({one_line(error)})") from None
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9):  # the ones exif_transpose turns
            return ImageOps.exif_transpose(image)
    except Exception:  # A broken EXIF block should not cost the photo itself.
        pass
    return image


def _decode_tiff_pillow_cannot_open(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    tags = _first_tiff_tags(data) or {}
    width, height = _tag_number(tags, TIFF_WIDTH), _tag_number(tags, TIFF_LENGTH)
    # Both sizes are checked: two negative ones (signed tags) would multiply to a small count libtiff reads as huge.
    if width <= 0 or height <= 0:
        raise ImageError(f"not an image: {name}")
    _check_pixels(width, height, max_pixels, name)
    _check_tiles(tags, max_pixels, name)
    pixels = _decode_with_opencv(data)
    if pixels is None:
        # Its header was read, so "not an image" would mislead: float RGBA, CMYK or two samples, or damaged data.
        raise ImageError(f"unsupported or damaged TIFF ({width}x{height} pixels): {name}")
    return pixels


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} pixels (limit {max_pixels / 1e6:g} megapixels): {name}")


def _check_tiles(tags: Mapping[int, object], max_pixels: int, name: str) -> None:
    """Refuse a TIFF tile larger than max_pixels, whatever the image's own size.

    libtiff decodes a whole tile at a time, so a 16x16 image in one well-compressed 16384x16384 tile
    (a file under a megabyte) would fill hundreds of megabytes. A strip never exceeds the image."""
    tile_width, tile_length = _tag_number(tags, TIFF_TILE_WIDTH), _tag_number(tags, TIFF_TILE_LENGTH)
    if tile_width * tile_length > max_pixels:
        raise ImageError(f"image too large: {tile_width}x{tile_length} pixel tiles "
                         f"(limit {max_pixels / 1e6:g} megapixels): {name}")


def _tag_number(tags: Mapping[int, object], tag: int) -> int:
    """A tag's single integer value; 0 if it is missing or anything else (libtiff refuses those too)."""
    value = tags.get(tag, 0)
    return value if isinstance(value, int) else 0


def _tiff_samples(tags: Mapping[int, object]) -> tuple[int, int]:
    """SampleFormat and BitsPerSample of a TIFF's first sample; unsigned and 0 bits where missing or unreadable."""
    return _first_tag_number(tags, TIFF_SAMPLE_FORMAT, TIFF_UNSIGNED), _first_tag_number(tags, TIFF_BITS_PER_SAMPLE, 0)


def _first_tag_number(tags: Mapping[int, object], tag: int, default: int) -> int:
    """The first of a tag's integer values (Pillow gives a tuple, one a sample); default if it is anything else."""
    value = tags.get(tag, default)
    value = value[0] if isinstance(value, tuple) and value else value
    return value if isinstance(value, int) else default


def _first_tiff_tags(data: bytes) -> dict[int, object] | None:
    """Size and tiling of a TIFF's first image, without decoding it; None if its header cannot be read."""
    if data[:4] in TIFF_SIGNATURES:
        header = data[:8]
    elif data[:4] in BIGTIFF_SIGNATURES:
        # Pillow looks for a BigTIFF's 43 in the third byte, so it reads a big-endian one ("MM\0+") as a classic
        # TIFF and fails; the little-endian form of the header, with the file's own byte order, reads right.
        header = b"II+\0" + data[4:16]
    else:
        return None
    try:
        tags = TiffImagePlugin.ImageFileDirectory_v2(ifh=header, prefix=data[:2])
        stream = io.BytesIO(data)
        stream.seek(tags.next)
        tags.load(stream)
        return {tag: tags.get(tag, 0) for tag in (TIFF_WIDTH, TIFF_LENGTH, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH)}
    except Exception:  # a broken header is "not an image", however Pillow's parser fails on it
        return None


def _to_bgr(image: Image.Image, tiff_samples: tuple[int, int] | None = None) -> np.ndarray:
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        grey = _to_uint8(*_as_stored(np.asarray(image), tiff_samples))
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    # convert() would copy an image already in the mode asked for.
    if has_alpha:
        # Composite on white: transparent areas of logos and cut-outs are meant as background.
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return _bgr_in_bands(Image.alpha_composite(background, rgba), cv2.COLOR_RGBA2BGR)
    if mode == "L":
        return _bgr_in_bands(image, cv2.COLOR_GRAY2BGR)
    return _bgr_in_bands(image if mode == "RGB" else image.convert("RGB"), cv2.COLOR_RGB2BGR)


def _bgr_in_bands(image: Image.Image, conversion: int) -> np.ndarray:
    """An RGB, RGBA or L image as a BGR array, a band of rows at a time.

    np.asarray of the whole image would hold its bytes twice while Pillow joins the pieces it packs them in, and
    OpenCV reorders channels in a tenth of the time numpy's reversed view and its contiguous copy take."""
    width, height = image.size
    bgr = np.empty((height, width, 3), np.uint8)
    if bgr.size == 0:  # OpenCV refuses an empty image
        return bgr
    rows = max(1, BAND_PIXELS // width)
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(top + rows, height))))
        cv2.cvtColor(band, conversion, dst=bgr[top:top + rows])
    return bgr


def _as_stored(values: np.ndarray, tiff_samples: tuple[int, int] | None) -> tuple[np.ndarray, int | None]:
    """Pillow's grey samples typed as the TIFF stores them, and the value that is white when the file says its
    samples have fewer bits than Pillow's container.

    Pillow widens signed 16-bit samples into its 32-bit mode I, keeps unsigned 32-bit ones there as signed (from
    2**31 up they turn negative) and puts 12-bit ones unscaled in its 16-bit mode."""
    if tiff_samples is None or values.dtype.kind == "f":
        return values, None
    sample_format, bits = tiff_samples
    if sample_format == TIFF_SIGNED and bits == 16 and values.dtype == np.int32:
        return values.astype(np.int16), None
    if sample_format != TIFF_SIGNED and bits == 32 and values.dtype == np.int32:
        return values.view(np.uint32), None
    if sample_format != TIFF_SIGNED and 8 < bits < 8 * values.dtype.itemsize:
        return values, 2**bits - 1
    return values, None


def _to_uint8(values: np.ndarray, white: int | None = None) -> np.ndarray:
    """Samples of any depth to 8 bits, keeping relative brightness; white, where the file gives it, is the sample
    value that becomes 255 (12-bit samples in 16 bits). Negative 32-bit samples are black."""
    if values.dtype.kind == "f":
        return _float_to_uint8(values)
    if values.dtype.kind == "i" and values.dtype.itemsize <= 2:
        # Signed 8- and 16-bit samples span their type's whole range: shifted to start at 0, the negative half keeps
        # its shades below the positive one, where clipping it made it black.
        white = 2 ** (8 * values.dtype.itemsize) - 1
        values = values.astype(np.int32) - int(np.iinfo(values.dtype).min)
    elif white is None and values.dtype.itemsize <= 2:
        white = 2 ** (8 * values.dtype.itemsize) - 1
    elif white is None:
        # 32-bit samples (Pillow's mode I, OpenCV's int32) are a container: files put 8- or 16-bit values in it as
        # often as full-width ones, so the largest value decides which (8-bit ones must not come out black,
        # full-width ones not white).
        top = int(values.max(initial=0))
        white = 255 if top <= 255 else 65535 if top <= 65535 else int(np.iinfo(values.dtype).max)
    # White is always 2**n - 1, which this divisor takes to 255 exactly (65535 // 257, 4095 // 16).
    return (np.clip(values, 0, white) // max(1, round(white / 255))).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples hold 0..1 (OpenCV, HDR and scientific tools) or 0..255 (Pillow's mode F from 8 bits).

    The typical sample decides which: resampling overshoot and highlights take a few past 1, and one stray
    value must not turn a photo black. NaN is black, infinity white."""
    with np.errstate(over="ignore", invalid="ignore"):
        unit_range = np.count_nonzero(values > 1.0) * 2 <= values.size
        scaled = values * 255.0 if unit_range else values.copy()
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


# OpenCV's silent log level, the same number in both of its calls below.
OPENCV_LOG_SILENT = 0


def set_opencv_log_level(level: int) -> int:
    """Set OpenCV's log level; returns the one it replaces. OpenCV 4.13 moved the call to cv2.utils.logging and
    4.14 dropped cv2.setLogLevel, which 4.8 to 4.12 have alone (facekit takes 4.8 on)."""
    logging_module = getattr(cv2.utils, "logging", None)
    if logging_module is not None:
        return logging_module.setLogLevel(level)
    return cv2.setLogLevel(level)


@contextlib.contextmanager
def opencv_log_silenced() -> Iterator[None]:
    """No log lines of OpenCV's own inside the block: facekit says what failed in one line of its own."""
    previous = set_opencv_log_level(OPENCV_LOG_SILENT)
    try:
        yield
    finally:
        set_opencv_log_level(previous)


def _decode_with_opencv(data: bytes) -> np.ndarray | None:
    """Fallback for TIFFs Pillow cannot open (float colour, big-endian BigTIFF). Size is checked already."""
    # A file this fails on is reported as one error line; OpenCV would add its codec's own lines to stderr.
    with opencv_log_silenced():
        # ANYCOLOR keeps a grey float image grey: asked for colour, OpenCV refuses it. Either applies the orientation.
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if pixels is None or not (pixels.ndim == 2 or pixels.shape[2] == 3):
        return None
    if pixels.dtype != np.uint8:
        pixels = _to_uint8(pixels)
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels
