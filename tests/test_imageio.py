from __future__ import annotations

import io
import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facekit.imageio import IMAGE_EXTENSIONS, ImageError, decode_image, load_image


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
    assert image.shape == (600, 512, 3)


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


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header(30000, 30000))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _assert_one_line_error(excinfo, "image too large")
    assert peak_after - peak_before < 200_000  # 900 megapixels would need gigabytes


def test_max_pixels_limit_reports_the_size(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_png_with_header(7000, 7000))  # 49 MP: over facekit's limit, under Pillow's
    with pytest.raises(ImageError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "image too large: 7000x7000 pixels (limit 40 megapixels)")


def test_max_pixels_is_configurable(grace_hopper_path: Path) -> None:
    with pytest.raises(ImageError, match="512x600"):
        load_image(grace_hopper_path, max_pixels=100_000)


def test_image_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


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
