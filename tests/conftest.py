"""Shared fixtures: bundled real face photos and the optional research data in ../shared/data."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOOLS = Path(__file__).resolve().parents[1] / "tools"

# Test files that import torch (the train extra) as they load. Installed with the test extra alone (the README's
# test command installs both), they are left out, and the header says so, rather than each failing to import.
NEEDS_TORCH = ["test_dlib_resnet.py", "test_export.py", "test_lease_train.py", "test_model.py", "test_teachers.py",
               "test_training.py", "test_training_inputs.py", "test_widen.py"]
TORCH_MISSING = importlib.util.find_spec("torch") is None
collect_ignore = NEEDS_TORCH if TORCH_MISSING else []


def pytest_report_header(config: pytest.Config) -> str | None:
    if TORCH_MISSING:
        return (f"torch is not installed (pip install torch==2.13.0, the train extra): the {len(NEEDS_TORCH)} test "
                "files that need it are not collected")
    return None


@pytest.fixture(scope="session")
def load_tool():
    """Import one of the scripts in tools/ by name (they are scripts, not a package)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def teachers(load_tool):
    """tools/teacher_embeddings.py: the dlib and FaceNet teachers, shared by the teacher and dlib-reader tests."""
    return load_tool("teacher_embeddings")


@pytest.fixture(scope="session")
def tool_script():
    """The path of one of the scripts in tools/, to run in a subprocess."""
    return lambda name: str(TOOLS / f"{name}.py")


# The parts of ../shared/data that the tests read (its README says what each holds). A folder there with only
# some of them, an interrupted copy say, skips the tests rather than failing them on a missing file.
SHARED_DATA_PARTS = ("lfw/images", "lfw/pairs.txt", "train/manifest.tsv", "demo/face_recognition",
                     "demo/facenet_pytorch", "models/face_detection_yunet.onnx")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"research data not found at {SHARED_DATA} (only available on the development machines)")
    missing = [part for part in SHARED_DATA_PARTS if not (SHARED_DATA / part).exists()]
    if missing:
        pytest.skip(f"research data at {SHARED_DATA} lacks {', '.join(missing)}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def yunet_model() -> Path:
    """The model alone, not the rest of ../shared/data: tests that need nothing else run where only it is."""
    path = SHARED_DATA / "models" / "face_detection_yunet.onnx"
    if not path.is_file():
        pytest.skip(f"YuNet test model not found at {path}")
    return path


@pytest.fixture(scope="session")
def grace_hopper_path() -> Path:
    """A real JPEG portrait shipped with matplotlib."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session")
def grace_hopper_bgr(grace_hopper_path: Path) -> np.ndarray:
    image = cv2.imread(str(grace_hopper_path))
    assert image is not None
    return image


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """Eileen Collins' portrait shipped with scikit-image (RGB there, BGR here)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="session")
def small_face_photo(astronaut_bgr: np.ndarray) -> np.ndarray:
    """A 3200x2400 photo with one face about 45 px wide, at x 1560-1620: the 640 px copy that detectors search
    by default shrinks it to 9 px, under what any of them finds."""
    photo = np.full((2400, 3200, 3), 128, np.uint8)
    photo[1000:1256, 1500:1756] = cv2.resize(astronaut_bgr, (256, 256), interpolation=cv2.INTER_AREA)
    return photo


# A command started as argv[2] says ("-m": `python -m facekit`; else a console script's "module:function"), with
# a Ctrl-C raised as module argv[1] starts to import: at a known moment, where a real key's would be chance.
CTRL_C_IN_IMPORT = """
import importlib, runpy, sys

class CtrlCInImport:
    def find_spec(self, name, path=None, target=None):
        if name == interrupted:
            raise KeyboardInterrupt
        return None

interrupted, entry, sys.argv = sys.argv[1], sys.argv[2], ["facekit", *sys.argv[3:]]
sys.meta_path.insert(0, CtrlCInImport())
if entry == "-m":
    runpy.run_module("facekit", run_name="__main__", alter_sys=True)
else:
    module, function = entry.split(":")
    sys.exit(getattr(importlib.import_module(module), function)())
"""

# Set in a facekit process (PATCHED_CLI-style) where the fixture below cannot reach.
COPIES_AS_OTHER_PEOPLE = "facekit.recognition.NEAR_DUPLICATE_SIMILARITY = 1.01"


@pytest.fixture()
def copies_as_other_people(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only two faces ship with the registry packages, so some tests file lightly changed copies of one photo
    (variant(), another format) as other photos or other people: enroll would refuse them as near copies of a photo
    enrolled as someone else (tests/test_enroll_quality.py tests that rule). No similarity reaches this one."""
    import facekit.recognition

    monkeypatch.setattr(facekit.recognition, "NEAR_DUPLICATE_SIMILARITY", 1.01)


def unprivileged(command: list[str]) -> list[str]:
    """The command, run where file permissions hold: as root it runs with no capabilities, so as the owner of the
    test's files it meets their permission bits (no need to open the test's folders to another user)."""
    if os.geteuid() != 0:
        return command
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and cannot drop root's capabilities (setpriv) to meet file permissions")
    return [*drop, *command]
