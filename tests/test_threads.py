"""Threads: how many facekit's CPU work uses (the container's CPU quota, FACEKIT_THREADS, an explicit count), and
one Gallery and the default pipeline shared by the threads of a process (a threaded web server's workers), real
photos through the real pipeline. Each shared-use test starts its threads' calls together at a barrier."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

import facekit
from facekit.datastore import Gallery
from facekit.export import cgroup_cpu_limit, physical_cores, thread_count

THREADS = 3


def cgroup(root: Path, files: dict[str, str | bytes]) -> Path:
    """A fake cgroup folder holding the given files (name relative to the root: contents)."""
    for name, contents in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(contents.encode() if isinstance(contents, str) else contents)
    return root


@pytest.mark.parametrize(("files", "cpus"), [
    ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, docker run --cpus=2
    ({"cpu.max": "150000 100000\n"}, 2),  # --cpus=1.5: a second thread still gets the half CPU left
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 without a quota
    ({}, None),  # no cgroup files at all (not Linux, or not mounted)
    ({"cpu.max": "lots\n"}, None),
    ({"cpu.max": "200000\n"}, None),  # no period
    ({"cpu.max": "200000 0\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n"}, None),  # v1 quota without its period
    ({"cpu/cpu.cfs_quota_us": b"\xff\xfe", "cpu/cpu.cfs_period_us": "100000"}, None),
])
def test_the_container_cpu_quota_is_read_from_either_cgroup_version(tmp_path, files, cpus):
    assert cgroup_cpu_limit(cgroup(tmp_path, files)) == cpus


def test_a_cpu_quota_caps_the_cores(tmp_path):
    """docker run --cpus=1 on a many-core host: ONNX Runtime got a thread per host core, and thrashed."""
    uncapped = physical_cores(cgroup_root=tmp_path / "no-cgroup")
    assert physical_cores(cgroup_root=cgroup(tmp_path / "v2", {"cpu.max": "100000 100000"})) == 1
    v1 = cgroup(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"})
    assert physical_cores(cgroup_root=v1) == 1
    # A quota above the cores takes none away, and neither does a garbled one.
    assert physical_cores(cgroup_root=cgroup(tmp_path / "big", {"cpu.max": "100000000 100000"})) == uncapped
    assert physical_cores(cgroup_root=cgroup(tmp_path / "garbled", {"cpu.max": "1 2 3"})) == uncapped


def test_facekit_threads_is_used_unless_a_count_is_given(monkeypatch):
    monkeypatch.delenv("FACEKIT_THREADS", raising=False)
    assert thread_count() == physical_cores()
    assert thread_count(default_at_most=1) == 1
    monkeypatch.setenv("FACEKIT_THREADS", " 3\n")
    assert thread_count() == 3 and thread_count(default_at_most=1) == 3  # the cap bounds only the default
    assert thread_count(5) == 5
    monkeypatch.setenv("FACEKIT_THREADS", "")  # set but empty: as unset
    assert thread_count() == physical_cores()


@pytest.mark.parametrize("setting", ["0", "-2", "2.5", "two", "1e3"])
def test_facekit_threads_that_is_not_a_count_is_refused_in_one_line(monkeypatch, setting):
    monkeypatch.setenv("FACEKIT_THREADS", setting)
    with pytest.raises(ValueError, match=f"^FACEKIT_THREADS must be a whole number of at least 1, not '{setting}'$"):
        thread_count()


def test_a_thread_count_no_machine_has_is_refused(monkeypatch):
    # FACEKIT_THREADS=99999 (a typo) started 32,000 threads and 17 GB, and ran for minutes without a word.
    monkeypatch.setenv("FACEKIT_THREADS", "99999")
    with pytest.raises(ValueError, match=r"^FACEKIT_THREADS is 99999: more than 1024 threads is a mistake \("):
        thread_count()
    assert thread_count(1024) == 1024


@pytest.mark.parametrize("threads", [0, -1, 2.0])
def test_a_thread_count_that_is_not_a_count_is_refused(monkeypatch, threads):
    monkeypatch.setenv("FACEKIT_THREADS", "2")  # the argument's error, not a fallback to the variable
    with pytest.raises(ValueError, match=f"^threads must be a whole number of at least 1, not {threads}$"):
        thread_count(threads)


# --- one Gallery and one pipeline shared by threads ---------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(load_tool) -> dict[str, list[np.ndarray]]:
    """tools/demo.py's people: Eileen Collins and Grace Hopper, two photos each (the second turned and re-exposed)."""
    demo = load_tool("demo")
    return {name: [image, demo.other_photo(image, 5, 0.9)] for name, image in demo.bundled_photos().items()}


@pytest.fixture(scope="module")
def probes(photos) -> list[np.ndarray]:
    """Each person alone, a third photo of Eileen Collins, and both side by side (tools/demo.py's probe)."""
    eileen, grace = photos["Eileen Collins"][0], photos["Grace Hopper"][0]
    both = np.full((620, 1100, 3), 235, np.uint8)
    both[50:562, 20:532] = cv2.resize(eileen, (512, 512))
    both[10:610, 560:1072] = grace
    return [eileen, grace, np.ascontiguousarray(eileen[:, ::-1]), both]


def people_folder(root: Path, photos: dict[str, list[np.ndarray]], *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for number, image in enumerate(photos[name]):
            cv2.imwrite(str(root / name / f"{number}.png"), image)
    return root


def together(work: Callable[[int, threading.Barrier], object], threads: int = THREADS) -> list:
    """work(number, barrier) in each of `threads` threads, which meet at the barrier; their answers in order, or the
    first error one raised, raised again. An error breaks the barrier, so that the others stop waiting at once."""
    barrier = threading.Barrier(threads, timeout=120)
    answers: list = [None] * threads
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            answers[number] = work(number, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    started = [threading.Thread(target=run, args=(number,)) for number in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    if errors:
        raise next((error for error in errors if not isinstance(error, threading.BrokenBarrierError)), errors[0])
    return answers


def test_threads_identifying_with_one_gallery_get_what_one_thread_gets(tmp_path, photos, probes):
    """A Gallery opened in one thread and searched from others raised sqlite3.ProgrammingError (SQLite objects
    created in a thread can only be used in that same thread)."""
    with Gallery.open(tmp_path / "gallery") as gallery:
        facekit.enroll(people_folder(tmp_path / "people", photos, "Eileen Collins", "Grace Hopper"), gallery)
        alone = [facekit.identify(probe, gallery) for probe in probes]
        assert [sorted(face["identity"] for face in faces) for faces in alone] == [
            ["Eileen Collins"], ["Grace Hopper"], ["Eileen Collins"], ["Eileen Collins", "Grace Hopper"]]

        def identify_every_probe(number: int, barrier: threading.Barrier) -> list[tuple[int, list[dict]]]:
            found = []
            for turn in range(len(probes)):
                barrier.wait()
                probe = (number + turn) % len(probes)  # the threads ask about different photos at once
                found.append((probe, facekit.identify(probes[probe], gallery)))
            return found

        for answers in together(identify_every_probe):
            for probe, faces in answers:
                assert faces == alone[probe]  # names, similarities, candidates, boxes: all as one thread found them


def test_two_threads_writing_to_one_gallery_at_once_lose_nothing_and_a_third_reads_meanwhile(tmp_path, photos, probes):
    """Thread 0 enrolls a folder, thread 1 adds photos one by one, thread 2 searches and counts until both are done.
    The writer lock is a flock, which the threads of one process share: only the gallery's thread lock keeps their
    writes apart."""
    eileen_people = people_folder(tmp_path / "eileen", photos, "Eileen Collins")
    grace = [tmp_path / f"grace-{number}.png" for number in range(2)]
    for path, image in zip(grace, photos["Grace Hopper"], strict=True):
        cv2.imwrite(str(path), image)
    faces = [embedding for _, embedding in facekit.face_embeddings(probes[3])]
    writers_done: list[int] = []

    with Gallery.open(tmp_path / "gallery") as gallery:

        def write_or_read(number: int, barrier: threading.Barrier) -> object:
            barrier.wait()
            if number == 2:
                counts, named = [], set()
                while not counts or len(writers_done) < 2:
                    counts.append(len(gallery))
                    named |= {match.identity for matches in gallery.search(np.stack(faces), k=2) for match in matches}
                return counts, named
            try:
                if number == 0:
                    return facekit.enroll(eileen_people, gallery).enrolled
                return [facekit.add_face(gallery, "Grace Hopper", path) for path in grace]
            finally:
                writers_done.append(number)

        enrolled, grace_ids, (counts, named) = together(write_or_read)
        assert enrolled == 2 and len(set(grace_ids)) == 2
        assert counts == sorted(counts) and set(counts) <= set(range(5))  # never a face lost, nor one counted twice
        assert named <= {"Eileen Collins", "Grace Hopper"}
        assert gallery.identities() == [("Eileen Collins", 2), ("Grace Hopper", 2)]
        assert gallery.check() == []
    with Gallery.open(tmp_path / "gallery") as reopened:  # the index files hold all four faces
        assert len(reopened) == 4 and reopened.check() == []
        assert sorted(face["identity"] for face in facekit.identify(probes[3], reopened)) == ["Eileen Collins",
                                                                                                "Grace Hopper"]


def test_threads_detecting_and_embedding_with_one_pipeline_get_what_one_thread_gets(probes):
    """The detectors' OpenCV objects keep per-call state (MTCNN's nets raised cv2.error or mixed two photos' boxes
    without their lock): each detector holds a lock around them."""
    alone = [facekit.face_embeddings(probe) for probe in probes]

    def embed_every_probe(number: int, barrier: threading.Barrier) -> list[tuple[int, list]]:
        found = []
        for turn in range(len(probes)):
            barrier.wait()
            probe = (number + turn) % len(probes)
            found.append((probe, facekit.face_embeddings(probes[probe])))
        return found

    for answers in together(embed_every_probe):
        for probe, faces in answers:
            assert [face.box for face, _ in faces] == [face.box for face, _ in alone[probe]]
            for (face, embedding), (face_alone, embedding_alone) in zip(faces, alone[probe], strict=True):
                assert face.score == face_alone.score and np.array_equal(face.landmarks, face_alone.landmarks)
                assert np.array_equal(embedding, embedding_alone)


FIRST_CALLS = """
import sys, threading
import facekit, facekit.recognition

builds = []
both_building = threading.Barrier(2, timeout=2)


class Built:
    def __init__(self):
        builds.append(self)
        try:
            both_building.wait()  # a second build would meet the first here; a caller that waits for it never comes
        except threading.BrokenBarrierError:
            pass


facekit.recognition.FacePipeline = Built
start = threading.Barrier(2)
got = []
callers = [threading.Thread(target=lambda: (start.wait(), got.append(facekit.pipeline()))) for _ in range(2)]
for caller in callers:
    caller.start()
for caller in callers:
    caller.join()
print(len(builds), got[0] is got[1] is facekit.pipeline())
"""


def test_the_default_pipeline_is_built_once_when_two_threads_ask_for_it_first():
    """facekit.pipeline() was an lru_cache, which lets two first callers both build one: the models loaded twice.
    A fresh process, whose pipeline is not built yet; run where it imports the facekit under test."""
    result = subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, timeout=120,
                            cwd=Path(facekit.__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]
