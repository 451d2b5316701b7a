"""`python -m facekit`, and the `facekit` command's entry point: facekit.cli's main."""

import sys

from facekit.errors import EXIT_INTERRUPTED, INTERRUPTED


def main() -> int:
    try:
        from facekit.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        # A Ctrl-C while facekit.cli and what it needs import, before its own handling is in place: the same line.
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
