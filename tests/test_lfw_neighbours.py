"""tools/lfw_neighbours.py: the weight noise it applies, and its scores against `facekit eval lfw`'s own code."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from facekit.export import current_shipped_model, store_weights_as_float16


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_neighbour_scales_every_conv_weight_by_the_noise_and_nothing_else(storage, tmp_path, load_tool):
    shipped = current_shipped_model()
    assert shipped is not None, "the package ships an ONNX file exported from its weights"
    if storage == "float16":  # a release too big for git in float32: its convolutions read weights through casts
        graph = onnx.load(str(shipped))
        store_weights_as_float16(graph.graph)
        shipped = tmp_path / "float16.onnx"
        onnx.save(graph, str(shipped))
    tool = load_tool("lfw_neighbours")
    neighbour = tool.perturbed_copy(shipped, tmp_path / "n.onnx", 0.01, np.random.default_rng(0))
    before, after = _initializers(shipped), _initializers(neighbour)
    assert before.keys() == after.keys()
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    # One weight tensor per convolution, and nothing else (biases, the embedding layer) touched.
    assert len(changed) == sum(node.op_type == "Conv" for node in onnx.load(str(shipped)).graph.node)
    ratios = []
    for name in changed:
        original = before[name].astype(np.float64)
        nonzero = np.abs(original) > 1e-3  # float16's relative rounding is too coarse below that
        ratios.append((after[name][nonzero] / original[nonzero]).ravel() - 1)
    ratios = np.concatenate(ratios)
    assert abs(ratios.mean()) < 1e-3 and abs(ratios.std() - 0.01) < 1e-3


def test_scores_match_eval_code_and_a_copy_of_the_model_agrees_exactly(shared_data, yunet_model, tmp_path, capsys,
                                                                        load_tool):
    shipped = current_shipped_model()
    lfw = shared_data / "lfw"
    code = load_tool("lfw_neighbours").main(["--root", str(lfw / "images"), "--pairs", str(lfw / "pairs.txt"),
                         "--yunet-model", str(yunet_model), "--limit-pairs", "200", "--noise", "0.01",
                         "--draws", "2", "--compare", str(shipped), "--crops", str(tmp_path / "crops.npz"),
                         "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    unperturbed, neighbours, copy = result["rows"]
    assert unperturbed["model"] == "unperturbed" and neighbours["draws"] == 2
    # The same file scored twice gives the same numbers and a cosine of 1; neighbours differ from it.
    assert copy["cosine"] == 1.0 and {k: copy[k] for k in unperturbed if k != "model"} == \
        {k: v for k, v in unperturbed.items() if k != "model"}
    assert 0.99 < neighbours["cosine"] < 1.0
    # The shipped model verifies 98 % of these 200 pairs (LFW, YuNet: 98.1 % on all 6,000); 0.85 passed a model or
    # an alignment that had lost most of that. This allows 12 errors where there are 4.
    assert unperturbed["accuracy"] >= 0.94, "the shipped model should verify nearly all of 200 LFW pairs"
    assert (tmp_path / "crops.npz").is_file()


def test_cached_crops_are_reused_for_the_same_detector_and_any_subset(tmp_path, load_tool):
    tool = load_tool("lfw_neighbours")

    class NoFaces:
        """A pipeline whose detector finds nothing, so recomputed crops are all empty."""

        def __init__(self, detector: object) -> None:
            self.detector = detector

        def load_many(self, paths):
            return [SimpleNamespace(image=None, faces=[]) for _ in paths]

    class YuNetDetector:
        def __init__(self, min_face: int | None = None) -> None:
            self.min_face = min_face

    class HaarDetector:
        pass

    paths, cache = ["a.jpg", "b.jpg"], tmp_path / "crops.npz"
    cached = np.full((2, 112, 112, 3), 7, np.uint8)
    cached[1] = 9
    np.savez(cache, paths=np.array(paths), crops=cached, found=np.ones(2, bool),
             detector=tool.detector_key(YuNetDetector()))
    # The same detector with other settings (or code, or landmark weights: the key holds their digest) aligns
    # its own crops.
    assert tool.detector_key(YuNetDetector(40)) != tool.detector_key(YuNetDetector())
    crops, found = tool.aligned_crops(NoFaces(YuNetDetector()), paths, cache)
    assert found.all() and (crops == cached).all()
    # A subset of the cached images is read from it too, each its own crop.
    crops, found = tool.aligned_crops(NoFaces(YuNetDetector()), ["b.jpg"], cache)
    assert found.all() and crops.shape == (1, 112, 112, 3) and (crops == 9).all()
    crops, found = tool.aligned_crops(NoFaces(HaarDetector()), paths, cache)
    assert not found.any() and not crops.any()
