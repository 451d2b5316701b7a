"""tools/dlib_resnet.py: dlib's face-recognition network read into PyTorch, for the dlib teacher.

The comparisons with dlib itself need the optional peers (dlib-bin, face_recognition_models), which CI does
not install, so they skip there; the reader's refusals need neither.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekit.alignment import align_face
from facekit.detection import create_detector


@pytest.fixture(scope="module")
def dlib_resnet(load_tool):
    return load_tool("dlib_resnet")


@pytest.fixture(scope="module")
def dlib_models(teachers):
    dlib = pytest.importorskip("dlib", reason="dlib is an optional peer: pip install dlib-bin face_recognition_models")
    network = teachers.package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat")
    predictor = teachers.package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat")
    if network is None or predictor is None:
        pytest.skip("face_recognition_models is not installed")
    return dlib, network, predictor


def test_reader_refuses_a_file_that_is_not_a_dlib_network(tmp_path, dlib_resnet):
    path = tmp_path / "not-a-network.dat"
    path.write_bytes(b"\x01\x01" + bytes(range(256)) * 40)
    with pytest.raises(dlib_resnet.DlibFormatError, match="input_rgb_image_sized"):
        dlib_resnet.DlibResNet(path)


def test_reader_refuses_a_cut_short_network(tmp_path, dlib_resnet, dlib_models):
    _, network, _ = dlib_models
    path = tmp_path / "cut.dat"
    path.write_bytes(network.read_bytes()[:3_000_000])
    with pytest.raises(dlib_resnet.DlibFormatError):
        dlib_resnet.DlibResNet(path)


def face_chips(dlib, predictor_path, images_rgb: list[np.ndarray]) -> list[np.ndarray]:
    """dlib's own pipeline up to the network: HOG detector, 5 landmarks, the 150x150 chip of the largest face."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(predictor_path))
    chips = []
    for image in images_rgb:
        box = max(detector(image, 1), key=lambda found: found.area())
        chips.append(dlib.get_face_chip(image, predictor(image, box), 150, 0.25))
    return chips


def test_network_gives_dlibs_descriptors(dlib_resnet, dlib_models, astronaut_bgr, grace_hopper_bgr):
    dlib, network_path, predictor_path = dlib_models
    chips = face_chips(dlib, predictor_path, [np.ascontiguousarray(astronaut_bgr[:, :, ::-1]),
                                              np.ascontiguousarray(grace_hopper_bgr[:, :, ::-1])])
    # Mirrored and noisy chips too, so the check does not rest on two inputs.
    rng = np.random.default_rng(0)
    chips += [np.ascontiguousarray(c[:, ::-1]) for c in chips]
    chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    reference = dlib.face_recognition_model_v1(str(network_path))
    expected = np.array([reference.compute_face_descriptor(chip) for chip in chips], np.float32)

    got = dlib_resnet.DlibResNet(network_path).eval()(torch.from_numpy(np.stack(chips))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.linalg.norm(expected[0] - expected[1]) > 0.6  # two people: the check compares real outputs


def test_teacher_rows_are_dlibs_descriptors(teachers, dlib_models, astronaut_bgr, grace_hopper_bgr):
    dlib, network_path, _ = dlib_models
    teacher = teachers.DlibTeacher()
    reference = dlib.face_recognition_model_v1(str(network_path))
    # Training crops are facekit's aligned 112x112 faces, in RGB.
    detector = create_detector("haar")
    crops = np.stack([np.ascontiguousarray(align_face(image, detector.detect(image)[0].landmarks)[:, :, ::-1])
                      for image in (astronaut_bgr, grace_hopper_bgr)])
    expected = []
    for crop in crops:
        padded = teacher.padded(crop)
        expected.append(reference.compute_face_descriptor(padded, teacher.predictor(padded, teacher.box)))
    np.testing.assert_allclose(teacher.embed_batch(crops), np.array(expected, np.float32), atol=1e-4)
