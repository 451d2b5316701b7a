#!/usr/bin/env python3
"""Speed of facekit against face_recognition (dlib) on the same images, in one run on this machine.

    python tools/bench_speed.py                 # a table
    python tools/bench_speed.py --json          # one JSON object
    python tools/bench_speed.py --quick         # a smoke run: 20 images, few repeats

The peer is installed for this benchmark only; it is never a facekit dependency:

    .venv/bin/pip install dlib-bin face_recognition_models
    .venv/bin/pip install --no-deps face_recognition    # its metadata asks for a dlib source build

Measured: embedding throughput on aligned crops (batch 1 and batched), enrolment of a folder of
photos (one per person), identification latency on a 640x480 photo with 1 and with 5 faces,
frames per second of tools/webcam.py's loop on a 640x480 clip with 1-3 faces, and peak RSS.
Images: one photo per person folder of --images (default: LFW in ../shared/data); the test
photos and the clip are composed from them.

Fair use of the cores (--threads, default 2): facekit runs ONNX Runtime, torch and OpenCV with that
many threads. dlib (built without BLAS) computes on one thread, so its throughput figures (embedding,
enrolment) use a pool of that many processes; latency figures (identify, webcam) are one process on
both sides. Each side runs in its own child process, so the peak RSS is its own (for dlib's pool,
the largest process). facekit's figures use its defaults: mirror test-time augmentation on
(except the webcam loop, which turns it off), the embedder backend "auto" picks, and the default
detector (MTCNN unless FACEKIT_YUNET_MODEL is set) with YuNet figures alongside.
face_recognition's defaults too: HOG detection upsampled once, 5-point landmarks, one jitter;
its webcam loop detects at the frame's own size (no upsampling), which finds faces from 80 px, on the
schedule of tools/webcam.py with MTCNN: the whole frame every 5th frame, around the known faces in between.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FRAME_SIZE = (640, 480)
TILE = 200  # five fit a 640x480 frame
FIVE_FACE_SPOTS = [(10, 20), (220, 20), (430, 20), (115, 260), (325, 260)]


# --- test material --------------------------------------------------------------------------------------


def pick_images(root: Path, count: int) -> list[Path]:
    """The first photo of `count` person folders spread over the alphabet (or loose images)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    photos = [min(f.glob("*.jpg"), default=None) for f in folders] if folders else sorted(root.glob("*.jpg"))
    photos = [p for p in photos if p is not None]
    if len(photos) < count:
        raise SystemExit(f"error: need {count} images under {root}, found {len(photos)}")
    return [photos[i] for i in np.linspace(0, len(photos) - 1, count).astype(int)]


def background(photo: np.ndarray) -> np.ndarray:
    """A photo-like backdrop with no face left in it."""
    return cv2.GaussianBlur(cv2.resize(photo, FRAME_SIZE), (0, 0), 30)


def paste(frame: np.ndarray, photo: np.ndarray, x: int, y: int) -> None:
    """The middle 60% of the photo (LFW centres its subject there, bystanders sit at the edges) as a tile."""
    height, width = photo.shape[:2]
    middle = photo[height // 5: height - height // 5, width // 5: width - width // 5]
    frame[y:y + TILE, x:x + TILE] = cv2.resize(middle, (TILE, TILE), interpolation=cv2.INTER_AREA)


def prepare(images: list[Path], work: Path, frames: int) -> None:
    """people/<name>/<photo>, identify_1face.png, identify_5faces.png and clip.avi under work."""
    for path in images:
        (work / "people" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, work / "people" / path.parent.name / path.name)
    photos = [cv2.imread(str(p)) for p in images[:8]]
    one = background(photos[7])
    paste(one, photos[0], (FRAME_SIZE[0] - TILE) // 2, (FRAME_SIZE[1] - TILE) // 2)
    cv2.imwrite(str(work / "identify_1face.png"), one)
    five = background(photos[7])
    for photo, (x, y) in zip(photos[1:6], FIVE_FACE_SPOTS):
        paste(five, photo, x, y)
    cv2.imwrite(str(work / "identify_5faces.png"), five)
    # A third of the clip each with 1, 2 and 3 people drifting sideways, as in front of a webcam.
    writer = cv2.VideoWriter(str(work / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, FRAME_SIZE)
    for number in range(frames):
        frame = background(photos[6]).copy()
        people = 1 + 3 * number // frames
        drift = int(10 * np.sin(number / 10))
        for slot in range(people):
            paste(frame, photos[slot], 10 + 210 * slot + drift, 140)
        writer.write(frame)
    writer.release()


# --- measuring ------------------------------------------------------------------------------------------


def rate(work, count: int) -> float:
    """count / seconds that work() takes."""
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def median_ms(work, repeats: int) -> float:
    work()  # warm-up: first-call allocations, lazy kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def peak_rss_mb() -> float:
    """The largest resident set of this process or any child it waited for (Linux reports KiB)."""
    usage = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return max(usage) / 1024


def aligned_crops(work: Path, yunet_model: str) -> np.ndarray:
    from facekit.alignment import align_face
    from facekit.detection import YuNetDetector
    from facekit.recognition import primary_face

    detector = YuNetDetector(yunet_model)
    crops = []
    for path in sorted((work / "people").glob("*/*")):
        image = cv2.imread(str(path))
        face = primary_face(detector.detect(image), image.shape)
        if face is not None:
            crops.append(align_face(image, face.landmarks))
    return np.stack(crops)


# --- facekit --------------------------------------------------------------------------------------------


def facekit_embedding(work: Path, args: argparse.Namespace) -> dict:
    import torch

    from facekit.export import cached_model, cached_model_path, current_shipped_model, quantize_int8
    from facekit.representation import Embedder

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    crops = aligned_crops(work, args.yunet_model)
    singles = crops[: args.batch1_faces]
    result: dict = {"facekit_crops": len(crops)}
    # A cache of our own, so the int8 model is ours to make.
    os.environ["FACEKIT_CACHE"] = str(work / "cache")
    default_backend = Embedder._choose_backend("auto", os.environ.get("FACEKIT_WEIGHTS", ""), None)
    os.environ.pop("FACEKIT_INT8", None)  # from here on each backend is asked for by name
    for backend in ("torch", "onnx"):
        started = time.perf_counter()
        Embedder(backend=backend, threads=args.threads)
        result[f"startup_s_{backend}"] = round(time.perf_counter() - started, 2)
    # Calibrated on the benchmark's own crops: fine for speed, not for an accuracy claim.
    quantize_int8(current_shipped_model() or cached_model(), cached_model_path(int8=True), crops[:100])
    for backend in ("torch", "onnx", "onnx-int8"):
        embedder = Embedder(backend=backend, threads=args.threads)
        embedder.embed(crops[:4])
        name = backend.replace("-", "_")
        result[f"embed_b1_{name}"] = rate(lambda e=embedder: [e.embed(c) for c in singles], len(singles))
        result[f"embed_batched_{name}"] = rate(lambda e=embedder: e.embed(crops), len(crops))
        if backend == default_backend:
            result[f"embed_batched_{name}_noflip"] = rate(lambda e=embedder: e.embed(crops, flip=False), len(crops))
    result["facekit_backend"] = default_backend
    return result


def facekit_pipeline(work: Path, args: argparse.Namespace) -> dict:
    from facekit.recognition import FacePipeline
    from facekit.representation import Embedder

    cv2.setNumThreads(args.threads)
    os.environ["FACEKIT_CACHE"] = str(work / "cache")
    os.environ.pop("FACEKIT_YUNET_MODEL", None)  # so that "auto" is the out-of-the-box default
    # As the CLI would: torch is imported only if the default backend is torch, so peak memory is a user's.
    embedder = Embedder(threads=args.threads)
    result: dict = {}
    for detector in ("auto", "yunet"):
        suffix = "" if detector == "auto" else "_yunet"
        try:
            pipeline = FacePipeline(embedder=embedder, detector_backend=detector,
                                    yunet_model=args.yunet_model if suffix else None)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            result[f"error{suffix}"] = str(exc)
            continue
        result.update({f"{key}{suffix}": value for key, value in facekit_with(pipeline, detector, work, args).items()})
    result["torch_imported"] = "torch" in sys.modules
    return result


def facekit_with(pipeline, detector: str, work: Path, args: argparse.Namespace) -> dict:
    """Enrol, identify and run the webcam loop with one pipeline."""
    from facekit.datastore import Gallery
    from facekit.recognition import enroll, identify_image

    result: dict = {"detector": type(pipeline.detector).__name__}
    photos = {n: cv2.imread(str(work / f"identify_{n}.png")) for n in ("1face", "5faces")}
    pipeline.analyze(photos["1face"])
    gallery_path = work / f"gallery-{detector}"
    with Gallery.open(gallery_path, create=True, dim=pipeline.embedder.dim) as gallery:
        started = time.perf_counter()
        report = enroll(pipeline, gallery, work / "people", progress=False)
        result["enroll_images_per_s"] = report.images / (time.perf_counter() - started)
        result["enrolled"] = report.enrolled
    with Gallery.open(gallery_path) as gallery:
        threshold = pipeline.identify_threshold
        for name, image in photos.items():
            result[f"identify_faces_found_{name}"] = len(identify_image(pipeline, gallery, image, threshold))
            result[f"identify_ms_{name}"] = median_ms(
                lambda i=image: identify_image(pipeline, gallery, i, threshold), args.repeats)
        result["identify_profile_ms_5faces"] = identify_profile(pipeline, gallery, photos["5faces"], args.repeats)
    result["webcam_fps"], result["webcam_faces_per_frame"] = facekit_webcam(work, detector, gallery_path, args)
    return result


def identify_profile(pipeline, gallery, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Median milliseconds of each stage of one identification: detect, align, embed, search."""
    from facekit.alignment import align_face

    faces = pipeline.detect(image)
    crops = np.stack([align_face(image, f.landmarks) for f in faces])
    embeddings = pipeline.embedder.embed(crops, flip=pipeline.flip)
    return {
        "detect": median_ms(lambda: pipeline.detect(image), repeats),
        "align": median_ms(lambda: [align_face(image, f.landmarks) for f in faces], repeats),
        "embed": median_ms(lambda: pipeline.embedder.embed(crops, flip=pipeline.flip), repeats),
        "search": median_ms(lambda: gallery.search(embeddings, k=3), repeats),
    }


def facekit_webcam(work: Path, detector: str, gallery: Path, args: argparse.Namespace) -> tuple[float, float]:
    """tools/webcam.py's own loop on the clip; it prints 'N frames, X frames per second, Y faces per frame'."""
    sys.path.insert(0, str(REPO / "tools"))
    import webcam

    output = io.StringIO()
    argv = ["--source", str(work / "clip.avi"), "--headless", "--gallery", str(gallery), "--detector", detector,
            "--max-frames", str(args.frames)]
    if detector == "yunet":
        argv += ["--yunet-model", args.yunet_model]
    with contextlib.redirect_stdout(output):
        if webcam.main(argv) != 0:
            raise RuntimeError(f"tools/webcam.py failed: {output.getvalue()}")
    fields = output.getvalue().split(",")
    return float(fields[1].split()[0]), float(fields[2].split()[0])


# --- face_recognition (dlib) ----------------------------------------------------------------------------


def import_face_recognition() -> types.ModuleType:
    """face_recognition_models still imports pkg_resources, which setuptools 81 and later no longer ship."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(Path(importlib.util.find_spec(package).origin).parent / name)
        sys.modules["pkg_resources"] = shim
    import face_recognition

    return face_recognition


def dlib_chip(path: str):
    """dlib's own aligned 150x150 chip of the largest face, as face_encodings would cut it."""
    import dlib

    fr = import_face_recognition()
    rgb = fr.load_image_file(path)
    locations = fr.face_locations(rgb)
    if not locations:
        return None
    top, right, bottom, left = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    shape = fr.api.pose_predictor_5_point(rgb, dlib.rectangle(left, top, right, bottom))
    return dlib.get_face_chip(rgb, shape, size=150, padding=0.25)


def dlib_encode_each(chips: list) -> int:
    encoder = import_face_recognition().api.face_encoder
    for chip in chips:
        encoder.compute_face_descriptor(chip)
    return len(chips)


def dlib_encode_batch(chips: list) -> int:
    import_face_recognition().api.face_encoder.compute_face_descriptor(chips)
    return len(chips)


def dlib_enroll_one(path: str) -> np.ndarray | None:
    """face_recognition's recipe: load, HOG-detect, encode the largest face."""
    fr = import_face_recognition()
    rgb = fr.load_image_file(path)
    locations = fr.face_locations(rgb)
    if not locations:
        return None
    largest = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
    return fr.face_encodings(rgb, [largest])[0]


def dlib_identify(fr, gallery: np.ndarray, image_bgr: np.ndarray, upsample: int = 1) -> list[float]:
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    locations = fr.face_locations(rgb, number_of_times_to_upsample=upsample)
    return [float(fr.face_distance(gallery, encoding).min()) for encoding in fr.face_encodings(rgb, locations)]


def dlib_side(work: Path, args: argparse.Namespace) -> dict:
    from multiprocessing import get_context

    fr = import_face_recognition()
    result: dict = {}
    paths = [str(p) for p in sorted((work / "people").glob("*/*"))]
    # Forked after the models are loaded, so the workers start warm.
    with get_context("fork").Pool(args.threads) as pool:
        pool.map(dlib_encode_each, [[]] * args.threads)
        chips = [c for c in pool.map(dlib_chip, paths) if c is not None]
        singles = chips[: args.batch1_faces]
        halves = [chips[i::args.threads] for i in range(args.threads)]
        result["dlib_crops"] = len(chips)
        result["embed_b1_dlib_1proc"] = rate(lambda: dlib_encode_each(singles), len(singles))
        result["embed_batched_dlib_1proc"] = rate(lambda: dlib_encode_batch(chips), len(chips))
        result["embed_b1_dlib"] = rate(lambda: pool.map(dlib_encode_each, [singles[i::args.threads]
                                                                           for i in range(args.threads)]), len(singles))
        result["embed_batched_dlib"] = rate(lambda: pool.map(dlib_encode_batch, halves), len(chips))
        started = time.perf_counter()
        encodings = pool.map(dlib_enroll_one, paths, chunksize=4)
        result["enroll_images_per_s_dlib"] = len(paths) / (time.perf_counter() - started)
    gallery = np.stack([e for e in encodings if e is not None])
    result["enrolled_dlib"] = len(gallery)
    for name in ("1face", "5faces"):
        image = cv2.imread(str(work / f"identify_{name}.png"))
        result[f"identify_faces_found_{name}_dlib"] = len(dlib_identify(fr, gallery, image))
        result[f"identify_ms_{name}_dlib"] = median_ms(lambda i=image: dlib_identify(fr, gallery, i), args.repeats)
    result["webcam_fps_dlib"], result["webcam_faces_per_frame_dlib"] = dlib_webcam(fr, gallery, work, args.frames)
    return result


def dlib_webcam(fr, gallery: np.ndarray, work: Path, frames: int) -> tuple[float, float]:
    """The same loop as tools/webcam.py's with MTCNN or Haar: the whole frame searched every 5th frame and, in between,
    only around the last frame's faces (half a face's size on each side); encode when the faces change or every
    15 frames."""
    capture = cv2.VideoCapture(str(work / "clip.avi"))
    count, last_encoded, previous, found, locations = 0, -(10**9), -1, [], []
    started = time.perf_counter()
    while count < frames:
        ok, frame = capture.read()
        if not ok:
            break
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        if count % 5 == 0:
            locations = fr.face_locations(rgb, number_of_times_to_upsample=0)
        else:
            locations = dlib_locations_near(fr, rgb, locations)
        if len(locations) != previous or count - last_encoded >= 15:
            for encoding in fr.face_encodings(rgb, locations):
                fr.face_distance(gallery, encoding)
            last_encoded, previous = count, len(locations)
        for top, right, bottom, left in locations:
            cv2.rectangle(frame, (left, top), (right, bottom), (0, 255, 0), 2)
        found.append(len(locations))
        count += 1
    return count / (time.perf_counter() - started), float(np.mean(found))


def dlib_locations_near(fr, rgb: np.ndarray, known: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """HOG on the surroundings of each known (top, right, bottom, left) face; a face two searches find counts once."""
    found: list[tuple[int, int, int, int]] = []
    for top, right, bottom, left in known:
        margin = max(bottom - top, right - left) // 2
        y0, x0 = max(0, top - margin), max(0, left - margin)
        window = np.ascontiguousarray(rgb[y0:bottom + margin, x0:right + margin])
        for top2, right2, bottom2, left2 in fr.face_locations(window, number_of_times_to_upsample=0):
            box = (top2 + y0, right2 + x0, bottom2 + y0, left2 + x0)
            centre_y, centre_x = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if not any(t <= centre_y <= b and lf <= centre_x <= r for t, r, b, lf in found):
                found.append(box)
    return found


# --- the report -----------------------------------------------------------------------------------------


def run_side(side: str, work: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--side", side, "--work", str(work), "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--frames", str(args.frames), "--batch1-faces", str(args.batch1_faces),
               "--yunet-model", args.yunet_model]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: the {side} measurements failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(fk: dict, fk_embed: dict, dl: dict, args: argparse.Namespace) -> dict:
    backend = fk_embed["facekit_backend"].replace("-", "_")
    out = {
        "embed_faces_per_s": fk_embed[f"embed_batched_{backend}"],
        "embed_ratio_vs_dlib": fk_embed[f"embed_batched_{backend}"] / dl["embed_batched_dlib"],
        "enroll_images_per_s": fk.get("enroll_images_per_s"),
        "enroll_ratio_vs_dlib": None,
        "identify_ms_1face": fk.get("identify_ms_1face"),
        "identify_ms_5faces": fk.get("identify_ms_5faces"),
        "webcam_fps": fk.get("webcam_fps"),
    }
    if out["enroll_images_per_s"]:
        out["enroll_ratio_vs_dlib"] = out["enroll_images_per_s"] / dl["enroll_images_per_s_dlib"]
    out.update({k: v for k, v in {**fk_embed, **fk, **dl}.items() if k not in out})
    out["threads"] = args.threads
    out["images"] = args.images_count
    out["cpu"] = cpu_name()
    return {k: rounded(v) for k, v in out.items()}


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def table(result: dict) -> str:
    backend = result["facekit_backend"].replace("-", "_")

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:,.1f}"

    def row(label: str, facekit, dlib, higher_is_better: bool = True) -> str:
        if facekit is None or dlib is None:
            ratio = "n/a"
        else:
            ratio = f"{(facekit / dlib if higher_is_better else dlib / facekit):.2f}x"
        return f"{label:<46}{fmt(facekit):>12}{fmt(dlib):>12}{ratio:>10}"

    r = result.get
    lines = [
        f"{result['cpu']}, {result['threads']} threads per side, {result['images']} images; "
        f"facekit embedder: {result['facekit_backend']}, detector: {r('detector') or r('detector_yunet')}; facekit "
        "embeds each face and its mirror (its default), dlib one jitter (its default)",
        f"{'':<46}{'facekit':>12}{'dlib':>12}{'speed-up':>10}",
        row(f"embed, batch 1, faces/s ({backend})", r(f"embed_b1_{backend}"), r("embed_b1_dlib")),
        row(f"embed, batched, faces/s ({backend})", r(f"embed_batched_{backend}"), r("embed_batched_dlib")),
    ]
    for other in ("torch", "onnx", "onnx_int8"):
        if other != backend:
            lines.append(row(f"  embed, batch 1, faces/s ({other})", r(f"embed_b1_{other}"), r("embed_b1_dlib")))
            lines.append(row(f"  embed, batched, faces/s ({other})", r(f"embed_batched_{other}"),
                             r("embed_batched_dlib")))
    lines += [
        row(f"  embed, batched, faces/s ({backend}, no mirror)", r(f"embed_batched_{backend}_noflip"),
            r("embed_batched_dlib")),
        row("enroll, images/s (default detector)", r("enroll_images_per_s"), r("enroll_images_per_s_dlib")),
        row("enroll, images/s (YuNet)", r("enroll_images_per_s_yunet"), r("enroll_images_per_s_dlib")),
        row("identify 640x480, 1 face, ms (default det.)", r("identify_ms_1face"), r("identify_ms_1face_dlib"), False),
        row("identify 640x480, 5 faces, ms (default det.)", r("identify_ms_5faces"), r("identify_ms_5faces_dlib"),
            False),
        row("identify 640x480, 1 face, ms (YuNet)", r("identify_ms_1face_yunet"), r("identify_ms_1face_dlib"), False),
        row("identify 640x480, 5 faces, ms (YuNet)", r("identify_ms_5faces_yunet"), r("identify_ms_5faces_dlib"),
            False),
        row("webcam loop, frames/s (default detector)", r("webcam_fps"), r("webcam_fps_dlib")),
        row("webcam loop, frames/s (YuNet)", r("webcam_fps_yunet"), r("webcam_fps_dlib")),
        row("peak RSS, MB (lower is better)", r("peak_rss_mb"), r("peak_rss_mb_dlib"), False),
        "faces found (identify 1 / identify 5 / webcam per frame, the clip has 2.0): "
        + "; ".join(f"{side} {r('identify_faces_found_1face' + key)} / {r('identify_faces_found_5faces' + key)} / "
                    f"{fmt(r('webcam_faces_per_frame' + key))}"
                    for side, key in (("facekit", ""), ("facekit YuNet", "_yunet"), ("dlib", "_dlib"))),
        f"embedder start-up, s (torch already imported): torch {r('startup_s_torch')}, "
        f"ONNX Runtime {r('startup_s_onnx')}",
    ]
    for key, label in (("", "default detector"), ("_yunet", "YuNet")):
        if r("identify_profile_ms_5faces" + key):
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r("identify_profile_ms_5faces" + key).items())
            lines.append(f"identify 5 faces ({label}) by stage, ms: {stages}")
    for key in ("error", "error_yunet"):
        if r(key):
            lines.append(f"facekit {key}: {r(key)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "lfw" / "images",
                        help="folder of person folders (default: LFW in ../shared/data)")
    parser.add_argument("--yunet-model", default=os.environ.get("FACEKIT_YUNET_MODEL")
                        or str(SHARED_DATA / "models" / "face_detection_yunet.onnx"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 images, 3 repeats, 30 frames")
    parser.add_argument("--threads", type=int, default=2, help="cores each side may use (default: 2)")
    parser.add_argument("--side", choices=["facekit-embedding", "facekit-pipeline", "dlib"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch1-faces", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:
        measure = {"facekit-embedding": facekit_embedding, "facekit-pipeline": facekit_pipeline,
                   "dlib": dlib_side}[args.side]
        result = measure(args.work, args)
        key = {"facekit-embedding": "peak_rss_mb_facekit_all_backends", "facekit-pipeline": "peak_rss_mb",
               "dlib": "peak_rss_mb_dlib"}[args.side]
        result[key] = peak_rss_mb()
        print(json.dumps(result))
        return 0

    missing = [m for m in ("dlib", "face_recognition", "face_recognition_models") if not importlib.util.find_spec(m)]
    if missing:
        print(f"error: {', '.join(missing)} not installed; this benchmark needs face_recognition (dlib):\n"
              "  .venv/bin/pip install dlib-bin face_recognition_models\n"
              "  .venv/bin/pip install --no-deps face_recognition", file=sys.stderr)
        return 2
    if not Path(args.yunet_model).is_file():
        print(f"error: YuNet model not found: {args.yunet_model} (--yunet-model)", file=sys.stderr)
        return 2
    args.images_count = 20 if args.quick else 200
    args.repeats = 3 if args.quick else 15
    args.frames = 30 if args.quick else 90
    args.batch1_faces = 10 if args.quick else 60
    with tempfile.TemporaryDirectory(prefix="facekit-bench-") as tmp:
        work = Path(tmp)
        prepare(pick_images(args.images, args.images_count), work, args.frames)
        facekit_embed = run_side("facekit-embedding", work, args)
        facekit = run_side("facekit-pipeline", work, args)
        dlib = run_side("dlib", work, args)
    result = summarise(facekit, facekit_embed, dlib, args)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    from facekit.cli import report_errors

    sys.exit(report_errors(main))
