"""`python -m facekit`, and the entry points of the `facekit` and `facekit-webcam` commands: facekit.cli's main and
facekit.webcam's."""

import importlib
import sys

from facekit.errors import EXIT_INTERRUPTED, INTERRUPTED


def _main_of(module: str, interrupted: str) -> int:
    try:
        return importlib.import_module(module).main()
    except KeyboardInterrupt:
        # A Ctrl-C while the module and what it needs import (OpenCV, numpy), before its own handling is in place:
        # the same line as a later one.
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


def main() -> int:
    return _main_of("facekit.cli", INTERRUPTED)


def webcam_main() -> int:
    return _main_of("facekit.webcam", "interrupted")  # as facekit.webcam's report_errors says it


if __name__ == "__main__":
    sys.exit(main())
