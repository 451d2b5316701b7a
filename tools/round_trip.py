#!/usr/bin/env python3
"""Identification round trip on LFW through the CLI: enroll known people, identify them and strangers.

    python tools/round_trip.py --lfw ../shared/data/lfw/images [--people 20] [--json] [--sweep]
                               [-- extra CLI options]

The first N people (alphabetically) with at least 3 photos are enrolled with 2 photos each; their
third photo is identified, as is the first photo of N other people who are not enrolled. Reports
rank-1 accuracy on the enrolled people and the share of strangers reported as `unknown`; --sweep adds
both figures at other thresholds, computed from the same answers' best candidates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def choose_people(lfw: Path, count: int) -> tuple[dict[str, list[Path]], list[Path]]:
    folders = sorted(p for p in lfw.iterdir() if p.is_dir())
    known: dict[str, list[Path]] = {}
    strangers: list[Path] = []
    for folder in folders:
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 3 and len(known) < count:
            known[folder.name] = photos[:3]
        elif photos and len(strangers) < count and len(photos) < 3:
            strangers.append(photos[0])
    return known, strangers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lfw", type=Path, required=True, help="LFW images folder")
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also report both figures at thresholds 0.30-0.90")
    parser.add_argument("cli_options", nargs="*", help="passed to enroll and identify (after --)")
    args = parser.parse_args(argv)
    if args.people < 1:
        raise ValueError(f"--people must be at least 1, not {args.people}")
    known, strangers = choose_people(args.lfw, args.people)
    if not known:  # said here: enroll would only find the temporary folder below empty
        raise ValueError(f"no people with at least 3 .jpg photos in {args.lfw} (LFW's layout: a folder of photos "
                         "per person)")
    facekit = [sys.executable, "-m", "facekit.cli"]
    with tempfile.TemporaryDirectory(prefix="facekit-round-trip-") as work:
        people, gallery = Path(work) / "people", Path(work) / "gallery"
        for name, photos in known.items():
            (people / name).mkdir(parents=True)
            for photo in photos[:2]:
                shutil.copy(photo, people / name / photo.name)
        enroll = subprocess.run([*facekit, "enroll", str(people), "--gallery", str(gallery), "--json",
                                 *args.cli_options], capture_output=True, text=True)
        # Exit 1 with a summary: a photo without a face (or unreadable) was passed over and the rest enrolled,
        # which the figures below must count, not abort on.
        enrolled = json.loads(enroll.stdout)["enrolled"] if enroll.returncode in (0, 1) and enroll.stdout else 0
        if enrolled == 0:
            print(f"error: enroll failed: {enroll.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        probes = [photos[2] for photos in known.values()] + strangers
        identify = subprocess.run([*facekit, "identify", *map(str, probes), "--gallery", str(gallery), "--json",
                                   *args.cli_options], capture_output=True, text=True)
        if identify.returncode not in (0, 1) or not identify.stdout:  # 1 with records: a probe without a face
            print(f"error: identify failed: {identify.stderr.strip()}", file=sys.stderr)
            return 1
    answers: dict[str, str | None] = {}
    best: dict[str, tuple[str | None, float]] = {}  # probe -> its best candidate, whatever the threshold
    for line in identify.stdout.splitlines():
        record = json.loads(line)
        faces = record.get("faces", [])  # an image that could not be read has an "error" instead: a miss
        # The probe's subject is the largest face (LFW centres one person per photo).
        main_face = max(faces, key=lambda f: f["box"][2] * f["box"][3]) if faces else None
        answers[record["image"]] = main_face["identity"] if main_face else "<no face>"
        top = main_face["candidates"][0] if main_face and main_face["candidates"] else None
        best[record["image"]] = (top["identity"], top["similarity"]) if top else (None, -1.0)
    correct = sum(answers.get(str(photos[2])) == name for name, photos in known.items())
    unknown = sum(answers.get(str(photo)) is None for photo in strangers)
    result = {
        "enrolled_people": len(known), "enrolled_faces": enrolled,
        "rank1": correct / max(1, len(known)), "strangers": len(strangers),
        "strangers_unknown": unknown / max(1, len(strangers)),
        "no_face": sum(v == "<no face>" for v in answers.values()),
    }
    if args.sweep:
        def accepted(probe: Path, threshold: float) -> str | None:
            if answers.get(str(probe)) == "<no face>":
                return "<no face>"  # as in the figures above: neither named right nor reported unknown
            identity, similarity = best.get(str(probe), (None, -1.0))
            return identity if similarity >= threshold else None

        result["sweep"] = [
            {"threshold": t,
             "rank1": sum(accepted(p[2], t) == name for name, p in known.items()) / max(1, len(known)),
             "strangers_unknown": sum(accepted(p, t) is None for p in strangers) / max(1, len(strangers))}
            for t in [round(0.30 + 0.05 * i, 2) for i in range(13)]
        ]
    if args.json:
        print(json.dumps(result))
    else:
        print(f"rank-1 on {len(known)} enrolled people: {result['rank1'] * 100:.0f}%")
        print(f"strangers reported unknown: {result['strangers_unknown'] * 100:.0f}% of {len(strangers)}")
        for row in result.get("sweep", []):
            print(f"  threshold {row['threshold']:.2f}: rank-1 {row['rank1'] * 100:.0f}%, "
                  f"strangers unknown {row['strangers_unknown'] * 100:.0f}%")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
