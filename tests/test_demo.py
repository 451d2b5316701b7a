"""The README's first command: tools/demo.py enrolls two people from bundled photos and names both; and what
its install needs: the demo extra, and an sdist whose tests run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest


def test_demo_names_both_people_and_starts_a_fresh_gallery_each_run(tmp_path, tool_script):
    for _ in range(2):  # the second run must not reuse (or trip over) the first run's gallery
        result = subprocess.run([sys.executable, tool_script("demo"), "--workdir", str(tmp_path / "demo")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "4 faces enrolled, 0 already enrolled" in result.stdout
        named = [line for line in result.stdout.splitlines() if "similarity" in line]
        assert len(named) == 2
        assert "Grace Hopper" in named[0] and "Eileen Collins" in named[1]
    assert (tmp_path / "demo" / "annotated" / "both.annotated.jpg").is_file()


def test_the_demo_without_its_extra_says_how_to_install_it(tmp_path, tool_script):
    for module, package in (("matplotlib", "matplotlib"), ("skimage", "scikit-image")):
        without = (f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')")
        result = subprocess.run([sys.executable, "-c", without, tool_script("demo"), "--workdir", str(tmp_path)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.splitlines() == [
            f"error: the demo's photos ship inside scikit-image and matplotlib, and {package} is not installed: "
            "pip install -e '.[demo]' (in a clone) or pip install scikit-image matplotlib"], result.stderr


def test_the_sdist_ships_the_license_and_what_its_tests_load_without_a_deprecated_license_table(tmp_path):
    """setuptools stops building a `license = { text = ... }` table after 2027-02-18, and the sdist's tests import
    tests/conftest.py and run tools/*.py, which setuptools leaves out unless MANIFEST.in names them, as it does the
    documents README.md links to."""
    pytest.importorskip("setuptools", minversion="77")  # the first that reads an SPDX `license` string
    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"
    for folder in ("facekit", "tests", "tools"):  # the weights left out: 70 MB that change nothing here
        shutil.copytree(root / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    (source / "galleries").mkdir()  # its README only: a clone's galleries may hold a user's own
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "galleries/README.md"):
        if (root / name).is_file():
            shutil.copy(root / name, source / name)
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=source, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Deprecat" not in result.stderr, result.stderr
    with tarfile.open(tmp_path / "dist" / result.stdout.split()[-1]) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        names = {name.removeprefix(f"{top}/") for name in sdist.getnames()}
        metadata = sdist.extractfile(f"{top}/PKG-INFO").read().decode()
    # galleries/README.md: the gallery format, which README.md links to.
    assert {"LICENSE", "tests/conftest.py", "tests/test_demo.py", "tools/demo.py", "galleries/README.md"} <= names
    assert "License-Expression: MIT" in metadata.splitlines()
