#!/usr/bin/env python3
"""How much of a model's LFW score is luck: the same protocol on its close neighbours in weight space.

    python tools/lfw_neighbours.py --yunet-model ../shared/data/models/face_detection_yunet.onnx
    python tools/lfw_neighbours.py --noise 0.012 0.006 --draws 8 --compare int8.onnx --json

facekit's releases were chosen by comparing LFW scores, so the shipped score is a selected one: the
best of a few candidates, each a noisy draw. A neighbour is the shipped ONNX file with every
convolution weight multiplied by (1 + N(0, noise)); its embeddings agree with the model's at a mean
cosine of about 0.999, yet it scores a little differently. The spread of those scores is the size of
the luck in one LFW number at this level, and the shipped model's distance above their mean is how much
it was picked for. --compare scores other ONNX files (an int8 export, say) on the same crops, with their
agreement, so their loss can be read against the neighbours'.

Every score is `facekit eval lfw`'s: the same pairs, pipeline (detector, primary face, alignment, mirror
test-time augmentation, the Embedder) and metric code. Faces are detected and aligned once (cached in
--crops) and only the embedder changes; the unperturbed model is scored too, and should print exactly
what `facekit eval lfw` does with the same detector.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit.alignment import align_face  # noqa: E402
from facekit.evaluation import read_lfw_pairs, spread_subset, verification_metrics  # noqa: E402
from facekit.evaluation_cli import pair_scores  # noqa: E402
from facekit.export import current_shipped_model, export_onnx  # noqa: E402
from facekit.recognition import FacePipeline, primary_face  # noqa: E402
from facekit.representation import Embedder  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPORTED = ("accuracy", "tar_at_far_1e-3", "tar_at_far_1e-4")


def aligned_crops(pipeline: FacePipeline, paths: list[str], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """One aligned crop per image (its primary face, as `facekit eval` picks it) and which images had one.

    A cache that holds every path is reused, so a quick --limit-pairs run reads the full run's crops.
    """
    detector = detector_key(pipeline.detector)  # crops another detector (or version of one) made are not reused
    if cache.is_file():
        with np.load(cache) as stored:
            row_of = {path: row for row, path in enumerate(stored["paths"])}
            if str(stored.get("detector", "")) == detector and all(path in row_of for path in paths):
                rows = [row_of[path] for path in paths]
                return stored["crops"][rows], stored["found"][rows]
    crops = np.zeros((len(paths), 112, 112, 3), np.uint8)
    found = np.zeros(len(paths), bool)
    for index, item in enumerate(tqdm(pipeline.load_many(paths), total=len(paths), desc="aligning", unit="img")):
        face = primary_face(item.faces, item.image.shape) if item.image is not None else None
        if face is not None:
            crops[index], found[index] = align_face(item.image, face.landmarks), True
    np.savez(cache, paths=np.array(paths), crops=crops, found=found, detector=detector)
    return crops, found


def detector_key(detector: object) -> str:
    """The detector's class and settings, and a digest of the code and weights that place its faces' points."""
    import facekit.detection
    import facekit.landmarks

    settings = {name: value for name, value in vars(detector).items()
                if not name.startswith("_") and isinstance(value, int | float | str | tuple | type(None))}
    digest = hashlib.sha256()
    for path in (facekit.detection.__file__, facekit.landmarks.__file__, facekit.landmarks.DEFAULT_WEIGHTS):
        digest.update(Path(path).read_bytes())
    return f"{type(detector).__name__}|{sorted(settings.items())}|{digest.hexdigest()[:16]}"


def pair_metrics(pairs: list, paths: list[str], found: np.ndarray, embeddings: np.ndarray,
                 keys: tuple[str, ...]) -> dict:
    """`facekit eval`'s metrics (those named by keys, rounded) for L2-normalised embeddings of the images
    that had a face; pairs with an image without one count as errors."""
    table: dict[str, np.ndarray | None] = dict.fromkeys(paths)
    table.update(zip(np.array(paths)[found], embeddings))
    scores, same, folds, failed = pair_scores(pairs, table)
    metrics = verification_metrics(scores, same, folds, failed=failed)
    return {key: round(float(metrics[key]), 4) for key in keys}


def perturbed_copy(source: Path, output: Path, noise: float, rng: np.random.Generator) -> Path:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    conv_weights = {node.input[1] for node in graph.graph.node if node.op_type == "Conv"}
    # Weights released as float16 reach their convolution through a Cast (facekit.export.store_weights_as_float16).
    conv_weights |= {node.input[0] for node in graph.graph.node
                     if node.op_type == "Cast" and node.output[0] in conv_weights}
    for tensor in graph.graph.initializer:
        if tensor.name in conv_weights:
            weights = numpy_helper.to_array(tensor)
            scaled = weights * (1 + rng.normal(0, noise, weights.shape))
            tensor.CopyFrom(numpy_helper.from_array(scaled.astype(weights.dtype), tensor.name))
    onnx.save(graph, str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(SHARED / "lfw" / "images"))
    parser.add_argument("--pairs", default=str(SHARED / "lfw" / "pairs.txt"))
    parser.add_argument("--yunet-model", default=str(SHARED / "models" / "face_detection_yunet.onnx"),
                        help="YuNet file, as for `facekit eval lfw --yunet-model`; '' for the default detector")
    parser.add_argument("--weights", help="embedding model (default: the shipped one)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.012, 0.006],
                        help="relative weight noise levels (default: 0.012 0.006)")
    parser.add_argument("--draws", type=int, default=8, help="neighbours per noise level (default: 8)")
    parser.add_argument("--compare", nargs="*", default=[], metavar="ONNX", help="other ONNX files to score")
    parser.add_argument("--crops", default=str(Path(tempfile.gettempdir()) / "facekit_lfw_crops.npz"),
                        help="cache of the aligned crops (default: in the temp folder)")
    parser.add_argument("--limit-pairs", type=int, help="a quick run on N pairs spread over the folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)

    for required in (args.root, args.pairs):
        if not Path(required).exists():
            raise SystemExit(f"error: not found: {required}")
    detector = "yunet" if args.yunet_model else "auto"
    pipeline = FacePipeline(detector_backend=detector, yunet_model=args.yunet_model or None, weights=args.weights)
    pairs = spread_subset(read_lfw_pairs(args.pairs, args.root), args.limit_pairs)
    paths = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
    crops, found = aligned_crops(pipeline, paths, Path(args.crops))

    def evaluate(model: Path | str) -> tuple[dict, np.ndarray]:
        embeddings = Embedder(str(model), backend="onnx").embed(crops[found], flip=True)
        return pair_metrics(pairs, paths, found, embeddings, REPORTED), embeddings

    with tempfile.TemporaryDirectory() as work:
        model = current_shipped_model(args.weights) or export_onnx(args.weights, Path(work) / "model.onnx")
        base, reference = evaluate(model)
        rows: list[dict] = [{"model": "unperturbed", **base}]

        def agreement(embeddings: np.ndarray) -> float:
            return round(float(np.mean(np.sum(embeddings * reference, axis=1))), 4)

        rng = np.random.default_rng(args.seed)
        for noise in args.noise:
            draws = []
            for _ in tqdm(range(args.draws), desc=f"noise {noise}", unit="model"):
                metrics, embeddings = evaluate(perturbed_copy(model, Path(work) / "neighbour.onnx", noise, rng))
                draws.append({**metrics, "cosine": agreement(embeddings)})
            summary = {key: round(float(np.mean([d[key] for d in draws])), 4) for key in (*REPORTED, "cosine")}
            summary.update({f"{key}_std": round(float(np.std([d[key] for d in draws])), 4) for key in REPORTED})
            rows.append({"model": f"neighbours, noise {noise}", "draws": len(draws), **summary,
                         "accuracy_min": min(d["accuracy"] for d in draws),
                         "accuracy_max": max(d["accuracy"] for d in draws)})
        for other in args.compare:
            metrics, embeddings = evaluate(other)
            rows.append({"model": Path(other).name, **metrics, "cosine": agreement(embeddings)})

    if args.json:
        print(json.dumps({"detector": type(pipeline.detector).__name__, "images": len(paths),
                          "images_without_face": int((~found).sum()), "rows": rows}))
        return 0
    print(f"{'model':<36} {'LFW accuracy':>18} {'TAR@1e-3':>16} {'TAR@1e-4':>16} {'cosine':>7}")
    def cell(row: dict, key: str) -> str:
        return f"{row[key]:.4f}" + (f" ± {row[key + '_std']:.4f}" if key + "_std" in row else "")

    for row in rows:
        cosine = f"{row['cosine']:.4f}" if "cosine" in row else "1"
        print(f"{row['model'][:36]:<36} {cell(row, 'accuracy'):>18} {cell(row, 'tar_at_far_1e-3'):>16} "
              f"{cell(row, 'tar_at_far_1e-4'):>16} {cosine:>7}")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
