#!/usr/bin/env python3
"""Turn a training run into a released model: weights, model card and ONNX file.

    python tools/release_model.py runs/facekit --output runs/facekit-rel/model [--lfw lfw.json]
        [--lfw-mtcnn lfw_mtcnn.json] [--lfw-haar lfw_haar.json] [--average-with MODEL ...] [--licence TEXT]

The project's own release writes the shipped model, on facekit's pool and under its licence:
    --output facekit/weights/facekit-irv2 --facekit-pool

The card's accuracy and default thresholds come only from `facekit eval lfw --json` output,
so what the README and the card claim is what the official protocol measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from facekit.representation import torch_or_exit

torch = torch_or_exit("tools/release_model.py")  # one line where it is missing, not a traceback

from facekit.alignment import TEMPLATE_112
from facekit.export import beside, export_onnx
from facekit.training.train import _read_checkpoint, earlier_stages, save_weights, shipped_weights

# The false accept rate of the 1:N identify threshold: with the 40 enrolled faces of the round trip
# (20 people, 2 photos), 40 x 5e-3 bounds the share of strangers given a name at 20 %.
IDENTIFY_FAR = "5e-3"
# Each shipped file stays under this, so the repository stays cloneable: a wider model's weights are stored
# as float16 (facekit.training.train.save_weights), and so is its ONNX file.
MAX_FILE_BYTES = 60_000_000
# The evaluation options, the card key each fills, and what every `facekit eval lfw --json` output holds that
# the card's claims and thresholds are taken from.
EVALUATIONS = (("lfw", "--lfw"), ("lfw_mtcnn", "--lfw-mtcnn"), ("lfw_haar", "--lfw-haar"))
EVALUATION_NUMBERS = ("accuracy", "threshold", "impostor_pairs")
# What the card says of the project's own release (--facekit-pool), and of no other run.
FACEKIT_POOL = ("facekit training pool: 91k aligned 112x112 crops of 9.6k identities (CelebA + Pins-105 people not "
                "in LFW), YuNet-aligned")
FACEKIT_LICENCE = "MIT (weights trained by the facekit project; the training images are research-only)"
# The fewest pairs a default threshold is taken from: one fold of LFW's ten.
MIN_THRESHOLD_PAIRS = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training run folder (checkpoint.pt, model.json)")
    parser.add_argument("--lfw", type=Path, help="`facekit eval lfw --json` output to record in the card; the "
                                                 "default thresholds come from it (YuNet, the detector of the pool)")
    parser.add_argument("--lfw-mtcnn", type=Path, help="the same with MTCNN, the detector a default install runs")
    parser.add_argument("--lfw-haar", type=Path, help="the same with the offline Haar+landmark detector")
    parser.add_argument("--average-with", type=Path, nargs="+", metavar="MODEL",
                        help="ship the uniform mean of the run's weights and these models' (fine-tunes of one "
                             "lineage, e.g. the previous release); --lfw must measure the mean")
    parser.add_argument("--last-step", action="store_true",
                        help="for a run trained with --average-from: release its last step's weights, not the mean")
    parser.add_argument("--output", type=Path, required=True, metavar="MODEL",
                        help="the model to write, without suffix: MODEL.safetensors, .json and .onnx (the shipped "
                             "model is facekit/weights/facekit-irv2)")
    parser.add_argument("--licence", help="the licence the card states for the weights (default: none stated)")
    parser.add_argument("--facekit-pool", action="store_true",
                        help="the run trained on facekit's own pool: the card describes it and, unless --licence "
                             "says otherwise, states the project's licence (the shipped model's release)")
    args = parser.parse_args(argv)

    from facekit.representation import load_model

    # Read first, so that a wrong file is said before any work is done.
    evaluations = {key: read_evaluation(getattr(args, key), option) for key, option in EVALUATIONS
                   if getattr(args, key)}
    threshold_source = calibration(evaluations["lfw"], args.lfw) if "lfw" in evaluations else None
    model, card = load_model(args.run / "model")
    checkpoint = args.run / "checkpoint.pt"
    if checkpoint.exists():
        # The checkpoint may be newer than model.safetensors when a run was stopped early.
        state = _read_checkpoint(checkpoint, torch.device("cpu"))
        try:
            model.load_state_dict(state["model"] if args.last_step else shipped_weights(state))
        except RuntimeError as exc:  # its message lists every mismatched tensor, one per line
            raise ValueError(f"{checkpoint} does not fit {args.run / 'model.safetensors'} "
                             "(another run's checkpoint?)") from exc
    training = card.get("training", {})
    averaged = average_weights(model, args.average_with) if args.average_with else None
    card = {
        "input": {"size": [112, 112], "channels": "RGB", "normalisation": "(pixel - 127.5) / 128",
                  "layout": "NCHW float32"},
        "alignment_template": TEMPLATE_112.tolist(),
        "alignment": "5-point similarity transform onto the ArcFace 112x112 template",
        "output": "L2-normalised embedding; compare with cosine similarity (dot product)",
        "test_time_augmentation": "sum of the embeddings of the face and its mirror image, then L2-normalised",
        "training": {
            "data": FACEKIT_POOL if args.facekit_pool else
            f"{training.get('num_images', 'unrecorded')} aligned 112x112 crops of "
            f"{training.get('num_classes', 'unrecorded')} identities",
            **_stage(training),
        },
        # No claim for the project on weights trained on someone's own crops.
        "licence": args.licence or (FACEKIT_LICENCE if args.facekit_pool else "not stated"),
    }
    earlier = earlier_stages(str(args.run / "checkpoint.pt"))[:-1]
    stages = [_stage(stage) for stage in earlier]
    if stages:
        # A fine-tune: the card lists every stage and the totals, so no training time goes unreported.
        card["training"]["stages_before"] = stages
        for key in ("minutes", "images_seen"):
            card["training"][f"total_{key}"] = round(sum(s.get(key, 0) for s in [*stages, training]), 1)
    if averaged:
        card["training"]["weight_average"] = averaged
    card.update(evaluations)
    if "lfw" in card:
        card["threshold"] = round(float(card["lfw"]["threshold"]), 4)
        card["threshold_source"] = threshold_source
        open_set = card["lfw"].get("threshold_at_far", {})
        if IDENTIFY_FAR in open_set:
            card["identify_threshold"] = open_set[IDENTIFY_FAR]
            card["identify_threshold_source"] = (
                f"`facekit eval lfw`: the similarity exceeded by a share {IDENTIFY_FAR} of all "
                f"{card['lfw']['impostor_pairs']:,} different-person pairs of LFW's pair images. A stranger "
                "searched against G enrolled faces is wrongly named with a chance of at most about G x that "
                "share: 20 % for 40 faces")
    float32_bytes = sum(tensor.numel() * 4 for tensor in model.state_dict().values())
    save_weights(model.eval(), model.config, args.output, card, half=float32_bytes > MAX_FILE_BYTES)
    # The ONNX file beside the weights is what inference runs on: users need neither torch nor an export.
    export_onnx(args.output, beside(args.output, ".onnx"))
    for extra in ("log.csv",):
        if (args.run / extra).exists():
            shutil.copy(args.run / extra, args.output.parent / f"{args.output.name}.{extra}")
    sizes = [beside(args.output, suffix).stat().st_size / 1e6 for suffix in (".safetensors", ".onnx")]
    print(f"wrote {args.output}.safetensors ({sizes[0]:.1f} MB), its card and {args.output}.onnx "
          f"({sizes[1]:.1f} MB)")
    return 0


def calibration(evaluation: dict, path: Path) -> str:
    """How the --lfw evaluation chose the threshold the card takes as its default; one chosen on the pairs it was
    scored on (one fold), or on too few, is refused. An output without its folds and pairs (written by hand, say)
    is taken as it is, and the source says they are not recorded."""
    folds, pairs = evaluation.get("folds"), evaluation.get("pairs")
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in (folds, pairs)):
        return "the threshold of `facekit eval lfw` (its folds and pairs not recorded)"
    if folds < 2 or pairs < MIN_THRESHOLD_PAIRS:
        why = "one fold: its threshold was chosen on the very pairs it scored" if folds < 2 else f"{folds} folds"
        raise ValueError(f"{path} is an evaluation of {pairs} pairs in {why}; the card's default threshold needs "
                         f"{MIN_THRESHOLD_PAIRS} pairs or more in 2 folds or more (LFW's pairs.txt: 6000 in 10): "
                         "leave --lfw out, or evaluate on more")
    return f"mean of the {folds} per-fold thresholds of `facekit eval lfw`, each chosen on the other folds' pairs " \
           f"({pairs} pairs in all)"


def read_evaluation(path: Path, option: str) -> dict:
    """The `facekit eval lfw --json` output given to option; anything else is a ValueError naming the file."""
    expected = (f"{option} takes the JSON object that `facekit eval lfw --json` prints, with the numbers "
                f"{', '.join(EVALUATION_NUMBERS)} and the object threshold_at_far")
    try:
        evaluation = json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not text
        raise ValueError(f"{path} is not JSON ({exc}): {expected}") from exc

    def is_number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (isinstance(evaluation, dict) and all(is_number(evaluation.get(key)) for key in EVALUATION_NUMBERS)
            and isinstance(evaluation.get("threshold_at_far"), dict)
            and all(is_number(value) for value in evaluation["threshold_at_far"].values())):
        raise ValueError(f"{path} is not an evaluation: {expected}")
    return evaluation


def average_weights(model: torch.nn.Module, other_paths: list[Path]) -> dict:
    """Replace the model's float weights and batch-norm statistics by their uniform mean with other models'.

    Fine-tunes from one starting point lie in one basin, where the mean tends to score at least as well
    as each (a "model soup"). Read before the release overwrites another model, if it is the shipped one.
    """
    from facekit.export import model_fingerprint
    from facekit.model import ModelConfig
    from facekit.representation import load_model

    others = []
    for path in other_paths:
        other, other_card = load_model(path)
        if ModelConfig.from_dict(other_card.get("model", {})) != model.config:
            raise SystemExit(f"error: {path} is not the same architecture as the run")
        others.append((other.state_dict(), len(other_card.get("training", {}).get("stages_before", [])) + 1))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():  # not num_batches_tracked
                total = tensor.double() + sum(theirs[name].double() for theirs, _ in others)
                tensor.copy_((total / (len(others) + 1)).to(tensor.dtype))
    return {"with_sha256": [model_fingerprint(path) for path in other_paths],
            "with_stages": [stages for _, stages in others], "share": round(1 / (len(others) + 1), 4),
            "note": "the shipped weights are the uniform mean of this stage's and those of the models named here"}


def _stage(training: dict) -> dict:
    keys = ("width", "blocks", "batch_size", "lr", "momentum", "weight_decay", "arcface_s", "arcface_m",
            "triplet_weight", "distill_weight", "relation_weight", "relation_closest", "teacher_targets", "minutes",
            "steps", "images_seen", "device", "num_classes", "num_images", "weight_average")
    # A stage read back from a released card is already in this form; its losses name the teacher file.
    return {"losses": training.get("losses") or _losses(training), **{k: training[k] for k in keys if k in training}}


def _losses(training: dict) -> list[str]:
    losses = []
    if training.get("arcface_weight", 1.0) > 0:
        losses.append(f"ArcFace (s={training.get('arcface_s')}, m={training.get('arcface_m')}) "
                      f"x {training.get('arcface_weight', 1.0)}")
    if training.get("triplet_weight", 0) > 0:
        losses.append(f"triplet ({training.get('triplet_mining')}) x {training['triplet_weight']}")
    teacher = Path(training["teacher"]).name if training.get("teacher") else "a teacher"
    if training.get("distill_weight", 0) > 0:
        losses.append(f"distillation from {teacher} (centred cosine) x {training['distill_weight']}")
    if training.get("relation_weight", 0) > 0:
        pairs = "a batch's faces" if training.get("relation_closest", 1.0) >= 1.0 else \
            f"the {training['relation_closest']:g} of a batch's pairs it finds closest"
        losses.append(f"relational distillation from {teacher} (its raw cosines between {pairs}) "
                      f"x {training['relation_weight']}")
    return losses


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
