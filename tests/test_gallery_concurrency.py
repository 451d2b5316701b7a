"""Several processes on one gallery: serialised writers, consistent readers, and SIGKILL at random moments.

Writers are tools/crash_test.py's enrolling child and REMOVER below, started with subprocess (multiprocessing
would pickle)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from facekit.datastore import Gallery, GalleryWarning

DIM = 32
# Removes identities one at a time, logging each name once remove() has returned; with "kill" for the log, dies
# (SIGKILL) between the removal's database commit and the index rewrite that purges its vectors.
REMOVER = """
import os, signal, sys, time
from facekit.datastore import Gallery

gallery_path, log, *names = sys.argv[1:]
if log == "kill":
    Gallery._write_index = lambda self: os.kill(os.getpid(), signal.SIGKILL)
with Gallery.open(gallery_path) as gallery:
    for name in names:
        gallery.remove(name)
        with open(os.devnull if log == "kill" else log, "a") as file:
            file.write(name + "\\n")
        time.sleep(0.05)
"""


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


def enroll_people(crash_test, gallery: Path, people: int) -> None:
    """person N: two faces, from photo-N-0.jpg and photo-N-1.jpg."""
    with Gallery.open(gallery, dim=DIM) as opened, opened.writer():
        for number in range(people):
            opened.add(f"person {number}", crash_test.fake_vectors(number, 2, DIM),
                       [{"path": f"photo-{number}-{face}.jpg", "sha256": crash_test.fake_sha(10 * number + face),
                         "box": None} for face in range(2)])


def remover(gallery: Path, log: str, *names: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", REMOVER, str(gallery), log, *names])


def traces(crash_test, gallery: Path, number: int) -> list[str]:
    """What of person `number`'s faces (vector, photo hash, photo path) is still in a file of the gallery."""
    data = b"".join(file.read_bytes() for file in gallery.iterdir() if file.is_file())
    vectors = crash_test.fake_vectors(number, 2, DIM)
    found = []
    for face, vector in enumerate(vectors / np.linalg.norm(vectors, axis=1, keepdims=True)):
        if vector.astype("<f4").tobytes() in data:
            found.append(f"vector {face}")
        if crash_test.fake_sha(10 * number + face).encode() in data:
            found.append(f"sha256 {face}")
        if f"photo-{number}-{face}.jpg".encode() in data:
            found.append(f"path {face}")
    return found


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


def test_readers_never_see_a_face_whose_removal_has_returned(tmp_path: Path, crash_test) -> None:
    """Another process removes people one by one; a reader searching meanwhile, with the index it loaded before
    or one it reloads as the purges replace the files, never answers with anybody removed."""
    gallery, log = tmp_path / "gallery", tmp_path / "removed.log"
    enroll_people(crash_test, gallery, 12)
    queries = np.concatenate([crash_test.fake_vectors(number, 2, DIM)[:1] for number in range(12)])
    looks = 0
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        reader = Gallery.open(gallery, dim=DIM)
        reader.search(queries[0])  # loads the index
        process = remover(gallery, str(log), *(f"person {number}" for number in range(0, 12, 2)))
        while process.poll() is None or looks < 5:
            if looks % 10 == 9:
                reader.close()
                reader = Gallery.open(gallery, dim=DIM)
            removed = set(log.read_text().splitlines()) if log.exists() else set()  # read before searching
            for number, matches in enumerate(reader.search(queries, k=12)):
                names = [match.identity for match in matches]
                assert not removed & set(names), (removed, names)
                if number % 2:  # never removed; an even one may be in the middle of its removal
                    assert names[0] == f"person {number}"
            looks += 1
            time.sleep(0.01)
        reader.close()
    assert process.wait(timeout=60) == 0
    assert not [w for w in recorded if issubclass(w.category, GalleryWarning)]
    with Gallery.open(gallery, dim=DIM) as reopened:
        assert [name for name, _ in reopened.identities()] == [f"person {n}" for n in (1, 11, 3, 5, 7, 9)]
        assert reopened.check() == []
        assert traces(crash_test, gallery, 4) == [] and traces(crash_test, gallery, 5) != []


def test_a_remover_killed_before_it_purged_the_index_is_finished_by_the_next_open(tmp_path: Path,
                                                                                   crash_test) -> None:
    """SIGKILL after the removal's commit, before the index rewrite: the removed vectors are still in the index
    files. Readers never return them; the next open that can take the writer lock purges them from every file."""
    gallery = tmp_path / "gallery"
    enroll_people(crash_test, gallery, 6)
    query = crash_test.fake_vectors(3, 2, DIM)[0]
    with Gallery.open(gallery, dim=DIM) as reader:  # stays open: the write-ahead log is not deleted at a close
        assert reader.search(query)[0][0].identity == "person 3"
        process = remover(gallery, "kill", "person 3")
        assert process.wait(timeout=60) == -signal.SIGKILL
        assert "vector 0" in traces(crash_test, gallery, 3)
        assert all(match.identity != "person 3" for match in reader.search(query, k=6)[0])
        with pytest.warns(GalleryWarning, match="still held 2 removed embeddings"):
            fresh = Gallery.open(gallery, dim=DIM)
        with fresh:
            assert traces(crash_test, gallery, 3) == []
            assert fresh.check() == []
        assert reader.search(query, k=6)[0][0].identity != "person 3"
        assert reader.stats()["tombstones"] == 0
        assert len(reader) == 10
