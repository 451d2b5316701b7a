#!/usr/bin/env python3
"""Detect and align every photo under a folder into 112x112 crops, keeping the folder layout.

    python tools/align_dataset.py RAW_DIR OUT_DIR [--detector yunet --yunet-model face_detection_yunet.onnx]

The output is what `facekit train` reads (one sub-folder per identity) and what the training
callback uses for LFW (crops named like the originals, as .png). One face per photo: the
primary one (large and central), as `facekit eval` takes; photos with more than one face are
counted and one is named, to be checked. Re-running skips crops that already exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from facekit.alignment import align_face
from facekit.detection import DETECTOR_BACKENDS, create_detector
from facekit.imageio import IMAGE_EXTENSIONS, ImageError, load_image
from facekit.recognition import primary_face


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--detector", choices=DETECTOR_BACKENDS, default="auto")
    parser.add_argument("--yunet-model")
    parser.add_argument("--min-face", type=int, help="smallest face width in pixels (see facekit identify --help)")
    args = parser.parse_args(argv)
    if not args.raw_dir.is_dir():
        print(f"error: folder not found: {args.raw_dir}", file=sys.stderr)
        return 2
    detector = create_detector(args.detector, args.yunet_model, args.min_face)
    paths = sorted(p for p in args.raw_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    written = already = missing = failed = 0
    group_photos: list[Path] = []
    for path in tqdm(paths, desc="aligning", unit="img"):
        out = args.out_dir / path.relative_to(args.raw_dir).with_suffix(".png")
        if out.exists():
            already += 1
            continue
        try:
            image = load_image(path)
        except ImageError as exc:
            tqdm.write(f"skipped {path}: {exc}")
            failed += 1
            continue
        faces = detector.detect(image)
        face = primary_face(faces, image.shape)
        if len(faces) > 1:
            # Kept, not skipped: LFW's photos often show others beside the person they are of, and `facekit eval`
            # takes the same primary face from them. In a folder of one's own it may be someone else's face.
            group_photos.append(path)
        if face is None:
            missing += 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), align_face(image, face.landmarks))
        written += 1
    print(f"{written} crops written, {already} there already, {missing} photos without a face, {failed} unreadable")
    if group_photos:
        print(f"warning: {len(group_photos)} of the photos show more than one face, and their crop is of the primary "
              f"one (the largest, most central), which may not be the person the folder names: check them, such as "
              f"{group_photos[0]}", file=sys.stderr)
    return 0 if written or already or not paths else 1


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
