"""The README's first command: tools/demo.py enrolls two people from bundled photos and names both."""

from __future__ import annotations

import subprocess
import sys


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
