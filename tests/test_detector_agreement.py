"""tools/detector_agreement.py: its box matching, and a real run of both detectors on bundled photos."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from facekit.detection import Face, create_detector
from facekit.imageio import load_image


def _face(x: float, y: float, size: float, score: float = 0.9) -> Face:
    return Face(box=(x, y, size, size), score=score, landmarks=np.zeros((5, 2), np.float32))


def test_match_boxes_pairs_each_box_once_by_best_overlap(load_tool):
    tool = load_tool("detector_agreement")
    haar = [_face(100, 100, 50), _face(104, 104, 50), _face(400, 400, 40)]
    yunet = [_face(101, 101, 50), _face(10, 10, 30)]
    both, only_haar, only_yunet = tool.match_boxes(haar, yunet, min_iou=0.3)
    # Both Haar boxes overlap the one YuNet face; it vouches only for the one it overlaps most.
    assert [f.box[0] for f in both] == [100]
    assert [f.box[0] for f in only_haar] == [104, 400]
    assert [f.box[0] for f in only_yunet] == [10]
    assert tool.match_boxes(haar[:1], yunet[:1], min_iou=0.99) == ([], haar[:1], yunet[:1])


def test_limit_spreads_over_the_sorted_photos_in_order(load_tool):
    spread = load_tool("detector_agreement").spread_subset  # facekit.evaluation's, shared with the LFW tools
    paths = list(range(100))
    assert spread(paths, None) == paths
    assert spread(paths, 4) == [0, 25, 50, 75]
    assert spread(paths, 500) == paths


def test_coins_are_a_haar_misfire_and_not_an_mtcnn_one(tmp_path, load_tool, astronaut_bgr, grace_hopper_path,
                                                        yunet_model, capsys):
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "astronaut.png"), astronaut_bgr)
    shutil.copy(grace_hopper_path, photos / "grace_hopper.jpg")
    # scikit-image's coins: no face, but round shaded shapes the Haar cascade takes for faces.
    cv2.imwrite(str(photos / "coins.png"), data.coins())
    (photos / "notes.jpg").write_text("not an image")

    tool = load_tool("detector_agreement")
    results = {}
    for detector in ("haar", "mtcnn"):
        assert tool.main(["--root", str(photos), "--yunet-model", str(yunet_model), "--detector", detector,
                          "--json"]) == 0
        results[detector] = json.loads(capsys.readouterr().out)
    for result in results.values():
        assert result["images"] == 3 and result["unreadable"] == 1
        assert result["both"] == 2  # one portrait each, found by both detectors
        assert result["yunet_only"] == 0
    # The faces both find are the portraits, each the detector's only box there: their percentiles are those of the
    # detector's own scores of the two photos (not YuNet's, nor every box's).
    for detector, result in results.items():
        portrait_scores = [face.score for name in ("astronaut.png", "grace_hopper.jpg")
                           for face in create_detector(detector).detect(load_image(photos / name))]
        expected = {str(q): np.percentile(portrait_scores, q) for q in (5, 25, 50)}
        assert result["detector_score_percentiles"]["both"] == pytest.approx(expected, abs=1e-3), detector
    haar, mtcnn = results["haar"], results["mtcnn"]
    assert haar["detector"] == "HaarLandmarkDetector" and mtcnn["detector"] == "MTCNNDetector"
    assert haar["detector_only"] >= 1 and haar["images_with_detector_only"] == 1
    assert {item["image"] for item in haar["detector_only_boxes"]} == {str(photos / "coins.png")}
    assert set(haar["detector_score_percentiles"]) == {"both", "detector_only"}
    assert mtcnn["detector_only"] == 0  # MTCNN does not take the coins for faces
    assert tool.main(["--root", str(photos), "--yunet-model", str(yunet_model), "--detector", "haar",
                      "--list", "1"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  detector only:")]
    assert len(listed) == 1 and "coins.png box [" in listed[0] and "np." not in listed[0]


def test_missing_inputs_are_usage_errors(tmp_path, load_tool, capsys):
    tool = load_tool("detector_agreement")
    assert tool.main(["--root", str(tmp_path / "absent")]) == 2
    assert tool.main(["--root", str(tmp_path), "--yunet-model", str(tmp_path / "absent.onnx")]) == 2
    assert "error:" in capsys.readouterr().err
