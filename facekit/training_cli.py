"""`facekit train`: command-line front of facekit.training.train."""

from __future__ import annotations

import argparse
import os
import sys

from facekit.errors import json_record


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train an embedding model on aligned 112x112 crops")
    parser.add_argument("data", help="zip shards + manifest.tsv, or a folder with one sub-folder per identity")
    parser.add_argument("--output", default="runs/facekit",
                        help="run folder, new or empty or a run's own: checkpoint, log.csv, model files")
    parser.add_argument("--width", type=float, default=0.25, help="channel-width multiplier (default: 0.25)")
    parser.add_argument("--blocks", default="5,10,5", help="A,B,C block counts (default: 5,10,5)")
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time budget; the learning-rate schedule follows it")
    budget.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--arcface-weight", type=float, default=1.0)
    parser.add_argument("--arcface-s", type=float, default=32.0)
    parser.add_argument("--arcface-m", type=float, default=0.3, help="additive angular margin (ArcFace)")
    parser.add_argument("--cosface-m", type=float, default=0.0, help="additive cosine margin (CosFace)")
    parser.add_argument("--triplet-weight", type=float, default=0.0)
    parser.add_argument("--triplet-margin", type=float, default=0.2)
    parser.add_argument("--triplet-mining", choices=["batch_hard", "semi_hard"], default="batch_hard")
    parser.add_argument("--teacher", help="teacher embeddings .npy (tools/teacher_embeddings.py)")
    parser.add_argument("--distill-weight", type=float, default=0.0)
    parser.add_argument("--relation-weight", type=float, default=0.0,
                        help="relational distillation: pull the student's cosines between a batch's faces towards "
                             "the teacher's own (un-centred) ones")
    parser.add_argument("--relation-closest", type=float, default=1.0, metavar="FRACTION",
                        help="compare only this fraction of a batch's pairs, those the teacher finds closest "
                             "(default: all pairs)")
    parser.add_argument("--limit-classes", type=int, help="use only the first N identities (quick runs)")
    parser.add_argument("--cache-dir", help="where decoded crops are cached between runs")
    parser.add_argument("--val-pairs", help="LFW-style pairs.txt for the evaluation callback")
    parser.add_argument("--val-root", help="aligned crops named as pairs.txt expects (tools/align_dataset.py)")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations")
    parser.add_argument("--seed", type=int, default=0, help="sampling and augmentation seed")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast on the CPU as well (always on a GPU): faster where the CPU has native "
                             "bf16 (AVX-512 BF16, AMX), slower elsewhere")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from another run's checkpoint.pt (same data and width), or from released "
                             "weights (.safetensors, e.g. the shipped model; a narrower model is widened so that "
                             "the run starts with its embedding), with a fresh schedule")
    parser.add_argument("--average-from", type=float, metavar="FRACTION",
                        help="save the mean of the weights after every step from this fraction of the run on "
                             "(stochastic weight averaging; e.g. 0.5) rather than the last weights")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from facekit.representation import require_torch

    require_torch("facekit train")
    from facekit.training.train import TrainConfig, TrainingStopped, train

    try:
        blocks = tuple(int(b) for b in args.blocks.split(","))
    except ValueError:
        blocks = ()
    if len(blocks) != 3:
        raise ValueError(f"--blocks takes three counts, e.g. 5,10,5, not {args.blocks}")
    config = TrainConfig(
        data=args.data, output=args.output, width=args.width, blocks=blocks, embedding_size=args.embedding_size,
        batch_size=args.batch_size, minutes=args.minutes, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, arcface_weight=args.arcface_weight, arcface_s=args.arcface_s,
        arcface_m=args.arcface_m, cosface_m=args.cosface_m, triplet_weight=args.triplet_weight,
        triplet_margin=args.triplet_margin, triplet_mining=args.triplet_mining, teacher=args.teacher,
        distill_weight=args.distill_weight, relation_weight=args.relation_weight,
        relation_closest=args.relation_closest,
        limit_classes=args.limit_classes, cache_dir=args.cache_dir,
        val_pairs=args.val_pairs, val_root=args.val_root, eval_every=args.eval_every, compile=args.compile,
        bf16=args.bf16, resume=not args.no_resume, init_from=args.init_from, average_from=args.average_from,
        seed=args.seed, device=args.device,
    )
    speaks = os.environ.get("RANK", "0") == "0"  # under torchrun, one process says it, not one per process
    try:
        result = train(config)
    except TrainingStopped as stopped:  # Ctrl-C or SIGTERM, after a checkpoint: one line on how to resume
        if speaks:
            print(stopped, file=sys.stderr)
        return stopped.exit_code
    if speaks:
        print(json_record(result))
    return 0
