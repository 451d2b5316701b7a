"""The gallery: persistence, search ranking, integrity checks and repair, index types, validation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import unprivileged

from facekit import datastore
from facekit.datastore import Gallery, GalleryError, GalleryWarning, choose_index, default_gallery_path

DIM = 32


def vectors(seed: int, count: int = 1) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def sources(*names: str) -> list[dict]:
    return [
        {"path": f"{n}.jpg", "sha256": hashlib.sha256(n.encode()).hexdigest(), "box": [1, 2, 30, 40]} for n in names
    ]


def enroll(gallery: Gallery, identity: str, seed: int, count: int = 2) -> list[int]:
    return gallery.add(identity, vectors(seed, count), sources(*(f"{identity}-{seed}-{i}" for i in range(count))))


def index_files(path: Path) -> list[Path]:
    return sorted(path.glob("index-*.faiss"))


def no_repair_warning(recorded: list) -> bool:
    return not any(issubclass(w.category, GalleryWarning) for w in recorded)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "gallery"


def test_persists_across_reopen(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        ids = enroll(gallery, "alice", 1) + enroll(gallery, "bob", 2, 3)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, dim=DIM, create=False) as gallery:
            assert gallery.identities() == [("alice", 2), ("bob", 3)]
            assert len(gallery) == 5
            assert gallery.check() == []
            best = gallery.search(vectors(2, 3)[1])[0][0]
            assert (best.identity, best.embedding_id, best.source_path) == ("bob", ids[3], "bob-2-1.jpg")
            assert best.similarity == pytest.approx(1.0, abs=1e-5)
    assert no_repair_warning(recorded)


def test_open_missing_without_create(path: Path) -> None:
    with pytest.raises(GalleryError, match="no gallery"):
        Gallery.open(path, create=False)


def test_dim_mismatch_is_refused(path: Path) -> None:
    Gallery.open(path, dim=DIM).close()
    with pytest.raises(GalleryError, match="32-d"):
        Gallery.open(path, dim=512)
    # Without a dim, a gallery opens at whatever size it holds (gallery maintenance needs no model).
    with Gallery.open(path, create=False) as gallery:
        assert gallery.dim == DIM
    with Gallery.open(path.parent / "new") as gallery:
        assert gallery.dim == datastore.DEFAULT_DIM


def test_a_gallery_keeps_to_the_model_that_filled_it(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.bind_model("a" * 64)  # a reader records nothing
        with gallery.writer():
            gallery.bind_model("a" * 64)
            enroll(gallery, "alice", 1)
    with Gallery.open(path, dim=DIM, create=False) as gallery:
        gallery.bind_model("a" * 64)
        gallery.bind_model(None)  # a model without a fingerprint is not checked
        with pytest.raises(GalleryError, match="another model"):
            gallery.bind_model("b" * 64)
        with pytest.raises(GalleryError, match="another model"), gallery.writer():
            gallery.bind_model("b" * 64)
        assert len(gallery) == 2


def test_a_gallery_filled_before_models_were_recorded_is_not_stamped(path: Path) -> None:
    """Nor is it taken silently: a gallery an early facekit filled with another model named people wrongly, and
    check and stats said nothing. Each opened gallery says so once, not at every search."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        # Its embeddings' model is unknown: recording today's would vouch for them.
        with pytest.warns(GalleryWarning, match="does not record the model its faces were enrolled with") as told:
            with gallery.writer():
                gallery.bind_model("a" * 64)
            gallery.bind_model("b" * 64)
        assert len(told) == 1
    with contextlib.closing(sqlite3.connect(path / "gallery.sqlite")) as db:
        assert db.execute("SELECT value FROM meta WHERE key = ?", (datastore.MODEL_KEY,)).fetchall() == []
    with pytest.warns(GalleryWarning, match="does not record the model"):
        with Gallery.open(path, dim=DIM, create=False) as gallery, gallery.writer():
            gallery.bind_model("b" * 64)  # reopened, and as a writer: still any model's
            assert len(gallery) == 2


def test_a_new_person_costs_no_scan_of_every_name(path: Path) -> None:
    """The look-alike check read every stored name through five replace() calls: adding a person took time in
    proportion to the people enrolled (61 ms each at 100,000). Counted in SQLite's own steps, not timed."""
    def steps_to_add(gallery: Gallery, name: str) -> int:
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        gallery._conn.set_progress_handler(count, 1)
        try:
            gallery.add(name, vectors(7), sources(name))
        finally:
            gallery._conn.set_progress_handler(None, 1)
        return counted[0]

    with Gallery.open(path, dim=DIM) as gallery:
        with gallery.writer():
            for index in range(50):
                gallery.add(f"person {index}", vectors(index), sources(f"p{index}"))
        few = steps_to_add(gallery, "one more")
        with gallery.writer():
            for index in range(50, 2050):
                gallery.add(f"person {index}", vectors(index), sources(f"p{index}"))
        many = steps_to_add(gallery, "yet another")
    assert many < 2 * few, (few, many)


def test_a_gallery_dropped_without_close_gives_its_descriptors_back(path: Path) -> None:
    """Opened per request outside a `with`, each Gallery kept its lock file open: a thousand requests ran out of
    descriptors (and the failure was then taken for a damaged index)."""
    import gc

    Gallery.open(path, dim=DIM).close()
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts descriptors in /proc/self/fd (Linux)")
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        gallery = Gallery.open(path, create=False)
        assert len(gallery) == 0
        del gallery
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_search_ranks_identities_not_vectors(path: Path) -> None:
    """bob has many near-duplicate vectors close to the query; they must not crowd out other identities."""
    query = vectors(0)[0]
    near = query + 0.05 * vectors(1, 40)
    with Gallery.open(path, dim=DIM) as gallery, gallery.writer():
        gallery.add("bob", near, sources(*(f"bob{i}" for i in range(40))))
        gallery.add("carol", query + 0.5 * vectors(2), sources("carol"))
        gallery.add("dave", query + 0.9 * vectors(3), sources("dave"))
        gallery.add("erin", -query, sources("erin"))
        matches = gallery.search(query, k=3)[0]
        assert [m.identity for m in matches] == ["bob", "carol", "dave"]
        sims = [m.similarity for m in matches]
        assert sims == sorted(sims, reverse=True)
        assert len(gallery.search(query, k=10)[0]) == 4  # only four identities exist
        batch = gallery.search(np.stack([query, -query]), k=1)
        assert [b[0].identity for b in batch] == ["bob", "erin"]


def test_remove_and_rename(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        enroll(gallery, "bob", 2)
        enroll(gallery, "carol", 3)
        assert gallery.remove("bob") == 2
        assert gallery.search(vectors(2, 2)[0], k=5)[0][0].identity != "bob"
        assert all(m.identity != "bob" for m in gallery.search(vectors(2, 2)[0], k=5)[0])
        with pytest.raises(GalleryError, match="no identity"):
            gallery.remove("bob")
        gallery.rename("alice", "Alice Smith")
        assert gallery.search(vectors(1, 2)[0])[0][0].identity == "Alice Smith"
        # The same words for a Python caller and the command line, which prints this message as it is.
        with pytest.raises(GalleryError, match=r"already exists; remove it first, or pass merge=True \(the CLI's "
                                               r"--merge\) to merge into it"):
            gallery.rename("Alice Smith", "carol")
        gallery.rename("Alice Smith", "carol", merge=True)
        assert gallery.identities() == [("carol", 4)]
        assert gallery.check() == []
    with Gallery.open(path, dim=DIM) as gallery:
        assert gallery.search(vectors(1, 2)[1])[0][0].identity == "carol"


def test_has_source(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("alice", vectors(1), sources("a.jpg"))
        assert gallery.has_source(hashlib.sha256(b"a.jpg").hexdigest())
        assert gallery.has_source(hashlib.sha256(b"a.jpg").hexdigest().upper())
        assert not gallery.has_source(hashlib.sha256(b"b.jpg").hexdigest())
        gallery.remove("alice")
        assert not gallery.has_source(hashlib.sha256(b"a.jpg").hexdigest())


def test_check_detects_tampered_index(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
    (file,) = index_files(path)
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.warns(GalleryWarning, match="checksum"):
        gallery = Gallery.open(path, dim=DIM)  # repairs on open
    with gallery:
        assert gallery.check() == []
    with _open_quietly(path) as gallery:
        index_files(path)[0].write_bytes(b"garbage")  # tampered while open: check() reads the files again
        assert any("checksum" in p for p in gallery.check())


def _open_quietly(path: Path) -> Gallery:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Gallery.open(path, dim=DIM)


def test_deleted_index_is_detected_and_repaired_on_open(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        (file,) = index_files(path)
        file.unlink()
        assert any("missing" in p for p in gallery.check())
        gallery.rebuild()
        assert gallery.check() == []
        index_files(path)[0].unlink()
    with pytest.warns(GalleryWarning, match="missing"):
        gallery = Gallery.open(path, dim=DIM)
    with gallery:
        assert gallery.check() == []
        assert gallery.search(vectors(1, 2)[1])[0][0].identity == "alice"


def test_index_file_deleted_while_a_reader_opens_it(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer may replace the index file between the reader's look at the manifest and its read of the file:
    the reader must retry or rebuild in memory, not fail."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
    writer_lock = datastore.FileLock(path / datastore.LOCK_NAME)
    assert writer_lock.try_acquire()  # a writer is busy, so the reader may not repair files on disk
    read_checksum = datastore._crc32

    def replaced_just_now(file: Path) -> str:
        file.unlink(missing_ok=True)
        return read_checksum(file)

    monkeypatch.setattr(datastore, "_crc32", replaced_just_now)
    try:
        with Gallery.open(path, dim=DIM) as reader:
            assert reader.search(vectors(1, 2)[0])[0][0].identity == "alice"
    finally:
        writer_lock.release()
        writer_lock.close()


def test_stale_index_after_interrupted_write(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies before writing its index checkpoint leaves an index behind the database."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
    with Gallery.open(path, dim=DIM) as gallery:
        monkeypatch.setattr(Gallery, "_write_index", lambda self: None)  # "killed" before the checkpoint
        enroll(gallery, "bob", 2)
        monkeypatch.undo()
        problems = gallery._problems()
        assert any("stale" in p for p in problems)
    with pytest.warns(GalleryWarning, match="lacked 2 embeddings"):
        gallery = Gallery.open(path, dim=DIM)
    with gallery:
        assert gallery.check() == []
        assert gallery.search(vectors(2, 2)[0])[0][0].identity == "bob"


def test_check_detects_orphan_row(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        db = sqlite3.connect(path / "gallery.sqlite")
        with db:
            db.execute(
                "INSERT INTO embeddings(identity_id, source_path, sha256, box, created, vector)"
                " VALUES (999, 'x.jpg', ?, NULL, 0, ?)",
                ("0" * 64, vectors(5).tobytes()),
            )
        db.close()
        problems = gallery.check()
        assert any("identity id 999" in p for p in problems)
        assert gallery.search(vectors(5)[0])[0][0].identity == "alice"  # the orphan is never served


def test_rebuild_restores_index(path: Path) -> None:
    with Gallery.open(path, dim=DIM, index="hnsw") as gallery:
        for n in range(5):
            enroll(gallery, f"p{n}", n)
        before = [m.identity for m in gallery.search(vectors(99)[0], k=5)[0]]
        for file in index_files(path):
            file.write_bytes(b"broken")
        assert gallery.check() != []
        gallery.rebuild()
        assert gallery.check() == []
        assert [m.identity for m in gallery.search(vectors(99)[0], k=5)[0]] == before
        # A rebuild may change the kind of index, and the gallery keeps to it, "auto" included.
        gallery.rebuild("flat")
        assert (gallery.stats()["index"], gallery.stats()["index_request"]) == ("flat", "flat")
        with pytest.raises(GalleryError, match="unknown index type"):
            gallery.rebuild("annoy")
    with Gallery.open(path, create=False) as gallery:
        assert gallery.stats()["index"] == "flat" and gallery.check() == []
        gallery.rebuild("auto")
        assert gallery.stats()["index_request"] == "auto"
        assert [m.identity for m in gallery.search(vectors(99)[0], k=5)[0]] == before


def test_hnsw_removal_is_purged_from_the_index_when_the_write_ends(path: Path) -> None:
    with Gallery.open(path, dim=DIM, index="hnsw") as gallery:
        with gallery.writer():
            for n in range(10):
                enroll(gallery, f"p{n}", n, 3)
            assert gallery.stats()["index"] == "hnsw"
            gallery.remove("p0")  # HNSW cannot delete: a tombstone, filtered at query time, until the block ends
            stats = gallery.stats()
            assert (stats["tombstones"], stats["index_vectors"], stats["embeddings"]) == (3, 30, 27)
            assert all(m.identity != "p0" for m in gallery.search(vectors(0, 3), k=10)[0])
        stats = gallery.stats()
        assert (stats["tombstones"], stats["index_vectors"], stats["embeddings"]) == (0, 27, 27)
        assert gallery.search(vectors(3, 3)[2])[0][0].identity == "p3"
        assert gallery.check() == []


def stored_vectors(path: Path) -> dict[str, bytes]:
    """source path -> vector bytes of every enrolled face, read behind the gallery's back."""
    conn = sqlite3.connect(path / "gallery.sqlite")
    try:
        return dict(conn.execute("SELECT source_path, vector FROM embeddings"))
    finally:
        conn.close()


def folder_bytes(path: Path) -> bytes:
    return b"".join(file.read_bytes() for file in sorted(path.iterdir()) if file.is_file())


def traces(path: Path, stored: dict[str, bytes], *faces: str) -> list[str]:
    """Those of these faces (enroll's "identity-seed-i") whose vector, file hash or path is in a gallery file.

    Look while the gallery is open: closing the last connection deletes the write-ahead log, whatever it held."""
    data = folder_bytes(path)
    return [face for face in faces if stored[f"{face}.jpg"] in data or f"{face}.jpg".encode() in data
            or sources(face)[0]["sha256"].encode() in data]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_a_removed_face_leaves_no_trace_on_disk(path: Path, kind: str) -> None:
    """Removal is a request to forget a face: neither its vector nor its file's hash or path may stay in any file."""
    with Gallery.open(path, dim=DIM, index=kind) as gallery:
        with gallery.writer():
            for n in range(60):  # IVF needs 100 vectors
                enroll(gallery, f"person{n:02d}", n, 2)
        assert gallery.stats()["index"] == kind
        stored = stored_vectors(path)
        gallery.remove("person05")
        gallery.remove_photos([sources("person04-4-0")[0]["sha256"]])
        assert traces(path, stored, "person05-5-0", "person05-5-1", "person04-4-0") == []
        assert b"person05" not in folder_bytes(path)
        # The rest of person04 stays, and is found where it was written.
        assert traces(path, stored, "person04-4-1") == ["person04-4-1"]


def test_remove_photos_by_path_or_sha256_in_any_number(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1, 3)
        enroll(gallery, "bob", 2, 1)
        unknown = [f"/not/enrolled/{n}.jpg" for n in range(200_000)]  # more than SQLite binds in one statement
        sha = sources("alice-1-1")[0]["sha256"].upper()  # a digest in either case; a path exactly as enrolled
        removed = gallery.remove_photos([*unknown, "alice-1-0.jpg", sha, "BOB-2-0.JPG", "alice-1-0.jpg"])
        assert [(face["identity"], face["path"]) for face in removed] == [("alice", "alice-1-0.jpg"),
                                                                           ("alice", "alice-1-1.jpg")]
        assert gallery.identities() == [("alice", 1), ("bob", 1)]
        assert gallery.remove_photos(["nothing.jpg"]) == []
        assert gallery.check() == []


def test_remove_photos_takes_one_photo_as_a_string(path: Path) -> None:
    """Not as the list of its characters, which would remove nothing, or faces enrolled from a file named "a"."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1, 1)
        enroll(gallery, "bob", 2, 1)
        assert [face["identity"] for face in gallery.remove_photos("bob-2-0.jpg")] == ["bob"]
        assert [face["identity"] for face in gallery.remove_photos(Path("alice-1-0.jpg"))] == ["alice"]
        assert gallery.identities() == []  # a person left without faces goes too
        assert gallery.check() == []


def test_remove_photos_knows_a_path_by_any_spelling_from_the_current_folder(
        tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """enroll and add_face record a photo by its absolute path: given relative, or not normalised, it is the same
    photo; a gallery enrolled before holds a path relative, and absolute finds it too."""
    monkeypatch.chdir(tmp_path)
    ann = [str(tmp_path / "people" / "ann" / name) for name in ("1.jpg", "2.jpg")]
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("ann", vectors(1, 2), [{**source, "path": name} for source, name in zip(sources("a1", "a2"), ann)])
        gallery.add("bob", vectors(2), [{**sources("b1")[0], "path": "people/bob/1.jpg"}])  # enrolled before
        removed = gallery.remove_photos(["people/ann/1.jpg", "./people/ann/1.jpg"])
        assert [(face["path"], face["named_by"]) for face in removed] == [
            (ann[0], ["people/ann/1.jpg", "./people/ann/1.jpg"])]
        assert [face["path"] for face in gallery.remove_photos("./people/ann/../ann/2.jpg")] == [ann[1]]
        assert [face["path"] for face in gallery.remove_photos(tmp_path / "people/bob/1.jpg")] == ["people/bob/1.jpg"]
        assert gallery.identities() == [] and gallery.check() == []


def test_remove_photos_leaves_another_photo_and_takes_a_digest_only_as_given(
        tmp_path: Path, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path names only the photo it spells from here, relative or not; a digest in capitals is the digest, not a
    path spelt in lower case (another photo, enrolled under a name that is the digest's)."""
    monkeypatch.chdir(tmp_path)
    digest = sources("ann")[0]["sha256"]
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("ann", vectors(1), [{**sources("ann")[0], "path": str(tmp_path / "people" / "ann" / "1.jpg")}])
        gallery.add("bob", vectors(2), [{**sources("bob")[0], "path": str(tmp_path / "people" / "bob" / "1.jpg")}])
        gallery.add("cy", vectors(3), [{**sources("cy")[0], "path": digest}])
        assert gallery.remove_photos(["people/ann/2.jpg", "ann/1.jpg", "people/bob", "../people/ann/1.jpg"]) == []
        assert [face["identity"] for face in gallery.remove_photos(digest.upper())] == ["ann"]
        assert [face["identity"] for face in gallery.remove_photos("people/bob/1.jpg")] == ["bob"]
        assert gallery.identities() == [("cy", 1)]


def test_remove_photos_takes_the_start_of_a_digest_that_names_one_photo_only(path: Path) -> None:
    """`gallery photos` shows 12 digits of each sha256: they remove that photo, but not two photos that share them."""
    twins = ["0123456789ab" + "c" * 52, "0123456789ab" + "d" * 52]
    with Gallery.open(path, dim=DIM) as gallery:
        ann = [{**source, "sha256": sha} for source, sha in zip(sources("a1", "a2"), twins)]
        gallery.add("ann", vectors(1, 2), ann)
        gallery.add("bob", vectors(3), sources("b1"))
        bob_sha = gallery.photos("bob")[0]["sha256"]
        with pytest.raises(GalleryError, match="^0123456789AB is the start of the sha256 of several photos"):
            gallery.remove_photos("0123456789AB")
        assert len(gallery) == 3
        assert gallery.remove_photos(bob_sha[:11]) == []  # shorter than what is shown: a path, and none is enrolled
        assert [face["named_by"] for face in gallery.remove_photos(bob_sha[:12])] == [[bob_sha[:12]]]
        assert [face["sha256"] for face in gallery.remove_photos("0123456789abd")] == [twins[1]]
        assert gallery.identities() == [("ann", 1)] and gallery.check() == []


def test_move_photos_gives_faces_a_new_path_and_person_in_one_transaction_and_leaves_the_index(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What enroll --sync does with photos renamed or moved to another person's folder: the faces keep their ids and
    vectors, a reader that loaded the index before finds them under their new person, the index files are not
    rewritten, a person left without faces goes, and a move interrupted before its commit changes nothing."""
    a1, a2, b1, x, y = sources("a1", "a2", "b1", "x", "y")
    with Gallery.open(path, dim=DIM) as writer, Gallery.open(path, dim=DIM) as reader:
        ids = writer.add("alice", vectors(1, 2), [a1, a2]) + writer.add("bob", vectors(2), [b1])
        ids += writer.add("cy", vectors(3, 2), [x, y])
        assert reader.search(vectors(2)[0])[0][0].identity == "bob"
        before, files = writer.photos(), index_files(path)

        def interrupted(self: Gallery, conn: sqlite3.Connection) -> int:
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(Gallery, "_bump_generation", interrupted)
            with pytest.raises(KeyboardInterrupt):
                writer.move_photos([(b1["sha256"], "b1.jpg", "/people/alice/b1.jpg", "alice")])
        assert writer.photos() == before and writer.identities() == [("alice", 2), ("bob", 1), ("cy", 2)]

        moved = writer.move_photos([
            (b1["sha256"], "b1.jpg", "/people/alice/b1.jpg", "alice"),  # bob's only photo: bob goes
            (a2["sha256"].upper(), "a2.jpg", "/people/dee/a2.jpg", " dee "),  # a person not yet enrolled
            (x["sha256"], "x.jpg", "y.jpg", "cy"), (y["sha256"], "y.jpg", "x.jpg", "cy"),  # two names swapped
            (a1["sha256"], "b1.jpg", "/people/dee/a1.jpg", "dee"),  # no face of that content at that path
        ])
        assert [(face["old_identity"], face["old_path"], face["identity"], face["path"]) for face in moved] == [
            ("bob", "b1.jpg", "alice", "/people/alice/b1.jpg"), ("alice", "a2.jpg", "dee", "/people/dee/a2.jpg"),
            ("cy", "x.jpg", "cy", "y.jpg"), ("cy", "y.jpg", "cy", "x.jpg")]
        after = writer.photos()
        assert [(photo["identity"], photo["path"], photo["sha256"]) for photo in after] == [
            ("alice", "a1.jpg", a1["sha256"]), ("alice", "/people/alice/b1.jpg", b1["sha256"]),
            ("cy", "y.jpg", x["sha256"]), ("cy", "x.jpg", y["sha256"]), ("dee", "/people/dee/a2.jpg", a2["sha256"])]
        assert sorted(photo["created"] for photo in after) == sorted(photo["created"] for photo in before)
        best = reader.search(vectors(2)[0])[0][0]
        assert (best.identity, best.embedding_id, best.source_path) == ("alice", ids[2], "/people/alice/b1.jpg")
        assert reader.search(vectors(1, 2)[1])[0][0].identity == "dee"
        assert index_files(path) == files and writer.check() == []
        assert writer.move_photos([]) == []
        with pytest.raises(GalleryError, match="contains a path separator"):
            writer.move_photos([(a1["sha256"], "a1.jpg", "/people/a1.jpg", "a/b")])
        assert writer.photos() == after


def test_move_photos_in_a_read_only_gallery_is_refused_and_changes_nothing(filled: Path) -> None:
    move = ("import sys; from facekit.datastore import Gallery, GalleryError\n"
            "with Gallery.open(sys.argv[1], create=False) as gallery:\n"
            "    try:\n"
            "        gallery.move_photos([(sys.argv[2], 'bob-2-0.jpg', '/people/alice/b.jpg', 'alice')])\n"
            "    except GalleryError as exc:\n"
            "        print(exc)\n")
    with read_only(filled):
        before = listing(filled)
        command = [sys.executable, "-c", move, str(filled), sources("bob-2-0")[0]["sha256"]]
        result = subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=120)
        assert listing(filled) == before
    assert result.stdout == f"gallery {filled} is read-only: no write permission on {filled}\n", result.stderr
    with Gallery.open(filled, create=False) as gallery:
        assert gallery.identities() == [("alice", 2), ("bob", 2)]


def test_a_reader_with_the_old_index_never_returns_a_removed_face(path: Path) -> None:
    """Another Gallery (or process) loaded the index before a removal. Searched while the writer purges, and
    after the old index files are gone, it answers from the live faces only."""
    with Gallery.open(path, dim=DIM) as writer, Gallery.open(path, dim=DIM) as reader:
        with writer.writer():
            for n in range(8):
                enroll(writer, f"p{n}", n, 2)
        assert reader.search(vectors(3, 2)[0])[0][0].identity == "p3"  # the reader holds this index now
        old_files = index_files(path)
        answers = []

        def look() -> None:
            answers.append({m.identity for m in reader.search(vectors(3, 2), k=8)[0]})

        def watched(step: Callable) -> Callable:  # the reader searches before and after a step of the purge
            def run(*args: object) -> None:
                look()
                step(*args)
                look()
            return run

        writer._checkpoint = watched(writer._checkpoint)  # committed, not yet purged; then purged
        writer._remove_stray_files = watched(writer._remove_stray_files)  # new index recorded, old files kept
        writer.remove("p3")
        assert len(answers) == 4
        assert all(answer == {f"p{n}" for n in range(8)} - {"p3"} for answer in answers), answers
        assert not set(old_files) & set(index_files(path))
        assert reader.stats()["tombstones"] == 0
        assert reader.check() == []


def test_an_interrupted_removal_is_purged_when_the_gallery_is_next_opened(path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer killed between the removal's commit and the index rewrite leaves the removed vectors in the index
    files: check() says so, and the next open that can take the writer lock purges them (with a warning)."""
    with Gallery.open(path, dim=DIM) as gallery:
        for n in range(3):
            enroll(gallery, f"p{n}", n)
        stored = stored_vectors(path)
        monkeypatch.setattr(Gallery, "_checkpoint", lambda self: None)  # "killed" right after the commit
        gallery.remove("p1")
        monkeypatch.undo()
        assert traces(path, stored, "p1-1-0", "p1-1-1") == ["p1-1-0", "p1-1-1"]
    writer_lock = datastore.FileLock(path / datastore.LOCK_NAME)
    assert writer_lock.try_acquire()  # somebody is writing: opening must not touch the files
    try:
        reader = Gallery.open(path, dim=DIM)
    finally:
        writer_lock.release()
        writer_lock.close()
    with reader:
        assert all(m.identity != "p1" for m in reader.search(vectors(1, 2)[0], k=3)[0])
        assert any("2 removed embeddings" in problem for problem in reader.check())
    with pytest.warns(GalleryWarning, match="held 2 removed embeddings"), Gallery.open(path, dim=DIM) as gallery:
        assert traces(path, stored, "p1-1-0", "p1-1-1") == []
        assert gallery.check() == []
        assert {m.identity for m in gallery.search(vectors(1, 2)[0], k=3)[0]} == {"p0", "p2"}
        with gallery.writer():
            gallery.remove("p2")
            assert gallery.check() == []  # the caller's own unfinished removal is purged first, not reported
        assert gallery.identities() == [("p0", 2)]


def test_a_removal_that_a_reader_blocks_warns_and_the_next_write_finishes_it(path: Path) -> None:
    """Emptying the write-ahead log waits for readers' snapshots. One kept open past the lock timeout leaves the
    removed rows' old pages in the database files: the removal says so, and the next write clears them."""
    with Gallery.open(path, dim=DIM, lock_timeout=0.2) as gallery:
        for n in range(3):
            enroll(gallery, f"p{n}", n)
        stored = stored_vectors(path)
        reader = sqlite3.connect(path / "gallery.sqlite", isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM embeddings").fetchone()  # a snapshot from before the removal
            with pytest.warns(GalleryWarning, match="snapshot"):
                gallery.remove("p1")
            assert traces(path, stored, "p1-1-0", "p1-1-1") != []
            reader.execute("COMMIT")
            enroll(gallery, "p9", 9)
            assert traces(path, stored, "p1-1-0", "p1-1-1") == []
        finally:
            reader.close()


class _LogCannotBeEmptied:
    """A gallery's connection whose write-ahead log cannot be copied into the database (a full disk)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)


def test_a_log_that_cannot_be_emptied_stops_neither_a_removal_nor_reading(path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The removal is committed and purged from the index by then: it warns, where a raw sqlite3 error came out."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        enroll(gallery, "bob", 2)
    connect = sqlite3.connect
    monkeypatch.setattr(datastore.sqlite3, "connect", lambda *args, **kw: _LogCannotBeEmptied(connect(*args, **kw)))
    with Gallery.open(path, dim=DIM) as gallery:  # an open that takes the writer lock tries too, without a word
        with pytest.warns(GalleryWarning, match=r"could not be emptied \(database or disk is full\)"):
            gallery.remove("bob")
        enroll(gallery, "carol", 3)
        assert [name for name, _ in gallery.identities()] == ["alice", "carol"]
        assert gallery.search(vectors(2, 2)[0])[0][0].identity != "bob"
        assert gallery.stats()["tombstones"] == 0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removal_works_with_every_index(path: Path, kind: str) -> None:
    with Gallery.open(path, dim=DIM, index=kind) as gallery:
        with gallery.writer():
            for n in range(60):
                enroll(gallery, f"p{n}", n, 2)
        assert gallery.stats()["index"] == kind
        gallery.remove("p7")
        assert all(m.identity != "p7" for m in gallery.search(vectors(7, 2), k=5)[0])
        assert gallery.search(vectors(8, 2)[1])[0][0].identity == "p8"


def test_index_auto_choice(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_index("auto", 100).kind == "flat"
    assert choose_index("auto", datastore.AUTO_FLAT_LIMIT).kind == datastore.AUTO_APPROXIMATE
    assert choose_index("ivf", 10).kind == "flat"  # too little to train on yet
    assert choose_index("ivf", 1_000_000).nlist == 1024
    monkeypatch.setattr(datastore, "AUTO_FLAT_LIMIT", 50)
    with Gallery.open(path, dim=DIM) as gallery:
        with gallery.writer():
            for n in range(20):
                enroll(gallery, f"p{n}", n, 2)
        assert gallery.stats()["index"] == "flat"
        with gallery.writer():
            for n in range(20, 60):
                enroll(gallery, f"p{n}", n, 2)
        assert gallery.stats()["index"] == datastore.AUTO_APPROXIMATE  # switched at the checkpoint
        assert gallery.search(vectors(55, 2)[0])[0][0].identity == "p55"
        assert gallery.check() == []


def test_sharded_equals_unsharded(tmp_path: Path) -> None:
    results = []
    for shards in (1, 3):
        with Gallery.open(tmp_path / f"s{shards}", dim=DIM, index="flat", shards=shards) as gallery:
            with gallery.writer():
                for n in range(40):
                    enroll(gallery, f"p{n}", n, 3)
            gallery.remove("p5")
            assert gallery.stats()["shards"] == shards
            assert len(index_files(tmp_path / f"s{shards}")) == shards
            assert gallery.check() == []
            results.append(gallery.search(vectors(1000, 20), k=7))
    assert len(results[0]) == 20
    for unsharded, sharded in zip(*results, strict=True):
        assert [(m.identity, m.embedding_id) for m in unsharded] == [(m.identity, m.embedding_id) for m in sharded]
        np.testing.assert_allclose([m.similarity for m in unsharded], [m.similarity for m in sharded], atol=1e-6)


def test_changing_shards_rebuilds(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1, 5)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        gallery = Gallery.open(path, dim=DIM, shards=2)
    assert no_repair_warning(recorded)  # asked for, not a repair
    with gallery:
        assert gallery.stats()["shards"] == 2
        assert gallery.check() == []
        assert gallery.search(vectors(1, 5)[4])[0][0].identity == "alice"


def test_owner_only_permissions(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}  # open: -wal, -shm exist
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert set(modes) >= {"gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm", "lock"}
    assert any(name.startswith("index-") for name in modes)
    assert all(mode == 0o600 for mode in modes.values()), modes
    # A folder that was already there (shared, say) keeps its own mode; only the files are private.
    existing = path.parent / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    Gallery.open(existing, dim=DIM).close()
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755
    assert stat.S_IMODE((existing / "gallery.sqlite").stat().st_mode) == 0o600


def test_a_gallery_in_a_folder_whose_name_is_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Latin-1 folder name, which Python holds with a lone surrogate: faiss, given it as a file name, failed with a
    TypeError from SWIG on the first open; the index files are now read and written through Python's own files."""
    path = tmp_path / os.fsdecode(b"caf\xe9") / "gallery"
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        enroll(gallery, "bob", 2)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, create=False) as gallery:
            assert gallery.search(vectors(2, 2)[1])[0][0].identity == "bob"
            assert gallery.remove("bob") == 2
            assert gallery.identities() == [("alice", 2)] and gallery.check() == []
    assert no_repair_warning(recorded)  # the index files were read, not rebuilt from the database
    assert len(index_files(path)) == 1
    monkeypatch.setattr(datastore, "_unwritable", lambda root: "a test says so")  # SQLite reads it by URI then
    with Gallery.open(path, create=False) as reader:
        assert reader.read_only and reader.search(vectors(1, 2)[0])[0][0].identity == "alice"


def test_a_full_disk_stops_writes_with_their_own_error_and_never_reads(path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        enroll(gallery, "bob", 2)
    for file in index_files(path):
        file.unlink()  # the next open must rebuild it, and cannot save it

    def disk_full(*_args: object) -> None:
        raise RuntimeError("Error: 'ret == (size)' failed: write error in index.faiss: No space left on device")

    monkeypatch.setattr(datastore.faiss, "write_index", disk_full)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        gallery = Gallery.open(path, create=False)
    with gallery:
        assert gallery.search(vectors(2)[0])[0][0].identity == "bob"
        assert gallery.identities() == [("alice", 2), ("bob", 2)]
        # The write's own error comes out, not the failed index save that followed it.
        with pytest.warns(GalleryWarning, match="index not saved"), pytest.raises(ValueError, match="the body's own"), \
                gallery.writer():
            enroll(gallery, "carol", 3)
            raise ValueError("the body's own error")
        with pytest.raises(GalleryError, match="cannot write .*No space left on device"):
            enroll(gallery, "dave", 4)
    told = " | ".join(str(w.message) for w in recorded)
    assert "is missing; rebuilt it" in told and "kept in memory only" in told
    assert not list(path.glob("*.tmp"))
    monkeypatch.undo()
    # Committed rows are all there once the disk has room; the index that could not be saved is rebuilt.
    with pytest.warns(GalleryWarning, match="missing"), Gallery.open(path, create=False) as gallery:
        assert [name for name, _ in gallery.identities()] == ["alice", "bob", "carol", "dave"]
        assert gallery.check() == []


def test_an_index_not_saved_after_a_failed_write_is_warned_in_one_line(path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A GalleryWarning, which the CLI prints as one `warning:` line: it was logged, and Python's fallback printed
    it bare, without the prefix a script greps for (and first with a traceback)."""
    def disk_full(*_args: object) -> None:
        raise RuntimeError("Error: 'ret == (size)' failed: write error in index.faiss: No space left on device")

    with Gallery.open(path, dim=DIM) as gallery:
        monkeypatch.setattr(datastore.faiss, "write_index", disk_full)
        with pytest.warns(GalleryWarning) as warned, pytest.raises(ValueError, match="the body's own"):
            with gallery.writer():
                enroll(gallery, "alice", 1)
                raise ValueError("the body's own error")
    (warning,) = warned
    assert re.fullmatch(
        f"gallery {re.escape(str(path))}: index not saved after a failed write: cannot write .*/index-00000002-0"
        r"\.faiss: .*No space left on device", str(warning.message))
    # Warnings made errors (-W error, a test suite's filterwarnings) would put the notice in the body's error's place.
    with Gallery.open(path, dim=DIM) as gallery, warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setattr(datastore.faiss, "write_index", disk_full)
        with pytest.raises(ValueError, match="the body's own"), gallery.writer():
            enroll(gallery, "bob", 2)
            raise ValueError("the body's own error")


@pytest.mark.parametrize(
    "name", ["", "   ", ".", "..", "a/b", "a\\b", "tab\there", "new\nline", "bell\x07", "x" * 129, "rtl\u202eevil", 7,
             "Ali\u200bce", "word\u2060joiner", "\ufeffbom"]  # Ali\u200bce shows as Alice
)
def test_invalid_identity_names(path: Path, name: object) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        with pytest.raises(GalleryError, match="identity name"):  # the name's fault, not the vectors' or sources'
            gallery.add(name, vectors(1), sources("a"))
        assert len(gallery) == 0


def test_a_name_that_looks_like_another_by_its_marks_alone_is_refused(path: Path) -> None:
    # The directional marks and joiners right-to-left and Indic names hold show nothing by themselves:
    # "Alice\u200e" was a second Alice, and "unknown\u200e" passed the reserved name.
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("Alice", vectors(1), sources("a"))
        for name in ("Ali\u200ece", "Alice\u200f", "\u200dAlice"):
            with pytest.raises(GalleryError, match=r"looks the same as 'Alice', enrolled already"):
                gallery.add(name, vectors(2), sources("b"))
        for name in ("unknown\u200e", "Unknown\u200c"):
            with pytest.raises(GalleryError, match="is reserved"):
                gallery.add(name, vectors(2), sources("b"))
        with pytest.raises(GalleryError, match="invisible formatting character"):  # a soft hyphen
            gallery.add("Ali\u00adce", vectors(2), sources("b"))
        gallery.add("Bob", vectors(3), sources("c"))
        with pytest.raises(GalleryError, match=r"looks the same as 'Alice'"):
            gallery.rename("Bob", "Alice\u200e")
        gallery.rename("Alice", "Alice\u200e")  # a mark added to a name is no second person
        assert gallery.identities() == [("Alice\u200e", 1), ("Bob", 1)]


def test_identity_names_are_canonical(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        gallery.add("  Jos\u0065\u0301 ", vectors(1), sources("a"))  # decomposed é, padded
        gallery.add("Jos\u00e9", vectors(2), sources("b"))
        assert gallery.identities() == [("Jos\u00e9", 2)]
        # A zero-width non-joiner, as Persian writes; a right-to-left mark, as Hebrew and Arabic text holds.
        for index, name in enumerate(("\u0645\u200c\u062d", "\u05d3\u05df 2\u200f", "\u0639\u0644\u064a\u061c")):
            gallery.add(name, vectors(3 + index), sources(f"c{index}"))
            assert (name, 1) in gallery.identities()


def test_bad_inputs(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        bad = [  # each refused for its own fault, named
            (np.ones(DIM + 1), sources("a"), r"must have shape \(n, 32\)"),  # wrong dim
            (np.full((1, DIM), np.nan), sources("a"), "NaN or infinite"),
            (np.zeros((1, DIM)), sources("a"), "zero vector"),
            (np.ones((2, DIM)), sources("a"), "one source dict per embedding"),  # one source for two vectors
            (np.ones((0, DIM)), [], "no embeddings given"),
            (np.ones(DIM), [{"path": "a.jpg", "sha256": "not a hash", "box": [0, 0, 1, 1]}], "'sha256' must be 64 hex"),
            (np.ones(DIM), [{"path": "a.jpg", "sha256": "0" * 64, "box": [0, 0, 1]}], r"'box' must be \[x, y, w, h\]"),
            ("text", sources("a"), "must be a numeric array"),
        ]
        for embeddings, srcs, message in bad:
            with pytest.raises(GalleryError, match=message):
                gallery.add("alice", embeddings, srcs)
        with pytest.raises(GalleryError, match=r"must have shape \(n, 32\)"):
            gallery.search(np.ones(DIM + 1))
        with pytest.raises(GalleryError, match="NaN or infinite"):
            gallery.search(np.full(DIM, np.inf))
        with pytest.raises(GalleryError, match="k must be a positive integer"):
            gallery.search(np.ones(DIM), k=0)
        assert len(gallery) == 0
        # Not unit length: accepted and normalised.
        (embedding_id,) = gallery.add("alice", 7 * vectors(1), sources("a"))
        best = gallery.search(3 * vectors(1))[0][0]
        assert (best.embedding_id, best.similarity) == (embedding_id, pytest.approx(1.0, abs=1e-5))
    with pytest.raises(GalleryError, match="index type"):
        Gallery.open(path, dim=DIM, index="annoy")


def test_empty_gallery_search(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        assert gallery.search(vectors(1, 2)) == [[], []]
        assert gallery.identities() == []
        assert gallery.check() == []


def test_writer_lock_times_out_with_clear_error(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as first, Gallery.open(path, dim=DIM, lock_timeout=0.2) as second:
        with first.writer():
            with pytest.raises(GalleryError, match="busy"):
                enroll(second, "bob", 2)
        enroll(second, "bob", 2)
        assert first.search(vectors(2, 2)[0])[0][0].identity == "bob"  # sees the other object's write


def test_stats(path: Path) -> None:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1, 3)
        stats = gallery.stats()
    assert stats["identities"] == 1 and stats["embeddings"] == 3 and stats["dim"] == DIM
    assert stats["index"] == "flat" and stats["tombstones"] == 0 and stats["bytes_on_disk"] > 0


def test_default_gallery_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEKIT_GALLERY", raising=False)
    assert default_gallery_path() == tmp_path / "galleries" / "default"
    monkeypatch.setenv("FACEKIT_GALLERY", "/somewhere/else")
    assert default_gallery_path() == Path("/somewhere/else")
    assert default_gallery_path("cli/path") == Path("cli/path")
    with pytest.raises(GalleryError, match="empty"):
        default_gallery_path("")  # --gallery "$UNSET": not silently the default gallery


# --- several processes creating one gallery ----------------------------------------------------------------

# Opens and adds to gallery ROUND under BASE at the same instant as the other workers (they spin to a shared clock
# time: a file or pipe to wait on wakes them too far apart), and prints what went wrong, if anything.
CREATOR = """
import hashlib, sys, time
import numpy as np
from facekit.datastore import Gallery

base, worker, rounds, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for number in range(rounds):
    go = start + 0.25 * number
    time.sleep(max(0.0, go - time.time() - 0.002))
    while time.time() < go:
        pass
    try:
        with Gallery.open(f"{base}/round-{number}/gallery", dim=32) as gallery:
            gallery.add(f"worker {worker}", np.ones((1, 32), np.float32),
                        [{"path": f"{worker}.jpg", "sha256": hashlib.sha256(bytes([worker])).hexdigest(), "box": None}])
    except Exception as exc:
        print(f"round {number}: {type(exc).__name__}: {exc}", flush=True)
"""


def test_processes_creating_one_new_gallery_at_once_all_succeed(tmp_path: Path) -> None:
    """Three processes create the same new gallery (and its parent folder) at once, 16 times over. Before, 20 of the
    48 opens failed with FileExistsError from mkdir; with only that fixed, 6 to 9 failed with "database is locked"
    from switching the new file to WAL mode, which SQLite refuses at once rather than wait for the other process."""
    workers, rounds = 3, 16
    start = time.time() + 2.0  # time for the interpreters to start and import faiss
    children = [subprocess.Popen([sys.executable, "-c", CREATOR, str(tmp_path), str(worker), str(rounds), str(start)],
                                 stdout=subprocess.PIPE, text=True) for worker in range(workers)]
    failures = [line for child in children for line in child.communicate(timeout=120)[0].splitlines()]
    assert failures == []
    for number in range(rounds):
        with Gallery.open(tmp_path / f"round-{number}" / "gallery", create=False) as gallery:
            assert len(gallery) == workers and gallery.check() == []
        assert stat.S_IMODE((tmp_path / f"round-{number}" / "gallery").stat().st_mode) == 0o700


# --- a gallery this process may only read ------------------------------------------------------------------

# Runs the commands given on stdin, one a line, against the gallery at argv[1] and answers each with a line of JSON.
READER = """
import json, sys
import numpy as np
from facekit.datastore import Gallery, GalleryError

def attempt(action):
    try:
        action()
    except GalleryError as exc:
        return str(exc)
    return "written"

def query(seed):
    row = np.random.default_rng(seed).standard_normal(32)
    return row / np.linalg.norm(row)

def answer(command, gallery):
    if command == "report":
        try:
            problems = gallery.check()
        except GalleryError as exc:
            problems = str(exc)
        return {"read_only": gallery.read_only, "identities": gallery.identities(), "photos": len(gallery.photos()),
                "faces": gallery.stats()["embeddings"], "problems": problems}
    if command.startswith("search "):
        found = gallery.search(query(int(command.split()[1])))[0]
        return found[0].identity if found else None
    if command == "writes":
        face = [{"path": "x.jpg", "sha256": "0" * 64, "box": None}]
        return [attempt(lambda: gallery.add("x", query(0), face)), attempt(lambda: gallery.rename("x", "y")),
                attempt(lambda: gallery.remove("y")), attempt(gallery.rebuild),
                attempt(lambda: Gallery.open(sys.argv[1], index="hnsw").close())]
    if command == "locking":  # two gallery objects: the second waits for the first's lock
        with Gallery.open(sys.argv[1], lock_timeout=0.2) as other, gallery.writer():
            return attempt(lambda: other.add("x", query(0), [{"path": "x.jpg", "sha256": "0" * 64, "box": None}]))
    raise ValueError(command)

try:
    gallery = Gallery.open(sys.argv[1], create=False)
except GalleryError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    sys.exit()
with gallery:
    for line in sys.stdin:
        print(json.dumps(answer(line.strip(), gallery)), flush=True)
"""


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from facekit.datastore import Gallery

Gallery._checkpoint = lambda self: os.kill(os.getpid(), signal.SIGKILL)
identity, seed = sys.argv[2], int(sys.argv[3])
with Gallery.open(sys.argv[1]) as gallery:
    gallery.add(identity, np.random.default_rng(seed).standard_normal((2, 32)),
                [{"path": f"{identity}-{n}.jpg", "sha256": str(n) * 64, "box": None} for n in range(2)])
"""


def read(path: Path, *commands: str, run_as: Callable[[list[str]], list[str]] = unprivileged) -> list:
    result = subprocess.run(run_as([sys.executable, "-c", READER, str(path)]), input="\n".join(commands) + "\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The gallery folder and its files made read-only for their owner."""
    for file in path.iterdir():
        file.chmod(0o400)
    path.chmod(0o500)
    try:
        yield
    finally:
        path.chmod(0o700)
        for file in path.iterdir():
            file.chmod(0o600)


def listing(path: Path) -> dict[str, tuple[int, int, int]]:
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns, stat.S_IMODE(f.stat().st_mode)) for f in path.iterdir()}


def killed_writer(path: Path, identity: str, seed: int) -> None:
    """A writer SIGKILLed after committing `identity` and before its index checkpoint: -wal holds the new rows, and
    -wal and -shm are left behind with nobody connected."""
    command = [sys.executable, "-c", KILLED_WRITER, str(path), identity, str(seed)]
    assert subprocess.run(command).returncode == -signal.SIGKILL
    assert (path / "gallery.sqlite-wal").stat().st_size > 0 and (path / "gallery.sqlite-shm").exists()


@pytest.fixture
def filled(path: Path) -> Path:
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        enroll(gallery, "bob", 2)
    return path


@pytest.mark.parametrize("state", ["closed", "no lock file", "writer killed"])
def test_a_read_only_gallery_is_searched_listed_and_checked_and_never_written(filled: Path, state: str) -> None:
    """A folder and files this process may only read (another user's gallery): reading works, each write is one
    line saying why it cannot be, and nothing in the folder is made or changed. It failed with "attempt to write
    a readonly database" (SQLite could make no -wal file there), or with "Permission denied: .../lock"."""
    path, refused = filled, f"gallery {filled} is read-only: no write permission on {filled}"
    if state == "no lock file":
        (path / datastore.LOCK_NAME).unlink()
    if state == "writer killed":
        killed_writer(path, "carol", 3)
    people = ["alice", "bob"] + (["carol"] if state == "writer killed" else [])
    with read_only(path):
        before = listing(path)
        report, best, writes = read(path, "report", "search 3" if people[-1] == "carol" else "search 2", "writes")
        assert listing(path) == before
    assert report["read_only"] and report["identities"] == [[name, 2] for name in people]
    assert report["faces"] == report["photos"] == 2 * len(people) and best == people[-1]
    # The index the killed writer did not save is caught up in memory only; check() reports it as it is on disk.
    assert report["problems"] == ([] if state != "writer killed" else
                                  ["index is stale: 2 embeddings were added after index generation 3"])
    assert writes == [refused] * 5
    # The owner again: the killed writer's rows are all there, and the index is repaired on disk now.
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, create=False) as gallery:
            assert len(gallery) == 2 * len(people) and gallery.check() == []
    assert no_repair_warning(recorded) == (state != "writer killed")


def test_the_command_line_reads_a_read_only_gallery_and_refuses_to_change_it(filled: Path) -> None:
    def facekit(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "facekit.cli", "gallery", *args, "--gallery", str(filled)]
        return subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=120)

    with read_only(filled):
        assert facekit("list").stdout == "alice\nbob\n"
        assert [line.split()[0] for line in facekit("photos", "bob").stdout.splitlines()] == ["bob", "bob"]
        assert '"embeddings": 4' in facekit("stats", "--json").stdout
        assert facekit("check").stdout == "ok: 4 faces, index and database agree\n"
        removal = facekit("remove", "bob")
        assert removal.returncode == 2 and removal.stderr == f"error: gallery {filled} is read-only: no write " \
                                                             f"permission on {filled}\n"


def test_a_log_that_cannot_be_read_without_its_shm_file_is_refused_not_skipped(filled: Path) -> None:
    """A -wal with rows in it and no -shm in a folder where SQLite cannot make one: reading gallery.sqlite alone
    would silently leave out the rows in the log, so opening says why it cannot read the gallery."""
    killed_writer(filled, "carol", 3)
    (filled / "gallery.sqlite-shm").unlink()
    with read_only(filled):
        (answer,) = read(filled, "report")
    assert answer["error"].startswith(f"cannot read gallery {filled}: gallery.sqlite-wal holds changes that SQLite "
                                      "reads only through gallery.sqlite-shm, which is missing and cannot be made")
    with pytest.warns(GalleryWarning, match="lacked 2"), Gallery.open(filled, create=False) as gallery:
        assert [name for name, _ in gallery.identities()] == ["alice", "bob", "carol"]


def test_a_read_only_reader_sees_what_the_owner_writes_meanwhile(filled: Path) -> None:
    """The reader first reads gallery.sqlite as immutable (there is no log), which SQLite would trust for ever:
    a write by the owner (root here, who ignores the modes) must reach it all the same, whole."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test writes, as the owner, files it has made read-only for the reader")
    with read_only(filled):
        reader = subprocess.Popen(unprivileged([sys.executable, "-c", READER, str(filled)]), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

        def ask(command: str) -> object:
            reader.stdin.write(command + "\n")
            reader.stdin.flush()
            return json.loads(reader.stdout.readline())

        try:
            assert ask("search 2") == "bob"
            with Gallery.open(filled, create=False) as owner:  # opened, written and closed: the log is gone again
                enroll(owner, "carol", 3)
            assert ask("search 3") == "carol"
            with Gallery.open(filled, create=False) as owner:
                with owner.writer():  # committed, in the log, not yet in gallery.sqlite
                    enroll(owner, "dave", 4)
                    assert ask("search 4") == "dave"
                owner.remove("alice")
                assert ask("search 1") != "alice"
                report = ask("report")
            assert report["identities"] == [["bob", 2], ["carol", 2], ["dave", 2]] and report["problems"] == []
        finally:
            reader.stdin.close()
            assert reader.wait(timeout=60) == 0


def test_an_immutable_reader_keeps_writers_out_while_it_reads(filled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite takes no locks for a connection opened immutable, so the gallery takes a shared flock for it."""
    monkeypatch.setattr(datastore, "_unwritable", lambda root: "a test says so")
    writer_lock = datastore.FileLock(filled / datastore.LOCK_NAME)
    with Gallery.open(filled, create=False) as reader:
        assert reader.read_only
        with reader._transaction():
            assert not writer_lock.try_acquire()
        assert writer_lock.try_acquire()
        writer_lock.release()
    writer_lock.close()


def test_a_lock_file_this_process_may_only_read_still_locks(filled: Path) -> None:
    """flock needs no write access: with the folder and database writable, a read-only lock file (it was
    "Permission denied") leaves the gallery fully usable, writers still excluding each other."""
    (filled / datastore.LOCK_NAME).chmod(0o400)
    try:
        report, busy, writes = read(filled, "report", "locking", "writes")
    finally:
        (filled / datastore.LOCK_NAME).chmod(0o600)
    assert not report["read_only"] and report["problems"] == []
    assert busy.startswith(f"gallery {filled} is busy")
    assert writes == ["written"] * 5


def test_a_lock_file_that_cannot_be_opened_leaves_the_gallery_readable(filled: Path) -> None:
    lock = filled / datastore.LOCK_NAME
    lock.chmod(0)
    try:
        report, best, writes = read(filled, "report", "search 1", "writes")
    finally:
        lock.chmod(0o600)
    why = f"its lock file {lock} cannot be opened (Permission denied)"
    assert report["read_only"] and best == "alice" and report["faces"] == 4
    assert report["problems"] == f"cannot check gallery {filled}: {why}, so writers cannot be waited for"
    assert writes == [f"gallery {filled} is read-only: {why}"] * 5


def test_a_gallery_on_a_read_only_mount(filled: Path) -> None:
    """Bound read-only into a mount namespace of the reader's own: even root meets a read-only file system."""
    def read_only_mount(command: list[str]) -> list[str]:
        return ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(filled), *command]

    if shutil.which("unshare") is None or subprocess.run(read_only_mount(["true"]), capture_output=True).returncode:
        pytest.skip("cannot make a mount namespace with a read-only bind mount here (needs root, or CAP_SYS_ADMIN)")
    before = listing(filled)
    report, best, writes = read(filled, "report", "search 2", "writes", run_as=read_only_mount)
    assert listing(filled) == before
    assert report["read_only"] and report["identities"] == [["alice", 2], ["bob", 2]] and best == "bob"
    assert report["problems"] == []
    assert writes == [f"gallery {filled} is read-only: {filled} is on a read-only file system"] * 5


def test_enroll_into_a_read_only_gallery_says_so_before_any_photo(tmp_path: Path, astronaut_bgr) -> None:
    import cv2

    gallery = tmp_path / "gallery"
    with Gallery.open(gallery, dim=512):
        pass
    (tmp_path / "people" / "ann").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "people" / "ann" / "a.jpg"), astronaut_bgr)
    command = [sys.executable, "-m", "facekit.cli", "enroll", str(tmp_path / "people"), "--gallery", str(gallery)]
    with read_only(gallery):
        run = subprocess.run(unprivileged(command), capture_output=True, text=True, timeout=120)
    # One line, no progress bar: refused before the photo was read, not at the first batch's write.
    assert run.returncode == 2 and run.stderr == f"error: gallery {gallery} is read-only: no write permission on " \
                                                 f"{gallery}\n"


# --- a database that is not a gallery, or no longer holds one -----------------------------------------------------


def contents(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in path.iterdir()}


def faces_in_index_files(path: Path) -> int:
    return sum(faiss.read_index(str(file)).ntotal for file in index_files(path))


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize("emptied", ["0 bytes", "no tables", "0 bytes, log only"])
def test_an_emptied_database_beside_the_faces_is_refused_and_nothing_changes(filled: Path, emptied: str,
                                                                              create: bool) -> None:
    """A gallery.sqlite emptied by a full disk or a careless copy was opened, by readers too, as a new gallery: its
    tables were made in it, and the index files that still held the faces were deleted as strays (or, with only a
    killed writer's log left, SQLite deleted the log)."""
    db = filled / "gallery.sqlite"
    if emptied == "0 bytes, log only":
        killed_writer(filled, "carol", 3)
        for file in index_files(filled):
            file.unlink()
    db.write_bytes(b"")
    if emptied == "no tables":
        with contextlib.closing(sqlite3.connect(db)) as other:
            other.execute("PRAGMA user_version = 1")  # a header and no tables
    before = contents(filled)
    held = "a write-ahead log" if emptied == "0 bytes, log only" else "index files"
    with pytest.raises(GalleryError, match=re.escape(f"gallery.sqlite in {filled} is empty but {filled} holds {held}")
                       + r".*: restore the database from a backup; nothing was changed$"):
        Gallery.open(filled, create=create)
    assert contents(filled) == before
    if emptied != "0 bytes, log only":
        assert faces_in_index_files(filled) == 4


def test_a_deleted_database_beside_the_faces_is_refused_and_no_empty_one_made(filled: Path) -> None:
    # Opening to create made a 0-byte gallery.sqlite first, then refused it as "empty": a false message, and every
    # later open said the same of the file it had made.
    (filled / "gallery.sqlite").unlink()
    before = contents(filled)
    for create in (True, False):  # opening only to read said "no gallery at", as of an empty folder
        with pytest.raises(GalleryError, match=re.escape(f"gallery.sqlite is missing from {filled}, which holds "
                                                         "index files: restore the database from a backup")):
            Gallery.open(filled, create=create)
        assert contents(filled) == before and faces_in_index_files(filled) == 4


def test_the_command_line_refuses_an_emptied_database_and_keeps_the_index(filled: Path) -> None:
    (filled / "gallery.sqlite").write_bytes(b"")
    before = contents(filled)
    for command in ("list", "check"):  # `list` printed nothing, `check` "ok: 0 faces", and both emptied the index
        result = subprocess.run([sys.executable, "-m", "facekit.cli", "gallery", command, "--gallery", str(filled)],
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == (f"error: gallery.sqlite in {filled} is empty but {filled} holds index files: restore "
                                 "the database from a backup; nothing was changed\n")
    assert contents(filled) == before and faces_in_index_files(filled) == 4


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_database_is_refused_not_adopted(path: Path, journal: str, create: bool) -> None:
    path.mkdir()
    with contextlib.closing(sqlite3.connect(path / "gallery.sqlite")) as other:
        other.execute(f"PRAGMA journal_mode = {journal}")
        other.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY AUTOINCREMENT, x)")  # and SQLite's sqlite_sequence
        other.execute("INSERT INTO foo (x) VALUES (1)")
        other.commit()
    before = contents(path)
    with pytest.raises(GalleryError, match=re.escape(f"{path / 'gallery.sqlite'} is not a facekit gallery database "
                                                     "(tables: foo); nothing was changed")):
        Gallery.open(path, create=create)
    assert contents(path) == before  # no facekit tables, no switch to WAL, no lock file


@pytest.mark.parametrize("leftover", ["0 bytes", "no tables"])
def test_what_a_kill_during_the_first_open_leaves_becomes_a_gallery_only_when_one_is_made(path: Path,
                                                                                          leftover: str) -> None:
    """Killed before SQLite wrote its header, the first open leaves a 0-byte gallery.sqlite; killed before its tables
    were committed, a header and the lock file. A reader finds no gallery there and changes nothing (it used to make
    the tables); a writer makes the gallery."""
    path.mkdir()
    db = path / "gallery.sqlite"
    db.write_bytes(b"")
    if leftover == "no tables":
        with contextlib.closing(sqlite3.connect(db)) as first:
            first.execute("PRAGMA journal_mode = WAL")  # what Gallery.open does first: it writes the header
        (path / datastore.LOCK_NAME).touch()
    before = contents(path)
    with pytest.raises(GalleryError, match=re.escape(f"no gallery at {path} (gallery.sqlite there is empty)")):
        Gallery.open(path, create=False)
    assert contents(path) == before
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
    with Gallery.open(path, create=False) as gallery:
        assert gallery.identities() == [("alice", 2)] and gallery.check() == []


@pytest.mark.parametrize("folder", ["new", "empty", "shared"])
def test_a_new_gallery_is_made_in_a_new_folder_an_empty_one_or_one_with_other_files(tmp_path: Path,
                                                                                    folder: str) -> None:
    path = tmp_path / folder
    if folder != "new":
        path.mkdir()
    if folder == "shared":
        (path / "notes.txt").write_text("not the gallery's")
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
    with Gallery.open(path, create=False) as gallery:
        assert gallery.identities() == [("alice", 2)] and gallery.check() == []
    assert (path / "notes.txt").exists() == (folder == "shared")


# --- damage inside gallery.sqlite: a stored vector, the manifest, a setting; an index file that cannot be read ------


def sql(path: Path, statement: str, *params: object) -> None:
    with contextlib.closing(sqlite3.connect(path / "gallery.sqlite")) as db, db:
        db.execute(statement, params)


def gallery_command(path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "facekit.cli", "gallery", *args, "--gallery", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", ["bytes flipped", "NaN", "too short"])
def test_a_damaged_vector_is_reported_and_left_out_of_an_index_rebuilt_from_the_database(path: Path,
                                                                                          damage: str) -> None:
    """Bytes flipped in gallery.sqlite's vector pages: `check` said ok, and once a removal had rebuilt the index from
    the database, identify named the wrong person with a similarity of 11.8 (a vector of the wrong size stopped
    every rebuild with a traceback)."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        damaged_id, _ = enroll(gallery, "bob", 2)
        # Any length given is stored as a unit vector, never taken for damage.
        gallery.add("carol", vectors(3, 2) * np.array([[1e-3], [1e4]]), sources("carol-0", "carol-1"))
    stored = vectors(2, 2)[0].astype("<f4").tobytes()
    blob = {"bytes flipped": stored[:8] + bytes(b ^ 0xFF for b in stored[8:24]) + stored[24:],
            "NaN": np.full(DIM, np.nan, "<f4").tobytes(), "too short": stored[:-4]}[damage]
    sql(path, "UPDATE embeddings SET vector = ? WHERE id = ?", blob, damaged_id)
    with Gallery.open(path, create=False) as gallery:  # its index files still hold the vector as it was
        problems = gallery.check()
        assert len(problems) == 1 and problems[0].startswith(f"embedding {damaged_id} (bob-2-0.jpg) has a damaged "
                                                             "vector")
        with pytest.warns(GalleryWarning, match=r"leaves out faces whose vector in gallery.sqlite is damaged .*: "
                                                r"bob-2-0\.jpg$"):
            gallery.rebuild()
        for query, who in ((vectors(1, 2)[0], "alice"), (vectors(2, 2)[1], "bob"), (vectors(3, 2)[1], "carol")):
            found = gallery.search(query, k=3)[0]
            assert found[0].identity == who and found[0].similarity == pytest.approx(1.0, abs=1e-5)
            assert all(m.similarity <= 1 + 1e-5 and m.embedding_id != damaged_id for m in found)
        assert gallery.check() == problems  # and no other: the index lacks that face on purpose
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, create=False) as gallery:  # the index files are not rebuilt on every open
            assert gallery.stats()["tombstones"] == 0 and gallery.check() == problems
            gallery.remove_photos("bob-2-0.jpg")
            assert gallery.check() == [] and gallery.identities() == [("alice", 2), ("bob", 1), ("carol", 2)]
    assert no_repair_warning(recorded)


@pytest.mark.parametrize("statement", [
    "UPDATE meta SET value = replace(value, '\"generation\"', '\"generatioo\"') WHERE key = 'manifest'",
    "UPDATE meta SET value = substr(value, 1, 20) WHERE key = 'manifest'",
    "UPDATE meta SET value = CAST(X'7B22FF' AS TEXT) WHERE key = 'manifest'",  # not UTF-8
    "UPDATE meta SET value = replace(value, 'index-', '../index-') WHERE key = 'manifest'",
], ids=["key flipped", "cut short", "not UTF-8", "names a file elsewhere"])
def test_a_malformed_manifest_is_an_index_problem_repaired_from_the_database(filled: Path, statement: str) -> None:
    """A bit flipped in the manifest row gave a KeyError on every command, `gallery rebuild` included."""
    sql(filled, statement)
    listing = gallery_command(filled, "list")
    assert (listing.returncode, listing.stdout) == (0, "alice\nbob\n") and listing.stderr == (
        f"warning: gallery {filled}: the index manifest in gallery.sqlite is malformed; rebuilt it from "
        "gallery.sqlite\n")
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(filled, create=False) as gallery:
            assert gallery.check() == [] and gallery.search(vectors(2, 2)[0])[0][0].identity == "bob"
    assert no_repair_warning(recorded) and len(index_files(filled)) == 1  # the old generation's file is gone


def test_a_malformed_manifest_never_brings_back_a_generation_a_reader_may_hold(path: Path) -> None:
    """It read as generation 0, so its repair wrote generation 1 again, and a removal's purge then 2: a reader idle
    since it loaded generation 2 took the purged index for the one it held, and kept the removed face's vectors."""
    with Gallery.open(path, dim=DIM) as writer, writer.writer():
        enroll(writer, "alice", 1)
        enroll(writer, "bob", 2)
    with Gallery.open(path, create=False) as reader:
        held = reader.stats()["index_generation"]
        assert reader.stats()["index_vectors"] == 4
        sql(path, "UPDATE meta SET value = '{' WHERE key = 'manifest'")
        with pytest.warns(GalleryWarning, match="manifest in gallery.sqlite is malformed"):
            writer = Gallery.open(path, create=False)
        with writer:
            assert writer.stats()["index_generation"] > held
            writer.remove("bob")
        assert reader.search(vectors(2, 2)[0])[0][0].identity == "alice"
        assert reader.stats()["index_vectors"] == 2 and reader.stats()["tombstones"] == 0


def test_opening_compares_the_index_ids_as_sets_only_where_they_are_not_exactly_the_live_rows(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set difference of the index's ids and the live rows' on every open, sorting both, doubled the time to open a
    gallery of 500k faces and search it once (0.5 -> 1.0 s). Where the index holds other ids it must still be found:
    here a removal killed before its purge (a removed face kept) makes up, by count, for a damaged vector left out."""
    with Gallery.open(path, dim=DIM, shards=2) as gallery:
        removed, _ = enroll(gallery, "alice", 1)
        damaged_id, _ = enroll(gallery, "bob", 2)
        enroll(gallery, "carol", 3)
    set_compared = []
    ids = datastore.ShardedIndex.ids

    def watched(index: datastore.ShardedIndex) -> np.ndarray:
        set_compared.append(True)
        return ids(index)

    monkeypatch.setattr(datastore.ShardedIndex, "ids", watched)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, create=False) as gallery:
            assert gallery.search(vectors(2, 2)[0])[0][0].identity == "bob"
    assert no_repair_warning(recorded) and set_compared == []
    sql(path, "UPDATE embeddings SET vector = ? WHERE id = ?", b"", damaged_id)
    with Gallery.open(path, create=False) as gallery, pytest.warns(GalleryWarning, match="leaves out faces"):
        gallery.rebuild()
    sql(path, "DELETE FROM embeddings WHERE id = ?", removed)
    with pytest.warns(GalleryWarning) as told:
        gallery = Gallery.open(path, create=False)
    with gallery:
        left_out, repaired = (str(warning.message) for warning in told)
        assert "leaves out faces whose vector in gallery.sqlite is damaged" in left_out
        assert repaired == (f"gallery {path}: the index still held 1 removed embeddings (interrupted removal?); "
                            "rebuilt it from gallery.sqlite")
        assert set_compared and gallery.stats()["tombstones"] == 0 and gallery.stats()["index_vectors"] == 4
        assert [problem.split(" has ")[0] for problem in gallery.check()] == [f"embedding {damaged_id} (bob-2-0.jpg)"]


@pytest.mark.parametrize("statement, restored", [
    ("DELETE FROM meta WHERE key = 'data_generation'", "data_generation=0"),
    ("UPDATE meta SET value = 'bogus' WHERE key = 'index'", "index=auto"),
    ("UPDATE meta SET value = 'x' WHERE key = 'shards'", "shards=1"),
    # A bit flipped in the first letter, 'a' -> 0xe1: not UTF-8, which stopped the open with an sqlite3 error.
    ("UPDATE meta SET value = CAST(X'e1' || substr(value, 2) AS TEXT) WHERE key = 'index'", "index=auto"),
    ("UPDATE meta SET value = CAST(X'b1' AS TEXT) WHERE key = 'shards'", "shards=1"),
])
def test_a_lost_setting_that_has_a_default_is_read_as_it_and_restored_where_writable(
        filled: Path, monkeypatch: pytest.MonkeyPatch, statement: str, restored: str) -> None:
    """Each stopped every command with a traceback (TypeError, KeyError)."""
    sql(filled, statement)
    with monkeypatch.context() as patch:
        patch.setattr(datastore, "_unwritable", lambda root: "a test says so")
        with Gallery.open(filled, create=False) as reader:
            assert reader.read_only and reader.search(vectors(2, 2)[0])[0][0].identity == "bob"
            assert reader.check() == [f"the {restored.split('=')[0]} setting in gallery.sqlite is missing or damaged"]
    with pytest.warns(GalleryWarning, match=f"settings missing or damaged in gallery.sqlite restored to their "
                                            f"defaults: {restored}$"):
        gallery = Gallery.open(filled, create=False)
    with gallery, Gallery.open(filled, create=False) as other:
        assert other.search(vectors(2, 2)[0])[0][0].identity == "bob"
        enroll(gallery, "carol", 3)
        assert other.search(vectors(3, 2)[0])[0][0].identity == "carol"  # the data generation tells readers again
        assert gallery.check() == [] and gallery.stats()["index_request"] == "auto"


@pytest.mark.parametrize("key", ["format_version", "dim"])
def test_a_lost_format_version_or_dim_stops_opening_in_one_line_and_is_not_guessed(filled: Path, key: str) -> None:
    sql(filled, "DELETE FROM meta WHERE key = ?", key)
    message = (f"{filled / 'gallery.sqlite'} is damaged: its {key} setting is missing or not a positive integer; "
               "restore the database from a backup")
    for index in ("auto", "flat"):  # another index kind writes the settings it changes
        with pytest.raises(GalleryError, match=re.escape(message)):
            Gallery.open(filled, index=index)
    rebuild = gallery_command(filled, "rebuild")
    assert (rebuild.returncode, rebuild.stdout, rebuild.stderr) == (2, "", f"error: {message}\n")
    with contextlib.closing(sqlite3.connect(filled / "gallery.sqlite")) as db:
        assert db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall() == []


def test_an_index_file_that_cannot_be_read_is_rebuilt_from_the_database(filled: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """IsADirectoryError (or PermissionError) stopped every command, `gallery list` and `gallery rebuild` included."""
    (file,) = index_files(filled)
    file.unlink()
    file.mkdir()  # as no read permission would, which root is never refused
    unreadable = f"index file {file.name} cannot be read (Is a directory)"
    with monkeypatch.context() as patch:
        patch.setattr(datastore, "_unwritable", lambda root: "a test says so")
        with Gallery.open(filled, create=False) as reader:  # repaired in memory only
            assert reader.search(vectors(2, 2)[0])[0][0].identity == "bob"
            assert reader.check() == [f"index: {unreadable}"]
            with pytest.raises(GalleryError, match="read-only: a test says so"):
                reader.rebuild()
    listing = gallery_command(filled, "list")
    assert (listing.returncode, listing.stdout) == (0, "alice\nbob\n") and listing.stderr == (
        f"warning: gallery {filled}: {unreadable}; rebuilt it from gallery.sqlite\n")
    with Gallery.open(filled, create=False) as gallery:
        assert gallery.check() == [] and gallery.search(vectors(1, 2)[0])[0][0].identity == "alice"
        gallery.rebuild()
        assert gallery.check() == [] and file.is_dir()  # not ours to delete


def test_unknown_is_no_name_for_a_new_identity_but_one_stored_under_it_stays_usable(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reserved = "is reserved: it is what identify prints for a face no one matches"
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        for name in ("unknown", " Unknown ", "UNKNOWN"):
            with pytest.raises(GalleryError, match=f"^identity name '{name.strip()}' {reserved}$"):
                gallery.add(name, vectors(5), sources("x"))
            with pytest.raises(GalleryError, match=reserved):
                gallery.rename("alice", name)
        assert gallery.identities() == [("alice", 2)]
        for seed in (2, 3):
            with monkeypatch.context() as patch:  # enrolled before facekit reserved the name
                patch.setattr(datastore, "refuse_reserved_name", lambda name: None)
                enroll(gallery, "unknown", seed)
            enroll(gallery, "unknown", seed + 10, 1)  # more faces of it are no new identity
            assert gallery.identities() == [("alice", 2), ("unknown", 3)]
            if seed == 2:
                assert gallery.remove("unknown") == 3
            else:
                gallery.rename("unknown", "bob")
        assert gallery.identities() == [("alice", 2), ("bob", 3)] and gallery.check() == []


def test_a_damaged_vector_is_warned_of_once_when_opening_rebuilds_the_index(path: Path) -> None:
    """With the index files gone, opening built the index twice (once to read, once to repair) and named the damaged
    photo in two warnings, which `facekit gallery list` printed both."""
    with Gallery.open(path, dim=DIM) as gallery:
        enroll(gallery, "alice", 1)
        damaged_id, _ = enroll(gallery, "bob", 2)
    sql(path, "UPDATE embeddings SET vector = ? WHERE id = ?", b"", damaged_id)
    for file in index_files(path):
        file.unlink()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with Gallery.open(path, create=False) as gallery:
            assert gallery.search(vectors(2, 2)[1])[0][0].identity == "bob"
    told = [str(warning.message) for warning in recorded if "is damaged" in str(warning.message)]
    assert len(told) == 1 and told[0].endswith(": bob-2-0.jpg")
