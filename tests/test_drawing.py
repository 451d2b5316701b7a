"""Annotated copies: what facekit.drawing puts on a photo."""

from __future__ import annotations

import numpy as np

from facekit.drawing import _drawable, draw_results


def test_labels_are_drawn_in_ascii_without_touching_the_photo(astronaut_bgr):
    # OpenCV's fonts write only ASCII: accents go, letters with no ASCII form become "?".
    assert _drawable("José Núñez 0.93") == "Jose Nunez 0.93"
    assert _drawable("王 0.50") == "? 0.50"
    face = {"box": [180, 60, 110, 120], "landmarks": [[210, 110], [260, 110], [235, 140], [215, 160], [255, 160]],
            "identity": "José", "similarity": 0.9}
    before = astronaut_bgr.copy()
    drawn = draw_results(astronaut_bgr, [face, {**face, "box": [20, 300, 100, 100], "identity": None}])
    assert np.array_equal(astronaut_bgr, before) and drawn.shape == astronaut_bgr.shape
    changed = np.any(drawn != astronaut_bgr, axis=2)
    # The box edges and the label above each face are drawn; the middle of the photo's far corner is not.
    assert changed[60, 180:290].any() and changed[300, 20:120].any() and not changed[450:, 400:].any()
