#!/usr/bin/env python3
"""Where an offline detector (MTCNN, the default, or Haar) and YuNet disagree: boxes only one of them finds.

    python tools/detector_agreement.py                       # MTCNN on the 7,701 LFW test images
    python tools/detector_agreement.py --detector haar       # Haar, about 7 minutes
    python tools/detector_agreement.py --root photos/ --limit 500 --list 20 --json

YuNet is the more accurate detector (see the README's Accuracy), so a box the other reports where YuNet
finds no face is most often a misfire on a texture (a collar, buttons, a logo), sometimes a face YuNet
misses; a box only YuNet finds is mostly a face the other misses (turned, small, or in the background).
Both detectors run as the pipeline runs them, with the same smallest face, and a box counts as found by both
when the two overlap by more than --iou (Haar's boxes are square and YuNet's taller, so the default is loose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit.detection import Detector, Face, YuNetDetector, box_iou, create_detector  # noqa: E402
from facekit.evaluation import spread_subset  # noqa: E402
from facekit.imageio import IMAGE_EXTENSIONS, ImageError, load_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def match_boxes(first: list[Face], second: list[Face], min_iou: float) -> tuple[list[Face], list[Face], list[Face]]:
    """Greedy one-to-one matching by overlap, best pairs first: (found by both, only first, only second)."""
    pairs = sorted(((box_iou(np.array(a.box), np.array(b.box)), i, j)
                    for i, a in enumerate(first) for j, b in enumerate(second)), reverse=True)
    used_first, used_second, both = set(), set(), []
    for overlap, i, j in pairs:
        if overlap > min_iou and i not in used_first and j not in used_second:
            used_first.add(i)
            used_second.add(j)
            both.append(first[i])
    only_first = [face for i, face in enumerate(first) if i not in used_first]
    only_second = [face for j, face in enumerate(second) if j not in used_second]
    return both, only_first, only_second


def score_percentiles(scores: list[float]) -> dict[str, float]:
    return {str(q): round(float(np.percentile(scores, q)), 3) for q in (5, 25, 50)}


def listed(path: Path, face: Face) -> dict:
    return {"image": str(path), "box": [round(float(v), 1) for v in face.box], "score": round(float(face.score), 3)}


def compare(paths: list[Path], detector: Detector, yunet: YuNetDetector, min_iou: float,
            progress: bool = True) -> dict:
    images = unreadable = 0
    both_scores: list[float] = []  # the detector's score of each face both find, against its own-only boxes'
    detector_only: list[dict] = []
    yunet_only: list[dict] = []
    for path in tqdm(paths, desc="detecting", unit="img", disable=not progress):
        try:
            image = load_image(path)
        except ImageError:
            unreadable += 1
            continue
        images += 1
        found_by_both, only_detector, only_yunet = match_boxes(detector.detect(image), yunet.detect(image), min_iou)
        both_scores += [float(face.score) for face in found_by_both]
        detector_only += [listed(path, face) for face in only_detector]
        yunet_only += [listed(path, face) for face in only_yunet]
    detector_only_scores = [item["score"] for item in detector_only]
    return {
        "detector": type(detector).__name__, "images": images, "unreadable": unreadable, "both": len(both_scores),
        "detector_only": len(detector_only), "yunet_only": len(yunet_only),
        "images_with_detector_only": len({item["image"] for item in detector_only}),
        # Would a higher score floor drop the detector-only boxes and keep the faces both find?
        "detector_score_percentiles": {name: score_percentiles(scores) for name, scores
                                       in (("both", both_scores), ("detector_only", detector_only_scores))
                                       if scores},
        "detector_only_boxes": sorted(detector_only, key=lambda item: -item["score"]),
        "yunet_only_boxes": sorted(yunet_only, key=lambda item: -item["score"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(SHARED / "lfw" / "images"), help="folder of photos, searched recursively")
    parser.add_argument("--yunet-model", default=str(SHARED / "models" / "face_detection_yunet.onnx"))
    parser.add_argument("--detector", choices=["mtcnn", "haar"], default="mtcnn", help="set against YuNet")
    parser.add_argument("--limit", type=int, help="only this many photos, evenly spread over the folder")
    parser.add_argument("--iou", type=float, default=0.3, help="overlap above which two boxes are one face")
    parser.add_argument("--list", type=int, default=10, metavar="N", help="print the N best-scored boxes of each kind")
    parser.add_argument("--json", action="store_true", help="one JSON object, every disagreeing box included")
    args = parser.parse_args(argv)

    root, model = Path(args.root), Path(args.yunet_model)
    if not root.is_dir():
        print(f"error: no folder of photos at {root}", file=sys.stderr)
        return 2
    if not model.is_file():
        print(f"error: no YuNet model at {model} (pass --yunet-model)", file=sys.stderr)
        return 2
    paths = spread_subset(sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), args.limit)
    if not paths:
        print(f"error: no photos under {root}", file=sys.stderr)
        return 1
    result = compare(paths, create_detector(args.detector), YuNetDetector(model), args.iou, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['images']} photos, {result['unreadable']} unreadable; faces found by both: {result['both']}; "
          f"boxes only {args.detector} reports: {result['detector_only']}, in {result['images_with_detector_only']} "
          f"of the photos; only YuNet reports: {result['yunet_only']}")
    for name, percentiles in result["detector_score_percentiles"].items():
        below = ", ".join(f"{q} % below {v}" for q, v in percentiles.items())
        print(f"  {args.detector}'s score, {name.replace('_', ' ')}: {below}")
    for kind in ("detector_only", "yunet_only"):
        for item in result[f"{kind}_boxes"][:args.list]:
            print(f"  {kind.replace('_', ' ')}: {item['image']} box {item['box']} score {item['score']}")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
