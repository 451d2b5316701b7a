"""Face representation: aligned 112x112 crops in, L2-normalised embeddings out."""

from __future__ import annotations

import errno
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekit import FacekitWarning
from facekit.errors import first_line
from facekit.export import (
    INPUT_NAME,
    create_session,
    model_card,
    model_fingerprint,
    open_session,
    preprocess,
    read_card,
    session_fingerprint,
    weights_base,
)

if TYPE_CHECKING:
    from facekit.model import InceptionResNetV2

# torch is imported only where the torch backend (or a GPU check) needs it: the ONNX Runtime path
# runs without it, and importing it costs about 1.5 s and 190 MB per CLI call.

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = WEIGHTS_DIR / "facekit-irv2"
FALLBACK_THRESHOLD = 0.3


class ModelWarning(FacekitWarning):
    """The model could not be used as asked, or its card lacks a value, and facekit stood in for it."""


TORCH_EXTRA = "pip install 'facekit[train]'"


def require_torch(purpose: str):
    """Import torch, or fail with one line that says what needs it and how to install it.

    torch is an optional extra: detection, embedding (ONNX Runtime, on the ONNX file shipped beside the
    weights) and the gallery run without it, and a plain `pip install torch` can pull a CUDA build of GBs.
    """
    try:
        import torch
    except ImportError:
        raise ModuleNotFoundError(f"{purpose} needs PyTorch, which is not installed: {TORCH_EXTRA}",
                                  name="torch") from None
    return torch


def load_model(path: str | os.PathLike = DEFAULT_MODEL) -> tuple[InceptionResNetV2, dict]:
    """Load <path>.safetensors and its model card <path>.json (safetensors: no code runs on load)."""
    require_torch("loading weights into the torch model")
    from safetensors.torch import load_file

    from facekit.model import InceptionResNetV2, ModelConfig

    base = Path(path)
    if base.suffix in {".safetensors", ".json"}:
        base = base.with_suffix("")
    weights, card_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
    for required in (weights, card_path):
        if not required.is_file():
            raise FileNotFoundError(f"model file not found: {required}")
    card = read_card(card_path)
    model = InceptionResNetV2(ModelConfig.from_dict(card["model"]))
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # safetensors' own error class for a damaged file; RuntimeError for a mismatch
        raise ValueError(f"{weights} is damaged or does not match its card {card_path}: {first_line(exc)}") from exc
    return model.eval(), card


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
    except ImportError:
        return False
    return True


class Embedder:
    """Batched embedding of aligned crops with optional mirror test-time augmentation.

    Crops come in as OpenCV gives them (BGR uint8); the model was trained on RGB in [-1, 1].

    backend: "torch" (needs the `train` extra); "onnx" (ONNX Runtime on an export of the same weights: the
    file shipped beside them, or one cached per user and made on first use); "onnx-int8" (an int8 model made
    by `facekit export onnx --int8 --calibration DATA --cache`); or "auto": ONNX Runtime when it is installed
    and the model runs on the CPU, else torch.
    FACEKIT_INT8=1 turns "auto" and "onnx" into "onnx-int8". `weights` may also name an .onnx file
    written by `facekit export onnx`, which carries its model card.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None,
                 threads: int | None = None, batch_size: int = 64, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedder backend: {backend!r} (choose one of {', '.join(BACKENDS)})")
        weights = weights or os.environ.get("FACEKIT_WEIGHTS") or DEFAULT_MODEL
        self.batch_size = batch_size
        # Which weights made an embedding; a gallery refuses to mix two models' embeddings.
        self.model_id: str | None = None if str(weights).endswith(".onnx") else model_fingerprint(weights)
        self.backend = self._choose_backend(backend, weights, device)
        self.device = "cpu" if self.backend != "torch" else device or ("cuda" if cuda_available() else "cpu")
        if self.backend != "torch":
            try:
                self._open_onnx(weights, threads)
            except OSError as exc:
                # Only a cache that cannot be written (no permission, a read-only file system) falls back; a
                # missing int8 model, say, is an error that says how to make one.
                if backend != "auto" or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                warnings.warn(f"cannot cache the ONNX model ({exc}); set FACEKIT_CACHE. Using torch.", ModelWarning,
                              stacklevel=2)
                self.backend = "torch"
        if self.backend == "torch":
            torch = require_torch("the torch embedder backend")
            if threads:
                torch.set_num_threads(threads)
            model, self.card = load_model(weights)
            self.model = model.to(self.device).to(memory_format=torch.channels_last)
        if "threshold" not in self.card:  # a training run's own card, say, before tools/release_model.py --lfw
            warnings.warn(f"the model card of {weights} has no calibrated threshold; {FALLBACK_THRESHOLD} stands in "
                          "(pass --threshold, or release the run with tools/release_model.py --lfw)", ModelWarning,
                          stacklevel=2)

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

    def _open_onnx(self, weights: str | os.PathLike, threads: int | None) -> None:
        if str(weights).endswith(".onnx"):
            if not Path(weights).is_file():
                raise FileNotFoundError(f"model file not found: {weights}")
            self._session = create_session(weights, threads)
            self.card = model_card(self._session)
            self.model_id = session_fingerprint(self._session)
        else:
            self._session = open_session(weights, threads, int8=self.backend == "onnx-int8")
            # The card beside the weights, not the copy in the cache: it may have been recalibrated since.
            self.card = read_card(weights_base(weights).with_suffix(".json"))

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

    def embed(self, crops_bgr: np.ndarray, flip: bool = True) -> np.ndarray:
        crops_bgr = np.asarray(crops_bgr)
        if crops_bgr.ndim == 3:
            crops_bgr = crops_bgr[None]
        if len(crops_bgr) == 0:
            return np.zeros((0, self.dim), np.float32)
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
