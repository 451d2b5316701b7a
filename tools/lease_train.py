#!/usr/bin/env python3
"""Train on a leased GPU (the `device` tool) within what one call may carry each way.

A call takes at most 64 MiB of working tree (the repository's ~11 MB included) and brings back at
most 8 files of 16 MiB. The 160 MB training pool therefore travels in parts, one call each, into a
folder the machine keeps while it stays warm, and the trained weights come back cut into parts.

    here:    python tools/lease_train.py pack ../shared/data/train --output .lease [--teacher dlib.npy]
    device:  python3 tools/lease_train.py stash .lease/part-1        # carry [".lease/part-1"]; then part-2, ...
    device:  python3 tools/lease_train.py train -- --minutes 8 --width 0.5 --batch-size 512 --compile
    here:    python tools/lease_train.py unpack FILES_AT --output runs/gpu

`train` passes everything after `--` to `facekit train` (on /tmp/facekit-pool, with --device cuda
unless given), then writes to $OUT the run's model card, log.csv and result.json, and init.pt - the
weights and class centres that `facekit train --init-from` needs - cut into 15 MiB parts. `unpack`
joins the parts here into a run folder with init.pt and model.safetensors, ready for `facekit eval
lfw --weights`, `tools/release_model.py` and further stages on the CPU. Run the device calls back to
back: the machine is given back when it has been idle for half a minute.

The folder .lease is git-ignored, so its parts travel only when a call names them in `carry`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POOL = Path("/tmp/facekit-pool")
RUN = Path("/tmp/facekit-run")
PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have
RETURN_BYTES = 60 * 2**20  # under the 64 MiB that may come back in all
MANIFEST_COLUMNS = ["shard", "member", "identity"]


def pack(data: Path, output: Path, part_mib: float, teacher: Path | None) -> list[Path]:
    """Repack the pool's zip shards into parts of at most part_mib, manifest rows in their original order
    (so a teacher table's row i is still crop i); a teacher table travels as float16, in the last part if
    it fits there."""
    with open(data / "manifest.tsv", newline="") as handle:
        rows = [{k: r[k] for k in MANIFEST_COLUMNS} for r in csv.DictReader(handle, delimiter="\t")]
    if output.exists():
        strangers = [p.name for p in output.iterdir() if not p.name.startswith("part-")]
        if strangers:
            raise SystemExit(f"{output} holds more than an earlier pack ({strangers[0]}); choose another --output")
        shutil.rmtree(output)
    limit = int(part_mib * 2**20)
    parts: list[Path] = []
    writer: zipfile.ZipFile | None = None
    written = limit
    sources: dict[str, zipfile.ZipFile] = {}
    try:
        for row in rows:
            if row["shard"] not in sources:
                sources[row["shard"]] = zipfile.ZipFile(data / row["shard"])
            payload = sources[row["shard"]].read(row["member"])
            if written + len(payload) + 200 > limit:  # ~200 bytes of zip headers per member
                if writer is not None:
                    writer.close()
                parts.append(output / f"part-{len(parts) + 1}")
                parts[-1].mkdir(parents=True)
                writer = zipfile.ZipFile(parts[-1] / f"pool-{len(parts)}.zip", "w", zipfile.ZIP_STORED)
                written = 0 if len(parts) > 1 else (data / "manifest.tsv").stat().st_size  # part 1 holds it
            assert writer is not None
            writer.writestr(row["member"], payload)
            written += len(payload) + 200
            row["shard"] = f"pool-{len(parts)}.zip"
    finally:
        if writer is not None:
            writer.close()
        for source in sources.values():
            source.close()
    with open(parts[0] / "manifest.tsv", "w", newline="") as handle:
        table = csv.DictWriter(handle, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n")
        table.writeheader()
        table.writerows(rows)
    if teacher is not None:
        rows_half = np.load(teacher).astype(np.float16)
        if sum(p.stat().st_size for p in parts[-1].iterdir()) + rows_half.nbytes + 1024 > limit:
            parts.append(output / f"part-{len(parts) + 1}")
            parts[-1].mkdir(parents=True)
        np.save(parts[-1] / "teacher.npy", rows_half)
    return parts


def stash(part: Path, pool: Path = POOL) -> int:
    pool.mkdir(parents=True, exist_ok=True)
    for item in part.iterdir():
        shutil.copy2(item, pool / item.name)
    return len(list(pool.iterdir()))


def cut(path: Path, destination: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """path -> destination/<name>.000, .001, ... each at most part_bytes."""
    pieces = []
    with open(path, "rb") as source:
        while chunk := source.read(part_bytes):
            pieces.append(destination / f"{path.name}.{len(pieces):03d}")
            pieces[-1].write_bytes(chunk)
    return pieces


def collect(run: Path, out: Path, part_bytes: int = PART_BYTES, return_bytes: int = RETURN_BYTES) -> list[Path]:
    """What `unpack` needs, into out: init.pt in parts, the card, the log and the result."""
    import torch

    from facekit.training.train import shipped_weights

    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    # No optimizer state; and an --average-from run's mean, not its last step, comes back.
    keep = {"model": shipped_weights(state), **{k: state[k] for k in ("margin_loss", "distill") if k in state}}
    init = run / "init.pt"
    torch.save(keep, init)
    small = [run / name for name in ("model.json", "log.csv", "result.json")]
    if init.stat().st_size + sum(p.stat().st_size for p in small) > return_bytes:
        # A wide trunk with its class centres is too big to come back in float32; half precision fits.
        keep = {k: {n: t.half() if t.is_floating_point() else t for n, t in v.items()} for k, v in keep.items()}
        torch.save(keep, init)
    out.mkdir(parents=True, exist_ok=True)
    for path in small:
        shutil.copy2(path, out / path.name)
    return cut(init, out, part_bytes) + [out / p.name for p in small]


def unpack(files: Path, output: Path) -> Path:
    """Join init.pt.NNN back together; write model.safetensors from it, next to the returned card and log."""
    import torch

    from facekit.model import InceptionResNetV2, ModelConfig
    from facekit.training.train import save_weights

    pieces = sorted(files.glob("init.pt.[0-9][0-9][0-9]"))
    if not pieces:
        raise SystemExit(f"no init.pt parts in {files}")
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "init.pt", "wb") as joined:
        for piece in pieces:
            joined.write(piece.read_bytes())
    for name in ("model.json", "log.csv", "result.json"):
        shutil.copy2(files / name, output / name)
    state = torch.load(output / "init.pt", map_location="cpu", weights_only=True)
    state = {k: {n: t.float() if t.is_floating_point() else t for n, t in v.items()} for k, v in state.items()}
    torch.save(state, output / "init.pt")
    card = json.loads((output / "model.json").read_text())
    config = ModelConfig.from_dict(card["model"])
    model = InceptionResNetV2(config)
    model.load_state_dict(state["model"])
    card.pop("architecture", None)
    card.pop("model", None)
    save_weights(model.eval(), config, output / "model", card)
    return output


def train_on_device(train_args: list[str], pool: Path = POOL, run: Path = RUN) -> int:
    # Only `facekit train`'s own parser: the full CLI imports FAISS, which the GPU machine's image lacks.
    from facekit import training_cli

    parser = argparse.ArgumentParser(prog="facekit")
    training_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = ["train", str(pool), "--output", str(run), *train_args]
    if "--device" not in train_args:
        args += ["--device", "cuda"]
    parsed = parser.parse_args(args)
    code = parsed.handler(parsed)
    if code == 0:
        out = Path(os.environ.get("OUT", run / "out"))
        for path in collect(run, out):
            print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    packing = verbs.add_parser("pack", help="here: cut the pool into parts a call can carry")
    packing.add_argument("data", type=Path, help="zip shards + manifest.tsv (../shared/data/train)")
    packing.add_argument("--output", type=Path, default=Path(".lease"))
    packing.add_argument("--part-mib", type=float, default=48.0, help="per part; the repository travels too")
    packing.add_argument("--teacher", type=Path, help="a teacher table (tools/teacher_embeddings.py) to carry")
    stashing = verbs.add_parser("stash", help="device: copy a carried part into the pool folder")
    stashing.add_argument("part", type=Path)
    stashing.add_argument("--pool", type=Path, default=POOL)
    training = verbs.add_parser("train", help="device: facekit train on the pool, results into $OUT")
    training.add_argument("--pool", type=Path, default=POOL)
    training.add_argument("--run", type=Path, default=RUN)
    training.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then facekit train's options")
    unpacking = verbs.add_parser("unpack", help="here: join the returned parts into a run folder")
    unpacking.add_argument("files", type=Path, help="the folder the returned files are in")
    unpacking.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.verb == "pack":
        for part in pack(args.data, args.output, args.part_mib, args.teacher):
            size = sum(p.stat().st_size for p in part.iterdir())
            print(f"{part}: {size / 2**20:.1f} MiB")
    elif args.verb == "stash":
        print(f"{args.pool}: {stash(args.part, args.pool)} files")
    elif args.verb == "train":
        extra = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        return train_on_device(extra, args.pool, args.run)
    else:
        print(f"run folder: {unpack(args.files, args.output)}")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
