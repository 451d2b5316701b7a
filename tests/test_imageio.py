from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from facekit import imageio
from facekit.imageio import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image, from_pil, load_image


@pytest.fixture(scope="module")
def photo_rgb(grace_hopper_path: Path) -> np.ndarray:
    """A small, non-square real photo, so a missed rotation also changes the shape."""
    with Image.open(grace_hopper_path) as image:
        return np.asarray(image.convert("RGB").resize((96, 112), Image.Resampling.LANCZOS))


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height grey pixels (its data is far too short)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# EXIF orientation -> how a camera stores the upright picture (EXIF 2.3, tag 0x0112, "row 0 / column 0").
STORED_FOR_ORIENTATION = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],
    3: lambda up: up[::-1, ::-1],
    4: lambda up: up[::-1],
    5: lambda up: up.transpose(1, 0, 2),
    6: lambda up: np.rot90(up, 1),
    7: lambda up: up[::-1, ::-1].transpose(1, 0, 2),
    8: lambda up: np.rot90(up, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_comes_out_upright(tmp_path: Path, photo_rgb: np.ndarray, orientation: int) -> None:
    stored = np.ascontiguousarray(STORED_FOR_ORIENTATION[orientation](photo_rgb))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"orientation{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())

    loaded = load_image(path)

    assert loaded.shape == (112, 96, 3) and loaded.dtype == np.uint8
    upright = _bgr(photo_rgb)
    assert _mean_abs_diff(loaded, upright) < 4.0
    if orientation != 1:
        # The test has teeth: the same pixels without the EXIF turn are clearly different.
        as_stored = cv2.resize(_bgr(stored), (96, 112))
        assert _mean_abs_diff(as_stored, upright) > 4 * _mean_abs_diff(loaded, upright)


def test_real_jpeg_loads_as_bgr(grace_hopper_path: Path) -> None:
    image = load_image(grace_hopper_path)
    reference = cv2.imread(str(grace_hopper_path))
    assert image.shape == (600, 512, 3) and image.dtype == np.uint8
    assert _mean_abs_diff(image, reference) < 2.0  # same channel order as OpenCV


def test_decode_image_from_bytes(grace_hopper_path: Path) -> None:
    image = decode_image(grace_hopper_path.read_bytes())
    assert image.shape == (600, 512, 3) and image.dtype == np.uint8
    # The photo's pixels, in OpenCV's channel order, as load_image gives them from the file.
    assert _mean_abs_diff(image, cv2.imread(str(grace_hopper_path))) < 2.0
    np.testing.assert_array_equal(image, load_image(grace_hopper_path))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
def test_pillow_modes_load_as_three_channel_uint8(tmp_path: Path, photo_rgb: np.ndarray, mode: str) -> None:
    path = tmp_path / f"{mode}.png"
    Image.fromarray(photo_rgb).convert(mode).save(path)
    image = load_image(path)
    assert image.shape == (112, 96, 3) and image.dtype == np.uint8
    # Compared at low resolution, where the dithering of the 1-bit mode averages out.
    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (12, 14), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY), (12, 14), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(grey.ravel(), expected.ravel())[0, 1] > 0.9


def test_transparent_pixels_become_white(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    rgba = np.dstack([photo_rgb, np.full(photo_rgb.shape[:2], 255, np.uint8)])
    rgba[:20, :20, 3] = 0
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_image(path)
    assert (image[:20, :20] == 255).all()
    assert _mean_abs_diff(image[30:, 30:], _bgr(photo_rgb)[30:, 30:]) < 1.0


def test_palette_with_transparency(tmp_path: Path) -> None:
    palette_image = Image.new("P", (40, 30), 1)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.info["transparency"] = 0
    palette_image.paste(0, (0, 0, 10, 10))
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=0)
    image = load_image(path)
    assert image.shape == (30, 40, 3)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert tuple(image[20, 20]) == (0, 0, 255)  # red, in BGR


def test_cmyk_jpeg(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(photo_rgb).convert("CMYK").save(path, quality=95)
    image = load_image(path)
    assert image.shape == (112, 96, 3) and image.dtype == np.uint8
    assert _mean_abs_diff(image, _bgr(photo_rgb)) < 8.0


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images(tmp_path: Path, photo_rgb: np.ndarray, suffix: str, channels: int) -> None:
    bgr8 = _bgr(photo_rgb)
    if channels == 1:
        bgr8 = cv2.cvtColor(cv2.cvtColor(bgr8, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    pixels16 = bgr8.astype(np.uint16) * 257
    path = tmp_path / f"deep{channels}{suffix}"
    assert cv2.imwrite(str(path), pixels16[:, :, 0] if channels == 1 else pixels16)
    image = load_image(path)
    assert image.shape == (112, 96, 3) and image.dtype == np.uint8
    assert _mean_abs_diff(image, bgr8) < 1.0


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# Name -> (mode, format, save options) of the files photo folders hold; "RGB;16" is 16 bits a sample, from OpenCV.
DECODE_CASES: dict[str, tuple[str, str, dict]] = {
    "jpeg": ("RGB", "JPEG", {}),
    **{f"jpeg orientation {turn}": ("RGB", "JPEG", {"exif": _exif(turn)}) for turn in range(1, 9)},
    "jpeg grey": ("L", "JPEG", {}),
    "jpeg grey orientation 6": ("L", "JPEG", {"exif": _exif(6)}),
    "jpeg cmyk": ("CMYK", "JPEG", {}),
    "png": ("RGB", "PNG", {}),
    "png transparent colour": ("RGB", "PNG", {"transparency": (255, 255, 255)}),
    "png rgba": ("RGBA", "PNG", {}),
    "png rgba orientation 6": ("RGBA", "PNG", {"exif": _exif(6)}),
    "png grey": ("L", "PNG", {}),
    "png grey transparent shade": ("L", "PNG", {"transparency": 128}),
    "png grey alpha": ("LA", "PNG", {}),
    "png palette": ("P", "PNG", {}),
    "png palette transparency": ("P", "PNG", {"transparency": 0}),
    "png 1-bit": ("1", "PNG", {}),
    "png 16-bit grey": ("I;16", "PNG", {}),
    "png 16-bit colour": ("RGB;16", "PNG", {}),
    "gif": ("P", "GIF", {}),
    "gif transparency": ("P", "GIF", {"transparency": 0}),
    "webp": ("RGB", "WEBP", {"lossless": True}),
    "webp rgba": ("RGBA", "WEBP", {"lossless": True}),
    "bmp": ("RGB", "BMP", {}),
    "bmp grey": ("L", "BMP", {}),
    "tiff": ("RGB", "TIFF", {}),
    "tiff orientation 8": ("RGB", "TIFF", {"tiffinfo": {0x0112: 8}}),
    "tiff rgba": ("RGBA", "TIFF", {}),
    "tiff cmyk": ("CMYK", "TIFF", {}),
    "tiff 16-bit grey": ("I;16", "TIFF", {}),
    "tiff 16-bit colour": ("RGB;16", "TIFF", {}),
}


def _encoded(rgb: np.ndarray, mode: str, file_format: str, options: dict) -> bytes:
    if mode == "RGB;16":
        ok, encoded = cv2.imencode("." + file_format.lower(), _bgr(rgb).astype(np.uint16) * 257 + 100)
        assert ok
        return encoded.tobytes()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 256 + 200)
    elif mode in ("RGBA", "LA"):
        # Alpha from clear to opaque across the photo, so that every blend weight occurs.
        alpha = np.broadcast_to(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), rgb.shape[:2])
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert(mode)
    else:
        image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _plain_bgr(data: bytes) -> np.ndarray:
    """The pixels decode_image gave before it left out Pillow's needless copies: Pillow's own EXIF turn and
    conversions, composited on white where there is transparency, and numpy's channel flip."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
    if upright.mode in ("I;16", "I"):  # Pillow 9.5 opens a 16-bit grey PNG as "I"
        return np.dstack([(np.asarray(upright) // 257).astype(np.uint8)] * 3)
    if upright.mode in ("RGBA", "LA") or (upright.mode == "P" and "transparency" in upright.info):
        white = Image.new("RGBA", upright.size, (255, 255, 255, 255))
        upright = Image.alpha_composite(white, upright.convert("RGBA"))
    return np.ascontiguousarray(np.asarray(upright.convert("RGB"))[:, :, ::-1])


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decoded_pixels_are_those_of_pillows_plain_conversion(monkeypatch: pytest.MonkeyPatch, photo_rgb: np.ndarray,
                                                                case: str) -> None:
    data = _encoded(photo_rgb, *DECODE_CASES[case])
    expected = _plain_bgr(data)
    # A row a band, bands of 10 rows and 2 left over, the photo in one band.
    for band_pixels in (50, 1000, imageio.BAND_PIXELS):
        monkeypatch.setattr(imageio, "BAND_PIXELS", band_pixels)
        decoded = decode_image(data)
        assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous and decoded.flags.writeable
        np.testing.assert_array_equal(decoded, expected)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        before = image.size, image.mode, image.tobytes()
        np.testing.assert_array_equal(from_pil(image), expected)
        assert (image.size, image.mode, image.tobytes()) == before  # the caller's image is not turned in place


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's peak memory of a process")
def test_decoding_a_large_photo_holds_little_more_than_its_pixels(tmp_path: Path, astronaut_bgr: np.ndarray) -> None:
    """Pillow's decoded image (4 bytes a pixel) and the BGR array (3) must coexist; the decoder's peak memory was
    six times the array's size, in copies it did not need. Measured in a fresh interpreter: ru_maxrss would start
    from pytest's own peak, which a child inherits."""
    path = tmp_path / "large.jpg"
    assert cv2.imwrite(str(path), cv2.resize(astronaut_bgr, (3000, 2000)))
    script = ("import re, sys\nfrom facekit.imageio import decode_image\n"
              "def peak_kib():\n"
              "    return int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "before = peak_kib()\n"
              "pixels = decode_image(data)\n"
              "print((peak_kib() - before) * 1024 / pixels.nbytes)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 4.0  # about 2.7


def _peak_growth_kib(call: str, path: Path) -> int:
    """How far the peak memory (VmHWM) of a fresh interpreter rises while call, Python code on `path` (a str) that
    must raise ImageError, runs. Fresh, as a peak only rises: in pytest's process an earlier test's peak would hide
    this one's, and a child process starts from its parent's ru_maxrss."""
    script = ("import re, sys\nfrom facekit.imageio import ImageError, decode_image, load_image\n"
              "def peak_kib():\n"
              "    return int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
              "path = sys.argv[1]\n"
              "before = peak_kib()\n"
              "try:\n"
              f"    {call}\n"
              "except ImageError:\n"
              "    print(peak_kib() - before)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout, f"not refused: {result.stderr}"
    return int(result.stdout)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path / "nowhere.jpg")
    _assert_one_line_error(excinfo, "file not found", "nowhere.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as excinfo:
        load_image(tmp_path)
    _assert_one_line_error(excinfo, "not a file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "empty file", "empty.jpg")


@pytest.mark.parametrize("name", ["notes.txt", "notes.jpg"])
def test_text_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "not an image", name)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_image(tmp_path: Path, photo_rgb: np.ndarray, suffix: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo_rgb).save(buffer, format=suffix[1:].replace("jpg", "jpeg"))
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, f"cut{suffix}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's peak memory of a process")
def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header(30000, 30000))
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "image too large")
    assert _peak_growth_kib("load_image(path)", path) < 200_000  # 900 megapixels would need gigabytes


def test_max_pixels_limit_reports_the_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_with_header(9000, 9000))  # 81 MP: over facekit's limit, under Pillow's
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "image too large: 9000x9000 pixels (limit 64 megapixels)")


def test_a_50_megapixel_phone_photo_is_read(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    """Phones save 8160x6144 photos: over the 40 MP limit facekit had, they were refused as too large."""
    path = tmp_path / "phone.jpg"
    Image.fromarray(photo_rgb).resize((8160, 6144)).save(path, quality=80)
    assert load_image(path).shape == (6144, 8160, 3)


def test_max_pixels_is_configurable(grace_hopper_path: Path) -> None:
    with pytest.raises(ImageError, match="512x600"):
        load_image(grace_hopper_path, max_pixels=100_000)


def test_every_image_extension_names_a_format_that_is_read(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    """A folder's files are read by these names and passed over by any other: each must decode, as what its name
    says (.jfif and .jpe are JPEG's other names; a GIF is read as its first frame, in its 256 colours)."""
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".bmp": "BMP",
               ".webp": "WEBP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}
    assert set(formats) == IMAGE_EXTENSIONS
    for extension, name in formats.items():
        path = tmp_path / f"photo{extension}"
        Image.fromarray(photo_rgb).save(path, format=name)
        image = load_image(path)
        assert image.shape == (*photo_rgb.shape[:2], 3) and image.dtype == np.uint8
        assert np.abs(image[:, :, ::-1].astype(int) - photo_rgb).mean() < 8, extension


def test_eight_bit_values_in_a_32_bit_tiff_are_not_darkened(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    grey = cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY)
    path = tmp_path / "wide.tif"
    Image.fromarray(grey.astype(np.int32), mode="I").save(path)
    image = load_image(path)
    assert _mean_abs_diff(image, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)) < 1.0


def test_float_colour_tiff_pillow_cannot_open(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    path = tmp_path / "float.tiff"
    assert cv2.imwrite(str(path), _bgr(photo_rgb).astype(np.float32) / 255.0)
    image = load_image(path)
    assert image.shape == (112, 96, 3) and image.dtype == np.uint8
    assert _mean_abs_diff(image, _bgr(photo_rgb)) < 1.0
    # Its size is read from the header, so the pixel limit holds before OpenCV decodes it.
    with pytest.raises(ImageError) as excinfo:
        load_image(path, max_pixels=5_000)
    _assert_one_line_error(excinfo, "image too large: 96x112 pixels")
    damaged = tmp_path / "damaged.tiff"
    damaged.write_bytes(path.read_bytes()[:12])
    with pytest.raises(ImageError) as excinfo:
        load_image(damaged)
    _assert_one_line_error(excinfo, "damaged.tiff")


def _tiff(tags: dict[int, tuple[int, list[int]]], pixels: bytes, byteorder: str = "<", big: bool = False) -> bytes:
    """A TIFF (a BigTIFF if big) of one image with these tags, {tag: (type, values)}; its pixels follow the
    directory, and the strip or tile offset (tag 273 or 324, given as [0]) is pointed at them."""
    formats = {3: "H", 4: "L", 9: "l"}
    entry, count, slot = (byteorder + "HHQ", byteorder + "Q", 8) if big else (byteorder + "HHL", byteorder + "H", 4)
    header = (b"II" if byteorder == "<" else b"MM") + struct.pack(byteorder + "H", 43 if big else 42)
    header += struct.pack(byteorder + "HHQ", 8, 0, 16) if big else struct.pack(byteorder + "L", 8)
    packed = {tag: b"".join(struct.pack(byteorder + formats[kind], v) for v in values)
              for tag, (kind, values) in tags.items()}
    outside = len(header) + struct.calcsize(count) + len(tags) * (struct.calcsize(entry) + slot) + slot
    pixel_offset = outside + sum(len(raw) for raw in packed.values() if len(raw) > slot)
    directory, extra = struct.pack(count, len(tags)), b""
    for tag, (kind, values) in sorted(tags.items()):
        raw = struct.pack(byteorder + formats[kind], pixel_offset) if tag in (273, 324) else packed[tag]
        if len(raw) > slot:  # stored after the directory, which holds its offset
            raw, extra = struct.pack(byteorder + ("Q" if big else "L"), outside + len(extra)), extra + raw
        directory += struct.pack(entry, tag, kind, len(values)) + raw.ljust(slot, b"\0")
    return header + directory + bytes(slot) + extra + pixels


def _image_tags(width: int, height: int, samples: int, bits: int, float_samples: bool, pixel_bytes: int,
                tile: int | None = None, deflate: bool = False) -> dict[int, tuple[int, list[int]]]:
    """Tags of a chunky RGB (3 samples) or grey (1) image in one strip, or in one tile x tile tile."""
    tags = {256: (4, [width]), 257: (4, [height]), 258: (3, [bits] * samples), 259: (3, [8 if deflate else 1]),
            262: (3, [2 if samples == 3 else 1]), 277: (3, [samples]), 284: (3, [1]),
            339: (3, [3 if float_samples else 1] * samples)}
    if tile:
        tags |= {322: (4, [tile]), 323: (4, [tile]), 324: (4, [0]), 325: (4, [pixel_bytes])}
    else:
        tags |= {273: (4, [0]), 278: (4, [height]), 279: (4, [pixel_bytes])}
    return tags


def _deflated_zeros(size: int) -> bytes:
    """zlib data for size zero bytes, compressed a chunk at a time (a hostile file is small, its pixels are not)."""
    compressor, chunk, parts = zlib.compressobj(1), bytes(1 << 22), []
    for start in range(0, size, len(chunk)):
        parts.append(compressor.compress(chunk[: size - start]))
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_bigtiff(photo_rgb: np.ndarray, byteorder: str, dtype: type) -> None:
    # Pillow reads only little-endian 8-bit ones; the rest went to OpenCV unrecognised, as "not an image".
    pixels = photo_rgb.astype(np.float32) / 255 if dtype == np.float32 else photo_rgb
    raw = pixels.astype(pixels.dtype.newbyteorder(byteorder)).tobytes()
    tags = _image_tags(96, 112, 3, pixels.itemsize * 8, dtype == np.float32, len(raw))
    data = _tiff(tags, raw, byteorder, big=True)
    image = decode_image(data)
    assert image.shape == (112, 96, 3) and _mean_abs_diff(image, _bgr(photo_rgb)) < 1.0
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, name="big.tif", max_pixels=5_000)
    _assert_one_line_error(excinfo, "image too large: 96x112 pixels", "big.tif")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's peak memory of a process")
@pytest.mark.parametrize(("samples", "bits", "max_pixels"), [(3, 8, DEFAULT_MAX_PIXELS), (3, 32, 1_000_000)])
def test_a_tiff_tile_larger_than_the_limit_is_refused(tmp_path: Path, samples: int, bits: int,
                                                      max_pixels: int) -> None:
    """16x16 pixels in one vast tile of zeros: a file of kilobytes that libtiff would decode into the whole tile.

    8-bit goes through Pillow, float colour through OpenCV (a smaller tile and limit keep the test quick)."""
    tile = 8192 if max_pixels == DEFAULT_MAX_PIXELS else 2048
    pixels = _deflated_zeros(tile * tile * samples * bits // 8)
    data = _tiff(_image_tags(16, 16, samples, bits, bits == 32, len(pixels), tile=tile, deflate=True), pixels)
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, name="tiles.tif", max_pixels=max_pixels)
    _assert_one_line_error(excinfo, f"image too large: {tile}x{tile} pixel tiles", "tiles.tif")
    path = tmp_path / "tiles.tif"
    path.write_bytes(data)  # under a megabyte: reading it back adds little to the peak
    call = f"decode_image(open(path, 'rb').read(), name='tiles.tif', max_pixels={max_pixels})"
    assert _peak_growth_kib(call, path) < 50_000  # the 8-bit tile alone is 192 MiB


def test_tiff_sizes_that_multiply_to_a_small_count_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two negative (signed) sizes pass a width * height check; libtiff would read them as 4 billion each.
    tags = _image_tags(1, 1, 3, 32, True, 12) | {256: (9, [-100_000]), 257: (9, [-100])}
    monkeypatch.setattr(imageio, "_decode_with_opencv", lambda data: pytest.fail("OpenCV was asked to decode it"))
    with pytest.raises(ImageError, match="not an image"):
        decode_image(_tiff(tags, bytes(12)))


def test_float_tiffs_pillow_cannot_open_say_so(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    grey = tmp_path / "grey64.tif"  # OpenCV decodes a grey float TIFF when not asked for colour
    assert cv2.imwrite(str(grey), cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY).astype(np.float64) / 255)
    image = load_image(grey)
    assert image.shape == (112, 96, 3)
    assert _mean_abs_diff(image, cv2.cvtColor(cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY),
                                              cv2.COLOR_GRAY2BGR)) < 1.0
    rgba = tmp_path / "rgba.tif"  # a valid file neither library decodes is not "not an image"
    assert cv2.imwrite(str(rgba), np.dstack([_bgr(photo_rgb), np.full((112, 96), 255, np.uint8)]).astype(np.float32))
    with pytest.raises(ImageError) as excinfo:
        load_image(rgba)
    _assert_one_line_error(excinfo, "unsupported or damaged TIFF (96x112 pixels)", "rgba.tif")


def _float_with(photo_rgb: np.ndarray, case: str) -> np.ndarray:
    values = _bgr(photo_rgb).astype(np.float32) / 255
    if case == "nan":
        values[0, 0] = np.nan
    elif case == "inf":
        values[0, 0] = np.inf
    else:  # highlights: a blown-out band, as scene-referred exports have
        values[:10] = 1.5
    return values


@pytest.mark.parametrize("case", ["nan", "inf", "highlights"])
@pytest.mark.parametrize("channels", [1, 3])
def test_float_tiff_with_a_few_values_out_of_range(
    tmp_path: Path, photo_rgb: np.ndarray, case: str, channels: int
) -> None:
    # One NaN or infinity made the whole photo black (and numpy warned); so did highlights above 1.
    values = _float_with(photo_rgb, case)
    path = tmp_path / f"{case}.tif"
    if channels == 1:  # Pillow's mode F
        values = values[:, :, 1]
        Image.fromarray(values, mode="F").save(path)
    else:
        assert cv2.imwrite(str(path), values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path)
    expected = (np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0), 0, 1) * 255).astype(np.uint8)
    if channels == 1:
        expected = cv2.cvtColor(expected, cv2.COLOR_GRAY2BGR)
    assert _mean_abs_diff(image, expected) < 1.0


@pytest.mark.parametrize("case", ["int32 colour of 8-bit values", "int32 grey of full range"])
def test_32_bit_integer_tiffs_keep_their_brightness(tmp_path: Path, photo_rgb: np.ndarray, case: str) -> None:
    # 8-bit values in OpenCV's int32 came out black (divided by 257); full-range mode I came out white.
    path = tmp_path / "wide.tif"
    if case.startswith("int32 colour"):
        assert cv2.imwrite(str(path), _bgr(photo_rgb).astype(np.int32))
        expected = _bgr(photo_rgb)
    else:
        grey = cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY)
        Image.fromarray(grey.astype(np.int32) * (2**31 // 256), mode="I").save(path)
        expected = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    assert _mean_abs_diff(load_image(path), expected) < 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_signed_16_bit_tiffs_keep_their_negative_half(tmp_path: Path, photo_rgb: np.ndarray, channels: int) -> None:
    # Samples below zero, the darker half of the range, came out black. Pillow reads the grey file, OpenCV the colour.
    bgr8 = _bgr(photo_rgb)
    if channels == 1:
        bgr8 = cv2.cvtColor(cv2.cvtColor(bgr8, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    signed = (bgr8.astype(np.int32) * 257 - 32768).astype(np.int16)
    path = tmp_path / f"signed{channels}.tif"
    assert cv2.imwrite(str(path), signed[:, :, 0] if channels == 1 else signed)
    assert _mean_abs_diff(load_image(path), bgr8) < 1.0


def _pack_12_bit(samples: np.ndarray) -> bytes:
    """Rows of 12-bit samples as a TIFF stores them: two in three bytes, high bits first (rows of even length)."""
    first, second = samples[:, 0::2].astype(np.uint16), samples[:, 1::2].astype(np.uint16)
    return np.stack([first >> 4, (first & 15) << 4 | second >> 8, second & 255], axis=-1).astype(np.uint8).tobytes()


def test_twelve_bit_tiff_is_not_darkened(photo_rgb: np.ndarray) -> None:
    # Pillow puts 12-bit samples unscaled in its 16-bit mode; divided as if they used 16 bits, they came out near black.
    grey = cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY)
    twelve_bit = grey.astype(np.uint32) * 4095 // 255
    pixels = _pack_12_bit(twelve_bit)
    image = decode_image(_tiff(_image_tags(96, 112, 1, 12, False, len(pixels)), pixels))
    assert _mean_abs_diff(image, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)) < 1.0
    # Only the file's word counts: the same values in a 16-bit file are a dark 16-bit photo, not stretched.
    pixels = twelve_bit.astype("<u2").tobytes()
    image = decode_image(_tiff(_image_tags(96, 112, 1, 16, False, len(pixels)), pixels))
    assert image.max() <= 4095 // 257


def test_unsigned_32_bit_tiff_keeps_values_from_2_31_up(photo_rgb: np.ndarray) -> None:
    # Pillow keeps unsigned 32-bit samples in its signed mode I: the brighter half turned negative, so black.
    grey = cv2.cvtColor(_bgr(photo_rgb), cv2.COLOR_BGR2GRAY)
    pixels = (grey.astype(np.uint32) * 16843009).astype("<u4").tobytes()  # 255 * 16843009 is 2**32 - 1
    image = decode_image(_tiff(_image_tags(96, 112, 1, 32, False, len(pixels)), pixels))
    assert _mean_abs_diff(image, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)) < 1.0


def test_a_damaged_compressed_tiff_is_an_error_and_prints_nothing(
    tmp_path: Path, photo_rgb: np.ndarray, capfd
) -> None:
    # OpenCV, tried after Pillow failed, returned it as an all-black photo; and Pillow's libtiff wrote its own error
    # line to stderr ("ZIPDecode: Decoding error ...").
    path = tmp_path / "damaged.tif"
    Image.fromarray(photo_rgb).save(path, compression="tiff_adobe_deflate")
    with Image.open(path) as image:
        strip = image.tag_v2[273][0]
    data = bytearray(path.read_bytes())
    data[strip:strip + 2] = b"\xff\xff"  # a zlib header no stream has
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "damaged.tif")
    assert capfd.readouterr() == ("", "")


def test_pillow_logging_an_absurd_tiff_prints_nothing(tmp_path: Path) -> None:
    """Pillow logs "More samples per pixel than can be decoded" as an error, which logging prints to stderr when
    nothing is configured; pytest configures logging, so this runs in a fresh interpreter."""
    path = tmp_path / "samples.tif"
    path.write_bytes(_tiff(_image_tags(4, 4, 3, 8, False, 48) | {277: (3, [40_000])}, bytes(48)))
    script = ("import sys\nfrom facekit.imageio import ImageError, load_image\n"
              "try:\n    load_image(sys.argv[1])\nexcept ImageError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "samples.tif" in result.stdout
    assert result.stderr == ""


def test_a_damaged_exif_block_gives_no_warning(tmp_path: Path, photo_rgb: np.ndarray) -> None:
    # Pillow warned "Corrupt EXIF data" while turning the photo, outside the block that silenced it while opening.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "stored after the directory"  # whose length decides where the directory runs out
    block = exif.tobytes()  # b"Exif\0\0", a big-endian TIFF header, then the directory's entry count
    block = block[:14] + struct.pack(">H", 5) + block[16:]  # five entries, where there are two
    path = tmp_path / "exif.jpg"
    Image.fromarray(photo_rgb).save(path, quality=95, exif=block)
    with warnings.catch_warnings(record=True) as caught:  # as errors they would be swallowed with the EXIF turn
        warnings.simplefilter("always")
        image = load_image(path)
    assert image.shape == (96, 112, 3)  # the orientation was still read
    assert [str(warning.message) for warning in caught] == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's peak memory of a process")
def test_a_file_larger_than_any_image_is_refused_unread(tmp_path: Path) -> None:
    """A video or disk image named .jpg: refused from its size, before it is read into memory."""
    path = tmp_path / "movie.jpg"
    with open(path, "wb") as handle:
        handle.truncate(700_000_000)  # sparse: no disk used
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    assert _peak_growth_kib("load_image(path)", path) < 100_000
    _assert_one_line_error(excinfo, "file too large for an image: 700 MB", "movie.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_header_fits_reads_the_size_without_decoding(grace_hopper_path):
    from facekit.imageio import header_fits

    photo = grace_hopper_path.read_bytes()
    assert header_fits(photo) and not header_fits(photo, max_pixels=1000)
    assert not header_fits(b"") and not header_fits(b"not an image at all")
    ok, encoded = cv2.imencode(".png", np.zeros((8500, 8500), np.uint8))  # 72 megapixels in a small file
    assert ok and len(encoded) < 1_000_000 and not header_fits(encoded.tobytes())


def test_a_binary_file_object_loads_as_its_file_does(grace_hopper_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib's get_sample_data gives an open file, as face_recognition's load_image_file takes one."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        np.testing.assert_array_equal(load_image(handle), load_image(grace_hopper_path))
    with pytest.raises(ImageError, match=r"^not an image: <file object>$"):
        load_image(io.BytesIO(b"hello"))
    (tmp_path / "notes.jpg").write_text("hello")
    with open(tmp_path / "notes.jpg", "rb") as handle, pytest.raises(ImageError, match=r"^not an image: .*notes.jpg$"):
        load_image(handle)
    with open(tmp_path / "notes.jpg") as handle, pytest.raises(
            TypeError, match=r"^load_image takes a file's path or a file object opened in binary mode \('rb'\), not "
                             r"TextIOWrapper$"):
        load_image(handle)
    with pytest.raises(TypeError, match=r"opened in binary mode \('rb'\), not list$"):
        load_image([grace_hopper_path])
    # A pipe, unbuffered, gives what has arrived so far: the whole image must still be read (one read() took 44 bytes).
    read_end, write_end = os.pipe()

    def feed() -> None:
        data = grace_hopper_path.read_bytes()
        with open(write_end, "wb") as sink:  # the head first, the rest once the reader has had time to take it
            sink.write(data[:1000])
            sink.flush()
            time.sleep(0.5)
            sink.write(data[1000:])

    writer = threading.Thread(target=feed)
    with open(read_end, "rb", buffering=0) as pipe:
        writer.start()
        np.testing.assert_array_equal(load_image(pipe), load_image(grace_hopper_path))
    writer.join()
    # As a file larger than any image is refused, and the stream is read no further than that tells.
    monkeypatch.setattr(imageio, "max_file_bytes", lambda max_pixels: 1000)
    stream = io.BytesIO(grace_hopper_path.read_bytes())
    with pytest.raises(ImageError, match=r"^file too large for an image: "):
        load_image(stream)
    assert stream.tell() == 1001


def test_opencv_before_4_13_is_silenced_through_its_older_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """cv2.utils.logging came with OpenCV 4.13; 4.8 to 4.12, which facekit takes (pip picks 4.11 beside numpy<2),
    have cv2.setLogLevel alone: every command ended in AttributeError, 'cv2.utils' has no attribute 'logging'."""
    from facekit.cli import quiet_opencv

    levels = [3]

    def older_call(level: int) -> int:
        levels.append(level)
        return levels[-2]

    monkeypatch.delattr(cv2.utils, "logging", raising=False)  # OpenCV 4.8-4.12 have none
    monkeypatch.setattr(cv2, "setLogLevel", older_call, raising=False)
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    with imageio.opencv_log_silenced():
        assert levels == [3, 0]
    assert levels == [3, 0, 3]
    quiet_opencv()
    assert levels[-1] == imageio.OPENCV_LOG_SILENT == 0
