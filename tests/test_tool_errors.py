"""The scripts in tools/ report a missing input as one `error:` line and exit 2, as the CLI does."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def one_error_line(command: list[str]) -> str:
    """The single `error:` line that command writes to stderr, failing the test unless it exits 2 with just that."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, astronaut_bgr, grace_hopper_bgr) -> Path:
    """A finished `facekit train` run of a few steps, on crops of two real faces."""
    import cv2

    root = tmp_path_factory.mktemp("tiny_run")
    for name, photo in (("eileen", astronaut_bgr), ("grace", grace_hopper_bgr)):
        (root / "crops" / name).mkdir(parents=True)
        height, width = photo.shape[:2]
        for shift in range(4):  # four slightly different crops of each face
            crop = photo[8 * shift:height - 8 * (3 - shift), 8 * shift:width - 8 * (3 - shift)]
            cv2.imwrite(str(root / "crops" / name / f"{shift}.png"), cv2.resize(crop, (112, 112)))
    subprocess.run([sys.executable, "-m", "facekit", "train", str(root / "crops"), "--output", str(root / "run"),
                    "--width", "0.0625", "--blocks", "1,1,1", "--batch-size", "4", "--epochs", "1", "--device", "cpu"],
                   check=True, capture_output=True, timeout=300)
    return root / "run"


@pytest.mark.parametrize("tool, arguments", [
    ("lease_train", ["stash", "{missing}"]),
    ("teacher_embeddings", ["{missing}", "--teacher", "dlib", "--output", "{tmp}/t.npy"]),
    ("teacher_embeddings", ["{tmp}", "--teacher", "facenet", "--facenet-model", "{missing}",
                            "--output", "{tmp}/t.npy"]),
    ("round_trip", ["--lfw", "{missing}"]),
    ("enroll_outliers", ["--lfw", "{missing}"]),
    ("release_model", ["{missing}", "--output", "{tmp}/released/model"]),
    ("align_dataset", ["{tmp}", "{tmp}/out", "--detector", "yunet", "--yunet-model", "{missing}.onnx"]),
])
def test_a_missing_input_is_one_error_line(tool, arguments, tmp_path, tool_script):
    values = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    line = one_error_line([sys.executable, tool_script(tool), *(a.format(**values) for a in arguments)])
    # The line is about the missing input, not some other failure that also exits 2 with one line (a teacher that
    # is not installed, say).
    assert values["missing"] in line


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


def test_align_dataset_says_how_many_photos_showed_more_than_one_face(tmp_path, tool_script, astronaut_bgr,
                                                                     grace_hopper_bgr):
    """Each gives the primary face's crop, which may be another person's (Biden filed under Amber_Tamblyn)."""
    grace = cv2.resize(grace_hopper_bgr, (grace_hopper_bgr.shape[1] * 512 // grace_hopper_bgr.shape[0], 512))
    (tmp_path / "raw" / "eileen").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "raw" / "eileen" / "alone.jpg"), astronaut_bgr)
    cv2.imwrite(str(tmp_path / "raw" / "eileen" / "group.jpg"), np.hstack([astronaut_bgr, grace]))
    result = subprocess.run([sys.executable, tool_script("align_dataset"), str(tmp_path / "raw"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "2 crops written" in result.stdout, result.stderr
    assert re.search(r"warning: 1 of the photos show more than one face, and their crop is of the primary one .*: "
                     r"check them, such as .*eileen/group.jpg", result.stderr)


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


def test_webcam_without_a_window_says_to_run_headless():
    import cv2

    if not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        pytest.skip("this OpenCV can open windows")
    result = subprocess.run([sys.executable, "-m", "facekit.webcam", "--source", "none.avi"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: this OpenCV cannot open a window")


@pytest.mark.parametrize("option, content", [
    ("--lfw", "{}"),
    ("--lfw-mtcnn", "garbage"),
    ("--lfw-haar", "[1]"),
    ("--lfw", '{"accuracy": 0.9, "threshold": "high", "impostor_pairs": 10, "threshold_at_far": {}}'),
])
def test_release_model_names_an_evaluation_file_that_is_not_one(option, content, tiny_run, tmp_path, tool_script):
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(content)
    line = one_error_line([sys.executable, tool_script("release_model"), str(tiny_run), option, str(evaluation),
                           "--output", str(tmp_path / "released" / "model")])
    assert str(evaluation) in line and f"{option} takes the JSON object that `facekit eval lfw --json` prints" in line
    assert not (tmp_path / "released").exists()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "cannot read checkpoint {} (truncated, or not one?): PytorchStreamReader failed"),
    ("text", "cannot read checkpoint {} (truncated, or not one?)"),
    ("no weights", "{} is not a training checkpoint"),
    ("another model's", "{} does not fit"),
])
def test_release_model_says_a_checkpoint_is_damaged(damage, message, tiny_run, tmp_path, tool_script):
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    checkpoint = run / "checkpoint.pt"
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif damage == "text":
        checkpoint.write_text("hello\n")
    else:
        torch.save({"epoch": 1} if damage == "no weights" else {"model": {}}, checkpoint)
    line = one_error_line([sys.executable, tool_script("release_model"), str(run),
                           "--output", str(tmp_path / "released" / "model")])
    assert line.startswith(f"error: {message.format(checkpoint)}"), line


@pytest.mark.parametrize("count", ["--limit=-1", "--limit=0", "--workers=0", "--min-per-class=0", "--limit-classes=0"])
def test_teacher_embeddings_refuses_a_count_under_one(count, tmp_path, tool_script):
    line = one_error_line([sys.executable, tool_script("teacher_embeddings"), str(tmp_path), "--teacher", "dlib",
                           "--output", str(tmp_path / "t.npy"), count])
    option, value = count.split("=")
    assert line == f"error: {option} must be at least 1, not {value}"


@pytest.mark.parametrize("content", [
    None,  # a JPEG photo
    b"just some text\n",
    b"",
])
def test_teacher_embeddings_names_a_facenet_model_that_is_not_one(content, tmp_path, tool_script, grace_hopper_path):
    model = tmp_path / "graph.jpg"
    model.write_bytes(grace_hopper_path.read_bytes() if content is None else content)
    line = one_error_line([sys.executable, tool_script("teacher_embeddings"), str(tmp_path), "--teacher", "facenet",
                           "--facenet-model", str(model), "--output", str(tmp_path / "t.npy")])
    assert line.startswith(f"error: {model} is not a FaceNet graph (.pb"), line


@pytest.mark.parametrize("photos, arguments, message", [
    (0, [], "no people with at least 3 .jpg photos in {lfw}"),
    (2, [], "no people with at least 3 .jpg photos in {lfw}"),
    (3, ["--people", "0"], "--people must be at least 1, not 0"),
])
def test_round_trip_says_what_its_lfw_folder_lacks(photos, arguments, message, tmp_path, tool_script,
                                                    grace_hopper_path):
    lfw = tmp_path / "lfw"
    (lfw / "Grace_Hopper").mkdir(parents=True)
    for number in range(photos):
        shutil.copy(grace_hopper_path, lfw / "Grace_Hopper" / f"Grace_Hopper_{number + 1:04d}.jpg")
    line = one_error_line([sys.executable, tool_script("round_trip"), "--lfw", str(lfw), *arguments])
    assert line.startswith("error: " + message.format(lfw=lfw)), line


def test_round_trip_counts_a_stranger_without_a_face_rather_than_stop(tmp_path, tool_script, grace_hopper_path):
    # identify exits 1 for a photo in which no face was found; the round trip counts it as no_face, as its figures
    # are meant to, rather than stopping at the exit code.
    lfw = tmp_path / "lfw"
    (lfw / "Grace_Hopper").mkdir(parents=True)
    hopper = cv2.imread(str(grace_hopper_path))
    for number, photo in enumerate([hopper, cv2.flip(hopper, 1), hopper[20:]]):  # three photos, not one thrice
        cv2.imwrite(str(lfw / "Grace_Hopper" / f"Grace_Hopper_{number + 1:04d}.jpg"), photo)
    (lfw / "Nobody").mkdir()
    cv2.imwrite(str(lfw / "Nobody" / "Nobody_0001.jpg"), np.full((250, 250, 3), 128, np.uint8))
    result = subprocess.run([sys.executable, tool_script("round_trip"), "--lfw", str(lfw), "--people", "1", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["enrolled_faces"], figures["rank1"], figures["strangers"], figures["no_face"]) == (2, 1.0, 1, 1)


@pytest.mark.parametrize("tool", ["dlib_resnet", "lease_train", "release_model", "teacher_embeddings", "teacher_lfw",
                                  "train_landmarks"])
def test_a_tool_that_needs_torch_says_so_in_one_line_where_it_is_missing(tool_script, tool: str) -> None:
    """Torch is the train extra, which a plain install leaves out: these tools ended in a ModuleNotFoundError
    traceback, even for --help, where `facekit train` says it in one line."""
    without_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
    line = one_error_line([sys.executable, "-c", without_torch, tool_script(tool), "--help"])
    assert re.fullmatch(rf"error: tools/{tool}\.py needs PyTorch, which is not installed: pip install torch .*", line)


def test_a_torch_that_cannot_import_a_module_of_its_own_is_not_called_missing(tool_script, tmp_path) -> None:
    """Torch installed but broken (something it imports is missing) is said so, with that module: not 'install torch'
    as if it were absent."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("import a_module_torch_needs_and_lacks\n")
    result = subprocess.run([sys.executable, tool_script("dlib_resnet"), "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert (result.returncode, result.stderr) == (
        2, "error: tools/dlib_resnet.py needs PyTorch, which is installed but cannot be imported (No module named "
           "'a_module_torch_needs_and_lacks'): pip install torch --index-url https://download.pytorch.org/whl/cpu "
           "(the CPU build; or, in a clone, pip install -e '.[train]')\n")


def test_release_model_writes_only_where_told(tiny_run, tool_script):
    """Without --output it wrote over the shipped model in facekit/weights/."""
    result = subprocess.run([sys.executable, tool_script("release_model"), str(tiny_run)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "the following arguments are required: --output" in result.stderr


def test_release_model_claims_no_licence_or_pool_of_the_projects_for_ones_own_run(tiny_run, tmp_path, tool_script):
    for options, licence in (([], "not stated"), (["--licence", "CC-BY-4.0"], "CC-BY-4.0"),
                             (["--facekit-pool"], "MIT (weights trained by the facekit project; the training images "
                                                  "are research-only)")):
        subprocess.run([sys.executable, tool_script("release_model"), str(tiny_run), *options,
                        "--output", str(tmp_path / "released" / "model")], check=True, capture_output=True, timeout=300)
        card = json.loads((tmp_path / "released" / "model.json").read_text())
        assert card["licence"] == licence
        assert card["training"]["data"].startswith("facekit training pool" if options == ["--facekit-pool"] else
                                                   "8 aligned 112x112 crops of 2 identities"), options


def _evaluation(path: Path, folds: int, pairs: int) -> Path:
    """`facekit eval lfw --json` output, as far as tools/release_model.py reads it."""
    path.write_text(json.dumps({"accuracy": 0.9, "threshold": -0.0413, "impostor_pairs": 1000, "folds": folds,
                                "pairs": pairs, "threshold_at_far": {"5e-3": 0.5}}))
    return path


def test_release_model_says_how_its_threshold_was_chosen_and_refuses_one_fit_on_its_own_pairs(tiny_run, tmp_path,
                                                                                               tool_script):
    released = tmp_path / "released" / "model"
    line = one_error_line([sys.executable, tool_script("release_model"), str(tiny_run), "--output", str(released),
                           "--lfw", str(_evaluation(tmp_path / "small.json", folds=1, pairs=10))])
    assert "small.json is an evaluation of 10 pairs in one fold: its threshold was chosen on the very pairs" in line
    assert not released.parent.exists()
    subprocess.run([sys.executable, tool_script("release_model"), str(tiny_run), "--output", str(released),
                    "--lfw", str(_evaluation(tmp_path / "lfw.json", folds=10, pairs=6000))],
                   check=True, capture_output=True, timeout=300)
    assert json.loads(released.with_suffix(".json").read_text())["threshold_source"] == (
        "mean of the 10 per-fold thresholds of `facekit eval lfw`, each chosen on the other folds' pairs (6000 pairs "
        "in all)")
