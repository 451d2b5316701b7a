"""facekit: offline face recognition.

    import facekit
    image = facekit.load_image("photo.jpg")
    faces = facekit.face_embeddings(image)            # [(Face, embedding), ...]
    facekit.compare(faces[0][1], other_embedding)     # cosine similarity, not a yes/no: verify() says that
    facekit.compare(a, b) >= facekit.pipeline().threshold  # verify's yes/no (face_recognition's compare_faces)
    facekit.verify("a.jpg", "b.jpg")                  # {"same": bool, "similarity": ..., "threshold": ...}

    with facekit.Gallery.open("galleries/default") as gallery:
        facekit.enroll("people/", gallery)              # one sub-folder of photos per person
        facekit.add_face(gallery, "ada", "ada.jpg")     # or one photo at a time
        facekit.identify("group.jpg", gallery)          # [{"box", "identity", "similarity", "threshold", ...}, ...]

An image is a file's path, an encoded file's bytes, a PIL image (converted by its mode) or a uint8 array.
Arrays are BGR (OpenCV's order); pass a PIL image, or reverse an RGB array's channels with arr[..., ::-1].
"""

from __future__ import annotations

import numbers
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, overload

# ONNX Runtime (1.2x and later, on every OS) sends usage events to Microsoft unless this is set before its import,
# and writes a device id under ~/.cache/Microsoft: facekit promises no network connection. Every facekit module is
# imported after this package; one who sets the variable to 0 keeps their choice.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from facekit.alignment import align_face
    from facekit.datastore import Gallery, GalleryError
    from facekit.detection import Face
    from facekit.imageio import ImageError, load_image
    from facekit.recognition import EnrollReport, FacePipeline

    # Declared aliases: a type checker reads a plain assignment of a union as a variable, no type (py.typed ships it).
    ImageLike: TypeAlias = np.ndarray | Image.Image | str | os.PathLike[str] | bytes
    # For compare's overloads: a type checker that knows an array's shape learns that two vectors give a float.
    Vector: TypeAlias = np.ndarray[tuple[int], np.dtype[Any]]  # one embedding, (D,)
    Matrix: TypeAlias = np.ndarray[tuple[int, int], np.dtype[Any]]  # embeddings, (N, D)

__all__ = ["EnrollReport", "FacekitWarning", "Face", "FacePipeline", "Gallery", "GalleryError", "ImageError",
           "add_face", "align_face", "compare", "detect_faces", "enroll", "face_embeddings", "identify", "load_image",
           "pipeline", "verify"]


class FacekitWarning(UserWarning):
    """Something facekit repaired or stood in for that the user should know of; the CLI prints it as one line."""


# Imported on first use: torch takes seconds to load, and `facekit gallery list` should not wait for it.
_LAZY = {"Gallery": "facekit.datastore", "GalleryError": "facekit.datastore", "Face": "facekit.detection",
         "ImageError": "facekit.imageio", "load_image": "facekit.imageio", "FacePipeline": "facekit.recognition",
         "align_face": "facekit.alignment", "EnrollReport": "facekit.recognition"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that dir() and completion in a shell offer what __getattr__ gives.
    return sorted(set(globals()) | set(_LAZY))


_pipeline: FacePipeline | None = None
_pipeline_building = threading.Lock()


def pipeline() -> FacePipeline:
    """The default pipeline, built once: auto detector, shipped weights, mirror augmentation. Threads may share it;
    those that ask while the first one builds it wait for that one, rather than load the models again."""
    global _pipeline
    if _pipeline is None:  # the lock only until it is built: every face found asks for it
        with _pipeline_building:
            if _pipeline is None:
                from facekit.recognition import FacePipeline

                _pipeline = FacePipeline()
    return _pipeline


def _own_pipeline_after_fork() -> None:
    """In a forked child (a pre-forking server's worker), pipeline() builds the child's own. The parent's is kept
    alive, unused, for as long as the child runs: its ONNX Runtime session waits, as it is destroyed, for threads
    that a fork does not copy, and a worker's exit hung there for ever."""
    global _pipeline, _pipeline_building
    _pipeline_building = threading.Lock()  # a thread of the parent may have held it at the fork
    if _pipeline is not None:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(_pipeline))
        _pipeline = None


os.register_at_fork(after_in_child=_own_pipeline_after_fork)


def _or_default(given: FacePipeline | None) -> FacePipeline:
    """The pipeline a call was given, else the shared default (the functions' pipeline parameter hides pipeline())."""
    return pipeline() if given is None else given


def _as_image(image: ImageLike, name: str = "the image") -> np.ndarray:
    """Any image the API takes as a uint8 array: BGR, or grey as a grey array (HxW or HxWx1) was given (the
    detectors take it)."""
    import numpy as np
    from PIL import Image

    from facekit.imageio import decode_image, from_pil, load_image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:  # as_bgr's own refusal does not say what was given or how to convert it
            raise ValueError(f"{name} is a {image.dtype} array, not uint8: {_uint8_hint(image.dtype)}")
        if image.ndim == 3 and image.shape[2] == 1:  # grey with a channel axis, as tensors and np.atleast_3d give it
            return image[:, :, 0]
        return image
    if isinstance(image, Image.Image):  # it states its mode, so unlike an array's its channel order is known
        return from_pil(image)  # upright, as load_image gives the same file
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), name=name)
    if not isinstance(image, (str, os.PathLike)):
        # os.fspath's own message ("expected str, bytes or os.PathLike object, not list") does not say what to pass.
        raise TypeError(f"an image is a BGR uint8 array, a PIL image, a file's path or its bytes, not "
                        f"{type(image).__name__}" + ("; pass the images one at a time (FacePipeline.load_many "
                                                     "reads many paths)" if isinstance(image, (list, tuple)) else ""))
    return load_image(image)


def _uint8_hint(dtype: np.dtype) -> str:
    """How to make 8-bit samples of an array of this type. astype alone keeps the low byte of a value over 255:
    16-bit data so converted is noise, in which no face is found."""
    if dtype.kind == "f":
        return "(img * 255).astype(np.uint8) converts one in [0, 1], img.astype(np.uint8) one in [0, 255]"
    if dtype.kind == "u" and dtype.itemsize == 2:
        return ("(img // 257).astype(np.uint8) converts 16-bit samples (0 to 65535); img.astype(np.uint8) only "
                "one whose values are already 0 to 255")
    return "img.astype(np.uint8) converts one whose values are already 0 to 255 (scale others into that range first)"


def detect_faces(image: ImageLike, *, pipeline: FacePipeline | None = None) -> list[Face]:
    """Faces (box, score, 5 landmarks), largest first. Arrays are BGR (OpenCV's order); pass a PIL image, or
    reverse an RGB array's channels with arr[..., ::-1].

    pipeline: a FacePipeline of your own (FacePipeline(min_face=40), another detector); None is the shared
    default, facekit.pipeline()."""
    return _or_default(pipeline).detect(_as_image(image))


def face_embeddings(image: ImageLike, faces: Iterable[Face] | None = None, *,
                    pipeline: FacePipeline | None = None) -> list[tuple[Face, Vector]]:
    """Every face with its L2-normalised embedding. Arrays are BGR (OpenCV's order); pass a PIL image, or reverse
    an RGB array's channels with arr[..., ::-1]: RGB taken for BGR is not refused, but matches worse and can miss
    faces.

    faces: embed these instead of detecting: detect_faces's (some of them, say), or Face(box, score, landmarks)
    made from another detector's five points in the same order; each is aligned by its landmarks.
    pipeline: a FacePipeline of your own, as detect_faces takes; None is the shared default."""
    import numpy as np

    from facekit.alignment import landmarks_problem
    from facekit.detection import Face

    pipeline = _or_default(pipeline)
    array = _as_image(image)
    if faces is None:
        return [(r.face, r.embedding) for r in pipeline.analyze(array)]
    if isinstance(faces, Face):
        raise TypeError("faces is a list of Faces: pass [face] for one")
    faces = list(faces)
    height, width = array.shape[:2]
    for face in faces:
        if not isinstance(face, Face):  # a box alone cannot be aligned: alignment needs the five points
            raise TypeError(f"faces must be facekit.Face objects (detect_faces's, or Face(box, score, landmarks) "
                            f"with five (x, y) points), not {type(face).__name__}")
        problem = landmarks_problem(face.landmarks)
        if problem:
            raise ValueError(problem)
        # Off the image, alignment would embed its edge pixels, repeated, as if they were a face.
        x, y = np.asarray(face.landmarks, np.float64).mean(0)
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"a face's landmarks lie outside the {width}x{height} image (centred at "
                             f"{x:.0f}, {y:.0f}): another image's face?")
    return list(zip(faces, pipeline.embed_faces(array, faces)))


@overload
def compare(embedding_a: Vector, embedding_b: Vector) -> float: ...
@overload
def compare(embedding_a: Matrix, embedding_b: Vector) -> np.ndarray: ...
@overload
def compare(embedding_a: Vector, embedding_b: Matrix) -> np.ndarray: ...
@overload
def compare(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float | np.ndarray: ...


def compare(embedding_a: np.ndarray, embedding_b: np.ndarray) -> float | np.ndarray:
    """The cosine similarity (-1 to 1, higher is more alike) of two embeddings: a number, not a yes/no, which
    verify() gives (similarity >= its threshold). One side may be a matrix of embeddings (N, D): the answer is
    then the (N,) similarities to the other, as face_recognition's face_distance compares one with many.

    Embeddings are unit length, as face_embeddings gives them; anything else is a ValueError."""
    import numpy as np

    known, probe = np.asarray(embedding_a), np.asarray(embedding_b)
    if known.ndim == 1 and probe.ndim == 2:
        known, probe = probe, known
    if probe.ndim != 1 or known.ndim not in (1, 2) or known.shape[-1] != probe.shape[0]:
        raise ValueError(f"compare takes two embeddings of one size (D,), or a matrix of them (N, D) and one, not "
                         f"shapes {known.shape} and {probe.shape}")
    for vectors in (known, probe):
        norms = np.linalg.norm(np.atleast_2d(vectors), axis=1)
        if not np.allclose(norms, 1.0, rtol=0, atol=1e-3):  # a raw vector here is a mistake, not a choice
            bad = float(norms[np.argmax(np.abs(norms - 1.0))])
            raise ValueError(f"compare takes unit-length embeddings, as face_embeddings gives them; one has norm "
                             f"{bad:.4g}")
    return np.dot(known, probe) if known.ndim == 2 else float(np.dot(known, probe))


def verify(image_a: ImageLike, image_b: ImageLike, threshold: float | None = None, *,
           pipeline: FacePipeline | None = None) -> dict:
    """Whether the largest faces of two images are the same person: {"same", "similarity", "threshold"}. Arrays
    are BGR (OpenCV's order), as for face_embeddings.

    pipeline: a FacePipeline of your own (FacePipeline(min_face=40), another detector); None is the shared
    default, facekit.pipeline(). Its threshold is the one used where none is given: LFW's most accurate, which calls
    2.3 % of its pairs of strangers the same person; pass threshold=0.611 for 0.1 % (README, "Two thresholds")."""
    threshold = check_threshold(threshold)
    pipeline = _or_default(pipeline)
    found = []
    for image, which in ((image_a, "first"), (image_b, "second")):
        name = str(image) if isinstance(image, (str, os.PathLike)) else f"the {which} image"
        found.append(_largest_face(_as_image(image, name), name, pipeline)[1])
    threshold = pipeline.threshold if threshold is None else threshold
    similarity = compare(*found)
    return {"same": bool(similarity >= threshold), "similarity": similarity, "threshold": threshold}


def identify(image: ImageLike, gallery: Gallery | None, threshold: float | None = None, top_k: int = 3, *,
             pipeline: FacePipeline | None = None) -> list[dict]:
    """Every face in the image: {"box", "landmarks", "identity" (None when unknown), "similarity", "candidates"
    (the top-k identities, most similar first), "threshold" (the one identity was decided by)}. The similarity is
    the named identity's, or the closest candidate's; None where there is no candidate (no gallery or an empty one).
    "box" is [x, y, width, height] in the image's pixels, floats, not clipped to the image (a face at its edge reaches
    past it); "landmarks" the 5 points [x, y]: eyes, nose tip, mouth corners. Arrays are BGR (OpenCV's order), as
    for face_embeddings.

    gallery is a facekit.Gallery (or None): open a path with facekit.Gallery.open(path, create=False).
    pipeline: a FacePipeline of your own (FacePipeline(min_face=40), another detector); None is the shared
    default, facekit.pipeline(). Its embedder must be the one the gallery was enrolled with."""
    from facekit.recognition import identify_image

    threshold, top_k = check_threshold(threshold), check_top_k(top_k)
    if gallery is not None:
        _check_gallery(gallery)
    pipeline = _or_default(pipeline)
    faces_enrolled = len(gallery) if gallery is not None else 0  # no gallery: every face unknown, as with an empty one
    threshold = pipeline.identify_threshold_for(faces_enrolled) if threshold is None else threshold
    name = str(image) if isinstance(image, (str, os.PathLike)) else "the image"
    pixels = _as_image(image, name)
    found = pipeline.find_faces(pixels)
    if found.warning:  # as verify says it: the photo lacks its EXIF orientation, and a viewer shows it turned
        import warnings

        warnings.warn(f"{name}: {found.warning}", FacekitWarning, stacklevel=2)
    results = identify_image(pipeline, gallery, pixels, threshold, top_k, faces=found.faces)
    for face in results:
        face["threshold"] = threshold
    return results


def enroll(people_dir: str | os.PathLike[str], gallery: Gallery, progress: bool = False, sync: bool = False, *,
           pipeline: FacePipeline | None = None) -> EnrollReport:
    """`facekit enroll`: the largest face of each photo in a folder of per-person folders; photos enrolled
    already (by content) are skipped. The report lists what was enrolled, skipped and why. With sync, the faces
    enrolled from photos in that folder that have since been deleted or changed are then removed (report.removed),
    and those of photos renamed or moved in it follow them (report.moved: given to another person's folder).

    pipeline: a FacePipeline of your own (FacePipeline(min_face=40), another detector); None is the shared
    default, facekit.pipeline()."""
    from facekit.recognition import enroll as enroll_folder

    pipeline = _or_default(pipeline)
    _check_gallery(gallery)
    _check_size(gallery, pipeline)
    return enroll_folder(pipeline, gallery, people_dir, progress=progress, sync=sync)


def add_face(gallery: Gallery, identity: str, image: ImageLike, *, pipeline: FacePipeline | None = None) -> int:
    """Enrol the largest face of one image as `identity`; returns its id in the gallery. As with `enroll`, a photo
    whose content is enrolled as this identity already is not added again (its id is returned), and one enrolled
    as someone else is a ValueError, as is nearly the same photo (re-saved, resized, cropped: a face at least
    NEAR_DUPLICATE_SIMILARITY, 0.95, similar to one enrolled as someone else); so is an image without a face, or
    whose face is narrower than ENROLL_MIN_FACE (32 px), too small for a template. An identity that is no usable name
    (empty, a path separator or control characters in it, "unknown") is a facekit.GalleryError, not a ValueError.

    A file is recorded by its absolute path and content hash, a file's bytes by their hash (path "<bytes>"), an
    array or PIL image by the hash of its BGR pixels (path "<array>").

    pipeline: a FacePipeline of your own (FacePipeline(min_face=40), another detector); None is the shared
    default, facekit.pipeline()."""
    import hashlib

    import numpy as np

    from facekit.datastore import clean_identity
    from facekit.imageio import decode_image, read_image_file
    from facekit.recognition import copy_enrolled_as_another, near_copy_refusal, recorded_path, template_min_face

    pipeline = _or_default(pipeline)
    _check_gallery(gallery)
    _check_size(gallery, pipeline)
    if isinstance(image, (str, os.PathLike)):  # read once: the hash recorded is that of the bytes embedded
        name, data, source = str(image), read_image_file(image), recorded_path(image)
        array = decode_image(data, name=name)
    elif isinstance(image, (bytes, bytearray, memoryview)):  # hashed as its file would be, so a copy is one photo
        name, source, data = "the image", "<bytes>", bytes(image)
        array = decode_image(data, name=name)
    else:
        name, source = "the image", "<array>"
        array = _as_image(image, name)
        data = np.ascontiguousarray(array).tobytes()
    identity, sha256 = clean_identity(identity), hashlib.sha256(data).hexdigest()
    # A photo enrolled already is answered as such below (its id, or who holds it), however small its face.
    enrolled_already = gallery.source_face(sha256) is not None
    face, embedding = _largest_face(array, name, pipeline,
                                    None if enrolled_already else template_min_face(pipeline))
    with gallery.writer():  # holding the lock, so a new gallery records which model its embeddings are from
        gallery.bind_model(pipeline.embedder.model_id)
        enrolled = gallery.source_face(sha256)
        if enrolled is not None and enrolled[1] == identity:  # as enroll skips it: a second copy would only weigh more
            return enrolled[0]
        if enrolled is not None:
            raise ValueError(f"{name}: the same photo is enrolled as {enrolled[1]}; not added to {identity} "
                             "(gallery.remove_photos takes it out of the gallery)")
        copy_of = copy_enrolled_as_another(identity, gallery.search(embedding[None], k=2)[0])
        if copy_of is not None:
            raise ValueError(near_copy_refusal(name, copy_of, identity, "gallery.remove_photos"))
        return gallery.add(identity, embedding[None], [{"path": source, "sha256": sha256,
                                                        "box": [float(v) for v in face.box]}])[0]


def _largest_face(image: np.ndarray, name: str, pipeline: FacePipeline,
                  min_width: int | None = None) -> tuple[Face, np.ndarray]:
    """The largest face of an image that should hold one (verify, add_face) and its embedding; a FacekitWarning
    says where it was found only with the image turned, or among several (as the CLI says both). A face narrower
    than min_width pixels is a ValueError."""
    import warnings

    from facekit.recognition import too_small_for_template

    found = pipeline.find_one_face(image)
    if not found.faces:
        raise ValueError(f"no face found in {name}")
    too_small = too_small_for_template(found, min_width) if min_width is not None else None
    if too_small:  # before the warnings: a tiny face found "turned" is mostly not a face at all
        raise ValueError(f"{name}: {too_small}")
    if found.warning:
        warnings.warn(f"{name}: {found.warning}", FacekitWarning, stacklevel=3)
    if found.likely_faces > 1:  # a group photo's largest face may not be the one meant
        warnings.warn(f"{name}: {found.likely_faces} faces, used the largest", FacekitWarning, stacklevel=3)
    return found.faces[0], pipeline.embed_found(image, found)


def check_threshold(threshold: float | None, name: str = "threshold") -> float | None:
    """A cosine similarity, as a float (numpy's too, so that results stay JSON-serialisable): beyond [-1, 1] (or
    nan) every face would silently be unknown, or every pair the same. One check for the CLI too, given its option's
    name ("--threshold")."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"{name} is a cosine similarity, a number between -1 and 1, not {type(threshold).__name__}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"{name} is a cosine similarity, between -1 and 1, not {threshold}")
    return float(threshold)


def check_top_k(top_k: int, name: str = "top_k") -> int:
    """A count of candidates, as an int (numpy's too: the gallery takes Python ints); fewer than one is no list."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"{name} is a number of candidates, an integer, not {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"{name} must be at least 1")
    return int(top_k)


def _check_gallery(gallery: object) -> None:
    """A one-line TypeError for what is not a Gallery (a path, mostly), before any of its methods is missing."""
    from facekit.datastore import Gallery

    if not isinstance(gallery, Gallery):
        opened = (f"facekit.Gallery.open({os.fspath(gallery)!r})" if isinstance(gallery, (str, os.PathLike))
                  else "facekit.Gallery.open(path)")
        raise TypeError(f"a gallery is a facekit.Gallery, not {type(gallery).__name__}: pass {opened}")


def _check_size(gallery: Gallery, pipeline: FacePipeline) -> None:
    """Checked before anything is written. Gallery.open checks the size only when given a dim (the CLI gives it);
    without this, a failed add to an empty gallery made for a model of another size would still record this model
    as the gallery's, and the model it was made for would be refused from then on."""
    from facekit.datastore import GalleryError

    dim = pipeline.embedder.dim
    if gallery.dim != dim:
        raise GalleryError(f"gallery {gallery.root} holds {gallery.dim}-d embeddings, not {dim}-d (another model?)")
