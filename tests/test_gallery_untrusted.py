"""A gallery folder made by someone else: crafted names, paths, settings, triggers, index files and lock file must each
end in one line (or be repaired from the database), never in a traceback, a raw terminal escape, or a removal that
keeps what it removed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import sqlite3
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facekit.datastore import Gallery, GalleryError, GalleryWarning
from facekit.errors import CONTROL_CHARACTERS

DIM = 32
# A path a crafted database may hold: printed raw, it retitles the terminal and forges a line of `gallery check`.
FORGED_PATH = "\x1b]0;X\x07\nok: 0 faces"


def vectors(seed: int, count: int = 1) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def source(path: str) -> dict:
    return {"path": path, "sha256": hashlib.sha256(path.encode()).hexdigest(), "box": None}


def database(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """The gallery's database as someone with a sqlite3 shell sees it: changes commit on leaving the block."""
    return contextlib.closing(sqlite3.connect(path / "gallery.sqlite", isolation_level=None))


def one_clean_line(text: str) -> bool:
    return not CONTROL_CHARACTERS.search(text) and len(text) < 1000


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "gallery"


def test_remove_photos_refuses_the_placeholder_path_of_faces_added_from_arrays_or_bytes(
        path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "<array>"  # a file that is named so: found by a path with a folder part
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1), [source("<array>")])
        gallery.add("bob", vectors(2), [source("<bytes>")])
        gallery.add("carol", vectors(3), [source(str(real))])
        for placeholder in ("<array>", "<bytes>"):
            with pytest.raises(GalleryError, match="names no photo.*sha256.*`facekit gallery photos`") as refused:
                gallery.remove_photos([placeholder, str(real)])
            assert "\n" not in str(refused.value)
        assert gallery.identities() == [("alice", 1), ("bob", 1), ("carol", 1)]  # nothing removed
        assert [face["identity"] for face in gallery.remove_photos("./<array>")] == ["carol"]
        assert gallery.identities() == [("alice", 1), ("bob", 1)]


def test_a_stored_name_clean_identity_refuses_is_reported_and_can_be_removed_and_renamed(path: Path) -> None:
    crafted = {"p1": "evil\x1b]0;X\x07", "p2": "Ali\u200bce", "p3": "x" * 1_000_000, "p4": "rtl\u202eevil"}
    with Gallery.open(path, dim=DIM) as gallery:
        for seed, placeholder in enumerate(crafted, 1):
            gallery.add(placeholder, vectors(seed), [source(f"{placeholder}.jpg")])
        gallery.add("dave", vectors(9), [source("dave.jpg")])
    with database(path) as db:
        db.executemany("UPDATE identities SET name = ? WHERE name = ?", [(new, old) for old, new in crafted.items()])
    with Gallery.open(path, create=False) as gallery:
        problems = gallery.check()
        assert len(problems) == len(crafted) and all(one_clean_line(problem) for problem in problems), problems
        assert all("is a name facekit refuses" in problem for problem in problems)
        assert any("'evil\\x1b]0;X\\x07'" in problem for problem in problems)
        assert any("(1000000 characters)" in problem for problem in problems)
        assert [face["path"] for face in gallery.photos(crafted["p1"])] == ["p1.jpg"]
        assert gallery.remove(crafted["p1"]) == 1
        assert gallery.remove(crafted["p3"]) == 1
        gallery.rename(crafted["p2"], "Alice")
        with pytest.raises(GalleryError, match="identity name"):  # the new name must still be one facekit stores
            gallery.rename(crafted["p4"], "rtl\u202eagain")
        gallery.rename(crafted["p4"], "Alice", merge=True)
        assert gallery.identities() == [("Alice", 2), ("dave", 1)]
        assert gallery.check() == []


def test_check_and_the_repair_warning_escape_a_stored_path(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1, 2), [source(FORGED_PATH), source("fine.jpg")])
    with database(path) as db:  # a damaged vector: check and the rebuild's warning name its photo
        db.execute("UPDATE embeddings SET vector = zeroblob(?) WHERE source_path = ?", (4 * DIM, FORGED_PATH))
    with Gallery.open(path, create=False) as gallery:
        problems = gallery.check()
    assert problems and all(one_clean_line(problem) for problem in problems), problems
    assert any("\\x1b]0;X\\x07\\nok: 0 faces" in problem for problem in problems)
    for index_file in path.glob("index-*.faiss"):
        index_file.unlink()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always", GalleryWarning)
        Gallery.open(path, create=False).close()
    messages = [str(w.message) for w in recorded if issubclass(w.category, GalleryWarning)]
    assert any("\\x1b]0;X\\x07\\nok: 0 faces" in message for message in messages)
    assert all(not CONTROL_CHARACTERS.search(message) for message in messages), messages


@contextlib.contextmanager
def address_space_capped(extra: int = 64 << 30) -> Iterator[None]:
    """Allocations beyond what the process has mapped plus `extra` fail, as with no overcommit: where the kernel
    overcommits, a crafted length would otherwise be granted and then zero-filled until the OOM killer came."""
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + extra if hard == resource.RLIM_INFINITY else min(hard, mapped + extra)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def craft_vector_length(path: Path, floats: int) -> None:
    """Make the index file say it holds `floats` numbers of vector data, its checksum in the manifest updated to
    match: the damage a CRC32 cannot catch, as someone who edits both would make it."""
    (index_file,) = path.glob("index-*.faiss")
    data = bytearray(index_file.read_bytes())
    # IndexFlat: "IxFI", d (int32), ntotal and two unused int64, is_trained (1 byte), metric (int32), then the
    # number of floats stored (uint64).
    at = data.index(b"IxFI") + 4 + 4 + 3 * 8 + 1 + 4
    assert struct.unpack_from("<Q", data, at)[0] == 2 * DIM
    struct.pack_into("<Q", data, at, floats)
    index_file.write_bytes(data)
    with database(path) as db:
        manifest = json.loads(db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()[0])
        (entry,) = manifest["files"]
        entry["crc32"] = f"{zlib.crc32(data):08x}"
        db.execute("UPDATE meta SET value = ? WHERE key = 'manifest'", (json.dumps(manifest),))


@pytest.mark.parametrize("floats", [2**33, 2**37])
def test_an_index_file_asking_for_more_memory_than_there_is_is_damage_repaired_from_the_database(
        path: Path, floats: int) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1, 2), [source("a.jpg"), source("b.jpg")])
        craft_vector_length(path, floats)
        with address_space_capped():
            assert gallery.check() == [f"index: index file {next(path.glob('index-*.faiss')).name} is unreadable"]
    with address_space_capped(), pytest.warns(GalleryWarning, match="is unreadable; rebuilt it from"):
        gallery = Gallery.open(path, create=False)
    with gallery:
        assert gallery.search(vectors(1))[0][0].identity == "alice"
        assert gallery.check() == []


@pytest.mark.parametrize("dim", ["99999999999", "100000000"])
def test_a_crafted_dim_is_refused_on_open_in_one_line(path: Path, dim: str) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1, 2), [source("a.jpg"), source("b.jpg")])
    with database(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'dim'", (dim,))
    with pytest.raises(GalleryError, match=f"dim setting is {dim}, outside 1 to 65536"):
        Gallery.open(path, create=False)
    with pytest.raises(GalleryError, match="dim must be an integer from 1 to 65536"):
        Gallery.open(path.parent / "new", dim=65_537)


def test_a_database_holding_a_trigger_is_refused(path: Path) -> None:
    keep_removed = ("CREATE TRIGGER keep AFTER DELETE ON embeddings BEGIN "
                    "INSERT INTO kept VALUES (old.source_path, old.vector); END")
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1), [source("a.jpg")])
        with database(path) as db:  # while it is open: check is what can see it
            db.execute("CREATE TABLE kept (path TEXT, vector BLOB)")
            db.execute(keep_removed)
        assert gallery.check() == ["the database holds a trigger, 'keep', which facekit never makes: it could keep "
                                   "copies of removed faces"]
    before = {file.name: file.read_bytes() for file in path.iterdir()}
    with pytest.raises(GalleryError, match="holds a trigger \\('keep'\\), which facekit never makes") as refused:
        Gallery.open(path, create=False)
    assert "\n" not in str(refused.value)
    assert {file.name: file.read_bytes() for file in path.iterdir()} == before  # nothing changed


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_nothing_is_made_where_it_points(
        path: Path, tmp_path: Path) -> None:
    Gallery.open(path, dim=DIM).close()
    (path / "lock").unlink()
    elsewhere = tmp_path / "elsewhere"
    os.symlink(elsewhere, path / "lock")
    with pytest.raises(GalleryError, match="lock is a symbolic link"):
        Gallery.open(path, create=False)
    assert not elsewhere.exists()
