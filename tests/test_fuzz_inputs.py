"""Bad and unusual input through `facekit enroll` and `facekit identify`.

Every input must give either a result or a one-line reason, the documented exit code, no
traceback, and a gallery that still holds everything enrolled before.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facekit.cli import main
from facekit.datastore import Gallery


def jpeg_bytes(image_bgr: np.ndarray, **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_bgr[:, :, ::-1]).save(buffer, format="JPEG", quality=92, **save_options)
    return buffer.getvalue()


def with_orientation(image_bgr: np.ndarray, orientation: int) -> bytes:
    """Store the photo transformed so that applying EXIF `orientation` shows it upright again."""
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
               7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]
    pil = Image.fromarray(image_bgr[:, :, ::-1])
    stored = pil.transpose(inverse) if inverse is not None else pil
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def fifty_faces(faces: list[np.ndarray]) -> np.ndarray:
    tiles = [cv2.resize(faces[i % len(faces)][40:360, 100:420] if i % 2 == 0 else faces[i % len(faces)][60:380, 90:410],
                        (120, 120)) for i in range(50)]
    rows = [np.hstack(tiles[r * 10:(r + 1) * 10]) for r in range(5)]
    return np.vstack(rows)


@pytest.fixture()
def corpus(tmp_path, astronaut_bgr, grace_hopper_bgr) -> dict[str, Path]:
    """A people folder full of trouble, one identity per case."""
    root = tmp_path / "people"
    good = jpeg_bytes(grace_hopper_bgr)
    grey = cv2.cvtColor(grace_hopper_bgr, cv2.COLOR_BGR2GRAY)
    cases: dict[str, bytes] = {
        "truncated_jpeg/a.jpg": good[: len(good) // 2],
        "truncated_png/a.png": cv2.imencode(".png", astronaut_bgr)[1].tobytes()[:5000],
        "empty_jpeg/a.jpg": b"",
        "empty_png/a.png": b"",
        "text_as_jpeg/a.jpg": b"GIF89a? no, just text pretending to be a picture\n",
        "no_face/a.png": cv2.imencode(".png", np.full((400, 400, 3), (40, 120, 200), np.uint8))[1].tobytes(),
        "greyscale/a.png": cv2.imencode(".png", grey)[1].tobytes(),
        "sixteen_bit/a.png": cv2.imencode(".png", (astronaut_bgr.astype(np.uint16) * 257))[1].tobytes(),
        "José María Ñúñez/photo 1.jpg": jpeg_bytes(astronaut_bgr),
        "fifty_faces/a.png": cv2.imencode(".png", fifty_faces([astronaut_bgr, grace_hopper_bgr]))[1].tobytes(),
    }
    buffer = io.BytesIO()
    Image.fromarray(grace_hopper_bgr[:, :, ::-1]).convert("CMYK").save(buffer, format="JPEG")
    cases["cmyk/a.jpg"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(astronaut_bgr[:, :, ::-1]).convert("RGBA").save(buffer, format="PNG")
    cases["rgba/a.png"] = buffer.getvalue()
    scene = grace_hopper_bgr.astype(np.float32) / 255  # a float TIFF, which only OpenCV reads
    scene[0, 0] = np.nan  # one bad sample must not turn the photo black
    scene[:60] *= 1.6  # nor a band of highlights above 1
    cases["float_tiff/a.tif"] = cv2.imencode(".tiff", scene)[1].tobytes()
    buffer = io.BytesIO()
    Image.fromarray(astronaut_bgr[:, :, ::-1]).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    damaged = bytearray(buffer.getvalue())
    strip = Image.open(io.BytesIO(buffer.getvalue())).tag_v2[273][0]
    damaged[strip:strip + 2] = b"\xff\xff"  # no zlib stream starts so
    cases["damaged_tiff/a.tif"] = bytes(damaged)
    for orientation in range(1, 9):
        cases[f"exif_{orientation}/a.jpg"] = with_orientation(grace_hopper_bgr, orientation)
    for relative, data in cases.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    bomb = root / "bomb" / "a.png"
    bomb.parent.mkdir()
    Image.new("1", (30000, 30000)).save(bomb, optimize=True)
    (root / "control\x07chars").mkdir()
    (root / "control\x07chars" / "a.jpg").write_bytes(good)
    os.symlink(root, root / "loop")  # a directory symlink loop
    return {relative.split("/")[0]: root / relative for relative in cases} | {"bomb": bomb, "root": root}


# The corpus's cases that enroll fails and says why: the files no photo can be read from, and a photo without a face.
BROKEN = ("truncated_jpeg", "truncated_png", "empty_jpeg", "empty_png", "text_as_jpeg", "no_face", "bomb",
          "damaged_tiff")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.usefixtures("copies_as_other_people")  # one identity per case, of two faces
def test_fuzz_corpus_enroll_and_identify(tmp_path, corpus, capsys):
    gallery = str(tmp_path / "gallery")
    code, out, err = run(capsys, "enroll", str(corpus["root"]), "--gallery", gallery, "--quiet", "--json")
    assert code == 1, err  # the good photos are enrolled; the bad ones make it 1
    assert "Traceback" not in err
    import json

    summary = json.loads(out)
    skipped = {Path(item["path"]).parent.name: item["reason"] for item in summary["skipped_files"]}
    for broken in BROKEN:
        assert broken in skipped, f"{broken} was not reported as skipped"
        assert "\n" not in skipped[broken] and skipped[broken]
        said = [line for line in err.splitlines() if str(corpus[broken]) in line]
        assert len(said) == 1, f"{broken}: expected one line on stderr naming the file, got {said}"
    assert "too large" in skipped["bomb"] or "pixels" in skipped["bomb"]
    assert "corrupt" in skipped["damaged_tiff"]  # not decoded as an all-black photo with "no face" in it
    assert any("control" in item["path"] for item in summary["skipped_files"])
    assert any("loop" in item["path"] for item in summary["skipped_files"])
    assert any("fifty_faces" in warning for warning in summary["warnings"])
    with Gallery.open(gallery, create=False) as opened:
        enrolled = dict(opened.identities())
        before = len(opened)
        assert opened.check() == []
    for readable in ("greyscale", "sixteen_bit", "cmyk", "rgba", "float_tiff", "José María Ñúñez",
                     *[f"exif_{o}" for o in range(1, 9)]):
        assert readable in enrolled, f"{readable} was not enrolled"
    assert not set(BROKEN) & set(enrolled)

    counts = {"inputs": 0, "tracebacks": 0, "ok": 0, "refused": 0}
    for name, path in corpus.items():
        if name == "root":
            continue
        counts["inputs"] += 1
        code, out, err = run(capsys, "identify", str(path), "--gallery", gallery, "--json")
        counts["tracebacks"] += "Traceback" in err
        if code == 0:
            counts["ok"] += 1
            record = json.loads(out)
            if name == "fifty_faces":
                assert len(record["faces"]) >= 20  # small faces in a 1200x600 grid; most must be found
            if name.startswith("exif_") or name in ("greyscale", "sixteen_bit", "cmyk", "rgba", "float_tiff"):
                assert len(record["faces"]) >= 1, f"{name}: no face after decoding"
        else:
            counts["refused"] += 1
            assert code == 1
            if name == "no_face":  # its record is still printed, and the error said
                assert json.loads(out)["faces"] == [] and err == f"error: no face found in {path}\n"
            else:  # the file's own error, then that no image could be read
                assert err.splitlines()[1:] == ["error: no image could be read"] and err.startswith("error: "), err
    print(f"fuzz corpus: {counts}")
    assert counts["tracebacks"] == 0
    assert counts["refused"] == 8  # truncated x2, empty x2, text, bomb, damaged TIFF, and no face (its record given)
    with Gallery.open(gallery, create=False) as opened:
        assert len(opened) == before and opened.check() == []


def test_hostile_identity_names_are_refused(tmp_path, capsys, grace_hopper_bgr):
    people = tmp_path / "people"
    (people / "grace").mkdir(parents=True)
    cv2.imwrite(str(people / "grace" / "a.jpg"), grace_hopper_bgr)
    gallery = str(tmp_path / "gallery")
    assert run(capsys, "enroll", str(people), "--gallery", gallery, "--quiet")[0] == 0
    for hostile in ("..", ".", "a/b", "bad\x1bname", ""):
        code, _, err = run(capsys, "gallery", "--gallery", gallery, "rename", "grace", hostile)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "gallery", "--gallery", gallery, "list")
    assert out.strip() == "grace"
