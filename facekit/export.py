"""The embedder as an ONNX file for ONNX Runtime: export, int8 quantisation, and the per-user cache.

`facekit export onnx` writes a file. Embedder(backend="onnx") uses the fp32 file shipped beside the weights
(`facekit-irv2.onnx`, written by tools/release_model.py) when it was exported from exactly those weights,
so inference needs no torch; for any other weights it finds (or makes, with torch) one in the cache.
The graph outputs the embedding *before* L2 normalisation: mirror test-time augmentation sums the
raw embeddings of a face and its mirror before normalising, so the Embedder needs them raw.
Input: (N, 3, 112, 112) float32 RGB scaled to [-1, 1], N dynamic.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import json
import math
import operator
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facekit.errors import one_line

OPSET = 17
# Part of the cache key: bump it when the exported graph changes for the same weights.
EXPORT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
CARD_KEY = "facekit_card"
FINGERPRINT_KEY = "weights_sha256"
CALIBRATION_CROPS = 200
# Why the cache may refuse a file: no permission, a read-only or full file system, or a FACEKIT_CACHE that names
# a file rather than a folder. The Embedder's "auto" backend then falls back to torch.
CACHE_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                    errno.ENOTDIR)
# The cache's own file names (cached_model_path): nothing else in the folder is ever deleted.
CACHED_MODEL_NAME = re.compile(r"facekit-irv2-[0-9a-f]{16}(-int8)?\.onnx")
# Cached exports kept of each kind (fp32, int8), the current one included. More than one: a name is a hash of the
# weights, so an earlier version cannot be told from other weights in use beside them, and keeping only the newest
# would have two models evict each other's export on every run.
CACHE_KEEP = 3
THREADS_ENV_VAR = "FACEKIT_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def weights_base(weights: str | os.PathLike | None) -> Path:
    """The <base> of <base>.safetensors and its card <base>.json: the path given, less either suffix."""
    from facekit.representation import weights_or_default

    base = Path(weights_or_default(weights))
    return base.with_suffix("") if base.suffix in {".safetensors", ".json"} else base


def beside(weights: str | os.PathLike | None, suffix: str) -> Path:
    """<base><suffix>: the weights (.safetensors), their card (.json) or their ONNX file (.onnx).

    Appended, not with_suffix(): that takes the ".0" of "model-1.0" for a suffix and opens model-1's files."""
    base = weights_base(weights)
    return base.with_name(base.name + suffix)


def model_file(weights: str | os.PathLike | None, suffix: str) -> Path:
    """beside(weights, suffix), which must be a file; else a FileNotFoundError naming it."""
    path = beside(weights, suffix)
    if not path.is_file():
        base = weights_base(weights)
        hint = ""
        if base.is_dir():
            hint = f" ({base} is a folder: name the model's {suffix} file in it)"
        elif base.is_file():  # a photo or an .onnx file given as --weights: the name, not the file, is wrong
            hint = f" ({base} is not a model: --weights takes a .safetensors file, its .json card beside it)"
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    return path


def model_fingerprint(weights: str | os.PathLike | None = None) -> str:
    """sha256 of the weights file. Embeddings are comparable only between models with the same one, so a
    gallery records it (facekit.datastore.Gallery.bind_model)."""
    weights_file = model_file(weights, ".safetensors")
    stat = weights_file.stat()
    return _file_sha256(weights_file.resolve(), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: Path, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    # Keyed by what a rewrite changes, so a file rewritten or replaced is hashed again: weights of one architecture
    # are all one size, and mtime can be set back, but not ctime, and a replaced file has a new inode. One Embedder
    # needs the digest twice (the gallery's model id and the ONNX file's key); hashing is most of its start-up.
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_card(card_file: str | os.PathLike) -> dict:
    """A model card: a JSON object with a "model" block (the architecture); anything else is a ValueError."""
    try:
        card = json.loads(Path(card_file).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model card {card_file} is not JSON: {exc}") from exc
    if not isinstance(card, dict) or not isinstance(card.get("model"), dict):
        raise ValueError(f"model card {card_file} has no \"model\" block (the architecture)")
    return card


def weights_key(weights: str | os.PathLike | None = None) -> str:
    """sha256 of the weights, the architecture in the card, and the export version: the cache key."""
    digest = hashlib.sha256(bytes.fromhex(model_fingerprint(weights)))
    architecture = read_card(model_file(weights, ".json"))["model"]
    digest.update(json.dumps({"model": architecture, "export": EXPORT_VERSION, "opset": OPSET},
                             sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """$FACEKIT_CACHE, else $XDG_CACHE_HOME/facekit, else ~/.cache/facekit."""
    if os.environ.get("FACEKIT_CACHE"):
        return Path(os.environ["FACEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facekit"


def cached_model_path(weights: str | os.PathLike | None = None, int8: bool = False) -> Path:
    return cache_dir() / f"facekit-irv2-{weights_key(weights)[:16]}{'-int8' if int8 else ''}.onnx"


def prune_cache(current: Path, keep: int = CACHE_KEEP) -> None:
    """Delete all but the `keep` most recently used cached exports of current's kind (fp32 or int8), never current.

    Best effort, as other processes may share the cache: a file another one deleted first is skipped, and one it
    has open stays readable to it until closed (on Windows, where it cannot be deleted then, it is left)."""
    kind = CACHED_MODEL_NAME.fullmatch(current.name)
    if kind is None:
        return
    others = []
    with contextlib.suppress(OSError):
        for path in current.parent.iterdir():
            match = CACHED_MODEL_NAME.fullmatch(path.name)
            if match and match.group(1) == kind.group(1) and path.name != current.name:
                with contextlib.suppress(OSError):
                    others.append((path.stat().st_mtime_ns, path))
    for _, path in sorted(others, reverse=True)[max(0, keep - 1):]:
        with contextlib.suppress(OSError):
            path.unlink()


def _mark_used(path: Path) -> None:
    # Use is told by the modification time (access times are rarely kept); a read-only cache just keeps its order.
    with contextlib.suppress(OSError):
        os.utime(path)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp_path) then rename: a reader (or a second process exporting too) never sees half a file."""
    if path.is_dir():  # else the error would name the temporary file, gone by the time it is read
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # named by the folder: its own error names a temporary file that was never made
        raise OSError(exc.errno, exc.strerror, str(path.parent)) from exc
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model file is no secret and may be shipped or shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --- export ---------------------------------------------------------------------------------------------


def export_onnx(weights: str | os.PathLike | None, output: str | os.PathLike) -> Path:
    """Export the fp32 embedder (raw embeddings, dynamic batch) with the model card in its metadata."""
    from facekit.representation import load_model, require_torch

    torch = require_torch("exporting weights to ONNX")
    import onnx

    model, card = load_model(weights_base(weights))

    class RawEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x, normalize=False)

    def write(tmp: Path) -> None:
        # The TorchScript exporter (deprecated, still in torch 2.13): the torch.export-based one
        # (dynamo=True) needs onnxscript, which facekit does not otherwise depend on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(RawEmbedding().eval(), (torch.zeros(1, 3, 112, 112),), str(tmp), dynamo=False,
                              opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        graph = onnx.load(str(tmp))
        if card.get("weights_dtype") == "float16":
            store_weights_as_float16(graph.graph)
        _label(graph, card, weights)
        onnx.save(graph, str(tmp))

    return _write_atomically(Path(output), write)


def copy_shipped_model(shipped: Path, weights: str | os.PathLike | None, output: str | os.PathLike) -> Path:
    """The ONNX file shipped beside the weights, labelled with their current card: an export without torch.

    The card beside the weights may have been re-measured since the file was made (a new detector's LFW run),
    and the copy should say what the card says."""
    import onnx

    def write(tmp: Path) -> None:
        graph = onnx.load(str(shipped))
        _label(graph, read_card(model_file(weights, ".json")), weights)
        onnx.save(graph, str(tmp))

    return _write_atomically(Path(output), write)


def _label(graph, card: dict, weights: str | os.PathLike | None) -> None:
    import onnx

    onnx.helper.set_model_props(graph, {CARD_KEY: json.dumps(card), "weights_key": weights_key(weights),
                                        FINGERPRINT_KEY: model_fingerprint(weights),
                                        "output": "embedding before L2 normalisation"})


def store_weights_as_float16(graph) -> None:
    """Keep the large weight tensors as float16, each read through a Cast to float32.

    For weights released in float16: the file is half the size, and ONNX Runtime folds the casts when it
    opens the file, so inference runs at float32 speed. The export folds batch norm into the convolutions,
    so these are the folded weights rounded once more: the width-0.5 model's embeddings of the test faces
    stayed at a cosine of 0.999999 or more to those of its float32 weights.
    """
    import onnx
    from onnx import numpy_helper

    large = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 1024]
    for tensor in large:
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}_float16")
        graph.initializer.remove(tensor)
        graph.initializer.append(half)
        graph.node.insert(0, onnx.helper.make_node("Cast", [half.name], [tensor.name], to=onnx.TensorProto.FLOAT,
                                                   name=f"{tensor.name}_to_float32"))


def quantize_int8(fp32_path: str | os.PathLike, output: str | os.PathLike, crops_bgr: np.ndarray) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real aligned crops.

    Static rather than dynamic: dynamic quantisation turns every Conv into ConvInteger, which ONNX
    Runtime ran six times slower than fp32 here; QDQ convolutions run on the int8 (VNNI) kernels.
    The crops and their mirrors calibrate the activation ranges, as the Embedder feeds both.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [preprocess(crops_bgr[i:i + 16], flip=True) for i in range(0, len(crops_bgr), 16)]

    class Crops(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory() as work:
            prepared = Path(work) / "prepared.onnx"
            # ONNX's own shape inference covers this all-convolution graph; the symbolic pass needs sympy.
            # Its graph optimisation also folds float16 weights' casts, so the quantiser sees float32 ones.
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            # On a few faces in a hundred the Inception-ResNet-C blocks run 20-40 times above their usual
            # range, more than one int8 scale per tensor can hold: they and the head (15% of the
            # multiply-adds) stay fp32. Moving-average ranges keep one odd batch from widening the rest.
            # 7-bit weights (reduce_range): without VNNI (AVX2 only) the int8 kernels add pairs of 8-bit
            # products in 16 bits, which saturate; on such a CPU 8-bit weights left astronaut crops at a
            # cosine of 0.91-0.94 to fp32, and 7-bit ones at 0.997 or more.
            late = [node.name for node in onnx.load(str(prepared)).graph.node
                    if "/blocks_c" in node.name or "/head_conv" in node.name or node.op_type in ("Gemm", "ReduceMean")]
            if not any("/blocks_c" in name for name in late):
                raise RuntimeError("unexpected graph: no Inception-ResNet-C nodes to keep in fp32")
            quantize_static(str(prepared), str(tmp), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=late, extra_options={"CalibMovingAverage": True})

    return _write_atomically(Path(output), write)


def preprocess(crops_bgr: np.ndarray, flip: bool) -> np.ndarray:
    """BGR uint8 (N, 112, 112, 3) -> RGB float32 (N or 2N, 3, 112, 112) in [-1, 1], mirrors appended."""
    x = (crops_bgr[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 128.0
    if flip:
        x = np.concatenate([x, x[..., ::-1]])
    return np.ascontiguousarray(x)


# --- calibration crops ----------------------------------------------------------------------------------


def _image_sources(root: Path) -> list[tuple[Path, str | None]]:
    """(file, None) for every image file under root and (zip file, member) for every image inside a .zip."""
    from facekit.imageio import IMAGE_EXTENSIONS

    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    sources: list[tuple[Path, str | None]] = []
    for path in files:
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    sources += [(path, m) for m in archive.namelist() if Path(m).suffix.lower() in IMAGE_EXTENSIONS]
            except zipfile.BadZipFile as exc:
                raise ValueError(f"calibration data: {path}: {exc}") from None
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            sources.append((path, None))
    return sources


def calibration_crops(source: str | os.PathLike, count: int = CALIBRATION_CROPS) -> np.ndarray:
    """Up to `count` aligned crops drawn at random (seeded) from a folder or zip of images.

    112x112 images are taken as aligned crops already; any other photo goes through the default
    detector and its largest face is aligned, the same way the pipeline would.
    """
    from facekit.alignment import align_face
    from facekit.imageio import DEFAULT_MAX_PIXELS, ImageError, decode_image, load_image, max_file_bytes

    if count < 1:  # else the loop below never stops early and quantisation takes every image found
        raise ValueError(f"the calibration crop count must be at least 1, not {count}")
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"calibration data not found: {root}")
    sources = _image_sources(root)
    if not sources:
        raise ValueError(f"no images found in {root}")
    detector = None
    crops: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:
        archives: dict[Path, zipfile.ZipFile] = {}
        # A seeded shuffle, so the crops cover many identities rather than the first folder's.
        for index in np.random.default_rng(0).permutation(len(sources)):
            path, member = sources[index]
            # Read as the pipeline reads photos (OpenCV skipped float TIFFs, which enroll reads); an image that
            # cannot be read is skipped, and one too large for any image within the pixel limit is not inflated.
            try:
                if member is None:
                    image = load_image(path)
                else:
                    if path not in archives:
                        archives[path] = stack.enter_context(zipfile.ZipFile(path))
                    if archives[path].getinfo(member).file_size > max_file_bytes(DEFAULT_MAX_PIXELS):
                        continue
                    image = decode_image(archives[path].read(member), name=f"{path}:{member}")
            except (ImageError, zipfile.BadZipFile):  # BadZipFile: a member whose data fails its checksum
                continue
            if image.shape[:2] == (112, 112):
                crops.append(image)
            else:
                if detector is None:
                    from facekit.detection import create_detector

                    detector = create_detector()
                faces = detector.detect(image)
                if faces:
                    crops.append(align_face(image, faces[0].landmarks))
            if len(crops) == count:
                break
    if not crops:
        raise ValueError(f"no face found in the calibration images under {root}")
    return np.stack(crops)


# --- ONNX Runtime sessions ------------------------------------------------------------------------------


def cgroup_cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The CPUs a container's CPU quota allows, rounded up (`docker run --cpus=1.5`: 2); None where there is none.

    cgroup v2's cpu.max holds "<quota> <period>" or "max <period>"; v1 has cpu.cfs_quota_us (-1: none) and
    cpu.cfs_period_us. A file missing or garbled counts as no quota."""
    sources = [(cgroup_root / "cpu.max", None)] + [(cgroup_root / folder / "cpu.cfs_quota_us",
                                                    cgroup_root / folder / "cpu.cfs_period_us")
                                                   for folder in ("cpu", "cpu,cpuacct")]
    for quota_file, period_file in sources:
        try:
            fields = quota_file.read_text().split() + (period_file.read_text().split() if period_file else [])
            quota, period = (int(field) for field in fields)
        except (OSError, ValueError):  # ValueError: "max", garbled text, or other than two numbers
            continue
        return math.ceil(quota / period) if quota > 0 and period > 0 else None
    return None


def physical_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may run on, counting hyper-threads once (they share one core's vector units), and no
    more than its container's CPU quota: threads beyond it only wait to be scheduled. The quota is CPU time,
    whichever hyper-threads spend it, so it is not divided by them."""
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    quota = cgroup_cpu_limit(cgroup_root) or usable
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, min(usable, quota))
    cores = set()
    for block in text.split("\n\n"):
        fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    threads_per_core = max(1, logical // len(cores)) if cores else 1
    return max(1, min(usable // threads_per_core, quota))


# More than any machine facekit runs on has cores; a typo's 99999 threads ran out of memory, silently, for minutes.
MOST_THREADS = 1024


def thread_count(threads: int | None = None, default_at_most: int | None = None) -> int:
    """The threads facekit's CPU work (ONNX Runtime, torch, FAISS) should use: `threads` if given, else
    $FACEKIT_THREADS, else physical_cores(), then no more than default_at_most where more would not pay.

    Anything but a whole number of at least 1 is a ValueError: ONNX Runtime takes 0 for its own default, which
    counts every hyper-thread and ignores a container's quota."""
    setting = os.environ.get(THREADS_ENV_VAR, "").strip()
    if threads is None and not setting:
        cores = physical_cores()
        return cores if default_at_most is None else min(cores, default_at_most)
    value, name = (threads, "threads") if threads is not None else (setting, THREADS_ENV_VAR)
    try:
        number = int(value) if isinstance(value, str) else operator.index(value)  # index(): no floats
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    if number > MOST_THREADS:  # each pool (ONNX Runtime, torch, FAISS) starts them all: 99999 was 32,000 threads
        raise ValueError(f"{name} is {number}: more than {MOST_THREADS} threads is a mistake (the machine has "
                         f"{physical_cores()} cores)")
    return number


def create_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session: thread_count(threads) threads that sleep, not spin, when idle; no inter-op pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = thread_count(threads)
    # The graph is one chain of blocks: parallel branches are too small to feed a second pool.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle workers that spin take the cores from the FAISS and OpenCV work between embeds (a 0.2 ms search took
    # 20 ms after one); without spinning, identify on a busy 2-core machine took 30% less CPU and 40% less time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own classes (InvalidProtobuf, Fail, ...) for a damaged file
        raise ValueError(f"cannot read ONNX model {path}: {one_line(exc)[:300]}") from exc


def session_fingerprint(session) -> str | None:
    """The exported weights' model_fingerprint; None for files exported before it was recorded."""
    return session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)


def session_weights_key(session) -> str | None:
    """The weights_key of the weights and graph version the file was exported from."""
    return session.get_modelmeta().custom_metadata_map.get("weights_key")


def shipped_model(weights: str | os.PathLike | None = None) -> Path | None:
    """The fp32 ONNX file beside the weights (<base>.onnx), if there is one; it may be stale."""
    path = beside(weights, ".onnx")
    return path if path.is_file() else None


def _exported_from(session, weights: str | os.PathLike | None) -> bool:
    """Whether the session's file was exported from exactly these weights, by this graph version."""
    return session_weights_key(session) == weights_key(weights)


def current_shipped_model(weights: str | os.PathLike | None = None) -> Path | None:
    """The fp32 ONNX file beside the weights, if it was exported from exactly them; else None."""
    shipped = shipped_model(weights)
    return shipped if shipped and _current_session(shipped, weights, threads=1) else None


def open_session(weights: str | os.PathLike | None = None, threads: int | None = None, int8: bool = False):
    """An ONNX Runtime session for these weights: the file shipped beside them when it was exported from
    exactly them and by this graph version, else the cached export (made on first use)."""
    # Checked first: the shipped file's session takes a ValueError for a damaged file and passes it over.
    threads = thread_count(threads)
    shipped = None if int8 else shipped_model(weights)
    session = _current_session(shipped, weights, threads) if shipped else None  # opened once: checked, then used
    return session or create_session(cached_model(weights, int8), threads)


def _current_session(shipped: Path, weights: str | os.PathLike | None, threads: int | None):
    """A session on the ONNX file beside the weights if it was exported from exactly them; None if it was not,
    or is damaged (the cached export then serves)."""
    try:
        session = create_session(shipped, threads)
    except ValueError:
        return None
    return session if _exported_from(session, weights) else None


def model_card(session) -> dict:
    card = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    return json.loads(card) if card else {}


def check_embedder(session, path: str | os.PathLike, dim: int) -> None:
    """A ValueError unless the model maps `input` (N, 3, 112, 112) to (N, dim) embeddings, as our exports do:
    another model is refused here, by name, rather than at the first embed() or with embeddings of some other
    shape."""
    def fits(node, shape: tuple) -> bool:  # None: the batch, which must be free ("batch", or None in ORT's terms)
        return node.type == "tensor(float)" and len(node.shape) == len(shape) and all(
            not isinstance(got, int) or got == wanted for got, wanted in zip(node.shape, shape))

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) == 1 and inputs[0].name == INPUT_NAME and fits(inputs[0], (None, 3, 112, 112)) \
            and outputs and fits(outputs[0], (None, dim)):
        return

    def described(nodes: list) -> str:
        return ", ".join(f"{node.name} {tuple(node.shape)} {node.type}" for node in nodes) or "nothing"

    raise ValueError(f"{path} is not a facekit embedder: it takes {described(inputs)} and gives {described(outputs)}, "
                     f"where one takes {INPUT_NAME} ('batch', 3, 112, 112) tensor(float) and gives ('batch', {dim})")


def cached_model(weights: str | os.PathLike | None = None, int8: bool = False) -> Path:
    """The cached ONNX file for these weights, exported on first use (fp32 only: int8 needs calibration data)."""
    path = cached_model_path(weights, int8)
    if path.is_file():
        _mark_used(path)
        return path
    if int8:
        raise FileNotFoundError(
            f"no int8 model for these weights in {path.parent}; make one with "
            "`facekit export onnx --int8 --calibration CROPS_OR_PHOTOS --cache`")
    # Said before export_onnx can say "exporting weights to ONNX needs PyTorch": embedding asked for no export.
    from facekit.representation import require_torch

    shipped, weights_file = beside(weights, ".onnx"), beside(weights, ".safetensors")
    why = (f"{shipped} is not an export of {weights_file}" if shipped.is_file()
           else f"{weights_file} has no ONNX file beside it ({shipped})")
    require_torch(f"{why}, and making one")
    try:
        export_onnx(weights, path)
    except OSError as exc:
        if exc.errno not in CACHE_UNWRITABLE:
            raise
        # Named by the folder and the fix: the error itself names a temporary file, or nothing (a full disk).
        raise OSError(exc.errno, f"cannot write facekit's ONNX cache ({exc.strerror}; FACEKIT_CACHE sets another)",
                      str(path.parent)) from exc
    prune_cache(path)
    return path


# --- `facekit export` -----------------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="export the embedding model for other runtimes")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = formats.add_parser("onnx", help="ONNX (opset 17, dynamic batch), optionally int8")
    onnx.add_argument("--weights", metavar="PATH", help="embedding model (.safetensors + .json card)")
    where = onnx.add_mutually_exclusive_group()
    where.add_argument("--output", metavar="PATH",
                       help="ONNX file to write (default: facekit-irv2.onnx, or facekit-irv2-int8.onnx)")
    where.add_argument("--cache", action="store_true",
                       help="write into facekit's cache, where the Embedder's onnx backends look")
    onnx.add_argument("--int8", action="store_true", help="static int8 quantisation (needs --calibration)")
    onnx.add_argument("--calibration", metavar="PATH",
                      help="folder or .zip of images: aligned 112x112 crops, or photos to detect and align")
    onnx.add_argument("--calibration-count", type=int, default=CALIBRATION_CROPS, metavar="N",
                      help=f"crops used for calibration (default: {CALIBRATION_CROPS})")
    onnx.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from facekit.cli import CliError

    if args.int8 and not args.calibration:
        raise CliError("--int8 needs --calibration: a folder or zip of real face images")
    if args.int8 and args.calibration_count < 1:
        raise CliError("--calibration-count must be at least 1")
    if args.cache:
        output = cached_model_path(args.weights, args.int8)
    else:
        output = Path(args.output or ("facekit-irv2-int8.onnx" if args.int8 else "facekit-irv2.onnx"))
    # The ONNX file beside the weights is the one their fp32 backend runs: an int8 model there would serve as
    # fp32, labelled as exported from these weights (copying it onto itself, as fp32, only relabels it).
    kept = [".safetensors", ".json", *([".onnx"] if args.int8 else [])]
    if output.resolve() in {beside(args.weights, suffix).resolve() for suffix in kept}:
        raise CliError(f"--output {output} would overwrite the model it is made from; name another file")
    if not args.int8:
        shipped = current_shipped_model(args.weights)  # copied rather than re-exported, so torch is not needed
        copy_shipped_model(shipped, args.weights, output) if shipped else export_onnx(args.weights, output)
        if args.cache:
            prune_cache(output)
        print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
        return 0
    crops = calibration_crops(args.calibration, args.calibration_count)
    with tempfile.TemporaryDirectory() as work:
        # Quantising the shipped file needs no torch.
        fp32 = current_shipped_model(args.weights) or export_onnx(args.weights, Path(work) / "fp32.onnx")
        quantize_int8(fp32, output, crops)
        agreement = mean_cosine(fp32, output, crops)
    if args.cache:
        prune_cache(output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB), calibrated on {len(crops)} crops; "
          f"int8 vs fp32 mean cosine on them: {agreement:.4f}")
    return 0


def mean_cosine(path_a: str | os.PathLike, path_b: str | os.PathLike, crops_bgr: np.ndarray) -> float:
    """Mean cosine between two ONNX models' embeddings of the same crops (no mirror augmentation)."""
    embeddings = []
    for path in (path_a, path_b):
        session = create_session(path)
        raw = np.concatenate([session.run(None, {INPUT_NAME: preprocess(crops_bgr[i:i + 32], flip=False)})[0]
                              for i in range(0, len(crops_bgr), 32)])
        embeddings.append(raw / np.linalg.norm(raw, axis=1, keepdims=True))
    return float(np.mean(np.sum(embeddings[0] * embeddings[1], axis=1)))
