#!/usr/bin/env python3
"""Live face recognition on a camera or a video file: `python tools/webcam.py ...` in a clone runs what the
installed `facekit-webcam` command runs. The code, options and exit codes are facekit.webcam's (facekit/webcam.py),
part of the package since a wheel holds nothing of tools/.
"""

import sys

from facekit.webcam import main

if __name__ == "__main__":
    sys.exit(main())
