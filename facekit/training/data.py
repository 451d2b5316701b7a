"""Aligned-crop datasets kept in memory as one uint8 tensor, and GPU/CPU batch augmentation.

Crops are decoded once and cached as a .npy file: the training pool is ~91k 112x112 crops
(3.4 GB as uint8), which fits in RAM and turns data loading into tensor indexing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from facekit import FacekitWarning
from facekit.errors import one_line
from facekit.imageio import IMAGE_EXTENSIONS, header_fits

MANIFEST_COLUMNS = ("shard", "member", "identity")


@dataclass
class CropSet:
    images: np.ndarray  # (N, 112, 112, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    key: str = ""  # names the pool and its filters, for caches of what is computed from it
    undecodable: int = 0  # crops left out because they did not decode
    classes_dropped: int = 0  # identities left out because too few of their crops decoded (min_per_class)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _decode_rgb(data: bytes) -> np.ndarray | None:
    """An image as RGB, of whatever size it has, or None where it does not decode. Its header is read first, so that
    an empty file, or a small one that claims more pixels than facekit reads (8000x8000 in 200 KB), is left out like
    a damaged one rather than filling memory; OpenCV then decodes it, four times as fast as facekit's own reader."""
    if not header_fits(data):
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_manifest_pool(root: Path, min_per_class: int, limit_classes: int | None) -> list[tuple[str, str, str]]:
    path = root / "manifest.tsv"
    rows: list[tuple[str, str, str]] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [column for column in MANIFEST_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} has no {', '.join(missing)} column (it needs {', '.join(MANIFEST_COLUMNS)})")
            for record in reader:
                row = (record["shard"], record["member"], record["identity"])
                if not all(row):  # a short row gives None
                    raise ValueError(f"{path} line {reader.line_num}: a row needs a shard, a member and an identity")
                shard = PurePath(row[0])
                # A shard is a file of the pool: a manifest must not have any other file on the machine read.
                if shard.is_absolute() or ".." in shard.parts:
                    raise ValueError(f"{path} line {reader.line_num}: shard {row[0]} is outside {root}; shards are "
                                     "named relative to the manifest's folder")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a tab-separated UTF-8 manifest: {one_line(error)}") from None
    missing = sorted({shard for shard, _, _ in rows if not (root / shard).is_file()})
    if missing:  # else the pool's key, or its decoding, stopped on the first with a bare "[Errno 2]"
        more = f" (and {len(missing) - 1} more of its shards)" if len(missing) > 1 else ""
        raise ValueError(f"{path} names shard {missing[0]}, which is not in {root}{more}")
    return _filter_classes(rows, min_per_class, limit_classes)


def _read_folder_pool(root: Path, min_per_class: int, limit_classes: int | None) -> list[tuple[str, str, str]]:
    rows = [("", str(p), p.parent.name) for p in sorted(root.glob("*/*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
    return _filter_classes(rows, min_per_class, limit_classes)


def _filter_classes(rows: list[tuple[str, str, str]], min_per_class: int,
                    limit_classes: int | None) -> list[tuple[str, str, str]]:
    counts: dict[str, int] = {}
    for _, _, identity in rows:
        counts[identity] = counts.get(identity, 0) + 1
    keep = sorted(name for name, n in counts.items() if n >= min_per_class)
    if limit_classes:
        keep = keep[:limit_classes]
    kept = set(keep)
    return [r for r in rows if r[2] in kept]


def load_crops(root: str | Path, cache_dir: str | Path | None = None, min_per_class: int = 2,
               limit_classes: int | None = None) -> CropSet:
    """Load aligned crops from zip shards + manifest.tsv, or from a folder with one sub-folder per identity."""
    root = Path(root)
    if (root / "manifest.tsv").exists():
        rows = _read_manifest_pool(root, min_per_class, limit_classes)
    elif root.is_dir():
        rows = _read_folder_pool(root, min_per_class, limit_classes)
    else:
        raise FileNotFoundError(f"training data not found: {root}")
    if not rows:
        raise ValueError(f"no training crops with >= {min_per_class} images per identity under {root}")
    key = _pool_key(root, rows, min_per_class, limit_classes)
    cache = Path(cache_dir) / f"crops-{key}.npz" if cache_dir else None
    if cache and cache.exists():
        with np.load(cache) as cached:
            if "class_names" in cached.files:  # older caches lack it, and the second filter below: decoded again
                return CropSet(cached["images"], cached["labels"], cached["class_names"].tolist(), key,
                               int(cached["undecodable"]), int(cached["classes_dropped"]))

    images = np.empty((len(rows), 112, 112, 3), np.uint8)
    decoded: list[tuple[str, str, str]] = []
    other_sizes: list[tuple[str, tuple[int, ...]]] = []  # where each crop that is not 112x112 is, and its size
    open_shards: dict[str, zipfile.ZipFile] = {}
    with contextlib.ExitStack() as closing:
        for row in tqdm(rows, desc="decoding crops", unit="img"):
            shard, member, _ = row
            if shard:
                if shard not in open_shards:
                    open_shards[shard] = closing.enter_context(_open_shard(root / shard))
                data = _read_member(open_shards[shard], member, root)
            else:
                data = Path(member).read_bytes()
            image = _decode_rgb(data)
            if image is not None and image.shape[:2] != (112, 112):
                other_sizes.append((f"{member} in {root / shard}" if shard else member, image.shape[:2]))
            elif image is not None:
                images[len(decoded)] = image
                decoded.append(row)
    if other_sizes:
        # Resized, a raw photo trained as a distorted face that was never aligned (a photo of 874x1200, say).
        where, (height, width) = other_sizes[0]
        raise ValueError(f"{len(other_sizes)} of the {len(rows)} images under {root} are not aligned 112x112 crops "
                         f"(such as {where}, {width}x{height}): make crops of raw photos with "
                         "tools/align_dataset.py, and train on its output")
    # Crops that do not decode can leave an identity with fewer than min_per_class: the filter again, on what did.
    class_names = sorted({r[2] for r in _filter_classes(decoded, min_per_class, limit_classes)})
    if not class_names:
        raise ValueError(f"no training crops with >= {min_per_class} images per identity under {root} "
                         f"({len(rows) - len(decoded)} of {len(rows)} did not decode)")
    label_of = {name: i for i, name in enumerate(class_names)}
    kept = [index for index, (_, _, identity) in enumerate(decoded) if identity in label_of]
    for slot, index in enumerate(kept):  # moved up in place: the pool is gigabytes, too much to copy
        if slot != index:
            images[slot] = images[index]
    images = images[:len(kept)]
    labels = np.array([label_of[decoded[index][2]] for index in kept], np.int64)
    undecodable, classes_dropped = len(rows) - len(decoded), len({r[2] for r in rows}) - len(class_names)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # each DDP rank decodes and writes its own
        np.savez(tmp, images=images, labels=labels, class_names=np.array(class_names), undecodable=undecodable,
                 classes_dropped=classes_dropped)
        tmp.replace(cache)
    return CropSet(images, labels, class_names, key, undecodable, classes_dropped)


def _open_shard(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"corrupt or truncated zip shard: {path} ({one_line(error)})") from None


def _read_member(shard: zipfile.ZipFile, member: str, root: Path) -> bytes:
    """A crop's bytes; b"" (a crop that does not decode) where its stored data is damaged."""
    try:
        return shard.read(member)
    except KeyError:
        raise ValueError(f"{root / 'manifest.tsv'} names {member}, which {shard.filename} does not hold") from None
    except (zipfile.BadZipFile, zlib.error, EOFError):  # a bad CRC or header, damaged deflate data
        return b""


def _pool_key(root: Path, rows: list[tuple[str, str, str]], min_per_class: int, limit_classes: int | None) -> str:
    """What the decoded crops depend on: every row (which file, whose), and the size and time of each file read
    (the shards and manifest of a pool, or each crop of a folder), so a crop moved or replaced is decoded again."""
    digest = hashlib.sha256(f"{root.resolve()}|{min_per_class}|{limit_classes}".encode())
    files = {root / shard for shard, _, _ in rows if shard} | ({root / "manifest.tsv"} if any(r[0] for r in rows)
                                                                else {Path(member) for _, member, _ in rows})
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    for row in rows:
        digest.update("|".join(row).encode() + b"\n")
    return digest.hexdigest()[:16]


class PoolSettings(Protocol):
    """What load_crops was given for the crops (a TrainConfig has these)."""

    data: str
    min_per_class: int
    limit_classes: int | None


def load_teacher(path: str | Path, num_crops: int,
                 pool: PoolSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher embeddings (row i for crop i), L2-normalised: centred first (the distillation targets), and
    as they are (the relational loss's); NaN rows have no target.

    A teacher run still in progress (tools/teacher_embeddings.py's OUTPUT.partial.npy) has zero rows
    for the crops it has not reached, so training can distil from whatever part of the pool is done.
    Where the run's record (OUTPUT.json) is beside the table, it must name these crops: num_crops of them,
    and pool's settings where given.
    """
    not_a_table = f"{path} is not a teacher table .npy (one row of numbers per crop: tools/teacher_embeddings.py)"
    try:
        rows = np.load(path)  # allow_pickle stays False: the file is data only
    except (ValueError, EOFError):  # pickled objects, text, an empty or truncated file
        raise ValueError(not_a_table) from None
    if not isinstance(rows, np.ndarray) or rows.dtype.kind not in "fiu":  # an .npz archive, text, records
        raise ValueError(not_a_table)
    if rows.ndim != 2:
        raise ValueError(f"teacher embeddings {path} have shape {rows.shape}; a teacher table is 2-D, one row of "
                         f"numbers per crop ({num_crops} x the teacher's size here)")
    if len(rows) > num_crops:
        raise ValueError(f"teacher embeddings {path} have {len(rows)} rows; expected at most {num_crops} rows, one "
                         "per crop")
    table = np.full((num_crops, rows.shape[1]), np.nan, np.float32)
    table[:len(rows)] = rows
    known = np.isfinite(table).all(1) & (np.linalg.norm(table, axis=1) > 0)
    if not known.any():
        raise ValueError(f"teacher embeddings {path} have no usable rows (every one is zero, NaN or infinite): "
                         "no crop would have a target")
    _check_teacher_record(Path(path), num_crops, pool)
    table[~known] = np.nan
    centred = table.copy()
    # dlib's descriptors share a large common component (random crops: mean cosine 0.84); a cosine
    # target would be mostly that offset, and distilling it collapsed the student's embeddings.
    centred[known] -= centred[known].mean(0)
    return _unit_rows(centred), _unit_rows(table)


def _check_teacher_record(path: Path, num_crops: int, pool: PoolSettings | None) -> None:
    """Row i of a table is crop i only of the crops it was computed for, and a pool read with other settings holds
    other crops in other rows (a manifest mixes identities): where the run's record says which, they must be these."""
    record = path.with_name(path.name.removesuffix(".partial.npy") + ".json")
    if not record.is_file():
        warnings.warn(f"{path} has no run record beside it ({record.name}, written by tools/teacher_embeddings.py): "
                      "that its rows are these crops in order cannot be checked", FacekitWarning, stacklevel=3)
        return
    try:
        run = json.loads(record.read_text(encoding="utf-8"))["run"]
        made_for, made_from = (run["crops"], run["min_per_class"], run["limit_classes"]), run["data"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{record} is not a teacher run record (tools/teacher_embeddings.py's OUTPUT.json): "
                         f"{one_line(error)}") from None
    here = (num_crops, *((pool.min_per_class, pool.limit_classes) if pool else made_for[1:]))
    templates = ("{} crops", "--min-per-class {}", "--limit-classes {}")  # counts: none is 0, so unset is None
    differences = [f"{template.format(made or 'unset')}, not {wanted or 'unset'}"
                   for template, made, wanted in zip(templates, made_for, here) if made != wanted]
    if differences:
        raise ValueError(f"teacher embeddings {path} were made for other crops ({'; '.join(differences)}, as "
                         f"{record.name} records): compute a table for these with tools/teacher_embeddings.py, "
                         "given this data, --min-per-class and --limit-classes")
    # Only a warning: a pool moved or copied elsewhere holds the same crops.
    if pool and made_from != str(Path(pool.data).resolve()):
        warnings.warn(f"teacher embeddings {path} were made from {made_from}, not {Path(pool.data).resolve()}; "
                      "taken to be these crops, as their count and settings agree", FacekitWarning, stacklevel=3)


def _unit_rows(table: np.ndarray) -> torch.Tensor:
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return torch.from_numpy(np.where(norms > 0, table / norms, np.nan).astype(np.float32))


class PKSampler:
    """P identities x K images per batch, so every batch holds positives for the triplet loss."""

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0) -> None:
        self.p, self.k = p, k
        self.rng = np.random.default_rng(seed)
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        self.groups = [g for g in np.split(order, bounds) if len(g) >= 2]
        if not 1 <= p <= len(self.groups):
            raise ValueError(f"a batch of {p} identities x {k} images needs {p} identities with 2 or more crops, "
                             f"and there are {len(self.groups)}: lower --batch-size")

    def __iter__(self):
        while True:
            chosen = self.rng.choice(len(self.groups), self.p, replace=False)
            yield np.concatenate([self._pick(self.groups[c]) for c in chosen])

    def _pick(self, group: np.ndarray) -> np.ndarray:
        """K of an identity's crops: all different where it has K, else each once and then repeats, so a
        crop is its own positive only where the identity has nothing else to offer."""
        if len(group) >= self.k:
            return self.rng.choice(group, self.k, replace=False)
        return np.concatenate([self.rng.permutation(group), self.rng.choice(group, self.k - len(group))])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class RandomSampler:
    """Batches of a shuffled pass over the crops; a new shuffle when fewer than a batch are left."""

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        if not 1 <= batch_size <= size:
            raise ValueError(f"a batch of {batch_size} needs at least that many crops, and there are {size}: "
                             "lower --batch-size")
        self.size, self.batch_size = size, batch_size
        self.rng = np.random.default_rng(seed)
        self.order, self.position = self.rng.permutation(size), 0

    def __iter__(self):
        while True:
            if self.position + self.batch_size > self.size:
                self.order, self.position = self.rng.permutation(self.size), 0
            self.position += self.batch_size
            yield self.order[self.position - self.batch_size:self.position]

    def state_dict(self) -> dict:
        """Where the pass stands, so a resumed run draws the batches an uninterrupted one would have."""
        return {"rng": self.rng.bit_generator.state, "order": torch.from_numpy(self.order),
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.position = state["order"].cpu().numpy(), int(state["position"])  # read onto a GPU


def to_model_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float in [-1, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().sub_(127.5).div_(128.0)


@functools.cache
def _blur_kernel(device: torch.device) -> torch.Tensor:
    """The 5x5 binomial kernel for 3 channels, made once per device: copied from the host for every batch, it
    would wait for the GPU to finish its queue each time."""
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device)
    kernel = (kernel[:, None] * kernel[None, :]) / 256.0
    return kernel.expand(3, 1, 5, 5).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batch augmentation on (N, 3, H, W) in [-1, 1], run on whatever device x lives on.

    Shifts and scales are small because the test-time crops are aligned the same way;
    larger jitter would teach invariance the pipeline never needs.
    """
    n, device = x.shape[0], x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=generator)

    flip = rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)

    scale = 1.0 + (rand(n) - 0.5) * 0.2
    angle = (rand(n) - 0.5) * math.radians(16)
    shift = (rand(n, 2) - 0.5) * 0.12
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    brightness = (rand(n, 1, 1, 1) - 0.5) * 0.4
    contrast = 1.0 + (rand(n, 1, 1, 1) - 0.5) * 0.4
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    grey = x.mean(dim=1, keepdim=True).expand_as(x)
    saturation = 1.0 + (rand(n, 1, 1, 1) - 0.5) * 0.6
    x = grey + (x - grey) * saturation
    to_grey = rand(n) < 0.1
    x = torch.where(to_grey[:, None, None, None], grey, x)

    # Blurred always and chosen per crop: asking whether any crop is blurred would wait on the GPU every batch.
    blur = rand(n) < 0.15
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), _blur_kernel(device), groups=3)
    x = torch.where(blur[:, None, None, None], blurred, x)
    return x.clamp_(-1.0, 1.0)
