"""The Inception-ResNet-v2 embedder: structure, shapes, unit norm, and weight round trip."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from facekit.model import InceptionResNetV2, ModelConfig, build_model
from facekit.representation import DEFAULT_MODEL, Embedder, load_model
from facekit.training.train import save_weights


def test_seed_structure_by_default():
    model = InceptionResNetV2(ModelConfig(width=0.125))
    assert len(model.blocks_a) == 5 and len(model.blocks_b) == 10 and len(model.blocks_c) == 5
    assert [b.scale for b in (model.blocks_a[0], model.blocks_b[0], model.blocks_c[0])] == [0.17, 0.10, 0.20]
    # The seed network leaves the last C block without a ReLU.
    assert model.blocks_c[-1].activate is False and model.blocks_c[0].activate is True


def test_full_width_channel_counts_match_the_paper():
    model = build_model(width=1.0)
    assert model.stem.out_channels == 320
    assert model.reduction_a.out_channels == 1088
    assert model.reduction_b.out_channels == 2080
    assert model.head_conv[0].out_channels == 1536


@pytest.mark.parametrize("batch", [1, 3])
def test_embeddings_are_unit_length(batch):
    model = build_model(width=0.125, blocks=(1, 2, 1), embedding_size=128).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 112, 112))
    assert out.shape == (batch, 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(batch), atol=1e-5)


def test_grid_sizes_for_112_input():
    model = build_model(width=0.125).eval()
    with torch.no_grad():
        x = model.stem(torch.zeros(1, 3, 112, 112))
        assert x.shape[-2:] == (14, 14)
        x = model.reduction_a(model.blocks_a(x))
        assert x.shape[-2:] == (7, 7)
        x = model.reduction_b(model.blocks_b(x))
        assert x.shape[-2:] == (4, 4)


def test_weights_round_trip_through_safetensors(tmp_path):
    model = build_model(width=0.125, blocks=(1, 1, 1), embedding_size=64).eval()
    save_weights(model, model.config, tmp_path / "tiny", {"threshold": 0.42})
    loaded, card = load_model(tmp_path / "tiny")
    assert card["threshold"] == 0.42 and card["model"]["embedding_size"] == 64
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "nothing")
    # A photo given as the weights: the message named only photo.jpg.safetensors, as if that file were missing.
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    hint = f"({tmp_path / 'photo.jpg'} is not a model: --weights takes a .safetensors file, its .json card beside it)"
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        load_model(tmp_path / "photo.jpg")


def test_shipped_model_card_is_complete():
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    for key in ("architecture", "model", "input", "alignment_template", "training", "threshold", "lfw"):
        assert key in card, f"model card lacks {key}"
    assert 0.0 < card["threshold"] < 1.0
    # Search in a gallery needs a stricter bar than one comparison; both come from `facekit eval lfw`.
    assert card["threshold"] < card["identify_threshold"] < 1.0
    assert card["identify_threshold"] == card["lfw"]["threshold_at_far"]["5e-3"]
    # What each detector scores is on record, the default's (MTCNN) included.
    detectors = {key: card[key]["detector"] for key in ("lfw", "lfw_mtcnn", "lfw_haar")}
    assert detectors == {"lfw": "YuNetDetector", "lfw_mtcnn": "MTCNNDetector", "lfw_haar": "HaarLandmarkDetector"}
    # Every training stage is listed once and the totals the README quotes add them up.
    stages = [*card["training"].get("stages_before", []), card["training"]]
    record_keys = set(stages[0])
    assert len({json.dumps({k: v for k, v in s.items() if k in record_keys}, sort_keys=True)
                for s in stages}) == len(stages)
    for key in ("minutes", "images_seen"):
        assert card["training"].get(f"total_{key}", card["training"][key]) == pytest.approx(
            sum(stage[key] for stage in stages))


def test_shipped_embedder_flip_augmentation_and_batching(astronaut_bgr):
    embedder = Embedder()
    crop = np.ascontiguousarray(astronaut_bgr[60:172, 180:292])
    single = embedder.embed(crop)
    batch = embedder.embed(np.stack([crop, crop[:, ::-1]]))
    assert single.shape == (1, embedder.dim)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(single[0], batch[0], atol=1e-4)
    # Mirror TTA sums the face and its mirror, so a mirrored input gives the same embedding.
    assert float(batch[0] @ batch[1]) > 0.999


def test_a_card_that_does_not_describe_the_tensors_is_one_error_naming_the_difference(tmp_path):
    model = build_model(width=0.125, blocks=(1, 1, 1)).eval()
    save_weights(model, model.config, tmp_path / "model", {})
    card = json.loads((tmp_path / "model.json").read_text())
    # The first mismatch, where load_state_dict's summary said only "Error(s) in loading state_dict"; values of
    # the wrong kind, where they were a TypeError (a traceback) or "not enough values to unpack"; and a card
    # that says width 16, which built 33 GB of weights before the mismatch was seen.
    for change, message in (({"embedding_size": 128}, r"embedding.weight is \(512, 192\) in the file, \(128, 192\)"),
                            ({"width": "0.125"}, "width='0.125'"), ({"blocks": [1, 1]}, r"blocks=\(1, 1\)"),
                            ({"width": 16}, "stem.convs.0.0.weight is")):
        (tmp_path / "model.json").write_text(json.dumps({**card, "model": {**card["model"], **change}}))
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / "model")


def test_weights_that_are_not_numbers_are_refused(tmp_path, monkeypatch):
    """A diverged training run saves NaNs; every embedding was NaN: no match, no name, and no error."""
    monkeypatch.setenv("FACEKIT_CACHE", str(tmp_path / "cache"))
    model = build_model(width=0.125, blocks=(1, 1, 1)).eval()
    with torch.no_grad():
        model.embedding.weight[3, 4] = float("nan")
    save_weights(model, model.config, tmp_path / "diverged", {"threshold": 0.3})
    for backend in ("torch", "onnx"):
        with pytest.raises(ValueError, match="embedding.weight holds values that are not numbers"):
            Embedder(tmp_path / "diverged", backend=backend)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_embed_takes_grey_crops_and_refuses_what_it_would_misread(backend, astronaut_bgr):
    embedder = Embedder(backend=backend)
    crop = np.ascontiguousarray(astronaut_bgr[60:172, 180:292])
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    expected = embedder.embed(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    for same in (grey, grey[..., None], grey[None, ..., None]):
        assert np.allclose(embedder.embed(same), expected, atol=1e-5)
    # Pixels in [0, 1] gave a nonsense embedding and torch pooled a crop of any size, without a word; three grey
    # crops without their channel axis would read as one crop in torch's layout.
    for wrong, message in ((crop / 255.0, "expected uint8 crops"), (crop[:100, :100], "shape"),
                           (crop[None].transpose(0, 3, 1, 2), "shape"), (np.stack([grey] * 3), "shape")):
        with pytest.raises(ValueError, match=message):
            embedder.embed(wrong)
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(backend=backend, batch_size=0)


def test_weights_named_with_a_version_are_saved_under_that_name(tmp_path):
    """save_weights("model-1.0") wrote model-1.safetensors: with_suffix() takes ".0" for a suffix."""
    model = build_model(width=0.125, blocks=(1, 1, 1)).eval()
    save_weights(model, model.config, tmp_path / "model-1.0", {"threshold": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-1.0.json", "model-1.0.safetensors"]
    loaded, card = load_model(tmp_path / "model-1.0")
    assert card["threshold"] == 0.5 and loaded.config == model.config


def test_the_identify_threshold_grows_stricter_with_the_gallery():
    """A stranger is named if any of G comparisons passes: the default threshold holds the card's rate for 40 faces
    (its identify_threshold) to larger galleries, up to the strictest rate the card measured."""
    from facekit.representation import Embedder

    embedder = Embedder()
    at_far = embedder.card["lfw"]["threshold_at_far"]
    for faces in (0, 1, 40):
        assert embedder.identify_threshold_for(faces) == embedder.identify_threshold == at_far["5e-3"]
    assert embedder.identify_threshold_for(200) == at_far["1e-3"]  # 0.2 / 200
    assert embedder.identify_threshold_for(2000) == embedder.identify_threshold_for(10**7) == at_far["1e-4"]
    thresholds = [embedder.identify_threshold_for(faces) for faces in (40, 41, 100, 150, 200, 500, 2000)]
    assert all(stricter > looser for looser, stricter in zip(thresholds, thresholds[1:])), thresholds
    # A card without the measured rates keeps its one identify threshold.
    embedder.card = {**embedder.card, "lfw": {}}
    assert embedder.identify_threshold_for(5000) == embedder.identify_threshold
