"""The scripts in tools/ report a missing input as one `error:` line and exit 2, as the CLI does."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("tool, arguments", [
    ("lease_train", ["stash", "{missing}"]),
    ("teacher_embeddings", ["{missing}", "--teacher", "dlib", "--output", "{tmp}/t.npy"]),
    ("round_trip", ["--lfw", "{missing}"]),
    ("release_model", ["{missing}", "--output", "{tmp}/released/model"]),
    ("align_dataset", ["{tmp}", "{tmp}/out", "--detector", "yunet", "--yunet-model", "{missing}.onnx"]),
])
def test_a_missing_input_is_one_error_line(tool, arguments, tmp_path, tool_script):
    values = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    result = subprocess.run([sys.executable, tool_script(tool), *(a.format(**values) for a in arguments)],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    # The line is about the missing input, not some other failure that also exits 2 with one line (a teacher that
    # is not installed, say).
    assert values["missing"] in lines[0], lines


def test_align_dataset_run_again_skips_what_it_wrote(tmp_path, tool_script, astronaut_bgr):
    import cv2

    (tmp_path / "raw" / "eileen").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "raw" / "eileen" / "a.jpg"), astronaut_bgr)
    for written, already in ((1, 0), (0, 1)):
        result = subprocess.run([sys.executable, tool_script("align_dataset"), str(tmp_path / "raw"),
                                 str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"{written} crops written, {already} there already" in result.stdout
    crop = cv2.imread(str(tmp_path / "out" / "eileen" / "a.png"))
    assert crop.shape == (112, 112, 3)


def test_python_m_facekit_reports_errors_as_the_command_does(tmp_path):
    # Run as `python -m facekit.cli` (as tools/demo.py does), cli.py is __main__ and the eval and export
    # modules import it again: their CliError must still be the one its main catches.
    for module in ("facekit.cli", "facekit"):
        result = subprocess.run([sys.executable, "-m", module, "eval", "pairs", str(tmp_path / "none.csv")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr == f"error: file not found: {tmp_path / 'none.csv'}\n"


def test_an_int8_model_not_made_yet_says_how_to_make_it(tmp_path, astronaut_bgr):
    import cv2

    photo = str(tmp_path / "a.png")
    cv2.imwrite(photo, astronaut_bgr)
    environment = {**__import__("os").environ, "FACEKIT_INT8": "1", "FACEKIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "facekit", "verify", photo, photo], capture_output=True, text=True,
                            timeout=300, env=environment)
    assert result.returncode == 2 and "facekit export onnx --int8" in result.stderr, result.stderr


def test_webcam_without_a_window_says_to_run_headless(tool_script):
    import cv2

    if not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        pytest.skip("this OpenCV can open windows")
    result = subprocess.run([sys.executable, tool_script("webcam"), "--source", "none.avi"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: this OpenCV cannot open a window")
