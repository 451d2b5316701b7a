"""The gallery: enrolled face embeddings and who they belong to, on disk.

gallery.sqlite is the source of truth. It holds the identities, one row per embedding (source file, its
sha256, the face box) and the float32 vector itself, so the FAISS index can always be remade from it.
The index files are a derived checkpoint: they are written after the database commit, under a new name
each time, and recorded in the `manifest` row of the `meta` table with their CRC32 and the highest
embedding id they hold. Embedding ids come from AUTOINCREMENT and are never reused, so rows with a larger
id than the checkpoint's are exactly the ones it lacks, and opening replays them ("catch-up"). A removal is a
request to forget a face, so its rows are overwritten in the database (secure_delete), the index is rebuilt
without them and the write-ahead log emptied when the write ends (or, if the writer died first, by the next open
or write); until then, and in readers that loaded the index before, they are tombstones filtered out at query
time. See galleries/README.md for the on-disk format.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import faiss
import numpy as np

from facekit import FacekitWarning
from facekit.errors import CONTROL_CHARACTERS, escape_control_characters, one_line, printable_path
from facekit.export import thread_count

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DB_NAME = "gallery.sqlite"
# The embedding size of a new gallery when none is given: the shipped model's.
DEFAULT_DIM = 512
# The largest embedding size a gallery may hold. facekit's models give 512 (and dlib's 128); any ONNX embedder may be
# used, but a face embedding of more than 65,536 numbers would be 256 KiB a face. Far larger (a dim in a crafted
# database) faiss cannot make an index for, and numpy would be asked for gigabytes per row read.
MAX_DIM = 65_536
LOCK_NAME = "lock"
MODEL_KEY = "model"  # meta key: sha256 of the weights whose embeddings the gallery holds
INDEX_KINDS = ("flat", "hnsw", "ivf")
INDEX_FILE = re.compile(r"index-(\d{8})-(\d+)\.faiss(\.tmp)?")
# The start of a photo's sha256, as `facekit gallery photos` shows it (12 digits) or longer; 64 digits are the whole.
SHA256_PREFIX = re.compile(r"[0-9a-fA-F]{12,63}")
# The path facekit.add_face records for a face added from an array or image, or from bytes: it names no photo.
PLACEHOLDER_PATHS = ("<array>", "<bytes>")
# How much of a stored path a line of output shows (Linux's PATH_MAX): a database made elsewhere may hold millions.
SHOWN_PATH_LENGTH = 4096

# Measured with tools/bench_gallery.py (dim 512) on an idle 2-core machine, CPU time per single query:
# exact search costs 0.3 ms per 1,000 vectors (memory bound): 3.2 ms at 10k, 26 ms at 100k, while IVF took
# 0.27 ms at 10k, 0.41 ms at 100k and 3.5 ms at 1M. HNSW is an option only: it built 100k vectors in 43 s
# (IVF: 1.8 s) and needed efSearch 256 (4.2 ms) for recall@1 0.995.
AUTO_FLAT_LIMIT = 10_000
AUTO_APPROXIMATE = "ivf"
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 256
# Share of IVF clusters a query visits. Face embeddings spread over the sphere, so a query's nearest
# neighbour is often several clusters away: a third of the lists gave recall@1 0.97-0.98 at 100k and 1M,
# half gives 0.997 at 1M for 3.5 ms of CPU (tools/bench_gallery.py), and scanning 4-bit PQ codes with
# SIMD keeps even that cheap.
IVF_PROBE_SHARE = 0.5
IVF_TRAIN_PER_CLUSTER = 32  # k-means sample size; enough to place routing centroids
IVF_MIN_VECTORS = 100  # 4-bit PQ needs 16 training points; below 100 a flat index is exact and instant
IVF_RERANK_FACTOR = 4  # candidates re-ranked with the exact vectors, per hit asked for
MAX_NAME_LENGTH = 128
RESERVED_NAME = "unknown"  # what identify prints for a face no one matches
# add() stores float32 unit vectors, whose length is 1 to within about 1e-6: a stored one further off is damaged.
UNIT_LENGTH_TOLERANCE = 1e-3
LOCK_TIMEOUT_S = 30.0
_ROWS_PER_CHUNK = 16_384
class GalleryError(RuntimeError):
    """Anything wrong with a gallery or with what was asked of it; the message is one line for a human."""


class GalleryWarning(FacekitWarning):
    """The gallery repaired itself on open (e.g. rebuilt its index after a crash), or could not yet clear a
    removed face's old database pages from its files."""


@dataclass
class Match:
    identity: str
    similarity: float
    embedding_id: int
    source_path: str


def set_threads(threads: int | None = None) -> int:
    """FAISS/OpenMP threads for this process: threads, else FACEKIT_THREADS, else at most 2 (and no more than
    the cores it may use, facekit.export.thread_count).

    More threads than free cores makes OpenMP spin against other work (the machine is shared), and single
    queries run on one thread anyway; the extra thread helps index builds and batched queries."""
    threads = thread_count(threads, default_at_most=2)
    faiss.omp_set_num_threads(threads)
    return threads


set_threads()
# OpenMP's threads do not survive a fork: a child (a pre-forking server's worker) whose parent had searched hung in
# its first batched search. It searches on one thread, as single queries do anyway; set_threads() may raise it.
os.register_at_fork(after_in_child=lambda: faiss.omp_set_num_threads(1))


def _check_index_kind(index: str) -> None:
    if index not in ("auto", *INDEX_KINDS):
        raise GalleryError(f"unknown index type {index!r}; choose auto, {', '.join(INDEX_KINDS)}")


def default_gallery_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--gallery PATH if given, else $FACEKIT_GALLERY, else galleries/default/ under the current directory."""
    if explicit is not None:
        if not str(explicit).strip():
            raise GalleryError("the gallery path is empty (an unset variable in --gallery \"$VAR\"?)")
        return Path(explicit)
    if os.environ.get("FACEKIT_GALLERY"):
        return Path(os.environ["FACEKIT_GALLERY"])
    return Path.cwd() / "galleries" / "default"


# The invisible characters a name may hold: the joiners and directional marks that names in Persian, Hindi, Hebrew
# or Arabic use. Alone they show nothing, so a name is compared with others, and with the reserved one, without them
# ("Alice\u200e" would look exactly like Alice).
NAME_FORMAT_CHARACTERS = "\u200c\u200d\u200e\u200f\u061c"
_WITHOUT_FORMAT_CHARACTERS = {ord(character): None for character in NAME_FORMAT_CHARACTERS}
# The same in SQL, over identities.name: one scan in SQLite, not one Python call a stored name.
_SHOWN_NAME_SQL = "name"
for _character in NAME_FORMAT_CHARACTERS:
    _SHOWN_NAME_SQL = f"replace({_SHOWN_NAME_SQL}, char({ord(_character)}), '')"


def shown_name(name: str) -> str:
    """name as it looks: without its joiners and directional marks."""
    return name.translate(_WITHOUT_FORMAT_CHARACTERS)


def clean_identity(name: object) -> str:
    """The canonical form of an identity name (NFC, surrounding spaces stripped), or GalleryError."""
    if not isinstance(name, str):
        raise GalleryError(f"identity name must be a string, not {type(name).__name__}")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise GalleryError("identity name is empty")
    if name in (".", ".."):
        raise GalleryError(f"identity name {name!r} is not allowed")
    if len(name) > MAX_NAME_LENGTH:
        raise GalleryError(f"identity name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if "/" in name or "\\" in name:
        raise GalleryError(f"identity name {name!r} contains a path separator")
    if CONTROL_CHARACTERS.search(name):
        raise GalleryError(f"identity name {name!r} contains control characters")
    if any(unicodedata.category(c) == "Cf" and c not in NAME_FORMAT_CHARACTERS for c in name):
        raise GalleryError(f"identity name {name!r} contains an invisible formatting character")
    if any(unicodedata.category(c) == "Cs" for c in name):  # how Python reads a non-UTF-8 byte of a file name
        raise GalleryError(f"identity name {name!r} is not valid UTF-8 (a folder name in another encoding?)")
    return name


def _quoted_name(name: object) -> str:
    """A stored identity name (or trigger name) for a line of output: quoted by repr, which escapes its control
    characters, bidi overrides and invisible spaces, and cut at MAX_NAME_LENGTH characters, since a database made
    elsewhere may hold one of millions."""
    if isinstance(name, (str, bytes)) and len(name) > MAX_NAME_LENGTH:
        return f"{name[:MAX_NAME_LENGTH]!r}... ({len(name)} characters)"
    return repr(name)


def _shown_path(path: str) -> str:
    """A stored source path for a line of output: control characters escaped (a path may hold a newline and a fake
    "ok" line after it, or an ESC that steers the terminal), cut at SHOWN_PATH_LENGTH characters."""
    cut = path[:SHOWN_PATH_LENGTH] + (f"... ({len(path)} characters)" if len(path) > SHOWN_PATH_LENGTH else "")
    return escape_control_characters(cut)


def look_alike(name: str, other: str) -> GalleryError:
    """The error for a new identity name that looks exactly like other's, which the gallery holds."""
    return GalleryError(f"identity name {name!r} looks the same as {_quoted_name(other)}, enrolled already: they "
                        "differ only in invisible joiners or directional marks")


def refuse_reserved_name(name: str) -> None:
    """GalleryError for a new identity named as identify names a face no one matches (its clean_identity form, in any
    case, as it looks): its faces could not be told from a stranger's. One already stored under it may still be read
    and renamed."""
    if shown_name(name).casefold() == RESERVED_NAME:
        raise GalleryError(f"identity name {name!r} is reserved: it is what identify prints for a face no one matches")


def unit_vectors(vectors: object, dim: int, what: str = "embeddings") -> np.ndarray:
    """(n, dim) float32 rows scaled to unit length; NaN, infinite or zero vectors are refused.

    Any non-zero length is accepted and normalised: similarity is cosine, and a model that forgot its final
    L2 normalisation still produces usable directions."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"{what} must be a numeric array") from exc
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise GalleryError(f"{what} must have shape (n, {dim}); got {tuple(np.shape(vectors))}")
    if len(array) == 0:
        raise GalleryError(f"no {what} given")
    if not np.isfinite(array).all():
        raise GalleryError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms < 1e-6).any():
        raise GalleryError(f"{what} contain a zero vector")
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def _clean_sources(sources: object, count: int) -> list[tuple[str, str, str | None]]:
    if not isinstance(sources, (list, tuple)) or len(sources) != count:
        got = len(sources) if isinstance(sources, (list, tuple)) else type(sources).__name__
        raise GalleryError(f"need one source dict per embedding: {count} embeddings, got {got}")
    rows = []
    for source in sources:
        if not isinstance(source, dict):
            raise GalleryError("each source must be a dict with 'path', 'sha256' and 'box'")
        path, sha, box = source.get("path"), source.get("sha256"), source.get("box")
        if not isinstance(path, str) or not path:
            raise GalleryError("source 'path' must be a non-empty string")
        # SQLite cannot store a non-UTF-8 file name's bytes as Python reads them: kept as \xNN, the photo is still
        # listed, and found (and removed) by its content.
        path = printable_path(path)
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise GalleryError(f"source 'sha256' must be 64 hex digits; got {sha!r}")
        if box is not None:
            if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
                raise GalleryError(f"source 'box' must be [x, y, w, h]; got {box!r}")
            box = json.dumps(list(box))
        rows.append((path, sha.lower(), box))
    return rows


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


def _decode_vectors(rows: list[tuple[int, object]], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, intact, vectors) of (embedding id, stored vector) rows: `intact` marks the rows whose vector is dim
    float32 numbers of unit length, and `vectors` holds theirs only. A row outside it is damaged (bytes flipped in
    gallery.sqlite): searched, it would name the wrong person with a similarity far above 1."""
    ids = np.array([row[0] for row in rows], np.int64)
    sized = np.array([isinstance(blob, bytes) and len(blob) == 4 * dim for _, blob in rows], bool)
    vectors = np.zeros((len(rows), dim), np.float32)
    vectors[sized] = np.frombuffer(b"".join(blob for (_, blob), ok in zip(rows, sized) if ok), "<f4").reshape(-1, dim)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and overflowing numbers give lengths that fail below
        intact = sized & (np.abs(np.linalg.norm(vectors, axis=1) - 1) <= UNIT_LENGTH_TOLERANCE)
    return ids, intact, vectors[intact]


def _id_batches(ids: Iterable[int]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The `?, ?, ...` of an `IN (...)` and its ids, 500 at a time: SQLite caps the parameters of a statement."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), 500):
        part = tuple(ids[start : start + 500])
        yield ",".join("?" * len(part)), part


# --- the index: one or more FAISS shards ------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # "flat", "hnsw" or "ivf"
    nlist: int = 0  # IVF only: number of clusters


def choose_index(request: str, count: int) -> IndexSpec:
    """The index facekit builds for `count` vectors when the gallery asks for `request` ("auto" or a kind)."""
    kind = request if request != "auto" else ("flat" if count < AUTO_FLAT_LIMIT else AUTO_APPROXIMATE)
    if kind != "ivf":
        return IndexSpec(kind)
    if count < IVF_MIN_VECTORS:
        return IndexSpec("flat")  # too little to train clusters and codebooks on; rebuilt as IVF later
    # About sqrt(n) clusters, a power of two, and at least 39 training points per cluster as FAISS wants.
    # More clusters would not cut the share a query must visit, only make training and adding slower.
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(count))))
    return IndexSpec("ivf", max(1, min(nlist, count // 39)))


def _ivf_description(nlist: int, dim: int) -> str:
    # Clusters of 4-bit PQ codes (dim/8 bytes a vector) scanned with SIMD, then the best candidates re-ranked
    # against the exact float32 vectors (RFlat): similarities returned are exact, only recall is approximate.
    if dim % 8 == 0:
        return f"IVF{nlist},PQ{dim // 8}x4fs,RFlat"
    return f"IVF{nlist},Flat"


def _empty_index(spec: IndexSpec, dim: int, train: np.ndarray | None) -> faiss.Index:
    inner = {"flat": "Flat", "hnsw": f"HNSW{HNSW_M}", "ivf": _ivf_description(spec.nlist, dim)}[spec.kind]
    index = faiss.index_factory(dim, f"IDMap2,{inner}", faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if spec.kind == "ivf":
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index.index))
        ivf.cp.niter = 10  # k-means converges enough for routing; the default 25 is 2.5x the training time
        ivf.cp.min_points_per_centroid = 1  # small galleries have few points; that is expected, not a warning
        if hasattr(ivf, "pq"):
            ivf.pq.cp.min_points_per_centroid = 1
        index.index.train(train)
    _tune(index, spec)
    return index


def _tune(index: faiss.Index, spec: IndexSpec) -> None:
    base = faiss.downcast_index(index.index)
    if spec.kind == "hnsw":
        base.hnsw.efSearch = HNSW_EF_SEARCH
    elif spec.kind == "ivf":
        faiss.extract_index_ivf(base).nprobe = max(1, math.ceil(spec.nlist * IVF_PROBE_SHARE))
        if isinstance(base, faiss.IndexRefine):
            base.k_factor = IVF_RERANK_FACTOR


class ShardedIndex:
    """Vectors split over shards by embedding id (id % shards); a query asks every shard and merges the
    per-shard top-k. With one shard this is just the index. Scores are inner products of unit vectors."""

    def __init__(self, spec: IndexSpec, shards: list[faiss.Index]) -> None:
        self.spec = spec
        self.shards = shards

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, n_shards: int = 1, train: np.ndarray | None = None) -> ShardedIndex:
        first = _empty_index(spec, dim, train)
        # Shards share the trained IVF clusters so a vector lands in the same cluster whichever shard holds it.
        copies = [faiss.deserialize_index(faiss.serialize_index(first)) for _ in range(n_shards - 1)]
        for copy in copies:
            _tune(copy, spec)  # search-time settings are not all serialised
        return cls(spec, [first, *copies])

    @property
    def ntotal(self) -> int:
        return sum(shard.ntotal for shard in self.shards)

    def ids(self) -> np.ndarray:
        return np.concatenate([faiss.vector_to_array(shard.id_map) for shard in self.shards]).astype(np.int64)

    def holds_exactly(self, ids: np.ndarray) -> bool:
        """Whether the shards hold these ids (sorted) and no others, each shard its share in id order, as every build
        and catch-up adds them. False says nothing: the ids may be there in another order."""
        count = len(self.shards)
        return self.ntotal == len(ids) and all(
            np.array_equal(faiss.vector_to_array(shard.id_map), ids if count == 1 else ids[ids % count == number])
            for number, shard in enumerate(self.shards))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        for number, shard in enumerate(self.shards):
            mine = ids % len(self.shards) == number
            if mine.any():
                shard.add_with_ids(np.ascontiguousarray(vectors[mine]), ids[mine])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (len(queries), k), best first; id -1 pads when fewer vectors exist."""
        sims, ids = [], []
        for shard in self.shards:
            if shard.ntotal == 0:
                continue
            if self.spec.kind == "hnsw":
                faiss.downcast_index(shard.index).hnsw.efSearch = max(HNSW_EF_SEARCH, k)
            shard_sims, shard_ids = shard.search(queries, min(k, shard.ntotal))
            sims.append(shard_sims)
            ids.append(shard_ids)
        if not sims:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        all_sims, all_ids = np.concatenate(sims, axis=1), np.concatenate(ids, axis=1)
        all_sims[all_ids < 0] = -np.inf
        if len(self.shards) > 1:
            order = np.argsort(-all_sims, axis=1, kind="stable")[:, :k]
            all_sims, all_ids = np.take_along_axis(all_sims, order, 1), np.take_along_axis(all_ids, order, 1)
        if all_sims.shape[1] < k:
            pad = k - all_sims.shape[1]
            all_sims = np.pad(all_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            all_ids = np.pad(all_ids, ((0, 0), (0, pad)), constant_values=-1)
        return all_sims, all_ids


# --- the writer lock ---------------------------------------------------------------------------------------
# Kept in this module, whose imports from facekit (the package, which loads its parts lazily, errors and export)
# never load torch: a process that only opens a gallery (`facekit gallery list`, tools/crash_test.py's many
# children) starts in well under a second.


class LockTimeout(TimeoutError):
    pass


_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class FileLock:
    """flock on one open file description: two FileLock objects exclude each other even inside one process,
    and the kernel drops the lock when the holder dies, so a SIGKILLed writer never leaves a stale lock.

    flock needs no write access, so a lock file this process may only read (another user's gallery) serves as
    well. One it cannot open at all is left unopened, with the reason in `error` (FileNotFoundError: there is
    none, and none can be made here; ELOOP: it is a symbolic link); acquiring it raises that error, and it is tried
    again each time."""

    _fd = -1  # also for __del__ of one whose __init__ failed before setting it

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: OSError | None = None
        self.held = False
        self._open()

    def _open(self) -> None:
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                # O_NOFOLLOW: O_CREAT would make the file a link in a gallery folder made elsewhere points at, anywhere.
                self._fd = os.open(self.path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                self.error = exc
            else:
                self.error = None
                return

    def opened(self) -> bool:
        """Whether the lock file is open; one that could not be opened is tried again (it may have been made since)."""
        if self._fd < 0 and self.error is not None:
            self._open()
        return self._fd >= 0

    def try_acquire(self, shared: bool = False) -> bool:
        if not self.opened():
            return False
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def acquire(self, timeout: float, shared: bool = False) -> None:
        """Exclusive (a writer), or shared (a reader that must keep writers out while it reads)."""
        if not self.opened():
            raise self.error or ValueError(f"{self.path} is closed")
        # Polling rather than a blocking flock: a blocking call cannot be given a timeout without signals.
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self.try_acquire(shared):
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{self.path} is held by another process (waited {timeout:g} s)")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self.held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        if self._fd >= 0:
            self.release()
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # A Gallery dropped without close() (opened per request, outside a `with`) kept its lock file open: a thousand
        # such opens ran out of descriptors. Only closed, not unlocked: unlocking a descriptor a fork copied would
        # unlock the parent's lock too, where closing the child's copy leaves it.
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


# --- files ---------------------------------------------------------------------------------------------------


def _crc32(path: Path) -> str:
    # CRC32, not sha256: it guards against torn or corrupted files, not an attacker (who could edit the
    # database too), and sha256 runs at ~0.25 GB/s here against ~1.3 GB/s, i.e. 8 s per open at 1M vectors.
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _folder_bytes(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):  # a writer may delete an old index file meanwhile
            total += entry.stat().st_size if entry.is_file() else 0
    return total


def _unwritable(root: Path) -> str | None:
    """Why this process cannot write the gallery at root (a read-only mount, another user's files), or None."""
    with contextlib.suppress(OSError):
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return f"{root} is on a read-only file system"
    for path in (root, root / DB_NAME):  # SQLite and the index files need to make files in the folder too
        if not os.access(path, os.W_OK):
            return f"no write permission on {path}"
    return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def holds_index_files(root: Path) -> bool:
    """Whether a gallery's index files are in root: then its database held faces, and no new one may be made there."""
    return any(INDEX_FILE.fullmatch(name) for name in os.listdir(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _write_index_file(index: faiss.Index, path: Path) -> None:
    """Temp file, fsync, rename, fsync the folder: the name appears only with complete, durable contents.

    faiss writes through our file object, not to a file name: SWIG passes faiss only names that are valid UTF-8,
    so a gallery in a folder named in another encoding could not be saved. It streams in 1 MiB pieces, so a large
    index is never copied whole in memory."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb", opener=_owner_only) as handle:
            # Buffered: its write() writes every byte or raises, where faiss would ignore a short count.
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk (OSError from our write), or faiss refusing the index
        tmp.unlink(missing_ok=True)
        raise GalleryError(f"cannot write {path}: {one_line(exc)[-200:]}") from exc  # faiss ends with the cause
    _fsync_dir(path.parent)


class _IndexVanished(Exception):
    """An index file named by our snapshot's manifest was deleted by a writer that has since moved on."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, the index relies on it
    identity_id INTEGER NOT NULL REFERENCES identities(id),
    source_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    box TEXT,                               -- JSON [x, y, w, h] or NULL
    created REAL NOT NULL,
    vector BLOB NOT NULL                    -- float32, little endian, unit length
);
CREATE INDEX IF NOT EXISTS embeddings_sha256 ON embeddings(sha256);
CREATE INDEX IF NOT EXISTS embeddings_identity ON embeddings(identity_id);
"""
LIVE_ROWS = "FROM embeddings e JOIN identities i ON i.id = e.identity_id"
NO_INDEX_YET = "the gallery has no index yet"  # the index problem of a gallery whose index was never written
GALLERY_TABLES = {"meta", "identities", "embeddings"}  # every facekit version has made all three, in one transaction


# --- the gallery ------------------------------------------------------------------------------------------


Method = TypeVar("Method", bound=Callable[..., Any])


def _one_thread_at_a_time(method: Method) -> Method:
    """A Gallery method run holding the gallery's thread lock: its connection, index and in-memory view are one
    thread's at a time."""
    @functools.wraps(method)
    def locked(self: Gallery, *args: object, **kwargs: object) -> object:
        self._refuse_another_process()  # before the thread lock, which a fork may have copied held
        with self._thread_lock:
            return method(self, *args, **kwargs)

    return cast(Method, locked)


class Gallery:
    """A folder of enrolled faces. Open with Gallery.open(path); use as a context manager.

    Mutations (add, remove, rename, rebuild) run under writer(), the exclusive gallery lock, and take it
    themselves for a single call; wrap many calls in one `with gallery.writer():` so the index file is
    written once, when the block ends. Readers take no lock of ours: every search reads one SQLite snapshot
    and sees a writer's committed changes whole or not at all. The exception is a read-only gallery that SQLite
    reads as immutable (see _read_only_mode()): _steady() holds the lock shared around each of its transactions,
    so writers and it wait for each other. A gallery this process may only read (read_only) is searched and
    listed all the same, and refuses every write with one line.

    One Gallery object may be shared by the threads of a process (a threaded web server's workers, say). Each
    method holds the gallery's re-entrant thread lock while it uses the database connection, the index or the
    in-memory view, and a writer() block holds it from start to end: other threads' reads and writes wait for the
    block, as the writer lock, a flock on a file the threads share, cannot keep them out. Embedding a photo happens
    outside the gallery, so enrolling and identifying threads wait only for each other's database and index work."""

    def __init__(self, root: Path, lock_timeout: float, create: bool) -> None:
        self.root = root
        self.lock_timeout = lock_timeout
        self._why_unwritable = _unwritable(root)  # None if this process may write the folder and database
        self._immutable = False  # SQLite reads gallery.sqlite as a file nobody writes: see _read_only_mode()
        self._db_fingerprint_seen: tuple = ()  # gallery.sqlite as it was when an immutable connection was opened
        # Held by every method that uses the connection, the index or the in-memory view (_one_thread_at_a_time), and
        # through a writer() block; re-entrant, as methods call each other and writes nest.
        self._thread_lock = threading.RLock()
        self._opened_in = os.getpid()  # see _refuse_another_process
        self._conn = self._connect(create)
        self._lock = FileLock(root / LOCK_NAME)  # after _connect: a database refused there leaves no lock file made
        if isinstance(self._lock.error, OSError) and self._lock.error.errno == errno.ELOOP:
            self._conn.close()
            raise GalleryError(f"{self._lock.path} is a symbolic link, not the plain file a gallery's lock is: delete "
                               "the link; nothing was changed")
        self._writer_depth = 0
        self._unrecorded_model_told = False
        self.dim = 0
        self._request = "auto"
        self._n_shards = 1
        self._index: ShardedIndex | None = None
        self._index_generation = -1  # manifest generation the in-memory index started from
        self._index_problem: str | None = None  # why the index files could not be used, if they could not
        self._max_id = 0  # highest embedding id in the in-memory index
        self._lag = 0  # rows the index files lacked when they were loaded
        self._unsaved = False  # in-memory index holds vectors the files do not
        self._forgetting = False  # this write removed faces: the write-ahead log must be emptied when it ends
        self._data_generation = -1
        self._live_ids = np.zeros(0, np.int64)  # sorted
        self._live_identity = np.zeros(0, np.int64)
        self._names: dict[int, str] = {}
        self._left_out = np.zeros(0, np.int64)  # live rows the in-memory index lacks: their vectors are damaged
        self._told_damaged = np.zeros(0, np.int64)  # those a warning has named: a repair may build the index twice

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        create: bool = True,
        dim: int | None = None,
        index: str = "auto",
        *,
        shards: int | None = None,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> Gallery:
        """Open (or create) the gallery at `path`, repairing its index from the database if needed.

        `dim` must match an existing gallery (None: whatever it holds; DEFAULT_DIM for a new one). `index`
        ("auto", "flat", "hnsw", "ivf") and `shards` are remembered; passing a different explicit value for an
        existing gallery rebuilds its index."""
        _check_index_kind(index)
        if dim is not None and (not isinstance(dim, int) or not 1 <= dim <= MAX_DIM):
            raise GalleryError(f"dim must be an integer from 1 to {MAX_DIM}, not {dim!r}")
        if shards is not None and (not isinstance(shards, int) or not 1 <= shards <= 256):
            raise GalleryError(f"shards must be an integer from 1 to 256, not {shards!r}")
        root = Path(path)
        db = root / DB_NAME
        if not db.exists():
            if root.exists() and not root.is_dir():
                raise GalleryError(f"{root} exists and is not a folder")
            # A new gallery makes its database before any index file: index files without it mean it was deleted,
            # and a new database here would be taken for that one emptied.
            if root.is_dir() and holds_index_files(root):
                raise GalleryError(f"{DB_NAME} is missing from {root}, which holds index files: restore the database "
                                   "from a backup; nothing was changed")
            if not create:
                raise GalleryError(f"no gallery at {root} (no {DB_NAME} there)")
            try:
                root.mkdir(parents=True)
            except FileExistsError:
                pass  # made a moment ago by another process creating this gallery, or there before: left as it is
            else:
                os.chmod(root, 0o700)  # biometric data: owner only (mkdir's mode is filtered by the umask)
            os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal and -shm the same mode
        try:
            gallery = cls(root, lock_timeout, create)
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open {db}: {exc}") from exc
        try:
            changed = gallery._init_schema(dim, index, shards)
            gallery._refresh()
            gallery._repair_on_open()
            if changed:
                with gallery.writer():
                    gallery._unsaved = True  # the new index type or shard count is applied when the block ends
        except sqlite3.DatabaseError as exc:
            gallery.close()
            raise GalleryError(f"{db} is not a usable gallery database: {exc}") from exc
        except BaseException:
            gallery.close()
            raise
        return gallery

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and the lock file. In a process forked from the one that opened the gallery it does
        nothing: they are the opener's (SQLite's connection must not be touched from a fork), and a worker's exit or
        with-block closes its copy."""
        if os.getpid() != self._opened_in:
            return
        with self._thread_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._lock.close()

    def _refuse_another_process(self) -> None:
        """GalleryError in a process forked after the gallery was opened (a pre-forking web server's worker, a
        multiprocessing pool's): SQLite's connection may not cross a fork, the flock writer lock would be one lock
        for parent and children (a writer in each at once), a lock or writer() block held at the fork would hold
        in the child, and FAISS's threads hang there. Each worker opens the gallery itself."""
        if os.getpid() != self._opened_in:
            raise GalleryError(f"gallery {self.root} was opened in process {self._opened_in}, which this process was "
                               "forked from: open the gallery in each worker process, after the fork (a pre-forking "
                               "server's post-fork hook, a pool's initializer)")

    @property
    @_one_thread_at_a_time  # two threads opening the lock file again (FileLock.opened) would leak a descriptor
    def read_only(self) -> bool:
        """Whether this process may only read the gallery: searching and listing work, writes raise GalleryError."""
        return self._why_read_only() is not None

    @_one_thread_at_a_time
    def require_writable(self) -> None:
        """GalleryError, one line, if this process cannot write the gallery; writes call it before anything else."""
        if self._conn is None:  # its lock file is closed too, which _lock_problem would take for one it cannot open
            raise GalleryError("the gallery is closed")
        why = self._why_read_only()
        if why:
            raise GalleryError(f"gallery {self.root} is read-only: {why}")

    def _why_read_only(self) -> str | None:
        return self._why_unwritable or self._lock_problem()

    def _busy(self) -> GalleryError:
        return GalleryError(f"gallery {self.root} is busy: another process has been writing to it for "
                            f"{self.lock_timeout:g} s")

    def _lock_problem(self) -> str | None:
        if self._lock.opened():
            return None
        return f"its lock file {self._lock.path} cannot be opened ({self._lock.error.strerror or self._lock.error})"

    # --- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[Gallery]:
        """Hold the exclusive gallery lock; on leaving the outermost block, write the index checkpoint. The block
        holds the thread lock too: another thread's reads and writes wait for it to end."""
        self._refuse_another_process()
        self._hold_writer_lock()
        try:
            if self._writer_depth == 0:
                try:
                    self._refresh()  # another writer may have changed the gallery since we last looked
                except BaseException:
                    self._lock.release()
                    raise
            self._writer_depth += 1
            body_failed = True
            try:
                yield self
                body_failed = False
            finally:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    try:
                        self._checkpoint()
                    except Exception as exc:
                        # The body's own error (a full disk, say) says more than the checkpoint's that followed it;
                        # what was committed is in the database, and the next open rebuilds the index from it.
                        if not body_failed:
                            raise
                        notice = f"gallery {self.root}: index not saved after a failed write: {one_line(exc)}"
                        try:
                            warnings.warn(notice, GalleryWarning, 3)
                        except Warning:  # warnings made errors (-W error) must not hide the body's own error
                            log.warning(notice)
                    finally:
                        self._lock.release()
        finally:
            self._thread_lock.release()

    def _hold_writer_lock(self) -> None:
        """Take the thread lock, then the writer lock unless this thread's writer block holds it already; the busy
        GalleryError after lock_timeout. Between tries the thread lock is let go, so that while another process
        writes, this process's other threads go on reading."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while True:
            self._thread_lock.acquire()
            try:
                if self._writer_depth:  # this thread's own block: another thread's would hold the thread lock
                    return
                self.require_writable()
                if self._lock.try_acquire():
                    return
            except BaseException:
                self._thread_lock.release()
                raise
            self._thread_lock.release()
            if time.monotonic() >= deadline:
                raise self._busy()
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def add(self, identity: str, embeddings: np.ndarray, sources: list[dict]) -> list[int]:
        """Store embeddings (n, dim) for `identity`, one source dict {path, sha256, box} each, in one
        transaction; returns their ids. Vectors are normalised to unit length."""
        name = clean_identity(identity)
        vectors = unit_vectors(embeddings, self.dim)
        rows = _clean_sources(sources, len(vectors))
        with self.writer():
            now = time.time()
            with self._transaction(write=True) as conn:
                identity_id = self._ensure_identity(conn, name, now)
                ids = [
                    cast(int, conn.execute(  # an INSERT's lastrowid is never None
                        "INSERT INTO embeddings(identity_id, source_path, sha256, box, created, vector)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (identity_id, path, sha, box, now, vector.astype("<f4").tobytes()),
                    ).lastrowid)
                    for (path, sha, box), vector in zip(rows, vectors, strict=True)
                ]
                generation = self._bump_generation(conn)
            # Only after the commit: an id that was rolled back may be handed out again.
            id_array = np.array(ids, np.int64)
            self._max_id = max(self._max_id, ids[-1])  # first: an interrupted add never saves an id past it
            self._index.add(vectors, id_array)
            self._unsaved = True
            self._live_ids = np.concatenate([self._live_ids, id_array])
            self._live_identity = np.concatenate([self._live_identity, np.full(len(ids), identity_id, np.int64)])
            self._names[identity_id] = name
            self._data_generation = generation
        return ids

    def remove(self, identity: str) -> int:
        """Delete an identity and all its embeddings; returns how many embeddings went. Unknown name: error. A name is
        taken as stored where the gallery holds it so (_stored_identity)."""
        with self.writer(), self._transaction(write=True) as conn:
            identity_id = self._identity_id(conn, self._stored_identity(conn, identity))
            removed = conn.execute("DELETE FROM embeddings WHERE identity_id = ?", (identity_id,)).rowcount
            conn.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            self._relabelled(conn)  # the index keeps the vectors as tombstones until the write ends
            self._forgetting = True
        return removed

    def remove_photos(self, photos: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[dict]:
        """Delete the faces enrolled from these photos, each named by its content sha256 or its path; returns the
        faces removed ({identity, path, sha256, created, named_by}: named_by lists the photos given, as strings,
        that named the face). An identity left without faces goes too.

        For one wrong photo in a person's folder: the rest of that person stays enrolled. A digest matches in either
        case, and so does its start from 12 hex digits on (what `facekit gallery photos` shows) where it names one
        photo only; the start of several photos' digests is a GalleryError, and nothing is removed. A path matches
        as given, absolute (as enroll and add_face record it) or relative to the current folder (as galleries
        enrolled before they did hold it), both normalised ("./a/../a/1.jpg" is "a/1.jpg") but a symlink not
        resolved (enrolled as named). One photo may be given alone, as a string or path.

        "<array>" and "<bytes>", the path add_face records for every face added from an array, an image or bytes, name
        no photo and are refused (a file so named is found as "./<array>"): such a face is removed by its sha256."""
        if isinstance(photos, (str, os.PathLike)):
            photos = [photos]
        here = os.getcwd()  # once: abspath and relpath would ask for it for every photo
        by_digest: dict[str, list[str]] = {}
        by_prefix: dict[str, str] = {}
        by_path: dict[str, list[str]] = {}
        for photo in dict.fromkeys(str(photo) for photo in photos):
            if photo in PLACEHOLDER_PATHS:  # given as the path, it would remove every such face, of every person
                raise GalleryError(f"{photo} names no photo: it is what the gallery records as the path of every face "
                                   "added from an array, an image or bytes; remove such a face by its sha256, as "
                                   f"`facekit gallery photos` shows it (a file named so: ./{photo}); nothing was "
                                   "removed")
            # Only the string as given is a digest: a path's spelling that happens to look like one is no digest.
            by_digest.setdefault(photo.lower(), []).append(photo)
            if SHA256_PREFIX.fullmatch(photo):
                by_prefix[photo.lower()] = photo
            absolute = os.path.normpath(os.path.join(here, photo))
            # An empty string names no photo, not the current folder.
            # A placeholder is no spelling of a file named so ("./<array>"): it would take every such face too.
            spellings = {photo, absolute, os.path.relpath(absolute, here)} - set(PLACEHOLDER_PATHS) if photo else set()
            for path in spellings:  # as the gallery stores a path: a byte that is not UTF-8 as \xNN
                by_path.setdefault(printable_path(path), []).append(photo)
        with self.writer(), self._transaction(write=True) as conn:
            # Matched here, not with IN (?, ...): any number of keys (SQLite caps the parameters of a statement),
            # in one pass; source_path has no index, so SQLite would read the whole table for them anyway.
            every = conn.execute(f"SELECT e.id, i.name, e.source_path, e.sha256, e.created {LIVE_ROWS} ORDER BY e.id")
            rows = []
            # Looked up by each length given, not each start tried on each row: 5,000 starts against 100,000 faces
            # took 34 s.
            prefix_lengths = sorted({len(prefix) for prefix in by_prefix})
            digests_started: dict[str, set[str]] = {}
            for row in every:
                started = [row[3][:length] for length in prefix_lengths if row[3][:length] in by_prefix]
                for prefix in started:
                    by_digest.setdefault(row[3], []).append(by_prefix[prefix])
                    digests_started.setdefault(prefix, set()).add(row[3])
                if started or row[3] in by_digest or row[2] in by_path:
                    rows.append(row)
            for prefix, digests in digests_started.items():
                # A typed start that names two photos must not remove both: 12 digits make that rare, not impossible.
                if len(digests) > 1:
                    raise GalleryError(f"{by_prefix[prefix]} is the start of the sha256 of several photos; give more "
                                       "of it")
            if not rows:
                return []
            conn.executemany("DELETE FROM embeddings WHERE id = ?", [(row[0],) for row in rows])
            self._delete_faceless_identities(conn)
            self._relabelled(conn)  # the index keeps the vectors as tombstones until the write ends
            self._forgetting = True
        return [{"identity": name, "path": path, "sha256": sha, "created": created,
                 "named_by": list(dict.fromkeys(by_digest.get(sha, []) + by_path.get(path, [])))}
                for _, name, path, sha, created in rows]

    def move_photos(self, moves: list[tuple[str, str, str, str]]) -> list[dict]:
        """Point the faces enrolled from photos that were renamed or moved at where the photos are now: each move
        (sha256, old path, new path, identity) gives the faces recorded from that content at that path the new path
        and the identity (made if new), all the moves in one transaction; an identity left without faces goes.
        Returns the faces moved ({id, identity, path, sha256, old_identity, old_path}); a move that names no face is
        passed over.

        The embeddings stay as they are: the index holds them by id, and only the database says whose they are, so
        a move, like rename, never touches the index files."""
        wanted = []
        for sha, old, new, identity in moves:
            ((new, sha, _),) = _clean_sources([{"path": new, "sha256": sha, "box": None}], 1)
            wanted.append((sha, printable_path(str(old)), new, clean_identity(identity)))
        moved = []
        with self.writer(), self._transaction(write=True) as conn:
            now = time.time()
            for sha, old, new, name in wanted:
                # Matched by content and path: in a swap of two photos' names, the first move must not take the second.
                faces = conn.execute(f"SELECT e.id, i.name {LIVE_ROWS} WHERE e.sha256 = ? AND e.source_path = ?"
                                     " ORDER BY e.id", (sha, old)).fetchall()
                if not faces:
                    continue
                identity_id = self._ensure_identity(conn, name, now)
                conn.executemany("UPDATE embeddings SET identity_id = ?, source_path = ? WHERE id = ?",
                                 [(identity_id, new, face_id) for face_id, _ in faces])
                moved.extend({"id": int(face_id), "identity": name, "path": new, "sha256": sha, "old_identity": was,
                              "old_path": old} for face_id, was in faces)
            if not moved:
                return []
            self._delete_faceless_identities(conn)
            self._relabelled(conn)
        return moved

    def rename(self, old: str, new: str, *, merge: bool = False) -> None:
        """Rename an identity. Renaming onto an existing name is refused unless merge=True, because merging
        two people's faces by a typo is silent and hard to undo; with merge=True the embeddings join `new`. The old
        name is taken as stored where the gallery holds it so (_stored_identity); the new must pass clean_identity."""
        new = clean_identity(new)
        with self.writer(), self._transaction(write=True) as conn:
            old = self._stored_identity(conn, old)
            if old != new:
                refuse_reserved_name(new)
            old_id = self._identity_id(conn, old)
            if old == new:
                return
            target = conn.execute("SELECT id FROM identities WHERE name = ?", (new,)).fetchone()
            if target is None:
                self._refuse_look_alike(conn, new, renamed=old)
                conn.execute("UPDATE identities SET name = ? WHERE id = ?", (new, old_id))
            elif not merge:
                raise GalleryError(f"identity {new!r} already exists; remove it first, or pass merge=True (the "
                                   "CLI's --merge) to merge into it")
            else:
                conn.execute("UPDATE embeddings SET identity_id = ? WHERE identity_id = ?", (target[0], old_id))
                conn.execute("DELETE FROM identities WHERE id = ?", (old_id,))
            self._relabelled(conn)

    def rebuild(self, index: str | None = None) -> None:
        """Remake the index from the database (the source of truth) and write it; `index` ("auto", "flat",
        "hnsw", "ivf") also changes the kind asked for, and is remembered."""
        if index is not None:
            _check_index_kind(index)
        with self.writer():
            if index is not None:
                with self._transaction(write=True):
                    self._set_meta("index", index)
                self._request = index
            with self._transaction():
                self._build_from_db()
            self._write_index()

    # --- reading ----------------------------------------------------------------------------------------

    @_one_thread_at_a_time
    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """For each query (n, dim), the k best IDENTITIES, each scored by its most similar embedding."""
        vectors = unit_vectors(queries, self.dim, "queries")
        if not isinstance(k, int) or k < 1:
            raise GalleryError(f"k must be a positive integer, not {k!r}")
        with self._synced():  # one snapshot: index view, names and source paths agree
            results = self._rank(vectors, k)
            wanted = sorted({m.embedding_id for matches in results for m in matches})
            paths = self._source_paths(wanted)
        for matches in results:
            for match in matches:
                match.source_path = paths.get(match.embedding_id, "")
        return results

    def has_source(self, sha256: str) -> bool:
        """Whether a file with this content hash has already been enrolled."""
        return self.source_identity(sha256) is not None

    def source_identity(self, sha256: str) -> str | None:
        """Who a file with this content hash was enrolled as; None if it was not."""
        found = self.source_face(sha256)
        return None if found is None else found[1]

    @_one_thread_at_a_time
    def source_face(self, sha256: str) -> tuple[int, str] | None:
        """The id and identity of the (first) face enrolled from a file with this content hash; None if none was."""
        with self._transaction() as conn:
            row = conn.execute(f"SELECT e.id, i.name {LIVE_ROWS} WHERE e.sha256 = ? ORDER BY e.id LIMIT 1",
                               (str(sha256).lower(),))
            found = row.fetchone()
        return None if found is None else (found[0], found[1])

    @_one_thread_at_a_time
    def photos(self, identity: str | None = None) -> list[dict]:
        """Every enrolled face's {identity, path, sha256, created} (created: Unix time), by identity then age;
        only one identity's when named (an unknown name is a GalleryError; a name is taken as stored where the gallery
        holds it so, as remove takes it)."""
        where, values = "", ()
        with self._transaction() as conn:
            if identity is not None:
                name = self._stored_identity(conn, identity)
                self._identity_id(conn, name)
                where, values = "WHERE i.name = ?", (name,)
            rows = conn.execute(
                f"SELECT i.name, e.source_path, e.sha256, e.created {LIVE_ROWS} {where} ORDER BY i.name, e.id", values)
            return [{"identity": name, "path": path, "sha256": sha, "created": created}
                    for name, path, sha, created in rows]

    @_one_thread_at_a_time
    def newest_faces(self, identity: str, count: int) -> tuple[list[int], list[str], np.ndarray]:
        """The ids, source paths and vectors (n, dim) of the `count` faces last enrolled as identity (its name as
        stored), newest first: none for a name the gallery does not hold. A damaged vector is left out, as search
        leaves it out (_decode_vectors)."""
        with self._transaction() as conn:
            rows = conn.execute(f"SELECT e.id, e.source_path, e.vector {LIVE_ROWS} WHERE i.name = ? "
                                "ORDER BY e.id DESC LIMIT ?", (identity, count)).fetchall()
        ids, intact, vectors = _decode_vectors([(face_id, vector) for face_id, _, vector in rows], self.dim)
        return ([int(face_id) for face_id in ids[intact]],
                [path for (_, path, _), whole in zip(rows, intact) if whole], vectors)

    @_one_thread_at_a_time
    def identities(self) -> list[tuple[str, int]]:
        """(name, number of embeddings) for every identity, sorted by name."""
        with self._transaction() as conn:
            rows = conn.execute(f"SELECT i.name, COUNT(*) {LIVE_ROWS} GROUP BY i.id ORDER BY i.name")
            return [(name, count) for name, count in rows]

    @_one_thread_at_a_time
    def __len__(self) -> int:
        with self._transaction() as conn:
            return conn.execute(f"SELECT COUNT(*) {LIVE_ROWS}").fetchone()[0]

    @_one_thread_at_a_time
    def stats(self) -> dict:
        self._refresh()
        index = self._index
        return {
            "path": str(self.root),
            "identities": len(self.identities()),
            "embeddings": len(self._live_ids),
            "index": index.spec.kind,
            "index_request": self._request,
            "nlist": index.spec.nlist,
            "dim": self.dim,
            # The sha256 of the weights its embeddings came from (bind_model), which a refusal names by 12 digits
            # only: `sha256sum` of a .safetensors file tells whether it is that model. None until the first enroll.
            "model": self._meta(MODEL_KEY),
            "shards": len(index.shards),
            "index_vectors": index.ntotal,
            "tombstones": self._tombstone_count(),
            "index_generation": self._index_generation,
            "bytes_on_disk": _folder_bytes(self.root),
            "threads": faiss.omp_get_max_threads(),
        }

    @_one_thread_at_a_time
    def bind_model(self, model_id: str | None) -> None:
        """Refuse to search or extend this gallery with another model's embeddings: they are not comparable.

        The first write records the model (the sha256 of its weights). Galleries whose embeddings were stored
        before facekit recorded it, and models without a fingerprint, are not checked."""
        if not model_id:
            return
        with self._transaction(write=self._lock.held) as conn:
            stored = self._meta(MODEL_KEY)
            empty = conn.execute("SELECT 1 FROM embeddings LIMIT 1").fetchone() is None
            if stored is None and empty and self._lock.held:
                self._set_meta(MODEL_KEY, model_id)
                stored = model_id
        if stored is None and not empty and not self._unrecorded_model_told:
            # Written before facekit recorded the model: another model's faces would be named wrongly, silently.
            self._unrecorded_model_told = True
            warnings.warn(f"gallery {self.root} does not record the model its faces were enrolled with (added by an "
                          "early facekit, or by Gallery.add with no bind_model before it in a writer block); if names "
                          "look wrong, enroll again into a new gallery",
                          GalleryWarning, 3)
        if stored is not None and stored != model_id:
            raise GalleryError(
                f"gallery {self.root} holds embeddings of another model (weights sha256 {stored[:12]}, this one is "
                f"{model_id[:12]}); they cannot be compared: enroll again into a new gallery, or use the model "
                "it was made with (--weights; `facekit gallery stats` gives its sha256, that of its .safetensors)")

    @_one_thread_at_a_time
    def check(self) -> list[str]:
        """Compare the index files with the database; one line per problem, [] when consistent.

        Waits for the writer lock so that no writer is half way through; reads, never repairs."""
        held = self._lock.held
        if held:
            self._checkpoint()  # our own pending adds are not a problem on disk
        elif self._lock.opened():
            try:
                self._lock.acquire(self.lock_timeout)
            except LockTimeout as exc:
                raise GalleryError(f"gallery {self.root} is busy; cannot check it while it is written") from exc
        elif not isinstance(self._lock.error, FileNotFoundError):  # none at all: no writer has opened the gallery
            raise GalleryError(f"cannot check gallery {self.root}: {self._lock_problem()}, so writers cannot be "
                               "waited for")
        try:
            with self._transaction():
                return self._problems()
        finally:
            if not held:
                self._lock.release()

    # --- internals ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if self._conn is None:
            raise GalleryError("the gallery is closed")
        if self._conn.in_transaction:  # nested: part of the enclosing transaction
            yield self._conn
            return
        with self._steady():
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _connect(self, create: bool | None = None) -> sqlite3.Connection:
        """A connection to gallery.sqlite. The first one (`create` given) refuses a database that is not a gallery
        before anything is written, and lets one with no tables yet become a new gallery only if `create`."""
        db = self.root / DB_NAME
        if self._why_unwritable:
            uri = f"{db.absolute().as_uri()}?{self._read_only_mode()}"
            conn = sqlite3.connect(uri, uri=True, timeout=self.lock_timeout, isolation_level=None,
                                   check_same_thread=False)
        else:
            # Any thread may use it: the thread lock (_one_thread_at_a_time) keeps them from using it at once.
            conn = sqlite3.connect(db, timeout=self.lock_timeout, isolation_level=None, check_same_thread=False)
        if create is not None:
            try:
                self._refuse_what_is_not_a_gallery(conn, create)
            except BaseException:
                conn.close()
                raise
        if not self._why_unwritable:
            # Two processes creating one gallery both switch its new file to WAL, and SQLite answers the second at
            # once with "database is locked" (its busy timeout does not apply: waiting could deadlock), so it retries.
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.01)
        # FULL, not NORMAL: with WAL, NORMAL already survives a killed process, but only FULL makes an
        # add() that has returned survive a power cut too; one fsync per enrolled file is cheap.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # A removed face must leave the disk: deleted rows are zeroed, not left in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def _refuse_what_is_not_a_gallery(self, conn: sqlite3.Connection, create: bool) -> None:
        """GalleryError, with nothing in the folder changed, for another program's database, and for a database with
        no tables (0 bytes after a full disk or a careless copy, say) beside index files or a log: made a new gallery,
        it would lose the faces they hold, and its first write would delete them as strays. With no tables and none
        of those (what a kill during a gallery's very first open leaves), it becomes a new gallery if `create`."""
        db = self.root / DB_NAME
        # Looked at before the database: a process creating this gallery now commits its tables before it writes any
        # index file, so index files seen here mean its tables are seen below.
        holds_index = holds_index_files(self.root)
        holds_log = _size(Path(f"{db}-wal")) > 0  # before the database's size: a new gallery's log follows its header
        if _size(db) == 0:
            tables = []  # SQLite is not asked: reading a 0-byte database deletes its -wal file
        else:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = sorted(name for (name,) in rows if not name.startswith("sqlite_"))
            holds_log = False  # SQLite has read it with the database: it held no tables either
        if tables and not GALLERY_TABLES <= set(tables):
            names = escape_control_characters(", ".join(tables[:10]) + (", ..." if len(tables) > 10 else ""))
            raise GalleryError(f"{db} is not a facekit gallery database (tables: {names}); nothing was changed: "
                               "give the gallery a folder of its own")
        if tables:
            if triggers := self._triggers(conn):
                raise GalleryError(
                    f"{db} holds a trigger ({', '.join(triggers)}), which facekit never makes: it could keep copies of "
                    "removed faces; nothing was changed: drop it (sqlite3's DROP TRIGGER) if you trust the rest of the "
                    "database, or restore it from a backup")
            return
        if holds_index or holds_log:
            what = "index files" if holds_index else f"a write-ahead log ({db.name}-wal)"
            raise GalleryError(f"{DB_NAME} in {self.root} is empty but {self.root} holds {what}: restore the "
                               "database from a backup; nothing was changed")
        if not create:
            raise GalleryError(f"no gallery at {self.root} ({DB_NAME} there is empty)")

    @staticmethod
    def _triggers(conn: sqlite3.Connection) -> list[str]:
        """The database's triggers, quoted for a line of output. facekit makes none: one in a database made elsewhere
        (AFTER DELETE ON embeddings, copying the row) would keep what a removal must delete."""
        return [_quoted_name(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]

    def _read_only_mode(self) -> str:
        """How SQLite can read a gallery this process cannot write, without making any file there.

        Readers of a WAL database meet in gallery.sqlite-shm, which SQLite makes when it is missing. While a writer
        has the gallery open, or after one died, -wal and -shm are both there, and SQLite reads the log through a
        -shm it may only read. Otherwise there is no log to read (the last connection to close folds it into
        gallery.sqlite and deletes it), so gallery.sqlite alone is whole, and immutable=1 reads it without -shm.
        SQLite then takes no locks and trusts what it has cached for ever: _steady() keeps writers out instead."""
        db = self.root / DB_NAME
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        for path in (db, wal, shm):
            if path.exists() and not os.access(path, os.R_OK):
                raise GalleryError(f"cannot read gallery {self.root}: no read permission on {path}")
        fingerprint = self._db_fingerprint()
        self._immutable = not (wal.exists() and shm.exists())
        if not self._immutable:
            return "mode=ro"
        if _size(wal) > 0:  # read without it, gallery.sqlite would be an older version of the gallery
            raise GalleryError(
                f"cannot read gallery {self.root}: {wal.name} holds changes that SQLite reads only through {shm.name}, "
                f"which is missing and cannot be made ({self._why_unwritable}); opening the gallery once with write "
                "access folds them into the database")
        self._db_fingerprint_seen = fingerprint
        return "mode=ro&immutable=1"

    def _db_fingerprint(self) -> tuple:
        """What changes when anyone writes gallery.sqlite or opens it for writing (which makes its -wal file)."""
        db = self.root / DB_NAME
        stat = db.stat()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, Path(f"{db}-wal").exists()

    @contextlib.contextmanager
    def _steady(self) -> Iterator[None]:
        """Around each transaction of an immutable connection (see _read_only_mode): a shared flock keeps facekit's
        writers (the gallery's owner, a host behind a read-only mount) from changing gallery.sqlite under it, and
        if it changed since the connection was opened, a fresh one reads it, so no stale cached page is mixed in.
        A writer that has the gallery open has made its -wal file: the fresh connection then reads through -shm,
        as any WAL reader does, and needs neither."""
        deadline = time.monotonic() + self.lock_timeout
        shared = False
        try:
            while self._immutable:
                if self._db_fingerprint() != self._db_fingerprint_seen:
                    self._reconnect()
                    continue
                # No lock file (and none can be made here): no writer to keep out, as every writer makes one first.
                if shared or self._lock.held or not self._lock.opened():
                    break
                shared = self._lock.try_acquire(shared=True)
                if not shared:
                    if time.monotonic() > deadline:
                        raise self._busy()
                    time.sleep(0.01)
            yield
        finally:
            if shared:
                self._lock.release()

    def _reconnect(self) -> None:
        fresh = self._connect()
        self._conn.close()
        self._conn = fresh

    def _meta(self, key: str) -> str | None:
        # As bytes, as the manifest is read: text that is not UTF-8 (a bit flipped) would be an sqlite3 error, which
        # ends the open. Decoded with U+FFFD in place of the damage, it is a value no setting takes: lost.
        row = self._conn.execute("SELECT CAST(value AS BLOB) FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None or row[0] is None else row[0].decode(errors="replace")

    def _manifest(self) -> dict | None:
        """The index files' checkpoint record; None before the first one is written. A malformed one (a bit flipped
        in gallery.sqlite) is a GalleryError: it describes only the index files, which are rebuilt from the database."""
        # As bytes: text that is not UTF-8 would be an sqlite3 error, which ends the open instead.
        row = self._conn.execute("SELECT CAST(value AS BLOB) FROM meta WHERE key = 'manifest'").fetchone()
        if row is None:
            return None
        try:
            manifest = json.loads(row[0].decode())
            files = manifest["files"]
            sound = (manifest["kind"] in INDEX_KINDS and isinstance(files, list) and len(files) > 0
                     and all(isinstance(manifest[key], int) for key in ("generation", "nlist", "max_id"))
                     and all(INDEX_FILE.fullmatch(entry["name"]) and isinstance(entry["crc32"], str)
                             and isinstance(entry["ntotal"], int) for entry in files))
        except (ValueError, TypeError, KeyError):
            sound = False
        if not sound:
            raise GalleryError(f"the index manifest in {DB_NAME} is malformed")
        return manifest

    def _manifest_generation(self) -> int:
        """The index checkpoint's generation: 0 before the first one, and while the manifest is malformed."""
        try:
            manifest = self._manifest()
        except GalleryError:
            return 0
        return manifest["generation"] if manifest else 0

    def _set_meta(self, key: str, value: object) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    def _meta_int(self, key: str) -> int | None:
        """An integer setting; None if its row is missing or holds no integer (a damaged database)."""
        try:
            return int(self._meta(key))
        except (TypeError, ValueError):
            return None

    def _lost_settings(self) -> dict[str, object]:
        """The settings missing or damaged in the database that can do with their default, which they are read as
        and which a writable open restores: the index kind asked for, the shard count, and the data generation (a
        counter that only tells readers that something changed)."""
        lost: dict[str, object] = {}
        if self._meta("index") not in ("auto", *INDEX_KINDS):
            lost["index"] = "auto"
        if not 1 <= (self._meta_int("shards") or 0) <= 256:
            lost["shards"] = 1
        if self._meta_int("data_generation") is None:
            lost["data_generation"] = 0
        return lost

    def _generation(self) -> int:
        return self._meta_int("data_generation") or 0

    def _relabelled(self, conn: sqlite3.Connection) -> None:
        """After a write that changed only whose faces are, where from, or which are live (the vectors stay in the
        index): a new generation for other processes, and this one's live rows and names re-read at once."""
        self._bump_generation(conn)
        self._load_live()
        self._data_generation = self._generation()

    def _delete_faceless_identities(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM identities WHERE id NOT IN (SELECT DISTINCT identity_id FROM embeddings)")

    def _bump_generation(self, conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'data_generation'")
        return self._generation()

    def _ensure_identity(self, conn: sqlite3.Connection, name: str, now: float) -> int:
        """The id of identity `name`, made (created `now`) if there is none and its name is not reserved."""
        row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        refuse_reserved_name(name)
        self._refuse_look_alike(conn, name)
        return conn.execute("INSERT INTO identities(name, created) VALUES (?, ?)", (name, now)).lastrowid

    @staticmethod
    def _refuse_look_alike(conn: sqlite3.Connection, name: str, renamed: str | None = None) -> None:
        """GalleryError for a new name that looks exactly like another stored one (not the one being renamed): they
        differ only in joiners or marks."""
        # Indexed, or each new person cost a scan of every name (61 ms a person at 100,000 people). Made here, where
        # a gallery of any version first needs it; after that, a look-up in sqlite_master.
        conn.execute(f"CREATE INDEX IF NOT EXISTS identities_shown_name ON identities({_SHOWN_NAME_SQL})")
        alike = conn.execute(f"SELECT name FROM identities WHERE {_SHOWN_NAME_SQL} = ? AND name NOT IN (?, ?)",
                             (shown_name(name), name, renamed if renamed is not None else name)).fetchone()
        if alike is not None:
            raise look_alike(name, alike[0])

    @staticmethod
    def _stored_identity(conn: sqlite3.Connection, identity: object) -> str:
        """identity exactly as stored if the gallery holds that name, else its clean_identity form (or GalleryError). A
        database made elsewhere may hold a name clean_identity refuses or changes (an ESC, 50 million characters, spaces
        around it): its person must still be removable and renamable by it."""
        with contextlib.suppress(UnicodeEncodeError):  # a name SQLite cannot take (a lone surrogate) is stored by none
            if isinstance(identity, str) and conn.execute("SELECT 1 FROM identities WHERE name = ?",
                                                          (identity,)).fetchone():
                return identity
        return clean_identity(identity)

    def _identity_id(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise GalleryError(f"no identity named {_quoted_name(name)} in {self.root}")
        return row[0]

    def _init_schema(self, dim: int | None, index: str, shards: int | None) -> bool:
        """Create tables on first use, restore lost settings (_lost_settings) where this process may write, and read
        the settings; True if the caller changed index or shards, or a lost setting was restored."""
        with self._transaction() as conn:
            ready = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            restore = bool(ready and self._lost_settings()) and not self.read_only
            if ready and not self._settings_changed_by(index, shards) and not restore:
                self._read_settings(dim)  # the common case, a plain read: readers never queue behind writers
                return False
        self.require_writable()
        with self._transaction(write=True) as conn:
            new = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None
            for statement in SCHEMA.split(";"):  # not executescript(): it would commit our transaction
                if statement.strip():
                    conn.execute(statement)
            if new:  # only then: a damaged gallery's lost dim must not be taken for the default
                defaults = {"format_version": FORMAT_VERSION, "dim": dim or DEFAULT_DIM, "index": index,
                            "shards": shards or 1}
                for key, value in {**defaults, "data_generation": 0}.items():
                    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))
            lost = self._lost_settings()
            changes = self._settings_changed_by(index, shards)  # again: a writer may have changed them meanwhile
            for key, value in {**lost, **changes}.items():
                self._set_meta(key, value)
            self._read_settings(dim)  # a newer format or another dim raises, and rolls the changes back
        if lost:
            restored = ", ".join(f"{key}={value}" for key, value in lost.items())
            warnings.warn(f"gallery {self.root}: settings missing or damaged in {DB_NAME} restored to their defaults: "
                          f"{restored}", GalleryWarning, 3)
        return bool(changes or lost)

    def _settings_changed_by(self, index: str, shards: int | None) -> dict[str, object]:
        """The meta rows that Gallery.open's `index` and `shards` change: those given that differ from the stored."""
        changes: dict[str, object] = {}
        if index != "auto" and index != self._meta("index"):
            changes["index"] = index
        if shards is not None and shards != self._meta_int("shards"):
            changes["shards"] = shards
        return changes

    def _read_settings(self, dim: int | None) -> None:
        for key in ("format_version", "dim"):  # no default would do: without them the gallery cannot be read
            if (self._meta_int(key) or 0) < 1:
                raise GalleryError(f"{self.root / DB_NAME} is damaged: its {key} setting is missing or not a "
                                   "positive integer; restore the database from a backup")
        if self._meta_int("format_version") > FORMAT_VERSION:
            raise GalleryError(f"{self.root} was written by a newer facekit "
                               f"(format {self._meta_int('format_version')})")
        self.dim = self._meta_int("dim")
        if self.dim > MAX_DIM:  # a crafted value: faiss cannot make the index, reading a row would take gigabytes
            raise GalleryError(f"{self.root / DB_NAME} is damaged: its dim setting is {self.dim}, outside 1 to "
                               f"{MAX_DIM}; restore the database from a backup")
        if dim is not None and self.dim != dim:
            raise GalleryError(f"gallery {self.root} holds {self.dim}-d embeddings, not {dim}-d (another model?)")
        self._read_index_settings()

    def _read_index_settings(self) -> None:
        """The index kind asked for and the shard count: unlike dim, another process's open may change them."""
        lost = self._lost_settings()
        self._request = lost.get("index") or self._meta("index")
        self._n_shards = lost.get("shards") or self._meta_int("shards")

    def _refresh(self) -> None:
        with self._synced():
            pass

    @contextlib.contextmanager
    def _synced(self) -> Iterator[None]:
        """A read transaction whose snapshot the in-memory view has been brought up to."""
        for attempt in range(5):
            with self._transaction():
                if self._sync(final=attempt == 4):  # a final attempt never asks for a retry, so one yields
                    yield
                    return

    def _sync(self, final: bool) -> bool:
        """Bring the in-memory view up to this transaction's snapshot. False: retry in a new transaction."""
        generation = self._generation()
        self._read_index_settings()
        manifest_generation = self._manifest_generation()
        # A new checkpoint alone (a removal's purge, a rebuild) leaves the data generation as it was, and must be
        # loaded all the same: the old index still holds the removed faces' vectors.
        reloaded = self._index is None or manifest_generation != self._index_generation
        if not reloaded and generation == self._data_generation:
            return True
        if reloaded:
            try:
                manifest = self._manifest()
                self._index, self._index_problem = self._read_index_files(manifest), None
                self._max_id = manifest["max_id"]
                self._unsaved = False
            except _IndexVanished:
                if not final:
                    return False
                self._index_problem = "an index file named by the manifest is missing"
            except GalleryError as exc:
                self._index_problem = str(exc)
            if self._index_problem:
                self._build_from_db()
            self._index_generation = manifest_generation
        self._load_live()
        if reloaded and not self._index_problem:
            # The rows the checkpoint covers but lacks: those whose damaged vectors the rebuild that wrote it left
            # out. The index lacking any other is no damage of theirs, and rebuilt as removed faces are.
            covered = self._live_ids[: np.searchsorted(self._live_ids, self._max_id, "right")]
            # Counts alone cannot tell: a removal's tombstones may make up for rows left out. The usual index, holding
            # exactly these rows, is told by comparing the ids in order (0.3 ms at 500k faces, where sorting both for a
            # set difference took 0.4 s on every open); any other is compared as sets.
            lacking = (np.zeros(0, np.int64) if self._index.holds_exactly(covered)
                       else covered[~np.isin(covered, self._index.ids())])
            self._left_out = np.concatenate(
                [np.zeros(0, np.int64), *(ids[~intact] for ids, intact, _ in self._vector_rows_of(lacking))])
        caught_up = self._catch_up()
        if reloaded:
            self._lag = caught_up
        self._data_generation = generation
        return True

    def _read_index_files(self, manifest: dict | None) -> ShardedIndex:
        if manifest is None:
            raise GalleryError(NO_INDEX_YET)
        shards = []
        for entry in manifest["files"]:
            path = self.root / entry["name"]
            # A writer may delete the file at any moment, between these steps too, so each one checks.
            try:
                checksum = _crc32(path)
            except FileNotFoundError:
                raise self._missing_index_file(entry['name']) from None
            except OSError as exc:  # a directory in its place, no read permission: rebuilt from the database
                if exc.errno in _OUT_OF_DESCRIPTORS:  # this process's limit, not the file's fault: no rebuild
                    raise
                raise GalleryError(f"index file {entry['name']} cannot be read ({exc.strerror or exc})") from exc
            if checksum != entry["crc32"]:
                raise GalleryError(f"index file {entry['name']} does not match its checksum")
            try:
                with open(path, "rb") as handle:  # not by name, which SWIG passes faiss only if it is valid UTF-8
                    shard = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
            except FileNotFoundError:
                raise self._missing_index_file(entry['name']) from None
            except (OSError, RuntimeError, MemoryError) as exc:  # MemoryError: a crafted length asks for terabytes
                raise GalleryError(f"index file {entry['name']} is unreadable") from exc
            if shard.ntotal != entry["ntotal"] or shard.d != self.dim:
                raise GalleryError(f"index file {entry['name']} does not hold what the manifest says")
            shards.append(shard)
        spec = IndexSpec(manifest["kind"], manifest["nlist"])
        for shard in shards:
            _tune(shard, spec)
        return ShardedIndex(spec, shards)

    def _missing_index_file(self, name: str) -> Exception:
        if self._lock.held:
            return GalleryError(f"index file {name} is missing")
        return _IndexVanished()  # or a writer replaced it after our snapshot: the caller retries

    def _load_live(self) -> None:
        rows = self._conn.execute(f"SELECT e.id, e.identity_id {LIVE_ROWS} ORDER BY e.id").fetchall()
        table = np.array(rows, np.int64).reshape(-1, 2)
        self._live_ids, self._live_identity = table[:, 0].copy(), table[:, 1].copy()
        self._names = dict(self._conn.execute("SELECT id, name FROM identities"))

    def _vector_rows(self, where: str = "", params: tuple = ()) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Live rows by id, a chunk at a time, as _decode_vectors gives them: (ids, intact, intact vectors)."""
        cursor = self._conn.execute(f"SELECT e.id, e.vector {LIVE_ROWS} {where} ORDER BY e.id", params)
        while rows := cursor.fetchmany(_ROWS_PER_CHUNK):
            yield _decode_vectors(rows, self.dim)

    def _vector_rows_of(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """_vector_rows of these live rows."""
        for placeholders, part in _id_batches(ids):
            yield from self._vector_rows(f"WHERE e.id IN ({placeholders})", part)

    def _catch_up(self) -> int:
        """Add the rows committed after the index checkpoint; returns how many. Damaged vectors are left out, with
        a warning that names their photos."""
        added, damaged = 0, []
        for ids, intact, vectors in self._vector_rows("WHERE e.id > ?", (self._max_id,)):
            self._index.add(vectors, ids[intact])
            damaged.append(ids[~intact])
            self._max_id = int(ids[-1])
            added += len(vectors)
        self._unsaved = self._unsaved or added > 0
        if damaged and len(left_out := np.concatenate(damaged)):
            self._left_out = np.union1d(self._left_out, left_out)
            untold = np.setdiff1d(left_out, self._told_damaged)
            self._told_damaged = np.union1d(self._told_damaged, untold)
            paths = [_shown_path(path) for path in self._source_paths(untold).values()]
            if paths:
                shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                warnings.warn(f"gallery {self.root}: the index leaves out faces whose vector in {DB_NAME} is damaged "
                              "(not unit length); take these photos out with `facekit gallery remove-photo` and enroll "
                              f"them again: {shown}", GalleryWarning, 2)
        return added

    def _build_from_db(self) -> None:
        """Replace the in-memory index with one built from every live row (inside a transaction)."""
        self._load_live()
        spec = choose_index(self._request, len(self._live_ids))
        train = None
        if spec.kind == "ivf":
            rng = np.random.default_rng(0)
            size = min(len(self._live_ids), IVF_TRAIN_PER_CLUSTER * spec.nlist)
            sample = np.sort(rng.choice(self._live_ids, size, replace=False))
            train = np.concatenate([vectors for _, _, vectors in self._vector_rows_of(sample)])
        self._index = ShardedIndex.create(spec, self.dim, self._n_shards, train)
        self._max_id = 0
        self._left_out = np.zeros(0, np.int64)
        self._catch_up()
        self._unsaved = True

    def _repair_on_open(self) -> None:
        """If nobody is writing: persist a rebuilt or caught-up index, finish a removal whose writer died before
        it purged the index (the user asked for those faces to be forgotten; they must not wait for some later
        write), and clear files left by a crash."""
        if self.read_only or not self._lock.try_acquire():
            if self._index_needs_repair():
                why = "the gallery is read-only" if self.read_only else "another process is writing"
                log.info("gallery %s: index repaired in memory only; %s", self.root, why)
            return
        try:
            if self._index_needs_repair():
                self._index = None  # look again now that no writer can be half way through
                self._refresh()
            removed = self._tombstone_count()
            repair = self._index_needs_repair()  # before the rebuild, which leaves no tombstones
            if removed:
                with self._transaction():
                    self._build_from_db()
            if repair:
                new = self._index_problem == NO_INDEX_YET and not len(self._live_ids)
                if not new:
                    why = "; ".join(filter(None, [
                        self._index_problem,
                        self._lag and f"the index lacked {self._lag} embeddings (interrupted write?)",
                        removed and f"the index still held {removed} removed embeddings (interrupted removal?)"]))
                    warnings.warn(f"gallery {self.root}: {why}; rebuilt it from {DB_NAME}", GalleryWarning, 3)
                try:
                    self._write_index()
                except GalleryError as exc:  # a full disk must not stop reading: the rebuilt index is in memory
                    warnings.warn(f"{exc}; the repaired index is kept in memory only", GalleryWarning, 3)
            self._remove_stray_files()
            # The dead writer's log may hold the removed rows' old pages; otherwise this is cheap, and never waits.
            self._empty_wal(forgetting=bool(removed))
        finally:
            self._lock.release()

    def _index_needs_repair(self) -> bool:
        """Whether the index files could not be used, lacked rows, or hold removed faces' vectors."""
        return bool(self._index_problem or self._lag or self._tombstone_count())

    def _checkpoint(self) -> None:
        """End of a write: purge removed faces' vectors, re-type the index if due, write it if it has changed,
        and empty the write-ahead log."""
        if self._conn is None or self._index is None:
            return
        live = len(self._live_ids)
        wanted = choose_index(self._request, live)
        have = self._index.spec
        grown = wanted.kind == "ivf" and have.kind == "ivf" and wanted.nlist >= 2 * have.nlist
        rebuild = wanted.kind != have.kind or grown or len(self._index.shards) != self._n_shards
        purge = self._tombstone_count() > 0  # removed faces: their vectors must not stay in the index files
        if rebuild or purge:
            with self._transaction():
                self._build_from_db()
        if self._unsaved:
            self._write_index()
        self._empty_wal(forgetting=self._forgetting or purge)
        self._forgetting = False

    def _empty_wal(self, forgetting: bool) -> None:
        """Copy the write-ahead log into the database and truncate it: until then the log (and the database file
        the log has not been copied into yet) keeps the old versions of changed pages, a removed face's row
        among them. A reader's open snapshot blocks this; after a removal we wait for it up to lock_timeout and
        warn if that was not enough, otherwise we do not wait: every later write tries again."""
        why = f"a reader held a snapshot from before the removal for over {self.lock_timeout:g} s"
        if not forgetting:
            self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:  # a full disk, say: what was committed stands, and reading goes on
            busy, why = 1, f"the write-ahead log could not be emptied ({exc})"
        finally:
            if not forgetting:
                self._conn.execute(f"PRAGMA busy_timeout = {round(self.lock_timeout * 1000)}")
        if busy and forgetting:
            warnings.warn(
                f"gallery {self.root}: {why}, so {DB_NAME} and its -wal file may still hold the removed faces' old "
                "rows; every later write tries again, and closing the last connection to the gallery clears them",
                GalleryWarning, 2)

    def _tombstone_count(self) -> int:
        """Vectors in the in-memory index whose rows are gone (all live rows are in it, but those left out)."""
        if self._index is None:
            return 0
        return self._index.ntotal - len(self._live_ids) + int(np.isin(self._left_out, self._live_ids).sum())

    def _write_index(self) -> None:
        generation = self._next_index_generation()
        files = []
        for number, shard in enumerate(self._index.shards):
            path = self.root / f"index-{generation:08d}-{number}.faiss"
            _write_index_file(shard, path)
            files.append({"name": path.name, "crc32": _crc32(path), "ntotal": shard.ntotal})
        spec = self._index.spec
        manifest = {"generation": generation, "kind": spec.kind, "nlist": spec.nlist, "max_id": self._max_id}
        manifest["files"] = files
        with self._transaction(write=True):
            self._set_meta("manifest", json.dumps(manifest))
        self._index_generation, self._index_problem, self._lag, self._unsaved = generation, None, 0, False
        self._remove_stray_files()

    def _next_index_generation(self) -> int:
        """One above every generation used before: a reader still holding an index of the generation written would not
        load the new one. A malformed manifest reads as generation 0, but the files of the last generation it named
        stay until a new one is recorded (_remove_stray_files), and their names tell."""
        on_disk = [int(match.group(1)) for path in self.root.iterdir() if (match := INDEX_FILE.fullmatch(path.name))]
        return max([self._manifest_generation(), *on_disk]) + 1

    def _remove_stray_files(self) -> None:
        """Index files no manifest names: older generations, or a crash between write and commit."""
        try:
            manifest = self._manifest()
        except GalleryError:
            return  # which files are current is not known: they stay until a checkpoint is recorded over it
        keep = {entry["name"] for entry in manifest["files"]} if manifest else set()
        for path in self.root.iterdir():
            if INDEX_FILE.fullmatch(path.name) and path.name not in keep:
                # A directory in an index file's place, say, is left to a human; every write tries again.
                with contextlib.suppress(IsADirectoryError, PermissionError):
                    path.unlink(missing_ok=True)

    def _rank(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        ntotal = self._index.ntotal
        if not len(self._live_ids) or not ntotal:
            return [[] for _ in queries]
        # Over-fetch: several hits per identity and tombstones come back too. Widen until k identities appear.
        live_share = len(self._live_ids) / ntotal
        fetch = min(ntotal, int(max(4 * k, 32) / live_share) + 1)
        results: list[list[Match]] = [[] for _ in queries]
        todo = np.arange(len(queries))
        while len(todo):
            sims, ids = self._index.search(queries[todo], fetch)
            again = []
            for row, query in enumerate(todo):
                results[query] = self._best_per_identity(sims[row], ids[row], k)
                exhausted = fetch >= ntotal or ids[row, -1] < 0
                if len(results[query]) < k and not exhausted:
                    again.append(query)
            todo = np.array(again, np.int64)
            fetch = min(ntotal, fetch * 4)
        return results

    def _best_per_identity(self, sims: np.ndarray, ids: np.ndarray, k: int) -> list[Match]:
        at = np.minimum(np.searchsorted(self._live_ids, ids), len(self._live_ids) - 1)
        live = (ids >= 0) & (self._live_ids[at] == ids)
        matches, seen = [], set()
        for sim, embedding_id, identity_id in zip(sims[live], ids[live], self._live_identity[at[live]], strict=True):
            if identity_id not in seen:  # hits arrive best first, so the first one is the identity's best
                seen.add(identity_id)
                matches.append(Match(self._names[int(identity_id)], float(sim), int(embedding_id), ""))
                if len(matches) == k:
                    break
        return matches

    def _source_paths(self, ids: Iterable[int]) -> dict[int, str]:
        paths = {}
        for placeholders, part in _id_batches(ids):
            query = f"SELECT id, source_path FROM embeddings WHERE id IN ({placeholders})"
            paths.update(self._conn.execute(query, part))
        return paths

    def _damaged_vectors(self) -> np.ndarray:
        """The ids of the embeddings, live or not, whose stored vector is damaged (_decode_vectors)."""
        damaged = [np.zeros(0, np.int64)]
        cursor = self._conn.execute("SELECT id, vector FROM embeddings ORDER BY id")
        while rows := cursor.fetchmany(_ROWS_PER_CHUNK):
            ids, intact, _ = _decode_vectors(rows, self.dim)
            damaged.append(ids[~intact])
        return np.concatenate(damaged)

    def _problems(self) -> list[str]:
        problems = []
        integrity = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        if integrity != ["ok"]:
            problems.extend(f"database: {line}" for line in integrity)
        for embedding_id, identity_id in self._conn.execute(
            "SELECT e.id, e.identity_id FROM embeddings e LEFT JOIN identities i ON i.id = e.identity_id"
            " WHERE i.id IS NULL"
        ):
            problems.append(f"embedding {embedding_id} belongs to identity id {identity_id}, which does not exist")
        for (name,) in self._conn.execute(
            "SELECT name FROM identities i WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.identity_id = i.id)"
        ):
            problems.append(f"identity {_quoted_name(name)} has no embeddings")
        for (name,) in self._conn.execute("SELECT name FROM identities ORDER BY name"):
            # A database made elsewhere may hold any, and one enrolled before a rule came in (invisible spaces) its
            # names; remove and rename take such a name as stored.
            try:
                clean_identity(name)
            except GalleryError as exc:
                problems.append(f"identity {_quoted_name(name)} is a name facekit refuses ({one_line(exc)}): rename or "
                                "remove it")
        # Opening refuses a trigger; one made while this gallery was open is found here.
        problems.extend(f"the database holds a trigger, {name}, which facekit never makes: it could keep copies of "
                        "removed faces" for name in self._triggers(self._conn))
        for key in self._lost_settings():
            problems.append(f"the {key} setting in {DB_NAME} is missing or damaged")
        damaged = self._damaged_vectors()
        for embedding_id, path in sorted(self._source_paths(damaged).items()):
            problems.append(f"embedding {embedding_id} ({_shown_path(path)}) has a damaged vector (not {self.dim} "
                            "float32 numbers of unit length): take the photo out with `facekit gallery remove-photo`, "
                            "enroll it again")
        try:
            manifest = self._manifest()
            on_disk = self._read_index_files(manifest)
        except (GalleryError, _IndexVanished) as exc:
            problems.append(f"index: {exc or 'an index file named by the manifest is missing'}")
            return problems
        if len(on_disk.shards) != self._n_shards:
            problems.append(f"index has {len(on_disk.shards)} shards, the gallery asks for {self._n_shards}")
        index_ids = on_disk.ids()
        live = np.array([row[0] for row in self._conn.execute(f"SELECT e.id {LIVE_ROWS}")], np.int64)
        covered = live[live <= manifest["max_id"]]
        missing = np.setdiff1d(np.setdiff1d(covered, index_ids), damaged)  # a rebuild leaves damaged vectors out
        behind = len(live) - len(covered)
        if len(missing):
            problems.append(f"index lacks {len(missing)} embeddings it should hold (e.g. id {missing[0]})")
        removed = np.setdiff1d(index_ids, live)
        if len(removed):  # no writer is half way through (we hold the lock): one died before it purged them
            problems.append(f"index still holds {len(removed)} removed embeddings (an interrupted removal; opening "
                            "the gallery while nobody writes purges them)")
        if behind:
            problems.append(
                f"index is stale: {behind} embeddings were added after index generation {manifest['generation']}"
            )
        if len(np.unique(index_ids)) != len(index_ids):
            problems.append("index holds some embedding ids twice")
        if len(index_ids) and index_ids.max() > manifest["max_id"]:
            problems.append("index holds ids beyond what its manifest records")
        return problems
