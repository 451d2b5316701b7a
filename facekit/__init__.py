"""facekit: offline face recognition.

    import facekit
    image = facekit.load_image("photo.jpg")
    faces = facekit.face_embeddings(image)            # [(Face, embedding), ...]
    facekit.compare(faces[0][1], other_embedding)     # cosine similarity
    facekit.verify("a.jpg", "b.jpg")                  # {"same": bool, "similarity": ..., "threshold": ...}

    with facekit.Gallery.open("galleries/default") as gallery:
        facekit.identify("group.jpg", gallery)          # [{"box", "identity", "similarity", ...}, ...]
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from facekit.datastore import Gallery
    from facekit.detection import Face
    from facekit.recognition import FacePipeline

__all__ = ["FacekitWarning", "Face", "FacePipeline", "Gallery", "GalleryError", "ImageError", "compare", "detect_faces",
           "face_embeddings", "identify", "load_image", "pipeline", "verify"]


class FacekitWarning(UserWarning):
    """Something facekit repaired or stood in for that the user should know of; the CLI prints it as one line."""


# Imported on first use: torch takes seconds to load, and `facekit gallery list` should not wait for it.
_LAZY = {"Gallery": "facekit.datastore", "GalleryError": "facekit.datastore", "Face": "facekit.detection",
         "ImageError": "facekit.imageio", "load_image": "facekit.imageio", "FacePipeline": "facekit.recognition"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facekit' has no attribute {name!r}")


@lru_cache(maxsize=1)
def pipeline() -> FacePipeline:
    """The default pipeline, built once: auto detector, shipped weights, mirror augmentation."""
    from facekit.recognition import FacePipeline

    return FacePipeline()


def _as_image(image: np.ndarray | str | os.PathLike) -> np.ndarray:
    from facekit.imageio import load_image

    return image if isinstance(image, np.ndarray) else load_image(image)


def detect_faces(image: np.ndarray | str | os.PathLike) -> list[Face]:
    """Faces (box, score, 5 landmarks), largest first. Arrays are BGR uint8, as OpenCV gives them."""
    return pipeline().detect(_as_image(image))


def face_embeddings(image: np.ndarray | str | os.PathLike) -> list[tuple[Face, np.ndarray]]:
    """Every face with its L2-normalised embedding."""
    return [(r.face, r.embedding) for r in pipeline().analyze(_as_image(image))]


def compare(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (both unit length)."""
    return float(np.dot(embedding_a, embedding_b))


def verify(image_a: np.ndarray | str | os.PathLike, image_b: np.ndarray | str | os.PathLike,
           threshold: float | None = None) -> dict:
    """Whether the largest faces of two images are the same person."""
    found = []
    for image in (image_a, image_b):
        faces = face_embeddings(image)
        if not faces:
            raise ValueError(f"no face found in {image if not isinstance(image, np.ndarray) else 'the image'}")
        found.append(faces[0][1])
    threshold = pipeline().threshold if threshold is None else threshold
    similarity = compare(*found)
    return {"same": similarity >= threshold, "similarity": similarity, "threshold": threshold}


def identify(image: np.ndarray | str | os.PathLike, gallery: Gallery, threshold: float | None = None,
             top_k: int = 3) -> list[dict]:
    """Every face in the image with its identity (None when unknown) and top-k candidates."""
    from facekit.recognition import identify_image

    threshold = pipeline().identify_threshold if threshold is None else threshold
    return identify_image(pipeline(), gallery, _as_image(image), threshold, top_k)
