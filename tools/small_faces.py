#!/usr/bin/env python3
"""How many small faces each detector finds in a large photo, with and without --min-face, and how long it takes.

    python tools/small_faces.py [--face-tile 120] [--min-face 40] [--json]
    python tools/small_faces.py --full-size 6000      # the cost of --min-face 20 on a 6000x6000 photo

The photo is 4,000x3,000 px, grey, with 24 LFW images pasted on a grid, each shrunk to --face-tile pixels (the
face inside fills about 45 % of it: 120 px tiles hold faces about 55 px wide). A face counts as found when a
detected box's centre lies inside its tile.

--full-size N times each detector, in a process of its own (so the peak memory is its own), on an N x N photo
without faces (grey, every 7th row dark) searched for faces from 20 px wide: the whole photo at full size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facekit.detection import create_detector

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO_SIZE = (3000, 4000)
GRID = (4, 6)
SPACING = 600


def group_photo(lfw_images: Path, tile: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The photo and the top-left corner of each tile."""
    paths = sorted(lfw_images.glob("*/*.jpg"))[::300][: GRID[0] * GRID[1]]
    photo = np.full((*PHOTO_SIZE, 3), 120, np.uint8)
    corners = []
    for index, path in enumerate(paths):
        row, column = divmod(index, GRID[1])
        x, y = 300 + column * SPACING, 300 + row * SPACING
        photo[y:y + tile, x:x + tile] = cv2.resize(cv2.imread(str(path)), (tile, tile), interpolation=cv2.INTER_AREA)
        corners.append((x, y))
    return photo, corners


def full_size_cost(side: int, backend: str, yunet_model: Path) -> dict:
    """Seconds and this process's peak memory for one detector on a faceless side x side photo, min_face 20."""
    photo = np.full((side, side, 3), 120, np.uint8)
    photo[::7] = 30
    detector = create_detector(backend, str(yunet_model), min_face=20)
    started = time.perf_counter()
    faces = detector.detect(photo)
    return {"detector": backend, "side": side, "faces": len(faces), "seconds": round(time.perf_counter() - started, 1),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=SHARED / "lfw" / "images")
    parser.add_argument("--yunet-model", type=Path, default=SHARED / "models" / "face_detection_yunet.onnx")
    parser.add_argument("--face-tile", type=int, default=120)
    parser.add_argument("--min-face", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--full-size", type=int, metavar="N", help="the cost of --min-face 20 on an N x N photo")
    parser.add_argument("--detector", help=argparse.SUPPRESS)  # with --full-size: one detector, in this process
    args = parser.parse_args(argv)
    backends = ["mtcnn", "haar"] + (["yunet"] if args.yunet_model.is_file() else [])
    if args.full_size and args.detector:
        print(json.dumps(full_size_cost(args.full_size, args.detector, args.yunet_model)))
        return 0
    if args.full_size:
        results = [json.loads(subprocess.run(
            [sys.executable, __file__, "--full-size", str(args.full_size), "--detector", backend, "--yunet-model",
             str(args.yunet_model)], check=True, capture_output=True, text=True).stdout) for backend in backends]
        for r in results:
            print(json.dumps(r) if args.json else f"{r['detector']:6} {r['side']}x{r['side']}, min_face 20: "
                  f"{r['seconds']:.1f} s, peak {r['peak_mb'] / 1024:.1f} GB, {r['faces']} faces")
        return 0
    if not args.lfw.is_dir():
        print(f"error: LFW images not found: {args.lfw}", file=sys.stderr)
        return 2
    photo, corners = group_photo(args.lfw, args.face_tile)
    results = []
    for backend in backends:
        for min_face in (None, args.min_face):
            detector = create_detector(backend, str(args.yunet_model), min_face=min_face)
            detector.detect(photo[:700, :700])  # warm-up: first-call allocations
            started = time.perf_counter()
            faces = detector.detect(photo)
            seconds = time.perf_counter() - started
            centres = [(x + w / 2, y + h / 2) for x, y, w, h in (face.box for face in faces)]
            found = sum(any(cx <= px < cx + args.face_tile and cy <= py < cy + args.face_tile for px, py in centres)
                        for cx, cy in corners)
            results.append({"detector": backend, "min_face": min_face, "faces": len(corners), "found": found,
                            "boxes": len(faces), "seconds": round(seconds, 3)})
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['detector']:6} min_face={r['min_face']!s:5} found {r['found']}/{r['faces']} "
                  f"({r['boxes']} boxes) in {r['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
