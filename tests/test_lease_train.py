"""The GPU-lease path of tools/lease_train.py, run on the CPU: pack -> stash -> train -> collect -> unpack."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit.representation import load_model
from facekit.training.data import load_crops


def _small_pool(root: Path, shared_data: Path, identities: int = 5, per_identity: int = 4) -> None:
    """A pool in the layout of ../shared/data/train (two zip shards + manifest), of real crops."""
    with open(shared_data / "train" / "manifest.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_identity: dict[str, list[dict]] = {}
    for row in rows:
        by_identity.setdefault(row["identity"], []).append(row)
    chosen = [items[:per_identity] for items in by_identity.values() if len(items) >= per_identity][:identities]
    picked = [row for items in chosen for row in items]
    root.mkdir(parents=True)
    with open(root / "manifest.tsv", "w", newline="") as handle:
        table = csv.DictWriter(handle, list(rows[0]), delimiter="\t", lineterminator="\n")
        table.writeheader()
        for i, row in enumerate(picked):
            shard = f"train-{i % 2:03d}.zip"  # interleaved, so repacking must keep the manifest's order
            with zipfile.ZipFile(shared_data / "train" / row["shard"]) as source, \
                    zipfile.ZipFile(root / shard, "a") as target:
                target.writestr(row["member"], source.read(row["member"]))
            table.writerow({**row, "shard": shard})


def test_lease_round_trip_on_the_cpu(tmp_path, shared_data, load_tool):
    lease = load_tool("lease_train")
    _small_pool(tmp_path / "pool", shared_data)
    original = load_crops(tmp_path / "pool")
    teacher = np.random.default_rng(0).normal(size=(len(original.images), 8)).astype(np.float32)
    np.save(tmp_path / "teacher.npy", teacher)

    with pytest.raises(SystemExit, match="more than an earlier pack"):
        lease.pack(tmp_path / "pool", tmp_path, part_mib=0.02, teacher=None)  # would have wiped the pool
    parts = lease.pack(tmp_path / "pool", tmp_path / "lease", part_mib=0.02, teacher=tmp_path / "teacher.npy")
    assert len(parts) >= 2 and (parts[-1] / "teacher.npy").exists()
    for part in parts:
        assert sum(p.stat().st_size for p in part.iterdir()) <= 0.02 * 2**20  # part 1's manifest included
    for part in parts:
        lease.stash(part, tmp_path / "device-pool")
    carried = load_crops(tmp_path / "device-pool")
    np.testing.assert_array_equal(carried.images, original.images)  # same crops, same order
    assert carried.class_names == original.class_names
    np.testing.assert_allclose(np.load(tmp_path / "device-pool" / "teacher.npy"), teacher, atol=2e-3)

    # As on the GPU machine, whose image has no FAISS: the train verb must not need it.
    command = ["train", "--pool", str(tmp_path / "device-pool"), "--run", str(tmp_path / "device-run"), "--",
               "--device", "cpu", "--width", "0.125", "--blocks", "1,1,1", "--embedding-size", "32",
               "--batch-size", "8", "--epochs", "2", "--teacher", str(tmp_path / "device-pool" / "teacher.npy"),
               "--distill-weight", "1", "--average-from", "0.5"]  # the mean, not the last step, must come back
    without_faiss = ("import runpy, sys; sys.modules['faiss'] = None; sys.argv = sys.argv[1:]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    completed = subprocess.run([sys.executable, "-c", without_faiss, lease.__file__, *command],
                               capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "init.pt.000", "log.csv", "model.json", "result.json"]

    # Force what a wide trunk would meet: several parts, and half precision to fit the return limit.
    sizes = {}
    for name, return_bytes in (("float32", 2**30), ("float16", 2**18)):
        returned = lease.collect(tmp_path / "device-run", tmp_path / name, part_bytes=100_000,
                                 return_bytes=return_bytes)
        pieces = [p for p in returned if ".pt." in p.name]
        assert len(pieces) >= 2 and all(p.stat().st_size <= 100_000 for p in pieces)
        sizes[name] = sum(p.stat().st_size for p in pieces)
        run = lease.unpack(tmp_path / name, tmp_path / f"run-{name}")
        trained, _ = load_model(tmp_path / "device-run" / "model")
        back, card = load_model(run / "model")
        assert card["training"]["teacher_targets"] == len(original.images)
        x = torch.randn(2, 3, 112, 112)
        with torch.no_grad():
            tolerance = 0 if name == "float32" else 2e-2
            torch.testing.assert_close(back(x), trained(x), atol=tolerance, rtol=0)
        state = torch.load(run / "init.pt", weights_only=True)
        assert set(state) == {"model", "margin_loss", "distill"}
        assert json.loads((run / "result.json").read_text())["steps"] > 0
    assert sizes["float16"] < 0.6 * sizes["float32"]
