#!/usr/bin/env python3
"""Train on a leased GPU (the `device` tool) within what one call may carry each way.

A call takes at most 64 MiB of working tree and brings back at most 8 files of 16 MiB. Every tracked
file travels with every call, and the shipped weights alone (two files of 33 MB) would fill it, so
`travel-light` first leaves the repository's large files behind for the lease (it untracks them in the
index only, and `--undo` tracks them again; commit nothing in between). The 163 MB training pool, a
teacher table and the weights to start from then travel in parts, one call each, into a folder the
machine keeps while it stays warm, and the trained weights come back cut into parts.

    here:    python tools/lease_train.py travel-light
    here:    python tools/lease_train.py pack ../shared/data/train --output .lease --teacher dlib.npy \
                 --init facekit/weights/facekit-irv2.safetensors     # prints the device calls to make
    device:  python3 tools/lease_train.py stash .lease/part-1        # carry [".lease/part-1"]; then part-2, ...
    device:  python3 tools/lease_train.py train -- --minutes 5 --width 0.5 --batch-size 512 --lr 0.04 \
                 --compile --init-from /tmp/facekit-pool/init.safetensors      # the README gives the losses
    here:    python tools/lease_train.py unpack FILES_AT --output runs/gpu
    here:    python tools/lease_train.py travel-light --undo

`pack` sizes the parts to what a call can carry beside the repository as it is then. `train` passes
everything after `--` to `facekit train` (on /tmp/facekit-pool, with --device cuda unless given, into a run
folder under /tmp/facekit-run of its own for each set of options: the same call again resumes its run, one
with other options on the same warm machine starts its own), having first checked that the trained weights
can come back, then writes to $OUT the run's model card, log.csv and result.json, and init.pt - the weights
and class centres that `facekit train --init-from` needs - cut into 15 MiB parts. `unpack` joins the parts
here into a run folder with init.pt and model.safetensors, ready for `facekit eval lfw --weights`,
`tools/release_model.py` and further stages on the CPU. Run the device calls back to back: the machine is
given back when it has been idle for half a minute.

The folder .lease is git-ignored, so its parts travel only when a call names them in `carry`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit.representation import torch_or_exit

torch_or_exit("tools/lease_train.py")  # one line where it is missing, not a traceback
from facekit.training.data import MANIFEST_COLUMNS  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
POOL = Path("/tmp/facekit-pool")
RUN = Path("/tmp/facekit-run")
BUDGET_OPTIONS = ("--minutes", "--epochs")  # a run resumes under more of either (run_folder)
PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have
RETURN_BYTES = 60 * 2**20  # under the 64 MiB that may come back in all
CALL_BYTES = 64 * 2**20  # what one call may carry, the working tree included
CALL_MARGIN = 2 * 2**20  # for what is written in the checkout between packing and the last call (notes, logs)
SMALLEST_PART = 8 * 2**20  # below this, the pool would take more calls than a lease has time for
LARGE_FILE = 4 * 2**20  # a tracked file this large stays behind with travel-light
TRAVEL_LIGHT_BEGIN = "# >>> tools/lease_train.py travel-light (undo: python tools/lease_train.py travel-light --undo)"
TRAVEL_LIGHT_END = "# <<< tools/lease_train.py travel-light"


def _git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True,
                          check=True).stdout


def travelling_bytes(repository: Path = REPOSITORY) -> int:
    """What the device tool sends with every call: tracked files and untracked ones git does not ignore."""
    listed = _git(repository, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    sizes = (os.lstat(repository / name).st_size for name in set(listed) if name and os.path.lexists(repository / name))
    return sum(sizes)


def _exclude_file(repository: Path) -> Path:
    return repository / _git(repository, "rev-parse", "--git-path", "info/exclude").strip()


def travel_light(repository: Path = REPOSITORY, undo: bool = False) -> list[str]:
    """Untrack (in the index only) the tracked files of LARGE_FILE or more and have git ignore them, so that
    the device tool leaves them behind; undo tracks them again from HEAD. The files themselves stay."""
    exclude = _exclude_file(repository)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if TRAVEL_LIGHT_BEGIN in lines:
        begin, end = lines.index(TRAVEL_LIGHT_BEGIN), lines.index(TRAVEL_LIGHT_END)
        left_behind = [line.lstrip("/") for line in lines[begin + 1:end]]
        if not undo:
            return left_behind
        exclude.write_text("".join(f"{line}\n" for line in lines[:begin] + lines[end + 1:]))
        in_head = set(_git(repository, "ls-tree", "-r", "-z", "--name-only", "HEAD", "--", *left_behind).split("\0"))
        _git(repository, "reset", "-q", "--", *[name for name in left_behind if name in in_head])
        committed_away = [name for name in left_behind if name not in in_head]
        if committed_away:
            # A commit made meanwhile took the staged removal with it: stage the files again, and say so loudly.
            _git(repository, "add", "--", *committed_away)
            print(f"warning: a commit made during the lease removed {', '.join(committed_away)} from the "
                  "repository; they are staged again: commit them", file=sys.stderr)
        return left_behind
    if undo:
        return []
    tracked = [name for name in _git(repository, "ls-files", "-z").split("\0") if name]
    large = sorted(name for name in tracked if (repository / name).is_file()
                   and (repository / name).stat().st_size >= LARGE_FILE)
    if any(char in name for name in large for char in "*?[]!#\\ \n"):
        raise SystemExit(f"cannot write an ignore pattern for one of {large}")
    exclude.parent.mkdir(parents=True, exist_ok=True)
    block = [TRAVEL_LIGHT_BEGIN, *(f"/{name}" for name in large), TRAVEL_LIGHT_END]
    exclude.write_text("".join(f"{line}\n" for line in lines + block))
    if large:
        _git(repository, "rm", "-q", "--cached", "--", *large)
    return large


def room_per_call(repository: Path = REPOSITORY) -> int:
    """The bytes of data one call can carry beside the repository as it is now."""
    room = CALL_BYTES - travelling_bytes(repository) - CALL_MARGIN
    if room < SMALLEST_PART:
        raise SystemExit(f"the repository sends {travelling_bytes(repository) / 2**20:.1f} MiB with every call, "
                         f"leaving {max(room, 0) / 2**20:.1f} MiB for the pool: run `python tools/lease_train.py "
                         "travel-light` first")
    return room


def pack(data: Path, output: Path, part_mib: float, teacher: Path | None, init: Path | None = None) -> list[Path]:
    """Repack the pool's zip shards into parts of at most part_mib, manifest rows in their original order
    (so a teacher table's row i is still crop i); a teacher table travels as float16, and released weights to
    start from (init) as init.safetensors with their card as init.json, each in the last part if it fits
    there."""
    if init is not None and not (init.is_file() and init.with_suffix(".json").is_file()):
        raise SystemExit(f"--init takes released weights with their card beside them: {init} and "
                         f"{init.with_suffix('.json')}")
    with open(data / "manifest.tsv", newline="", encoding="utf-8") as handle:
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
    with open(parts[0] / "manifest.tsv", "w", newline="", encoding="utf-8") as handle:
        table = csv.DictWriter(handle, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n")
        table.writeheader()
        table.writerows(rows)

    def last_part_with_room(size: int) -> Path:
        if sum(p.stat().st_size for p in parts[-1].iterdir()) + size > limit:
            parts.append(output / f"part-{len(parts) + 1}")
            parts[-1].mkdir(parents=True)
        return parts[-1]

    if teacher is not None:
        rows_half = np.load(teacher).astype(np.float16)  # allow_pickle stays False: the file is data only
        np.save(last_part_with_room(rows_half.nbytes + 1024) / "teacher.npy", rows_half)
    if init is not None:
        card = init.with_suffix(".json")
        destination = last_part_with_room(init.stat().st_size + card.stat().st_size)
        shutil.copyfile(init, destination / "init.safetensors")
        shutil.copyfile(card, destination / "init.json")
    return parts


def device_calls(parts: list[Path]) -> list[str]:
    """The device tool's calls for these parts, in order: a stash each, training in the last one's call."""
    calls = [f"run(command='python3 tools/lease_train.py stash {part}', carry=[\"{part}\"])" for part in parts]
    return calls[:-1] + [calls[-1].replace("',", " && python3 tools/lease_train.py train -- FACEKIT_TRAIN_OPTIONS',")]


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
    if init.stat().st_size + sum(p.stat().st_size for p in small) > return_bytes:
        # train_on_device's check before training should have refused this run; say so rather than lose it.
        raise SystemExit(f"{init} is {init.stat().st_size / 2**20:.1f} MiB even in float16, over the "
                         f"{return_bytes / 2**20:.0f} MiB a call can bring back; it stays on the machine")
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


def check_weights_can_come_back(train_args: argparse.Namespace, pool: Path,
                                return_bytes: int = RETURN_BYTES) -> None:
    """Refuse, before the lease's minutes are spent, a run whose init.pt could not come back even in float16:
    the trunk plus one class centre per identity in the pool (an upper bound on the classes trained)."""
    import torch

    from facekit.model import InceptionResNetV2, ModelConfig

    blocks = tuple(int(b) for b in train_args.blocks.split(","))
    config = ModelConfig(width=train_args.width, blocks=blocks, embedding_size=train_args.embedding_size)
    with torch.device("meta"):  # parameters with shapes and no storage: counting them costs nothing
        trunk = sum(p.numel() for p in InceptionResNetV2(config).parameters())
    with open(pool / "manifest.tsv", newline="", encoding="utf-8") as handle:
        identities = len({row["identity"] for row in csv.DictReader(handle, delimiter="\t")})
    half_bytes = 2 * (trunk + identities * config.embedding_size)
    if half_bytes > return_bytes:
        raise SystemExit(f"width {config.width}'s weights and class centres are {half_bytes / 2**20:.0f} MiB in "
                         f"float16, over the {return_bytes / 2**20:.0f} MiB a call can bring back: train a "
                         "narrower width")


def run_folder(runs: Path, train_args: list[str]) -> Path:
    """The run folder of these options under runs, the budget (--minutes, --epochs, as `--x N` or `--x=N`) left out:
    a call with more of it resumes the run and takes it further, as `facekit train` does. The machine keeps its
    folders while it stays warm: one folder for all would have had a later call with other options resume the
    earlier run as its own."""
    kept, value_next = [], False
    for arg in train_args:
        if value_next:
            value_next = False
        elif arg in BUDGET_OPTIONS:
            value_next = True
        elif arg.split("=", 1)[0] not in BUDGET_OPTIONS:
            kept.append(arg)
    return runs / hashlib.sha256("\0".join(kept).encode()).hexdigest()[:12]


def train_on_device(train_args: list[str], pool: Path = POOL, run: Path | None = None) -> int:
    # Only `facekit train`'s own parser: the full CLI imports FAISS, which the GPU machine's image lacks.
    from facekit import training_cli

    run = run or run_folder(RUN, train_args)
    print(f"run folder: {run}")
    parser = argparse.ArgumentParser(prog="facekit")
    training_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = ["train", str(pool), "--output", str(run), *train_args]
    if not any(arg == "--device" or arg.startswith("--device=") for arg in train_args):
        args += ["--device", "cuda"]
    parsed = parser.parse_args(args)
    check_weights_can_come_back(parsed, pool)
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
    packing.add_argument("--part-mib", type=float,
                         help="per part (default: what a call carries beside the repository as it is now)")
    packing.add_argument("--teacher", type=Path, help="a teacher table (tools/teacher_embeddings.py) to carry")
    packing.add_argument("--init", type=Path, help="released weights to start from, their .json card beside them")
    lightening = verbs.add_parser("travel-light", help="here: leave the repository's large files out of every call")
    lightening.add_argument("--undo", action="store_true", help="track them again, after the lease")
    stashing = verbs.add_parser("stash", help="device: copy a carried part into the pool folder")
    stashing.add_argument("part", type=Path)
    stashing.add_argument("--pool", type=Path, default=POOL)
    training = verbs.add_parser("train", help="device: facekit train on the pool, results into $OUT")
    training.add_argument("--pool", type=Path, default=POOL)
    training.add_argument("--run", type=Path, help=f"run folder (default: one for each set of options, in {RUN})")
    training.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then facekit train's options")
    unpacking = verbs.add_parser("unpack", help="here: join the returned parts into a run folder")
    unpacking.add_argument("files", type=Path, help="the folder the returned files are in")
    unpacking.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.verb == "travel-light":
        paths = travel_light(undo=args.undo)
        if args.undo:
            print(f"tracked again: {', '.join(paths) or 'nothing (travel-light was not in effect)'}")
        else:
            print(f"left behind by every call: {', '.join(paths) or 'nothing'}; "
                  f"{travelling_bytes() / 2**20:.1f} MiB travels now. Commit nothing until travel-light --undo.")
    elif args.verb == "pack":
        part_mib = args.part_mib or room_per_call() / 2**20
        parts = pack(args.data, args.output, part_mib, args.teacher, args.init)
        for part in parts:
            size = sum(p.stat().st_size for p in part.iterdir())
            print(f"{part}: {size / 2**20:.1f} MiB")
        print("the device calls, back to back:")
        for call in device_calls(parts):
            print(f"  {call}")
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
