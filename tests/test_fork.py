"""A gallery and the default pipeline made before a fork (a pre-forking web server's --preload, a multiprocessing pool
with the fork start method), run in a child process of its own so that a hang is a timeout, not a stuck suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run_script(tmp_path: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_a_gallery_opened_before_a_fork_is_refused_in_the_child_and_one_opened_there_works(tmp_path):
    # The child used the parent's SQLite connection and flock (one lock for both: a writer in each at once), and its
    # first batched search hung in FAISS's threads, which the fork had not copied.
    result = run_script(tmp_path, """
        import os, sys
        import numpy as np
        from facekit.datastore import Gallery, GalleryError

        rng = np.random.default_rng(0)
        with Gallery.open("gallery", dim=64) as gallery:
            for i in range(40):
                gallery.add(f"p{i}", rng.normal(size=(1, 64)), [{"path": f"{i}.jpg", "sha256": f"{i:064x}",
                                                                  "box": [0, 0, 1, 1]}])
        inherited = Gallery.open("gallery", create=False)
        inherited.search(rng.normal(size=(8, 64)).astype("float32"), k=3)  # the parent's threads start
        pid = os.fork()
        if pid == 0:
            try:
                inherited.search(rng.normal(size=(1, 64)).astype("float32"))
            except GalleryError as error:
                print("refused:", error)
            try:
                with inherited.writer():
                    pass
            except GalleryError as error:
                print("refused:", error)
            with Gallery.open("gallery", create=False) as own:
                print("own:", len(own.search(rng.normal(size=(8, 64)).astype("float32"), k=3)), len(own))
            inherited.close()  # the parent's to close: nothing here
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child:", status, "parent still:", len(inherited))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    refusal = ("refused: gallery gallery was opened in process {}, which this process was forked from: open the "
               "gallery in each worker process, after the fork (a pre-forking server's post-fork hook, a pool's "
               "initializer)")
    assert [line.split(" process ")[0] for line in lines[:2]] == ["refused: gallery gallery was opened in"] * 2
    assert all(line == refusal.format(line.split("process ")[1].split(",")[0]) for line in lines[:2]), lines
    assert lines[2:] == ["own: 8 40", "child: 0 parent still: 40"]


def test_a_child_of_a_process_that_built_the_default_pipeline_can_exit(tmp_path):
    # ONNX Runtime's session waited, as the child's exit destroyed it, for threads the fork had not copied: a
    # gunicorn worker's restart hung until the master killed it.
    result = run_script(tmp_path, """
        import os, sys
        import facekit

        parent = facekit.pipeline()
        pid = os.fork()
        if pid == 0:
            print("child's own:", facekit.pipeline() is not parent, flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child:", status, "parent keeps its own:", facekit.pipeline() is parent)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child's own: True", "child: 0 parent keeps its own: True"]
