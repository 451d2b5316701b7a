"""facekit: offline face recognition.

    import facekit
    image = facekit.load_image("photo.jpg")
    faces = facekit.face_embeddings(image)            # [(Face, embedding), ...]
    facekit.compare(faces[0][1], other_embedding)     # cosine similarity
    facekit.verify("a.jpg", "b.jpg")                  # {"same": bool, "similarity": ..., "threshold": ...}

    with facekit.Gallery.open("galleries/default") as gallery:
        facekit.enroll("people/", gallery)              # one sub-folder of photos per person
        facekit.add_face(gallery, "ada", "ada.jpg")     # or one photo at a time
        facekit.identify("group.jpg", gallery)          # [{"box", "identity", "similarity", ...}, ...]
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from facekit.datastore import Gallery
    from facekit.detection import Face
    from facekit.recognition import EnrollReport, FacePipeline

__all__ = ["FacekitWarning", "Face", "FacePipeline", "Gallery", "GalleryError", "ImageError", "add_face", "compare",
           "detect_faces", "enroll", "face_embeddings", "identify", "load_image", "pipeline", "verify"]


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
    import numpy as np

    from facekit.imageio import load_image

    if isinstance(image, np.ndarray):
        return image
    if not isinstance(image, (str, bytes, os.PathLike)):
        # os.fspath's own message ("expected str, bytes or os.PathLike object, not list") does not say what to pass.
        raise TypeError(f"an image is a BGR uint8 array or a file's path, not {type(image).__name__}"
                        + ("; pass the images one at a time" if isinstance(image, (list, tuple)) else ""))
    return load_image(image)


def detect_faces(image: np.ndarray | str | os.PathLike) -> list[Face]:
    """Faces (box, score, 5 landmarks), largest first. Arrays are BGR uint8, as OpenCV gives them."""
    return pipeline().detect(_as_image(image))


def face_embeddings(image: np.ndarray | str | os.PathLike) -> list[tuple[Face, np.ndarray]]:
    """Every face with its L2-normalised embedding."""
    return [(r.face, r.embedding) for r in pipeline().analyze(_as_image(image))]


def compare(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (both unit length)."""
    import numpy as np

    return float(np.dot(embedding_a, embedding_b))


def verify(image_a: np.ndarray | str | os.PathLike, image_b: np.ndarray | str | os.PathLike,
           threshold: float | None = None) -> dict:
    """Whether the largest faces of two images are the same person."""
    import numpy as np

    found = []
    for image in (image_a, image_b):
        name = "the image" if isinstance(image, np.ndarray) else str(image)
        found.append(_largest_face(_as_image(image), name)[1])
    threshold = pipeline().threshold if threshold is None else threshold
    similarity = compare(*found)
    return {"same": similarity >= threshold, "similarity": similarity, "threshold": threshold}


def identify(image: np.ndarray | str | os.PathLike, gallery: Gallery | None, threshold: float | None = None,
             top_k: int = 3) -> list[dict]:
    """Every face in the image with its identity (None when unknown) and top-k candidates."""
    from facekit.recognition import identify_image

    faces_enrolled = len(gallery) if gallery is not None else 0  # no gallery: every face unknown, as before
    threshold = pipeline().identify_threshold_for(faces_enrolled) if threshold is None else threshold
    return identify_image(pipeline(), gallery, _as_image(image), threshold, top_k)


def enroll(people_dir: str | os.PathLike, gallery: Gallery, progress: bool = False, sync: bool = False) -> EnrollReport:
    """`facekit enroll`: the largest face of each photo in a folder of per-person folders; photos enrolled
    already (by content) are skipped. The report lists what was enrolled, skipped and why. With sync, the faces
    enrolled from photos in that folder that have since been deleted or changed are then removed (report.removed)."""
    from facekit.recognition import enroll as enroll_folder

    _check_size(gallery)
    return enroll_folder(pipeline(), gallery, people_dir, progress=progress, sync=sync)


def add_face(gallery: Gallery, identity: str, image: np.ndarray | str | os.PathLike) -> int:
    """Enrol the largest face of one image as `identity`; returns its id in the gallery. As with `enroll`, a photo
    whose content is enrolled as this identity already is not added again (its id is returned), and one enrolled
    as someone else is a ValueError; so is an image without a face.

    A file is recorded by its absolute path and content hash, an array by the hash of its pixels."""
    import hashlib

    import numpy as np

    from facekit.datastore import clean_identity
    from facekit.imageio import decode_image, read_image_file

    _check_size(gallery)
    if isinstance(image, np.ndarray):
        array, name, source, data = image, "the image", "<array>", np.ascontiguousarray(image).tobytes()
    else:  # read once: the hash recorded is that of the bytes embedded
        # Absolute, so that the path still names the photo from another folder; abspath, not resolve, keeps a
        # symlink as the user named it.
        name, source, data = str(image), os.path.abspath(image), read_image_file(image)
        array = decode_image(data, name=name)
    identity, sha256 = clean_identity(identity), hashlib.sha256(data).hexdigest()
    face, embedding = _largest_face(array, name)
    with gallery.writer():  # holding the lock, so a new gallery records which model its embeddings are from
        gallery.bind_model(pipeline().embedder.model_id)
        enrolled = gallery.source_face(sha256)
        if enrolled is not None and enrolled[1] == identity:  # as enroll skips it: a second copy would only weigh more
            return enrolled[0]
        if enrolled is not None:
            raise ValueError(f"{name}: the same photo is enrolled as {enrolled[1]}; not added to {identity} "
                             "(gallery.remove_photos takes it out of the gallery)")
        return gallery.add(identity, embedding[None], [{"path": source, "sha256": sha256,
                                                        "box": [float(v) for v in face.box]}])[0]


def _largest_face(image: np.ndarray, name: str) -> tuple[Face, np.ndarray]:
    """The largest face of an image that should hold one (verify, add_face) and its embedding; a FacekitWarning
    says where it was found only with the image turned."""
    import warnings

    found = pipeline().find_one_face(image)
    if not found.faces:
        raise ValueError(f"no face found in {name}")
    if found.warning:
        warnings.warn(f"{name}: {found.warning}", FacekitWarning, stacklevel=3)
    return found.faces[0], pipeline().embed_found(image, found)


def _check_size(gallery: Gallery) -> None:
    """Checked before anything is written. Gallery.open checks the size only when given a dim (the CLI gives it);
    without this, a failed add to an empty gallery made for a model of another size would still record this model
    as the gallery's, and the model it was made for would be refused from then on."""
    from facekit.datastore import GalleryError

    dim = pipeline().embedder.dim
    if gallery.dim != dim:
        raise GalleryError(f"gallery {gallery.root} holds {gallery.dim}-d embeddings, not {dim}-d (another model?)")
