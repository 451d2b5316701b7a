"""Several processes on one gallery: serialised writers, consistent readers, and SIGKILL at random moments.

Writers are tools/crash_test.py's enrolling child, started with subprocess (multiprocessing would pickle)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from facekit.datastore import Gallery, GalleryWarning

DIM = 32


@pytest.fixture(scope="module")
def crash_test(load_tool):
    return load_tool("crash_test")


def writer(crash_test, gallery: Path, log: Path, first: int, files: int, faces: int) -> subprocess.Popen:
    command = [
        sys.executable,
        crash_test.__file__,
        "--child",
        "--gallery",
        str(gallery),
        "--log",
        str(log),
        "--dim",
        str(DIM),
        "--faces",
        str(faces),
        "--batch",
        "3",
        "--first",
        str(first),
        "--files",
        str(files),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def test_two_writers_are_serialised_and_lose_nothing(tmp_path: Path, crash_test) -> None:
    gallery = tmp_path / "gallery"
    Gallery.open(gallery, dim=DIM).close()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [writer(crash_test, gallery, logs[0], 0, 60, 2), writer(crash_test, gallery, logs[1], 1000, 60, 2)]
    assert [p.wait(timeout=60) for p in processes] == [0, 0]
    committed = {**crash_test.read_log(logs[0]), **crash_test.read_log(logs[1])}
    assert len(committed) == 120
    with Gallery.open(gallery, dim=DIM) as reopened:
        assert len(reopened) == 240
        assert reopened.check() == []
        for number in (0, 59, 1000, 1059):
            best = reopened.search(crash_test.fake_vectors(number, 2, DIM)[1])[0][0]
            assert best.identity == crash_test.identity_of(number) and best.embedding_id == committed[number][1]


def test_reader_sees_consistent_snapshots_during_writes(tmp_path: Path, crash_test) -> None:
    """Each file adds 3 embeddings in one transaction: a reader must see all three or none, and must find
    every file whose add() has returned."""
    gallery, log = tmp_path / "gallery", tmp_path / "w.log"
    Gallery.open(gallery, dim=DIM).close()
    process = writer(crash_test, gallery, log, 0, 150, 3)
    looks = 0
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(gallery, dim=DIM) as reader:
            while process.poll() is None or looks < 5:
                if looks % 10 == 9:  # a fresh open mid-write catches up in memory, without the lock
                    reader.close()
                    reader = Gallery.open(gallery, dim=DIM)
                committed = crash_test.read_log(log)  # read before searching: these adds have all returned
                stats = reader.stats()
                assert stats["embeddings"] % 3 == 0
                assert stats["index_vectors"] - stats["tombstones"] == stats["embeddings"]
                assert all(count % 3 == 0 for _, count in reader.identities())
                if committed:
                    number = max(committed)
                    best = reader.search(crash_test.fake_vectors(number, 3, DIM)[2])[0][0]
                    assert best.identity == crash_test.identity_of(number)
                    assert best.embedding_id == committed[number][2]
                looks += 1
                time.sleep(0.01)
            reader.close()
    assert process.wait() == 0
    assert looks >= 5
    assert not [w for w in recorded if issubclass(w.category, GalleryWarning)]
    with Gallery.open(gallery, dim=DIM) as reopened:
        assert len(reopened) == 450
        assert reopened.check() == []


@pytest.mark.slow
def test_sigkill_during_enrollment_loses_nothing(crash_test) -> None:
    result = subprocess.run(
        [sys.executable, crash_test.__file__, "--kills", "8", "--json", "--dim", "64", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(result.stdout) == {"kills": 8, "lost": 0, "inconsistent": 0, "duplicates": 0}, result.stderr
    assert result.returncode == 0
