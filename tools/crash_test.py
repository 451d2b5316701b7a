"""Kill an enrolling process at random moments and check the gallery survives every time.

    python tools/crash_test.py [--kills 50] [--json]

A child process enrolls fake files (synthetic embeddings, distinct fake sha256s) with Gallery.add, in writer
sessions of random length, and appends each file's ids to a log only after add() has returned. The parent
SIGKILLs it at a random moment, then checks that the gallery opens, that check() is clean after the
automatic repair, that every logged add is still there and findable by search, and that no file was
enrolled twice. A last child runs to completion to show a rerun skips what is already there (has_source).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facekit.datastore import Gallery  # noqa: E402  (never loads torch: each child starts in well under a second)


def fake_sha(number: int) -> str:
    return hashlib.sha256(f"fake file {number}".encode()).hexdigest()


def fake_vectors(number: int, faces: int, dim: int) -> np.ndarray:
    return np.random.default_rng(number).standard_normal((faces, dim)).astype(np.float32)


def identity_of(number: int) -> str:
    return f"person {number % 23}"


def child(args: argparse.Namespace) -> None:
    """Enroll files first..first+files-1, skipping those already enrolled; no torch, so it starts quickly."""

    rng = random.Random(os.getpid())
    log = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with Gallery.open(args.gallery, dim=args.dim, index=args.index) as gallery:
        print("ready", flush=True)
        number, end = args.first, args.first + args.files
        while number < end:
            with gallery.writer():
                for _ in range(rng.randint(1, args.batch)):
                    if number >= end:
                        break
                    sha = fake_sha(number)
                    if not gallery.has_source(sha):
                        source = {"path": f"fake/{number}.jpg", "sha256": sha, "box": [0, 0, 10, 10]}
                        ids = gallery.add(
                            identity_of(number), fake_vectors(number, args.faces, args.dim), [source] * args.faces
                        )
                        # One write() of one short line: a kill cannot leave half of it behind.
                        os.write(log, f"{number} {' '.join(map(str, ids))}\n".encode())
                    number += 1


def read_log(path: Path) -> dict[int, list[int]]:
    committed = {}
    if path.exists():
        for line in path.read_text().splitlines():
            number, *ids = map(int, line.split())
            committed[number] = ids
    return committed


def verify(gallery_path: Path, log: Path, dim: int, faces: int, rng: random.Random) -> dict:
    """Open (repairing if needed), check, and compare with what the children said they committed."""
    committed = read_log(log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gallery = Gallery.open(gallery_path, create=False, dim=dim)
    with gallery:
        problems = gallery.check()
        db = sqlite3.connect(gallery_path / "gallery.sqlite")
        present = {row[0] for row in db.execute("SELECT id FROM embeddings")}
        duplicates = db.execute(
            "SELECT COUNT(*) FROM (SELECT sha256 FROM embeddings GROUP BY sha256 HAVING COUNT(*) > ?)", (faces,)
        ).fetchone()[0]
        db.close()
        lost = sum(1 for ids in committed.values() for i in ids if i not in present)
        sample = sorted(committed)[-3:] + rng.sample(sorted(committed), min(3, len(committed)))
        for number in sample:  # the index, not just the database, must know the committed embeddings
            best = gallery.search(fake_vectors(number, 1, dim), k=1)[0]
            if not best or best[0].identity != identity_of(number) or best[0].similarity < 0.999:
                problems.append(f"search does not find file {number}")
    return {"lost": lost, "problems": problems, "duplicates": duplicates, "repairs": len(caught)}


def run(kills: int, dim: int, faces: int, batch: int, index: str, seed: int, quiet: bool) -> dict:
    rng = random.Random(seed)
    totals = {"kills": 0, "lost": 0, "inconsistent": 0, "duplicates": 0}
    repairs = 0
    with tempfile.TemporaryDirectory(prefix="facekit-crash-") as tmp:
        gallery, log = Path(tmp) / "gallery", Path(tmp) / "committed.log"
        command = [
            sys.executable,
            __file__,
            "--child",
            "--gallery",
            str(gallery),
            "--log",
            str(log),
            "--dim",
            str(dim),
            "--faces",
            str(faces),
            "--batch",
            str(batch),
            "--index",
            index,
        ]
        for round_number in range(kills):
            process = subprocess.Popen([*command, "--files", "1000000"], stdout=subprocess.PIPE, text=True)
            if round_number > 0 and rng.random() < 0.15:
                time.sleep(rng.uniform(0, 0.3))  # while it imports and opens (and maybe repairs) the gallery
            else:
                process.stdout.readline()  # "ready"
                time.sleep(rng.uniform(0, 0.4))
            process.send_signal(signal.SIGKILL)
            process.wait()
            process.stdout.close()
            totals["kills"] += 1
            result = verify(gallery, log, dim, faces, rng)
            totals["lost"] += result["lost"]
            totals["duplicates"] += result["duplicates"]
            totals["inconsistent"] += bool(result["problems"])
            repairs += result["repairs"]
            if result["problems"] and not quiet:
                print(f"kill {round_number + 1}: " + "; ".join(result["problems"]), file=sys.stderr)
        # A rerun over the same files must finish and enroll each exactly once.
        limit = max(read_log(log), default=0) + 20
        subprocess.run([*command, "--files", str(limit)], check=True, stdout=subprocess.DEVNULL)
        result = verify(gallery, log, dim, faces, rng)
        totals["lost"] += result["lost"]
        totals["duplicates"] += result["duplicates"]
        totals["inconsistent"] += bool(result["problems"])
        # Files are counted in the database, not the log: a kill between add() and the log write is legal.
        db = sqlite3.connect(gallery / "gallery.sqlite")
        enrolled = db.execute("SELECT COUNT(DISTINCT sha256) FROM embeddings").fetchone()[0]
        db.close()
        if enrolled != limit:
            totals["inconsistent"] += 1
            if not quiet:
                print(f"rerun enrolled {enrolled} distinct files, expected {limit}", file=sys.stderr)
    if not quiet:
        print(
            f"{totals['kills']} kills, {enrolled} files enrolled, {repairs} automatic repairs on open", file=sys.stderr
        )
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--faces", type=int, default=1, help="embeddings per fake file")
    parser.add_argument("--batch", type=int, default=5, help="most adds per writer session")
    parser.add_argument("--index", default="flat", choices=("auto", "flat", "hnsw", "ivf"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gallery", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--files", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    totals = run(args.kills, args.dim, args.faces, args.batch, args.index, args.seed, quiet=args.json)
    if args.json:
        print(json.dumps(totals))
    else:
        print(", ".join(f"{key} {value}" for key, value in totals.items()))
    sys.exit(1 if totals["lost"] or totals["inconsistent"] or totals["duplicates"] else 0)


if __name__ == "__main__":
    main()
