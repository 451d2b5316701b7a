#!/usr/bin/env python3
"""How well enroll's warning of a face unlike its person's other faces (UNLIKE_OTHERS_SIMILARITY) tells a photo of
someone else in a person's folder from the person's own photos, measured on LFW.

    python tools/enroll_outliers.py [--lfw ../shared/data/lfw/images] [--cache /tmp/lfw_enroll.npz]

Every photo of the LFW people with 3 or more is embedded as enroll embeds it (FacePipeline.find_one_face, largest
face, then embed_found; the default detector). A false warning: a person's photo whose best similarity to the
person's other photos is under the threshold; counted with the person's first k photos, for k others. A catch: a
photo of someone else (every photo of every other such person) whose best similarity to a person's first k photos is
under it. Two faces alone (1 other): the same-person pairs (both warned of as one) against a stranger and the
person's first photo.

LFW centres the labelled person: a photo whose largest face (the one enroll takes) lies off the centre is a group
photo in which enroll takes someone else, a warning the user wants. The false warnings are counted with and without
those photos.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit.recognition import (  # noqa: E402
    UNLIKE_OTHERS_SIMILARITY,
    FacePipeline,
    template_min_face,
    too_small_for_template,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OTHERS = (1, 2, 3, 5, 8, 13)  # how many other faces the person has: 1 is the two-face case
THRESHOLDS = (0.3, 0.35, 0.4, 0.42, 0.45, 0.5)
OFF_CENTRE = 30  # px from the centre of LFW's 250x250 photo to the face enroll takes: someone else's face past it


def embed_people(lfw: Path, min_photos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, person index of each, whether the face enroll takes is off the photo's centre) of the photos of
    the people with min_photos or more, as enroll makes them; a photo enroll would fail (no face, too small) is left
    out."""
    if not lfw.is_dir():
        raise FileNotFoundError(f"LFW images folder not found: {lfw} (--lfw names it)")
    pipeline = FacePipeline()
    min_width = template_min_face(pipeline)
    folders = [folder for folder in sorted(lfw.iterdir()) if len(list(folder.glob("*.jpg"))) >= min_photos]
    paths = [str(path) for folder in folders for path in sorted(folder.glob("*.jpg"))]
    embeddings, people, off_centre = [], [], []
    person_of = {folder.name: index for index, folder in enumerate(folders)}
    for item in tqdm(pipeline.load_many(paths, workers=1, largest=True, expect_face=True), total=len(paths)):
        if item.error or not item.faces or too_small_for_template(item.found, min_width):
            continue
        embeddings.append(pipeline.embed_found(item.image, item.found))
        people.append(person_of[Path(item.path).parent.name])
        x, y, width, height = item.faces[0].box
        centre_y, centre_x = np.array(item.image.shape[:2]) / 2
        off_centre.append(np.hypot(x + width / 2 - centre_x, y + height / 2 - centre_y) > OFF_CENTRE)
    return np.stack(embeddings), np.array(people), np.array(off_centre)


def best_to_others(similarity: np.ndarray, people: np.ndarray, others: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the people with more than `others` photos: each of their first others + 1 photos' best similarity to the
    other `others` (genuine), those photos' indices, and every other person's photo's best similarity to their first
    `others` (strangers: put among `others` faces of the person, so both are counted with `others` other faces)."""
    genuine, genuine_index, strangers = [], [], []
    for person in np.unique(people):
        own = np.flatnonzero(people == person)
        if len(own) <= others:
            continue
        first = own[:others + 1]
        block = similarity[np.ix_(first, first)].copy()
        np.fill_diagonal(block, -np.inf)
        genuine.extend(block.max(axis=1))
        genuine_index.extend(first)
        strangers.extend(similarity[np.ix_(np.flatnonzero(people != person), first[:others])].max(axis=1))
    return np.array(genuine), np.array(genuine_index), np.array(strangers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, default=SHARED / "lfw" / "images")
    parser.add_argument("--min-photos", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="an .npz to keep the embeddings in (read where it exists)")
    args = parser.parse_args(argv)
    if args.cache and args.cache.is_file():
        saved = np.load(args.cache)
        embeddings, people, off_centre = saved["embeddings"], saved["people"], saved["off_centre"]
    else:
        embeddings, people, off_centre = embed_people(args.lfw, args.min_photos)
        if args.cache:
            np.savez(args.cache, embeddings=embeddings, people=people, off_centre=off_centre)
    similarity = embeddings @ embeddings.T
    print(f"{len(embeddings)} photos of {len(np.unique(people))} people, {off_centre.sum()} of them group photos "
          f"whose largest face is off the centre; UNLIKE_OTHERS_SIMILARITY = {UNLIKE_OTHERS_SIMILARITY}")
    thresholds = sorted({*THRESHOLDS, UNLIKE_OTHERS_SIMILARITY})
    print("warned of at each threshold: genuine photos (all / those whose face is the centred one) and strangers")
    print("others people photos strangers | " + " | ".join(f"{t:^22.2f}" for t in thresholds))
    for others in OTHERS:
        genuine, index, strangers = best_to_others(similarity, people, others)
        if not len(genuine):
            continue
        centred = genuine[~off_centre[index]]
        cells = " | ".join(f"{np.mean(genuine < t):5.2%} {np.mean(centred < t):5.2%} {np.mean(strangers < t):6.2%}"
                           for t in thresholds)
        print(f"{others:6d} {len(genuine) // (others + 1):6d} {len(genuine):6d} {len(strangers):9d} | {cells}")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
