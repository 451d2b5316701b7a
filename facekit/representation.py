"""Face representation: aligned 112x112 crops in, L2-normalised embeddings out."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekit import FacekitWarning
from facekit.alignment import CROP_SIZE
from facekit.errors import first_line
from facekit.export import (
    CACHE_UNWRITABLE,
    INPUT_NAME,
    check_embedder,
    create_session,
    model_card,
    model_file,
    model_fingerprint,
    open_session,
    preprocess,
    read_card,
    session_fingerprint,
    thread_count,
)

if TYPE_CHECKING:
    from facekit.model import InceptionResNetV2

# torch is imported only where the torch backend (or a GPU check) needs it: the ONNX Runtime path
# runs without it, and importing it costs about 1.5 s and 190 MB per CLI call.

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "facekit-irv2"
FALLBACK_THRESHOLD = 0.3
# The chance that search names a stranger, which the default identify threshold keeps to: the card's identify threshold
# gives it for 40 faces (40 x 5e-3 of LFW's different-person pairs), and a larger gallery gets a stricter threshold.
STRANGER_NAMING_RATE = 0.2


class ModelWarning(FacekitWarning):
    """The model could not be used as asked, or its card lacks a value, and facekit stood in for it."""


class UncalibratedThresholdWarning(ModelWarning):
    """The model card has no calibrated threshold (a training run's own card): verify and identify use a stand-in."""


# torch itself, not a facekit extra: PyPI's `facekit` is another project, and a bare torch is GBs of CUDA on Linux.
TORCH_EXTRA = ("pip install torch --index-url https://download.pytorch.org/whl/cpu "
               "(the CPU build; or, in a clone, pip install -e '.[train]')")


def require_torch(purpose: str):
    """Import torch, or fail with one line that says what needs it and how to install it.

    torch is an optional extra: detection, embedding (ONNX Runtime, on the ONNX file shipped beside the
    weights) and the gallery run without it, and a plain `pip install torch` can pull a CUDA build of GBs.
    """
    try:
        import torch
    except ImportError as failure:
        if isinstance(failure, ModuleNotFoundError) and failure.name == "torch":
            state = "which is not installed"
        else:  # torch is there, and a module or library it needs is not: that is what to fix
            state = f"which is installed but cannot be imported ({failure})"
        raise ModuleNotFoundError(f"{purpose} needs PyTorch, {state}: {TORCH_EXTRA}", name="torch") from None
    return torch


def weights_or_default(weights: str | os.PathLike | None) -> str | os.PathLike:
    """The embedding weights to use: those given, else $FACEKIT_WEIGHTS, else the shipped model."""
    return weights or os.environ.get("FACEKIT_WEIGHTS") or DEFAULT_MODEL


def torch_or_exit(purpose: str):
    """require_torch for a script's first lines (tools/), before any report_errors can catch: its one line, exit 2."""
    try:
        return require_torch(purpose)
    except ModuleNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_model(path: str | os.PathLike = DEFAULT_MODEL) -> tuple[InceptionResNetV2, dict]:
    """Load <path>.safetensors and its model card <path>.json (safetensors: no code runs on load)."""
    torch = require_torch("loading weights into the torch model")
    from safetensors.torch import load_file

    from facekit.model import InceptionResNetV2, ModelConfig

    weights, card_path = model_file(path, ".safetensors"), model_file(path, ".json")
    card = read_card(card_path)
    try:
        config = ModelConfig.from_dict(card["model"])
    except ValueError as exc:
        raise ValueError(f"model card {card_path}: {exc}") from exc
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors' own error class for a damaged file
        raise ValueError(f"{weights} is damaged or does not match its card {card_path}: {first_line(exc)}") from exc
    # The card is checked against the tensors on a model that allocates nothing: one that says width 16 built
    # 33 GB of weights before load_state_dict objected, and its objection listed every tensor.
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in InceptionResNetV2(config).state_dict().items()}
    mismatch = _first_difference({name: tuple(tensor.shape) for name, tensor in state.items()}, expected)
    if mismatch:
        raise ValueError(f"{weights} is damaged or does not match its card {card_path}: {mismatch}")
    # A training run that diverged saves NaNs as readily as numbers, and every embedding would then be NaN: a
    # verification that never matches, and a gallery search that names no one, with no error anywhere.
    broken = next((name for name, tensor in state.items() if not tensor.isfinite().all()), None)
    if broken is not None:
        raise ValueError(f"{weights} is damaged: {broken} holds values that are not numbers (NaN or infinity)")
    model = InceptionResNetV2(config)
    model.load_state_dict(state)
    return model.eval(), card


def _first_difference(found: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """The first tensor that the file and the card's architecture disagree on, in words; None if none."""
    for name, shape in expected.items():
        if name not in found:
            return f"the file lacks {name}"
        if found[name] != shape:
            return f"{name} is {found[name]} in the file, {shape} by the card"
    extra = sorted(set(found) - set(expected))
    return f"the file holds {extra[0]}, which the card's architecture has no place for" if extra else None


BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
INT8_ENV_VAR = "FACEKIT_INT8"


# Device files of the GPU drivers torch can use (NVIDIA, WSL2, ROCm); without any of them CUDA is unavailable.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch on a Linux machine that has no GPU driver."""
    if sys.platform == "darwin" or (sys.platform.startswith("linux") and
                                    not any(os.path.exists(path) for path in GPU_DEVICE_FILES)):
        return False
    try:
        import torch
    except ImportError:  # no torch, no GPU backend: ONNX Runtime on the CPU
        return False
    return torch.cuda.is_available()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        # A Ctrl-C that lands in its native initialisation comes out as "ImportError: initialization failed":
        # taken for a missing runtime, it would switch the run to torch instead of stopping it.
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        return False
    return True


def as_crops(crops_bgr: np.ndarray) -> np.ndarray:
    """One crop or a batch as (N, 112, 112, 3) uint8 BGR, grey ones as BGR; anything else is a ValueError.

    Both backends would take some wrong crops without a word: float pixels in [0, 1] give nonsense embeddings,
    and torch pools a crop of any size; ONNX Runtime's own refusals are several lines about input indices.
    """
    crops = np.asarray(crops_bgr)
    if crops.ndim >= 1 and len(crops) == 0:
        return np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    if crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops (as align_face returns them), not {crops.dtype}")
    if crops.shape == (CROP_SIZE, CROP_SIZE):
        crops = crops[..., None]
    if crops.ndim == 3 and crops.shape[0] == CROP_SIZE:  # one crop: (112, 112, C)
        crops = crops[None]
    # Grey batches need their channel axis, (N, 112, 112, 1): as (N, 112, 112), three grey crops would be
    # indistinguishable from one colour crop in torch's channel-first layout.
    if crops.ndim != 4 or crops.shape[1:3] != (CROP_SIZE, CROP_SIZE) or crops.shape[3] not in (1, 3):
        raise ValueError(f"expected aligned {CROP_SIZE}x{CROP_SIZE} crops, one (112, 112, 3) or a batch "
                         f"(N, 112, 112, 3), grey ones (N, 112, 112, 1), not an array of shape {crops.shape}")
    return np.repeat(crops, 3, axis=3) if crops.shape[3] == 1 else crops


# A crop whose luminance spreads less than this (its standard deviation, of 0-255) is stretched to a typical crop's
# mean and spread before it is embedded (lift_dark_crops). Dark crops embed near one another, whoever they show: LFW
# strangers darkened to 10 % (a door camera at night) were 0.54 similar on average (0.10 lit), so a few enrolled faces
# took most of them. Measured with MTCNN at 10 % brightness, before -> after: a reviewer's gallery of 25 faces named
# 24 % -> 11 % of 500 strangers (8 % lit); a gallery of 200 LFW people (threshold 0.611) named its people in 11 % ->
# 60 % of their dark photos (84 % lit; at 15 %: 47 % -> 81 %), and strangers 8 % -> 15 %, the rate of lit photos (17 %)
# once faces are told apart again. The lowest spread of 2,320 LFW crops is 20 (5th percentile 35): 3 change.
LOW_CONTRAST_STD = 25.0
TYPICAL_CROP_MEAN, TYPICAL_CROP_STD = 114.0, 51.0  # LFW's crops' luminance


def lift_dark_crops(crops_bgr: np.ndarray) -> np.ndarray:
    """crops_bgr (N, 112, 112, 3) with each crop of low contrast (LOW_CONTRAST_STD) stretched to a typical crop's
    brightness and contrast; the others as they are (the same array where none is)."""
    luminance = crops_bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    spread = luminance.std(axis=(1, 2))
    low = np.flatnonzero(spread < LOW_CONTRAST_STD)
    if len(low) == 0:
        return crops_bgr
    lifted = crops_bgr.copy()
    for index in low:
        gain = TYPICAL_CROP_STD / max(float(spread[index]), 1.0)
        stretched = (crops_bgr[index].astype(np.float32) - luminance[index].mean()) * gain + TYPICAL_CROP_MEAN
        lifted[index] = np.clip(np.rint(stretched), 0, 255).astype(np.uint8)
    return lifted


class Embedder:
    """Batched embedding of aligned crops with optional mirror test-time augmentation.

    Crops come in as OpenCV gives them (BGR uint8); the model was trained on RGB in [-1, 1].

    backend: "torch" (needs the `train` extra); "onnx" (ONNX Runtime on an export of the same weights: the
    file shipped beside them, or one cached per user and made on first use); "onnx-int8" (an int8 model made
    by `facekit export onnx --int8 --calibration DATA --cache`); or "auto": ONNX Runtime when it is installed
    and the model runs on the CPU, else torch.
    FACEKIT_INT8=1 turns "auto" and "onnx" into "onnx-int8". `weights` may also name an .onnx file
    written by `facekit export onnx`, which carries its model card.
    threads: CPU threads for either backend; default $FACEKIT_THREADS, else one per physical core within the
    container's CPU quota (facekit.export.thread_count).
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str | None = None,
                 threads: int | None = None, batch_size: int = 64, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedder backend: {backend!r} (choose one of {', '.join(BACKENDS)})")
        weights = weights_or_default(weights)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        threads = thread_count(threads)  # FACEKIT_THREADS or the cores, for either backend; checked before any work
        # Which weights made an embedding; a gallery refuses to mix two models' embeddings.
        self.model_id: str | None = None if str(weights).endswith(".onnx") else model_fingerprint(weights)
        self.backend = self._choose_backend(backend, weights, device)
        self.device = "cpu" if self.backend != "torch" else device or ("cuda" if cuda_available() else "cpu")
        if self.backend != "torch":
            try:
                self._open_onnx(weights, threads)
            except OSError as exc:
                # Only a cache that cannot be written falls back; a missing int8 model, say, is an error that
                # says how to make one.
                if backend != "auto" or exc.errno not in CACHE_UNWRITABLE:
                    raise
                reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
                warnings.warn(f"{reason}; using torch", ModelWarning, stacklevel=2)
                self.backend = "torch"
        if self.backend == "torch":
            torch = require_torch("the torch embedder backend")
            self._check_device(torch)
            torch.set_num_threads(threads)
            model, self.card = load_model(weights)
            self.model = model.to(self.device).to(memory_format=torch.channels_last)
        if "threshold" not in self.card:  # a training run's own card, say, before tools/release_model.py --lfw
            warnings.warn(f"the model card of {weights} has no calibrated threshold; {FALLBACK_THRESHOLD} stands in "
                          "(pass --threshold, or release the run with tools/release_model.py --lfw)",
                          UncalibratedThresholdWarning, stacklevel=2)

    @staticmethod
    def _choose_backend(backend: str, weights: str | os.PathLike, device: str | None) -> str:
        exported = str(weights).endswith(".onnx")
        if exported and backend == "torch":
            raise ValueError("an .onnx model runs on the onnx backends only")
        if backend == "auto":
            on_cpu = device == "cpu" or (device is None and not cuda_available())
            backend = "onnx" if exported or (on_cpu and onnxruntime_available()) else "torch"
        if backend == "onnx" and not exported and os.environ.get(INT8_ENV_VAR, "0") not in ("", "0"):
            backend = "onnx-int8"
        if backend != "torch" and device not in (None, "cpu"):
            raise ValueError(f"the {backend} backend runs on the CPU only, not on {device}")
        return backend

    def _check_device(self, torch) -> None:
        """A device name torch cannot parse, or a CUDA device it does not have, as a one-line ValueError before the
        weights load: torch itself said so only when the model moved there, with an AssertionError on a CPU build."""
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"unknown device: {self.device!r} (cpu, cuda or cuda:N, say)") from None
        available = torch.cuda.device_count()
        if device.type == "cuda" and (device.index or 0) >= available:
            raise ValueError(f"device {self.device} is not available: torch finds {available} CUDA device"
                             f"{'' if available == 1 else 's'}")

    def _open_onnx(self, weights: str | os.PathLike, threads: int | None) -> None:
        if str(weights).endswith(".onnx"):
            if not Path(weights).is_file():
                raise FileNotFoundError(f"model file not found: {weights}")
            self._session = create_session(weights, threads)
            self.card = model_card(self._session)
            self.model_id = session_fingerprint(self._session)
            check_embedder(self._session, weights, self.dim)  # any .onnx file may be named, not only our exports
        else:
            self._session = open_session(weights, threads, int8=self.backend == "onnx-int8")
            # The card beside the weights, not the copy in the cache: it may have been recalibrated since.
            self.card = read_card(model_file(weights, ".json"))

    @property
    def dim(self) -> int:
        return int(self.card.get("model", {}).get("embedding_size", 512))

    @property
    def threshold(self) -> float:
        """The cosine similarity above which two faces are called the same person (calibrated on LFW)."""
        return float(self.card.get("threshold", FALLBACK_THRESHOLD))

    @property
    def identify_threshold(self) -> float:
        """The stricter similarity that search in a gallery needs before it names a face.

        A stranger is compared with every enrolled face, so false names grow with the gallery;
        the card sets this at a fixed false accept rate on LFW (see its identify_threshold_source).
        """
        return float(self.card.get("identify_threshold", self.threshold))

    def identify_threshold_for(self, gallery_faces: int) -> float:
        """The identify threshold for a gallery of this many faces: the similarity that a share
        STRANGER_NAMING_RATE / gallery_faces of LFW's different-person pairs exceed (the card's `threshold_at_far`,
        read between its rates on a log scale), so a stranger is named about as rarely in 5,000 faces as in 40.
        Never below identify_threshold; never past the strictest rate the card measured, which larger galleries
        get (with a higher chance of naming a stranger than the rate's)."""
        measured = sorted((float(far), float(value)) for far, value in
                          self.card.get("lfw", {}).get("threshold_at_far", {}).items())
        if not measured:
            return self.identify_threshold
        log_far = np.log10(STRANGER_NAMING_RATE / max(1, gallery_faces))
        log_rates = [np.log10(far) for far, _ in measured]
        # np.interp clamps at both ends: a gallery past the strictest measured rate keeps that rate's threshold.
        at_rate = float(np.interp(log_far, log_rates, [value for _, value in measured]))
        return max(self.identify_threshold, round(at_rate, 4))

    def embed(self, crops_bgr: np.ndarray, flip: bool = True) -> np.ndarray:
        """(N, dim) unit embeddings of N aligned crops (N, 112, 112, 3), or of one crop (112, 112, 3).

        BGR uint8, as align_face returns them; grey crops ((112, 112) or (..., 1)) are taken as BGR ones.
        """
        crops_bgr = as_crops(crops_bgr)
        if len(crops_bgr) == 0:
            return np.zeros((0, self.dim), np.float32)
        crops_bgr = lift_dark_crops(crops_bgr)
        embed_batch = self._embed_torch if self.backend == "torch" else self._embed_onnx
        outputs = [embed_batch(crops_bgr[start:start + self.batch_size], flip)
                   for start in range(0, len(crops_bgr), self.batch_size)]
        return np.concatenate(outputs).astype(np.float32)

    def _embed_torch(self, crops_bgr: np.ndarray, flip: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            rgb = torch.from_numpy(np.ascontiguousarray(crops_bgr[:, :, :, ::-1]))
            x = rgb.to(self.device).permute(0, 3, 1, 2).float().sub_(127.5).div_(128.0)
            x = x.contiguous(memory_format=torch.channels_last)
            if flip:
                # Sum of the unnormalised embeddings of the face and its mirror image, as in insightface's eval.
                both = self.model(torch.cat([x, x.flip(3)]), normalize=False)
                embedding = both[: len(x)] + both[len(x):]
            else:
                embedding = self.model(x, normalize=False)
            return torch.nn.functional.normalize(embedding.float(), dim=1).cpu().numpy()

    def _embed_onnx(self, crops_bgr: np.ndarray, flip: bool) -> np.ndarray:
        raw = self._session.run(None, {INPUT_NAME: preprocess(crops_bgr, flip)})[0]
        if flip:
            raw = raw[: len(crops_bgr)] + raw[len(crops_bgr):]
        # As torch.nn.functional.normalize: divide by the norm, floored at 1e-12.
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
