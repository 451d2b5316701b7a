"""`python -m facekit`: the same as the `facekit` command."""

import sys

from facekit.cli import main

sys.exit(main())
