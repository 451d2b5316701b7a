#!/usr/bin/env python3
"""The bundled demo: enroll two people from photos that ship inside PyPI packages, then identify.

    python tools/demo.py [--workdir facekit-demo]

Uses scikit-image's `astronaut` (Eileen Collins) and matplotlib's `grace_hopper.jpg`, so it needs
no download and no data set: it runs the real `facekit enroll` and `facekit identify` commands.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def bundled_photos() -> dict[str, np.ndarray]:
    try:
        from matplotlib import cbook
        from skimage import data
    except ModuleNotFoundError as exc:  # the `demo` extra, which a plain install of facekit leaves out
        module = (exc.name or "").split(".")[0]
        package = {"skimage": "scikit-image"}.get(module, module)
        raise ModuleNotFoundError(f"the demo's photos ship inside scikit-image and matplotlib, and {package} is not "
                                  "installed: pip install -e '.[demo]' (in a clone) or pip install scikit-image "
                                  "matplotlib", name=exc.name) from None

    grace = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"Eileen Collins": np.ascontiguousarray(data.astronaut()[:, :, ::-1]), "Grace Hopper": grace}


def other_photo(image: np.ndarray, angle: float, gain: float) -> np.ndarray:
    """A second 'photo' of the same scene: rotated, rescaled and re-exposed."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 0.9)
    warped = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    return np.clip(warped.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("facekit-demo"))
    args = parser.parse_args(argv)
    people, probes = args.workdir / "people", args.workdir / "probes"
    photos = bundled_photos()
    for name, image in photos.items():
        (people / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(people / name / "1.jpg"), image)
        cv2.imwrite(str(people / name / "2.jpg"), other_photo(image, 5, 0.9))
    probes.mkdir(parents=True, exist_ok=True)
    collage = np.full((620, 1100, 3), 235, np.uint8)
    collage[50:562, 20:532] = other_photo(photos["Eileen Collins"], -6, 1.1)
    collage[10:610, 560:1072] = photos["Grace Hopper"][:, :, :]
    cv2.imwrite(str(probes / "both.jpg"), collage)

    gallery = args.workdir / "gallery"
    if (gallery / "gallery.sqlite").is_file():
        # The demo's own gallery, made afresh: one left by an earlier facekit may hold another model's embeddings.
        shutil.rmtree(gallery)
    facekit = [sys.executable, "-m", "facekit.cli"]
    steps = [
        [*facekit, "enroll", str(people), "--gallery", str(gallery)],
        [*facekit, "identify", str(probes / "both.jpg"), "--gallery", str(gallery),
         "--annotate", str(args.workdir / "annotated")],
    ]
    for command in steps:
        print("$ facekit " + " ".join(command[3:]), flush=True)
        result = subprocess.run(command)
        if result.returncode != 0:
            return result.returncode  # identify's own output ends with the annotated copy's path
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
