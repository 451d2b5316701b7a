#!/usr/bin/env python3
"""Measure dlib's ResNet (the model behind face_recognition) on LFW, with facekit's protocol and metric code.

    python tools/eval_dlib_lfw.py [--json] [--root LFW/images] [--pairs LFW/pairs.txt] [--limit-pairs N]

A benchmark peer, never a facekit dependency. Install it with `pip install -e .[teachers]` or:

    pip install dlib-bin face_recognition_models

The pipeline is face_recognition 1.3.0's, call for call: PIL loads the image as RGB, dlib's HOG
detector runs with one upsample, the 5-point shape predictor (face_recognition's default, "small";
--landmarks large for the 68-point one) places landmarks in the detected box, and the ResNet computes
a 128-d descriptor with num_jitters=1. The calls go to dlib directly because face_recognition_models'
__init__ imports pkg_resources, which setuptools >= 81 no longer ships, so `import face_recognition`
fails (and quits the interpreter) in current environments; the model files themselves are fine.

Where dlib finds several faces, the most central one is used; where it finds none, every pair with
that image fails and counts as an error, as in `facekit eval lfw`. Pairs score 1 / (1 + distance):
monotonic in dlib's Euclidean distance and always above the -1 that failed pairs get. The printed
keys are those of `facekit eval lfw --json`, plus the distance threshold in dlib's own units.

Per-image descriptors are cached in an .npz (default /tmp/dlib_lfw_cache.npz), saved every few
hundred images, so an interrupted run resumes and a rerun is instant.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit.evaluation import (  # noqa: E402
    Pair,
    format_metrics,
    read_lfw_pairs,
    spread_subset,
    verification_metrics,
)

SHARED_LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
SAVE_EVERY = 250
DESCRIPTOR_SIZE = 128


def dlib_model_file(name: str) -> Path:
    """A model file shipped by face_recognition_models, found without importing its __init__ (see above)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face_recognition_models is not installed: pip install dlib-bin face_recognition_models")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / name


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int


def most_central(boxes: list[Box], height: int, width: int) -> Box | None:
    """The box whose centre lies nearest the image centre (LFW centres the named person)."""
    if not boxes:
        return None

    def distance_to_centre(box: Box) -> float:
        return float(np.hypot((box.left + box.right) / 2 - width / 2, (box.top + box.bottom) / 2 - height / 2))

    return min(boxes, key=distance_to_centre)


def distance_to_score(distance: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.asarray(distance, dtype=np.float64))


def score_to_distance(score: float) -> float:
    return 1.0 / score - 1.0


def pair_scores(pairs: list[Pair], descriptors: dict[str, np.ndarray | None]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, same flags, folds and the failed mask (an image without a face fails its pairs)."""
    scores, failed = np.full(len(pairs), -1.0), np.zeros(len(pairs), bool)
    for index, pair in enumerate(pairs):
        a, b = descriptors.get(pair.path1), descriptors.get(pair.path2)
        if a is None or b is None:
            failed[index] = True
        else:
            scores[index] = distance_to_score(np.linalg.norm(a - b))
    same = np.array([p.same for p in pairs], dtype=bool)
    folds = np.array([p.fold if p.fold is not None else 0 for p in pairs])
    return scores, same, folds, failed


class DescriptorCache:
    """Per-image descriptors (NaN rows where no face was found) in one .npz, written atomically."""

    def __init__(self, path: Path, settings: str) -> None:
        self.path, self.settings = path, settings
        self.table: dict[str, np.ndarray | None] = {}
        if path.exists():
            with np.load(path) as stored:
                if str(stored["settings"]) != settings:
                    raise SystemExit(f"{path} was made with {stored['settings']}, not {settings}: pass another --cache")
                for key, row in zip(stored["paths"].tolist(), stored["descriptors"]):
                    self.table[key] = None if np.isnan(row).any() else row

    def save(self) -> None:
        keys = list(self.table)
        rows = np.full((len(keys), DESCRIPTOR_SIZE), np.nan, np.float32)
        for index, key in enumerate(keys):
            if self.table[key] is not None:
                rows[index] = self.table[key]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial.npz")
        np.savez(partial, paths=np.array(keys, dtype=str), descriptors=rows, settings=np.array(self.settings))
        partial.replace(self.path)


class DlibPipeline:
    """face_recognition.face_locations + face_encodings, as dlib calls."""

    def __init__(self, landmarks: str, upsample: int, num_jitters: int) -> None:
        import dlib

        predictor = "shape_predictor_5_face_landmarks.dat" if landmarks == "small" else \
            "shape_predictor_68_face_landmarks.dat"
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_file(predictor)))
        self.encoder = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))
        self.upsample, self.num_jitters = upsample, num_jitters
        self._rectangle = dlib.rectangle

    def describe(self, path: str) -> np.ndarray | None:
        from PIL import Image

        with Image.open(path) as opened:
            image = np.array(opened.convert("RGB"))
        height, width = image.shape[:2]
        # face_recognition trims each box to the image before the landmarks see it.
        boxes = [Box(max(r.left(), 0), max(r.top(), 0), min(r.right(), width), min(r.bottom(), height))
                 for r in self.detector(image, self.upsample)]
        box = most_central(boxes, height, width)
        if box is None:
            return None
        shape = self.predictor(image, self._rectangle(box.left, box.top, box.right, box.bottom))
        return np.array(self.encoder.compute_face_descriptor(image, shape, self.num_jitters), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=SHARED_LFW / "images", help="LFW images (<Name>/<Name>_NNNN.jpg)")
    parser.add_argument("--pairs", type=Path, default=SHARED_LFW / "pairs.txt", help="the official pairs.txt")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dlib_lfw_cache.npz"),
                        help="per-image descriptor cache (.npz), reused and resumed")
    parser.add_argument("--landmarks", choices=["small", "large"], default="small",
                        help="5-point (face_recognition's default) or 68-point shape predictor")
    parser.add_argument("--upsample", type=int, default=1, help="HOG detector upsampling (face_recognition: 1)")
    parser.add_argument("--num-jitters", type=int, default=1)
    parser.add_argument("--limit-pairs", type=int, help="a quick run on N pairs spread over the folds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for required in (args.root, args.pairs):
        if not required.exists():
            print(f"error: not found: {required}", file=sys.stderr)
            return 2

    pairs = spread_subset(read_lfw_pairs(args.pairs, args.root), args.limit_pairs)
    paths = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
    settings = f"landmarks={args.landmarks} upsample={args.upsample} num_jitters={args.num_jitters}"
    cache = DescriptorCache(args.cache, settings)
    todo = [p for p in paths if p not in cache.table]
    started = time.perf_counter()
    if todo:
        pipeline = DlibPipeline(args.landmarks, args.upsample, args.num_jitters)
        progress = not (args.quiet or args.json)
        for done, path in enumerate(tqdm(todo, desc="dlib", unit="img", disable=not progress, file=sys.stderr), 1):
            cache.table[path] = pipeline.describe(path)
            if done % SAVE_EVERY == 0:
                cache.save()
        cache.save()
    seconds = time.perf_counter() - started

    descriptors = {p: cache.table[p] for p in paths}
    scores, same, folds, failed = pair_scores(pairs, descriptors)
    result = verification_metrics(scores, same, folds, failed=failed)
    result["no_face"] = int(failed.sum())
    result.update({
        "images": len(paths),
        "images_without_face": sum(v is None for v in descriptors.values()),
        "distance_threshold": score_to_distance(result["threshold"]),
        "model": "dlib_face_recognition_resnet_model_v1",
        "detector": f"dlib HOG, upsample {args.upsample}",
        "landmarks": args.landmarks,
        "num_jitters": args.num_jitters,
        "images_computed": len(todo),
        "seconds": round(seconds, 1),
    })
    if args.json:
        print(json.dumps(result))
    else:
        lines = format_metrics(result)
        threshold, _, rates = lines[5].partition("  (")  # the distance beside the score it stands for
        lines[5] = f"{threshold} (distance {result['distance_threshold']:.4f})  ({rates}"
        print("\n".join(lines))
        print(f"images          {result['images']} ({result['images_without_face']} without a face, "
              f"{len(todo)} computed in {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
