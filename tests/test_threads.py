"""How many threads facekit's CPU work uses: the container's CPU quota, FACEKIT_THREADS, an explicit count."""

from __future__ import annotations

from pathlib import Path

import pytest

from facekit.export import cgroup_cpu_limit, physical_cores, thread_count


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


@pytest.mark.parametrize("threads", [0, -1, 2.0])
def test_a_thread_count_that_is_not_a_count_is_refused(monkeypatch, threads):
    monkeypatch.setenv("FACEKIT_THREADS", "2")  # the argument's error, not a fallback to the variable
    with pytest.raises(ValueError, match=f"^threads must be a whole number of at least 1, not {threads}$"):
        thread_count(threads)
