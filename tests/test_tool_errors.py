"""The scripts in tools/ report a missing input as one `error:` line and exit 2, as the CLI does."""

from __future__ import annotations

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
