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

from facekit.model import InceptionResNetV2, ModelConfig
from facekit.representation import load_model
from facekit.training.data import load_crops
from facekit.training.train import save_weights

TINY = ModelConfig(width=0.125, blocks=(1, 1, 1), embedding_size=32)


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

    torch.manual_seed(0)
    save_weights(InceptionResNetV2(TINY).eval(), TINY, tmp_path / "released" / "model", {"note": "to start from"})
    released = tmp_path / "released" / "model.safetensors"

    with pytest.raises(SystemExit, match="more than an earlier pack"):
        lease.pack(tmp_path / "pool", tmp_path, part_mib=0.02, teacher=None)  # would have wiped the pool
    with pytest.raises(SystemExit, match="card beside them"):
        lease.pack(tmp_path / "pool", tmp_path / "lease", 0.02, None, init=tmp_path / "teacher.npy")
    parts = lease.pack(tmp_path / "pool", tmp_path / "small-parts", part_mib=0.02, teacher=tmp_path / "teacher.npy")
    assert len(parts) >= 2 and (parts[-1] / "teacher.npy").exists()
    for part in parts:
        assert sum(p.stat().st_size for p in part.iterdir()) <= 0.02 * 2**20  # part 1's manifest included
        lease.stash(part, tmp_path / "small-parts-pool")
    carried = load_crops(tmp_path / "small-parts-pool")
    np.testing.assert_array_equal(carried.images, original.images)  # same crops, same order
    assert carried.class_names == original.class_names

    # What a lease carries: the pool, the teacher table, and released weights to start from, each part a call.
    part_mib = 0.01 + released.stat().st_size / 2**20  # the pool does not fit beside the weights
    parts = lease.pack(tmp_path / "pool", tmp_path / "lease", part_mib, tmp_path / "teacher.npy", released)
    assert len(parts) == 2 and {p.name for p in parts[1].iterdir()} == {"init.safetensors", "init.json"}
    calls = lease.device_calls(parts)
    assert len(calls) == 2 and "stash" in calls[0] and "stash" in calls[1] and "train --" in calls[1]
    for part in parts:
        assert sum(p.stat().st_size for p in part.iterdir()) <= part_mib * 2**20
        lease.stash(part, tmp_path / "device-pool")
    carried = load_crops(tmp_path / "device-pool")
    np.testing.assert_array_equal(carried.images, original.images)
    np.testing.assert_allclose(np.load(tmp_path / "device-pool" / "teacher.npy"), teacher, atol=2e-3)

    # As on the GPU machine, whose image has no FAISS: the train verb must not need it.
    command = ["train", "--pool", str(tmp_path / "device-pool"), "--run", str(tmp_path / "device-run"), "--",
               "--device=cpu", "--width", "0.125", "--blocks", "1,1,1", "--embedding-size", "32",  # either spelling
               "--batch-size", "8", "--epochs", "2", "--teacher", str(tmp_path / "device-pool" / "teacher.npy"),
               "--distill-weight", "1", "--average-from", "0.5",  # the mean, not the last step, must come back
               "--init-from", str(tmp_path / "device-pool" / "init.safetensors")]
    without_faiss = ("import runpy, sys; sys.modules['faiss'] = None; sys.argv = sys.argv[1:]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    completed = subprocess.run([sys.executable, "-c", without_faiss, lease.__file__, *command],
                               capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path / "out")})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "init.pt.000", "log.csv", "model.json", "result.json"]
    assert "initialised from" in completed.stdout

    # Force what a wide trunk would meet: several parts, and half precision to fit the return limit.
    sizes = {}
    for name in ("float32", "float16"):
        return_bytes = 2**30 if name == "float32" else int(0.8 * sizes["float32"])
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


def test_weights_too_big_to_come_back_are_refused_before_training(tmp_path, shared_data, load_tool):
    lease = load_tool("lease_train")
    _small_pool(tmp_path / "pool", shared_data)
    command = ["train", "--pool", str(tmp_path / "pool"), "--run", str(tmp_path / "run"), "--",
               "--device", "cpu", "--width", "1.0", "--epochs", "1"]  # 33 M parameters: 63 MiB in float16
    with pytest.raises(SystemExit, match="over the 60 MiB a call can bring back"):
        lease.main(command)
    assert not (tmp_path / "run").exists()  # refused before any minute was spent

    # The same run's result, had it been made: collect says so rather than leave out parts.
    lease.main(command[:-6] + ["--device", "cpu", "--width", "0.125", "--blocks", "1,1,1", "--embedding-size",
                               "32", "--batch-size", "8", "--epochs", "1"])
    with pytest.raises(SystemExit, match="even in float16"):
        lease.collect(tmp_path / "run", tmp_path / "out", return_bytes=10_000)


def _git(repository: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, check=True).stdout


def test_travel_light_leaves_large_files_out_of_every_call_until_undone(tmp_path, load_tool, monkeypatch, capsys):
    lease = load_tool("lease_train")
    repository = tmp_path / "repository"
    (repository / "weights").mkdir(parents=True)
    with open(repository / "weights" / "model.onnx", "wb") as handle:
        handle.truncate(5 * 2**20)  # sparse: as large as git sees it, at no disk cost
    (repository / "code.py").write_text("print('small')\n")
    _git(repository, "init", "-q")
    _git(repository, "add", ".")
    _git(repository, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    (repository / "notes.md").write_text("untracked and not ignored: travels too\n")

    monkeypatch.setattr(lease, "CALL_BYTES", 11 * 2**20)
    assert lease.travelling_bytes(repository) == 5 * 2**20 + len("print('small')\n") + 39
    with pytest.raises(SystemExit, match="travel-light"):
        lease.room_per_call(repository)

    assert lease.travel_light(repository) == ["weights/model.onnx"]
    assert lease.travelling_bytes(repository) == len("print('small')\n") + 39
    assert lease.room_per_call(repository) > 8 * 2**20
    assert lease.travel_light(repository) == ["weights/model.onnx"]  # a second call changes nothing
    assert (repository / "weights" / "model.onnx").stat().st_size == 5 * 2**20  # the file itself stays

    assert lease.travel_light(repository, undo=True) == ["weights/model.onnx"]
    assert _git(repository, "status", "--porcelain") == "?? notes.md\n"  # tracked again, as it was
    assert "travel-light" not in (repository / ".git" / "info" / "exclude").read_text()
    assert lease.travelling_bytes(repository) == 5 * 2**20 + len("print('small')\n") + 39
    assert lease.travel_light(repository, undo=True) == []

    # A commit made during the lease takes the staged removal with it: undo stages the files again, and says so.
    lease.travel_light(repository)
    _git(repository, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "another change")
    capsys.readouterr()
    lease.travel_light(repository, undo=True)
    assert "removed weights/model.onnx from the repository" in capsys.readouterr().err
    assert _git(repository, "status", "--porcelain") == "A  weights/model.onnx\n?? notes.md\n"


def test_a_train_call_with_other_options_on_a_warm_machine_starts_its_own_run(tmp_path, shared_data, load_tool,
                                                                              monkeypatch, capsys):
    """The machine keeps what the calls leave while it stays warm; one run folder for every call had a second call
    resume the first's run, trained nothing and returned the first's weights under the second's options."""
    lease = load_tool("lease_train")
    _small_pool(tmp_path / "pool", shared_data)
    monkeypatch.setattr(lease, "RUN", tmp_path / "facekit-run")
    tiny = ["--device", "cpu", "--width", "0.125", "--blocks", "1,1,1", "--embedding-size", "32", "--batch-size", "8",
            "--epochs", "1"]
    cards = []
    for call, lr in enumerate(("0.05", "0.01", "0.05")):
        monkeypatch.setenv("OUT", str(tmp_path / f"out-{call}"))
        assert lease.main(["train", "--pool", str(tmp_path / "pool"), "--", *tiny, "--lr", lr]) == 0
        said = capsys.readouterr()
        cards.append((json.loads((tmp_path / f"out-{call}" / "model.json").read_text())["training"],
                      said.out + said.err))
    (first, _), (second, said), (again, said_again) = cards
    assert second["lr"] == 0.01 and "resumed" not in said and "had already finished" not in said
    assert len(list((tmp_path / "facekit-run").iterdir())) == 2
    # The same call again: its own run, found finished.
    assert "had already finished" in said_again and again == first
    # A bigger budget takes the run further, as facekit train resumes under one: it is no other set of options.
    monkeypatch.setenv("OUT", str(tmp_path / "out-further"))
    assert lease.main(["train", "--pool", str(tmp_path / "pool"), "--", *tiny, "--lr", "0.05", "--epochs=2"]) == 0
    further = json.loads((tmp_path / "out-further" / "model.json").read_text())["training"]
    assert "resumed from" in capsys.readouterr().out and further["steps"] == 2 * first["steps"]
    assert len(list((tmp_path / "facekit-run").iterdir())) == 2
    spelt_otherwise = [*tiny[:-2], "--minutes", "3", "--lr", "0.05"]
    assert lease.run_folder(tmp_path, spelt_otherwise) == lease.run_folder(tmp_path, [*tiny, "--lr", "0.05"])
