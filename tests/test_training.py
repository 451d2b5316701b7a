"""Training: losses behave, a tiny run learns, checkpoints resume, weights come out loadable."""

from __future__ import annotations

import csv
import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from facekit.model import build_model
from facekit.representation import load_model
from facekit.training.data import PKSampler, augment, load_crops, load_teacher, to_model_input
from facekit.training.losses import CombinedMarginLoss, DistillationLoss, relational_distillation_loss, triplet_loss
from facekit.training.train import TrainConfig, class_mean_embeddings, train


def test_margin_lowers_the_true_class_logit():
    torch.manual_seed(0)
    embeddings, labels = torch.randn(8, 16), torch.arange(8) % 4
    plain = CombinedMarginLoss(16, 4, s=16, m2=0.0)
    arcface = CombinedMarginLoss(16, 4, s=16, m2=0.5)
    cosface = CombinedMarginLoss(16, 4, s=16, m2=0.0, m3=0.35)
    arcface.weight.data.copy_(plain.weight.data)
    cosface.weight.data.copy_(plain.weight.data)
    base = plain(embeddings, labels)
    assert arcface(embeddings, labels) > base and cosface(embeddings, labels) > base
    assert torch.isclose(arcface(embeddings, labels, margin_scale=0.0), base)


def test_triplet_loss_zero_when_classes_are_far_apart():
    labels = torch.tensor([0, 0, 1, 1])
    tight = torch.tensor([[1.0, 0.0], [0.99, 0.05], [-1.0, 0.0], [-0.99, 0.05]])
    assert triplet_loss(tight, labels).item() == 0.0
    mixed = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.99, 0.05], [-0.99, 0.05]])
    assert triplet_loss(mixed, labels).item() > 1.0
    assert triplet_loss(mixed, labels, mining="semi_hard").item() > 1.0


def test_distillation_loss_is_zero_for_aligned_embeddings():
    loss = DistillationLoss(4, 4)
    loss.projection.weight.data.copy_(torch.eye(4))
    student = torch.randn(5, 4)
    assert loss(student, student * 3).item() == pytest.approx(0.0, abs=1e-6)


def test_relational_distillation_asks_only_for_the_teachers_order_of_pairs():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator) + 2.0, dim=1)
    assert relational_distillation_loss(teacher * 5, teacher).item() == pytest.approx(0.0, abs=1e-5)
    # A shared extra component makes every cosine (c + 4) / 5: another range, the same order, a perfect match.
    shared = torch.cat([teacher, torch.full((16, 1), 2.0)], dim=1)
    assert relational_distillation_loss(shared, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert not torch.allclose(torch.nn.functional.normalize(shared) @ torch.nn.functional.normalize(shared).t(),
                              teacher @ teacher.t(), atol=0.1)
    student = torch.randn(16, 8, generator=generator, requires_grad=True)
    before = relational_distillation_loss(student, teacher)
    assert before.item() > 0.5
    before.backward()
    with torch.no_grad():
        assert relational_distillation_loss(student - 0.5 * student.grad, teacher).item() < before.item()


def test_relational_distillation_can_compare_only_the_closest_pairs():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    assert relational_distillation_loss(teacher * 3, teacher, closest=0.05).item() == pytest.approx(0.0, abs=1e-5)
    # A student that keeps the teacher's distant pairs but scrambles its close ones: nearly perfect over all
    # pairs, clearly wrong over the closest.
    cosines = teacher @ teacher.t()
    upper = torch.triu_indices(40, 40, offset=1)
    values = cosines[upper[0], upper[1]]
    close = values > values.quantile(0.95)
    scrambled = values.clone()
    scrambled[close] = values[close][torch.randperm(int(close.sum()), generator=generator)]

    def loss_of(pair_cosines: torch.Tensor, closest: float) -> float:
        # relational_distillation_loss on a student whose pairwise cosines are these, via its Gram factor
        gram = torch.eye(40)
        gram[upper[0], upper[1]] = gram[upper[1], upper[0]] = pair_cosines
        eigenvalues, vectors = torch.linalg.eigh(gram)
        student = vectors * eigenvalues.clamp(min=1e-6).sqrt()
        return relational_distillation_loss(student, teacher, closest=closest).item()

    assert loss_of(scrambled, 1.0) < 0.1
    assert loss_of(scrambled, 0.05) > 3 * loss_of(scrambled, 1.0)
    assert loss_of(values, 0.05) < 0.01
    # The teacher alone chooses the pairs: two faces that no chosen pair involves, pushed together in the
    # student only, become its closest pair and change nothing (a choice that let the student's closest in
    # would now see a pair the two sides disagree on).
    chosen = values.topk(int(0.05 * len(values))).indices
    involved = set(upper[0, chosen].tolist()) | set(upper[1, chosen].tolist())
    first, second = [face for face in range(40) if face not in involved][:2]
    together = torch.zeros(40, 1)
    together[[first, second]] = 5.0
    student = torch.cat([teacher, together], dim=1)
    assert relational_distillation_loss(student, teacher, closest=0.05).item() == pytest.approx(0.0, abs=1e-5)
    assert relational_distillation_loss(student, teacher).item() > 0.01
    # The chosen pairs do not move with the student, so one gradient step lowers the loss.
    student = torch.randn(40, 8, generator=generator, requires_grad=True)
    before = relational_distillation_loss(student, teacher, closest=0.05)
    before.backward()
    with torch.no_grad():
        after = relational_distillation_loss(student - 2.0 * student.grad, teacher, closest=0.05)
    assert after.item() < before.item()


def test_partial_teacher_rows_are_missing_targets(tmp_path):
    rows = np.zeros((5, 4), np.float32)
    rows[:2] = [[3, 0, 0, 4], [0, 2, 0, 0]]  # a teacher run that has reached crop 2 of 5 so far
    np.save(tmp_path / "teacher.npy", rows)
    centred, raw = (targets.numpy() for targets in load_teacher(tmp_path / "teacher.npy", num_crops=6))
    assert centred.shape == raw.shape == (6, 4)
    # Centred on the known rows' mean, then unit length: these two end up opposite.
    np.testing.assert_allclose(np.linalg.norm(centred[:2], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(centred[0], -centred[1], atol=1e-6)
    # The relational loss's rows are only scaled to unit length.
    np.testing.assert_allclose(raw[:2], [[0.6, 0, 0, 0.8], [0, 1, 0, 0]], atol=1e-6)
    assert np.isnan(centred[2:]).all() and np.isnan(raw[2:]).all()
    with pytest.raises(ValueError, match="at most 3 rows"):
        load_teacher(tmp_path / "teacher.npy", num_crops=3)


def test_pk_sampler_gives_k_of_each_identity():
    labels = np.repeat(np.arange(10), 5)
    batch = next(iter(PKSampler(labels, p=4, k=3)))
    counts = np.bincount(labels[batch])
    assert len(batch) == 12 and sorted(counts[counts > 0]) == [3, 3, 3, 3]


def test_augment_keeps_shape_and_range():
    x = to_model_input(torch.randint(0, 256, (6, 112, 112, 3), dtype=torch.uint8))
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)


def _crop_folder(root, shared_data, identities: int = 6, per_identity: int = 6):
    """An image-folder training set made from real aligned crops of the shared pool."""
    import zipfile

    with open(shared_data / "train" / "manifest.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    by_identity: dict[str, list[dict]] = {}
    for row in rows:
        by_identity.setdefault(row["identity"], []).append(row)
    chosen = [name for name, items in by_identity.items() if len(items) >= per_identity][:identities]
    for name in chosen:
        for row in by_identity[name][:per_identity]:
            with zipfile.ZipFile(shared_data / "train" / row["shard"]) as shard:
                data = shard.read(row["member"])
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            (root / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / (row["member"].split("/")[-1] + ".png")), image)
    return chosen


def test_tiny_training_run_learns_and_resumes(tmp_path, shared_data, load_tool):
    # tools/release_model.py is run in this process: as a script, each of the six releases below imported torch
    # again (seconds each); the tests of the weight average and of teacher rows run it as the script.
    release = load_tool("release_model").main
    _crop_folder(tmp_path / "crops", shared_data)
    crops = load_crops(tmp_path / "crops")
    assert crops.images.shape[1:] == (112, 112, 3) and crops.num_classes == 6
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=64, batch_size=12, epochs=12, lr=0.05, arcface_s=16, triplet_weight=0.5,
                         margin_warmup_fraction=0.0, warmup_fraction=0.1,
                         pk_k=3, log_every=1, checkpoint_every=10, device="cpu")
    result = train(config)
    assert result["steps"] == 36
    with open(tmp_path / "run" / "log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    model, card = load_model(tmp_path / "run" / "model")
    assert card["model"]["embedding_size"] == 64 and card["training"]["triplet_weight"] == 0.5
    # Resuming a finished run restarts from its checkpoint rather than from scratch.
    config.epochs = 14
    assert train(config)["steps"] == 42
    # A fine-tune starts from the run's weights (a lower first loss than from scratch) with its own schedule.
    tuned = TrainConfig(**{**vars(config), "output": str(tmp_path / "tuned"), "epochs": 1,
                           "init_from": str(tmp_path / "run" / "checkpoint.pt")})
    assert train(tuned)["steps"] == 3
    with open(tmp_path / "tuned" / "log.csv") as handle:
        tuned_losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert tuned_losses[0] < losses[0]
    # Released weights (no class centres) fine-tune too: centres start at each identity's mean embedding.
    released = TrainConfig(**{**vars(tuned), "output": str(tmp_path / "from-release"), "lr": 0.0,
                              "init_from": str(tmp_path / "run" / "model.safetensors")})
    assert train(released)["steps"] == 3
    centres = torch.load(tmp_path / "from-release" / "checkpoint.pt", weights_only=True)["margin_loss"]["weight"]
    images, labels = torch.from_numpy(crops.images), torch.from_numpy(crops.labels)
    model, _ = load_model(tmp_path / "run" / "model")
    with torch.no_grad():  # lr 0 leaves the centres as initialised: compare with the means worked out here
        each = model(to_model_input(images).contiguous(memory_format=torch.channels_last))
    for label in range(crops.num_classes):
        expected = torch.nn.functional.normalize(each[labels == label].mean(0), dim=0)
        torch.testing.assert_close(centres[label], expected, atol=1e-5, rtol=0)
    assert len(json.loads((tmp_path / "from-release" / "model.json").read_text())["training"]["stages_before"]) == 1
    # A wider run starts out computing the released model's embedding, so its centres start where these did.
    train(TrainConfig(**{**vars(released), "output": str(tmp_path / "wider"), "width": 0.25}))
    wider_centres = torch.load(tmp_path / "wider" / "checkpoint.pt", weights_only=True)["margin_loss"]["weight"]
    torch.testing.assert_close(wider_centres, centres, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="larger --width"):
        train(TrainConfig(**{**vars(released), "output": str(tmp_path / "narrower"), "width": 0.0625,
                             "init_from": str(tmp_path / "wider" / "model.safetensors")}))
    # Releasing the fine-tune writes a card that accounts for both stages and records each detector's
    # `facekit eval lfw --json`; the default thresholds come from --lfw's run alone.
    evaluations = {}
    for key, threshold, at_far in (("lfw", 0.43, 0.55), ("lfw_mtcnn", 0.41, 0.52)):
        evaluations[key] = {"accuracy": 0.9, "threshold": threshold, "impostor_pairs": 1000,
                            "threshold_at_far": {"5e-3": at_far}}
        (tmp_path / f"{key}.json").write_text(json.dumps(evaluations[key]))
    assert release([str(tmp_path / "tuned"), "--lfw", str(tmp_path / "lfw.json"), "--lfw-mtcnn",
                    str(tmp_path / "lfw_mtcnn.json"), "--output", str(tmp_path / "shipped" / "model")]) == 0
    card = json.loads((tmp_path / "shipped" / "model.json").read_text())
    assert {key: card[key] for key in evaluations} == evaluations and "lfw_haar" not in card
    assert (card["threshold"], card["identify_threshold"]) == (0.43, 0.55)
    assert len(card["training"]["stages_before"]) == 1
    assert card["training"]["total_images_seen"] == (42 + 3) * 12
    # A third stage still accounts for the first when the middle card lacks a stage record (older cards)
    # or holds an empty one.
    middle_card = tmp_path / "tuned" / "model.json"
    middle = json.loads(middle_card.read_text())
    for stale in (None, []):
        if stale is None:
            middle["training"].pop("stages_before", None)
        else:
            middle["training"]["stages_before"] = stale
        middle_card.write_text(json.dumps(middle))
        third = TrainConfig(**{**vars(tuned), "output": str(tmp_path / f"third{stale}"),
                               "init_from": str(tmp_path / "tuned" / "checkpoint.pt")})
        train(third)
        assert release([third.output, "--output", str(tmp_path / "shipped" / "model")]) == 0
        card = json.loads((tmp_path / "shipped" / "model.json").read_text())
        assert len(card["training"]["stages_before"]) == 2, stale
        assert card["training"]["total_images_seen"] == (42 + 3 + 3) * 12
    # A stage started from the released weights themselves, released again, still accounts for all four.
    fourth = TrainConfig(**{**vars(tuned), "output": str(tmp_path / "fourth"),
                            "init_from": str(tmp_path / "shipped" / "model.safetensors")})
    train(fourth)
    assert release([fourth.output, "--output", str(tmp_path / "shipped" / "model")]) == 0
    released_again = json.loads((tmp_path / "shipped" / "model.json").read_text())["training"]
    assert len(released_again["stages_before"]) == 3
    assert released_again["total_images_seen"] == (42 + 3 + 3 + 3) * 12
    # Releasing that stage a second time (say, with a new evaluation) over the weights it started from
    # must not count the first release as one more stage.
    assert release([fourth.output, "--output", str(tmp_path / "shipped" / "model")]) == 0
    assert json.loads((tmp_path / "shipped" / "model.json").read_text())["training"] == released_again
    first_two = card["training"]["stages_before"]
    assert [s["losses"] for s in released_again["stages_before"][:2]] == [s["losses"] for s in first_two]
    # A release may ship the uniform mean of the run's weights and other models' of the same lineage.
    from safetensors.torch import load_file

    from facekit.export import model_fingerprint

    others = [tmp_path / "run" / "model", tmp_path / "tuned" / "model"]
    assert release([fourth.output, "--average-with", *map(str, others),
                    "--output", str(tmp_path / "soup" / "model")]) == 0
    files = [Path(fourth.output) / "model", *others, tmp_path / "soup" / "model"]
    run, first, second, soup = (load_file(str(path.with_suffix(".safetensors"))) for path in files)
    assert not torch.equal(run["embedding.weight"], first["embedding.weight"])
    assert not torch.equal(second["embedding.weight"], first["embedding.weight"])
    for name, tensor in soup.items():
        if tensor.is_floating_point():
            # In float64, as release_model sums: in float32 a batch-norm variance near 20 can be a rounding off.
            mean = (run[name].double() + first[name].double() + second[name].double()) / 3
            torch.testing.assert_close(tensor, mean.float(), atol=1e-6, rtol=0)
    averaged = json.loads((tmp_path / "soup" / "model.json").read_text())["training"]
    assert averaged["weight_average"]["with_sha256"] == [model_fingerprint(other) for other in others]
    assert averaged["weight_average"]["share"] == round(1 / 3, 4)
    assert averaged["stages_before"] == released_again["stages_before"]
    # Each release writes the ONNX file inference runs on, exported from exactly the released weights.
    from facekit.export import create_session, session_weights_key, weights_key

    soup_onnx = create_session(tmp_path / "soup" / "model.onnx")
    assert session_weights_key(soup_onnx) == weights_key(tmp_path / "soup" / "model")


def test_class_centres_of_a_release_are_cached_by_its_weights(tmp_path, shared_data, monkeypatch):
    import facekit.training.train as training

    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=1, lr=0.05, device="cpu",
                         cache_dir=str(tmp_path / "cache"))
    train(config)
    release = str(tmp_path / "run" / "model.safetensors")
    train(TrainConfig(**{**vars(config), "output": str(tmp_path / "first"), "init_from": release}))
    [cache] = (tmp_path / "cache").glob("centres-*.npy")
    np.testing.assert_allclose(np.linalg.norm(np.load(cache), axis=1), np.ones(4), rtol=1e-5)  # 4 identities

    def pass_over_the_pool(*args, **kwargs):
        raise RuntimeError("class centres recomputed")

    # The next fine-tune from the same release reads them back instead of running the model over the pool.
    monkeypatch.setattr(training, "class_mean_embeddings", pass_over_the_pool)
    train(TrainConfig(**{**vars(config), "output": str(tmp_path / "second"), "init_from": release, "lr": 0.0}))
    first, second = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["margin_loss"]["weight"]
                     for name in ("first", "second"))
    torch.testing.assert_close(second, torch.from_numpy(np.load(cache)))
    assert not torch.equal(first, second)  # the first run trained its centres on from the cached ones (lr 0.05)
    # Other weights, or a cache of the wrong shape or not readable at all, are computed again.
    with pytest.raises(RuntimeError, match="recomputed"):
        train(TrainConfig(**{**vars(config), "output": str(tmp_path / "third"),
                             "init_from": str(tmp_path / "first" / "model.safetensors")}))
    for damaged in (lambda: np.save(cache, np.zeros((2, 2), np.float32)), lambda: cache.write_bytes(b"\x93NUMPY")):
        damaged()
        with pytest.raises(RuntimeError, match="recomputed"):
            train(TrainConfig(**{**vars(config), "output": str(tmp_path / "fourth"), "init_from": release}))


def test_released_weights_are_widened_on_the_models_device(tmp_path, monkeypatch):
    """widen assigns by index, and CUDA refuses values from another device there (the meta device, the one other
    device a CPU-only torch has, does not): the released model must reach widen on the device of the model."""
    import facekit.training.train as training
    from facekit.training.widen import widen

    narrow = build_model(0.125, (1, 1, 1), 32)
    training.save_weights(narrow, narrow.config, tmp_path / "narrow", {})
    with torch.device("meta"):  # as a model already moved to the GPU
        wide = build_model(0.25, (1, 1, 1), 32)
    devices = []

    def recording_widen(old, new):
        devices.append({str(tensor.device) for tensor in [*old.parameters(), *old.buffers()]})
        widen(old, new)

    monkeypatch.setattr(training, "widen", recording_widen)
    training._load_released_weights(wide, str(tmp_path / "narrow.safetensors"), wide.config)
    assert devices == [{"meta"}]


def test_the_process_group_backend_follows_the_training_device(tmp_path, monkeypatch):
    """NCCL reduces GPU tensors only: a `--device cpu` run under torchrun needs gloo, GPU or no GPU."""
    import torch.distributed as dist

    class Started(Exception):
        pass

    backends = []

    def init_process_group(backend: str) -> None:
        backends.append(backend)
        raise Started  # no group is started: the backend chosen is all this asks

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # as on a one-GPU machine: --device cuda is taken
    monkeypatch.setenv("WORLD_SIZE", "2")
    for device in ("cpu", None, "cuda"):
        with pytest.raises(Started):
            train(TrainConfig(data=str(tmp_path), output=str(tmp_path / "run"), device=device))
    assert backends == ["gloo", "nccl", "nccl"]


def test_distillation_from_a_partial_teacher(tmp_path, shared_data, tool_script):
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    rng = np.random.default_rng(0)
    teacher = np.zeros((16, 8), np.float32)
    teacher[:8] = rng.normal(size=(8, 8))
    np.save(tmp_path / "teacher.npy", teacher)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=4, teacher=str(tmp_path / "teacher.npy"),
                         distill_weight=1.0, relation_weight=1.0, relation_closest=0.5, log_every=1, device="cpu")
    result = train(config)
    with open(tmp_path / "run" / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    for loss in ("distill", "relation"):
        values = [float(row[loss]) for row in rows]
        assert all(np.isfinite(values)) and max(values) > 0, loss
    assert result["teacher_targets"] == 8  # the card says how much of the pool had a target
    subprocess.run([sys.executable, tool_script("release_model"), str(tmp_path / "run"),
                    "--output", str(tmp_path / "released" / "model")], check=True, capture_output=True)
    stage = json.loads((tmp_path / "released" / "model.json").read_text())["training"]
    assert stage["relation_closest"] == 0.5
    assert any("the 0.5 of a batch's pairs it finds closest" in loss for loss in stage["losses"])
    with pytest.raises(ValueError, match="relation-closest"):
        train(TrainConfig(**{**vars(config), "output": str(tmp_path / "never"), "relation_closest": 0.0}))


def _count_reads(monkeypatch, names: tuple[str, ...]) -> list[str]:
    """The list each call of these torch.Tensor methods appends its name to, from now to the monkeypatch's undo: the
    calls that read a value back to the CPU, which on a GPU waits for every queued kernel. Indexing counts only
    with a boolean mask, whose size must be read."""
    reads: list[str] = []

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args):
            if name != "__getitem__" or (isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bool):
                reads.append(name)
            return original(self, *args)

        return read

    for name in names:
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    return reads


def test_a_training_step_does_not_wait_for_the_device(tmp_path, shared_data, monkeypatch):
    """On a GPU, reading a value back (.item(), a tensor's truth, a boolean mask's size) waits for every queued
    kernel, so the CPU cannot queue the next step meanwhile. A step between logs reads none: counted on the CPU,
    a run of 8 steps reads back no more than one of 4, distillation from a finished teacher run included."""
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    np.save(tmp_path / "teacher.npy", np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=2, teacher=str(tmp_path / "teacher.npy"),
                         distill_weight=1.0, relation_weight=1.0, log_every=100, checkpoint_every=100, device="cpu")
    reads = _count_reads(monkeypatch, ("item", "__bool__", "__int__", "__float__", "tolist", "__getitem__"))
    counts = []
    for epochs in (2, 4):
        reads.clear()
        result = train(TrainConfig(**{**vars(config), "epochs": epochs, "output": str(tmp_path / f"{epochs}")}))
        assert result["steps"] == 2 * epochs
        counts.append(sorted(reads))
    assert counts[1] == counts[0]


def test_torchrun_keeps_every_process_in_step(tmp_path, shared_data):
    """Two processes under torchrun (gloo on the CPU, as NCCL would on GPUs): same weights at the end,
    class centres and the distillation projection included, a shared stop under a time budget, and the
    tail mean (kept by rank 0 alone) shipped."""
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=6)
    rng = np.random.default_rng(0)
    teacher = np.zeros((24, 8), np.float32)
    teacher[:12] = rng.normal(size=(12, 8))  # a partial teacher: some batches of a process have no target
    np.save(tmp_path / "teacher.npy", teacher)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "facekit.cli", "train", str(tmp_path / "crops"), "--output", str(tmp_path / "run"),
               "--device", "cpu", "--width", "0.125", "--blocks", "1,1,1", "--embedding-size", "32",
               "--batch-size", "8", "--minutes", "0.15", "--teacher", str(tmp_path / "teacher.npy"),
               "--distill-weight", "1", "--triplet-weight", "0.5", "--average-from", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    # Without the progress bars, so that a worker's own last words come before torchrun's report.
    messages = [line for line in completed.stderr.splitlines() if "training:" not in line]
    assert completed.returncode == 0, "\n".join(messages)[-4000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] > 0
    assert result["images_seen"] == result["steps"] * 8
    assert result["replicas_in_sync"] is True
    model, card = load_model(tmp_path / "run" / "model")
    assert card["training"]["world_size"] == 2
    assert 0 < result["steps_averaged"] < result["steps"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["averaged"]["module." + name]), name
    moved = [name for name, value in model.state_dict().items()
             if value.is_floating_point() and not torch.allclose(value, checkpoint["model"][name])]
    assert moved  # the mean, not the last step's weights


def _torchrun_resume_worker(data: str, runs: str) -> None:
    """One process of test_a_resumed_torchrun_run_ends_where_an_uninterrupted_one_does (the script torchrun runs):
    a run whole, then the same run killed during step 6, after its step-4 checkpoint, and started again, then a
    fine-tune from the first's release. All share one process group, which saves start-ups; train() would otherwise
    end it after each run."""
    import torch.distributed as dist

    import facekit.training.train as training

    end_group, dist.destroy_process_group = dist.destroy_process_group, lambda: None
    config = TrainConfig(data=data, output=f"{runs}/whole", width=0.125, blocks=(1, 1, 1), embedding_size=32,
                         batch_size=8, epochs=3, lr=0.05, checkpoint_every=4, device="cpu")
    train(config)
    calls = {"n": 0}

    def killed_at_step_6(x):
        calls["n"] += 1
        if calls["n"] == 6:  # in every process at the same step, so none is left waiting for the others
            raise KeyboardInterrupt
        return augment(x)

    interrupted = TrainConfig(**{**vars(config), "output": f"{runs}/interrupted"})
    training.augment = killed_at_step_6
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    training.augment = augment
    train(interrupted)
    # A fine-tune from released weights: every process imprints its own class centres, and on GPUs index_add_
    # sums in no fixed order, which the offset here stands in for. All must start from rank 0's.
    imprint = training.class_mean_embeddings
    training.class_mean_embeddings = lambda *args, **kwargs: imprint(*args, **kwargs) + 1e-3 * dist.get_rank()
    released = TrainConfig(**{**vars(config), "output": f"{runs}/released", "epochs": 1,
                              "init_from": f"{runs}/whole/model.safetensors"})
    assert train(released)["replicas_in_sync"] is True
    end_group()


def test_a_resumed_torchrun_run_ends_where_an_uninterrupted_one_does(tmp_path, shared_data):
    """Each process draws its own share of every batch and its own augmentations: a resumed run under DDP must
    pick up every process's generators, not rank 0's alone."""
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=6)
    worker = tmp_path / "worker.py"
    here = Path(__file__).resolve().parent
    worker.write_text(f"import sys\nsys.path[:0] = [{str(here.parent)!r}, {str(here)!r}]\n"
                      "from test_training import _torchrun_resume_worker\n_torchrun_resume_worker(*sys.argv[1:])\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(tmp_path / "crops"), str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               timeout=300)
    messages = [line for line in completed.stderr.splitlines() if "training:" not in line]
    assert completed.returncode == 0, "\n".join(messages)[-4000:]
    whole, resumed = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
                      for name in ("whole", "interrupted"))
    assert whole["step"] == resumed["step"] == 9
    for part in ("model", "margin_loss"):
        for name, tensor in whole[part].items():
            torch.testing.assert_close(resumed[part][name], tensor, atol=0, rtol=0, msg=f"{part}.{name}")
    assert len(resumed["rng"]) == 2  # one set of states for each process


def test_compiled_training_updates_the_weights(tmp_path, shared_data):
    """--compile (torch.compile; Inductor needs a C++ compiler on the CPU) trains the same model."""
    if shutil.which("g++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++)")
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=2, compile=True, log_every=1, device="cpu")
    assert train(config)["steps"] == 4
    with open(tmp_path / "run" / "log.csv") as handle:
        assert all(np.isfinite(float(row["loss"])) for row in csv.DictReader(handle))
    trained, _ = load_model(tmp_path / "run" / "model")
    torch.manual_seed(config.seed)  # train() builds its model right after this seeding
    initial = build_model(config.width, config.blocks, config.embedding_size)
    changed = [name for name, value in initial.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, trained.state_dict()[name])]
    assert len(changed) > len(initial.state_dict()) // 2


def test_bf16_autocast_on_the_cpu_trains(tmp_path, shared_data, monkeypatch, capsys):
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=3, lr=0.05, bf16=True, log_every=1, device="cpu")
    # Where the CPU would emulate bf16, the run still trains, and says it would be faster without it.
    monkeypatch.setattr("facekit.training.train.cpu_has_native_bf16", lambda: False)
    assert train(config)["steps"] == 6
    assert "--bf16 on a CPU without native bf16" in capsys.readouterr().err
    with open(tmp_path / "run" / "log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    _, card = load_model(tmp_path / "run" / "model")
    assert card["training"]["bf16"] is True and card["model"]["width"] == 0.125


def test_weight_averaging_ships_the_mean_of_the_tail_and_resumes(tmp_path, shared_data, tool_script):
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=4, lr=0.05, average_from=0.5, device="cpu")
    result = train(config)
    assert (result["steps"], result["steps_averaged"]) == (8, 4)  # the steps taken from half-way on
    shipped, card = load_model(tmp_path / "run" / "model")
    assert card["training"]["average_from"] == 0.5 and card["training"]["steps_averaged"] == 4
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    live, mean = checkpoint["model"], checkpoint["averaged"]
    for name, value in shipped.state_dict().items():
        assert torch.equal(value, mean["module." + name]), name
    moved = [name for name, value in shipped.state_dict().items()
             if value.is_floating_point() and not torch.allclose(value, live[name])]
    assert len(moved) > len(live) // 2  # the mean is not the last step's weights
    # Releasing the run ships the mean too (release_model reads the checkpoint, which holds both).
    subprocess.run([sys.executable, tool_script("release_model"), str(tmp_path / "run"),
                    "--output", str(tmp_path / "released" / "model")], check=True, capture_output=True)
    released, _ = load_model(tmp_path / "released" / "model")
    for name, value in released.state_dict().items():
        assert torch.equal(value, shipped.state_dict()[name]), name
    subprocess.run([sys.executable, tool_script("release_model"), str(tmp_path / "run"), "--last-step",
                    "--output", str(tmp_path / "last-step" / "model")], check=True, capture_output=True)
    last_step, _ = load_model(tmp_path / "last-step" / "model")
    for name, value in last_step.state_dict().items():
        assert torch.equal(value, live[name]), name
    # A resumed run keeps adding to the same mean.
    config.epochs = 5
    assert train(config)["steps_averaged"] == 6

    # A stage started from the run's checkpoint starts from its mean too (lr 0 keeps the weights where it began).
    frozen = TrainConfig(**{**vars(config), "output": str(tmp_path / "frozen"), "epochs": 1, "lr": 0.0,
                            "average_from": None, "init_from": str(tmp_path / "run" / "checkpoint.pt")})
    train(frozen)
    started, _ = load_model(tmp_path / "frozen" / "model")
    mean = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["averaged"]
    for name, value in started.named_parameters():
        assert torch.equal(value, mean["module." + name]), name
    with pytest.raises(ValueError, match="average-from"):  # a mean of no steps would silently ship the last
        train(TrainConfig(**{**vars(config), "output": str(tmp_path / "never"), "average_from": 1.0}))

    # Averaging only the last step ships exactly the last step's weights.
    last_only = TrainConfig(**{**vars(config), "output": str(tmp_path / "last"), "epochs": 4, "average_from": 0.875})
    assert train(last_only)["steps_averaged"] == 1
    shipped, _ = load_model(tmp_path / "last" / "model")
    live = torch.load(tmp_path / "last" / "checkpoint.pt", weights_only=True)["model"]
    for name, value in shipped.state_dict().items():
        assert torch.equal(value, live[name]), name


def test_weight_averaging_on_a_gpu_keeps_the_cpus_mean(tmp_path, shared_data, monkeypatch):
    """AveragedModel picks its averaging by device: a CUDA model's took a foreach path that stops at the second
    averaged step (addcdiv refuses batch norm's integer step counts). Here the CPU is made to take that path."""
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "cpu"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=2, lr=0.05, average_from=0.5, device="cpu")
    assert train(config)["steps_averaged"] == 2
    monkeypatch.setattr(torch.optim.swa_utils, "_get_foreach_kernels_supported_devices", lambda: ["cuda", "cpu"])
    assert train(TrainConfig(**{**vars(config), "output": str(tmp_path / "gpu_path")}))["steps_averaged"] == 2
    cpu, gpu_path = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["averaged"]
                     for name in ("cpu", "gpu_path"))
    for name, tensor in cpu.items():
        assert torch.equal(gpu_path[name], tensor), name


def test_release_switches_to_float16_weights_above_the_size_limit(tmp_path, shared_data, load_tool):
    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    train(TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                      embedding_size=32, batch_size=8, epochs=1, device="cpu"))
    release = load_tool("release_model")
    dtypes = {}
    for limit in (release.MAX_FILE_BYTES, 1):  # the real limit, then one that every model passes
        release.MAX_FILE_BYTES = limit
        output = tmp_path / f"limit-{limit}" / "model"
        assert release.main([str(tmp_path / "run"), "--output", str(output)]) == 0
        dtypes[limit] = json.loads(output.with_suffix(".json").read_text())["weights_dtype"]
        assert output.with_suffix(".onnx").exists()
    assert dtypes == {60_000_000: "float32", 1: "float16"}


def test_class_centres_under_bf16_autocast_agree_with_float32():
    # --bf16 runs imprint their class centres under autocast too; the centres must stay float32 unit vectors.
    torch.manual_seed(0)
    model = build_model(0.125, (1, 1, 1), 32).eval()
    images = torch.randint(0, 256, (24, 112, 112, 3), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    exact = class_mean_embeddings(model, images, labels, 3, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approximate = class_mean_embeddings(model, images, labels, 3, torch.device("cpu"))
    assert approximate.dtype == torch.float32
    assert torch.allclose(approximate.norm(dim=1), torch.ones(3), atol=1e-5)
    assert (approximate * exact).sum(dim=1).min() > 0.99


def _assert_runs_end_alike(whole: Path, resumed: Path, step: int) -> None:
    """Both runs' checkpoints at `step`, with bitwise equal weights, weight averages and class centres."""
    ends = [torch.load(run / "checkpoint.pt", weights_only=True) for run in (whole, resumed)]
    assert ends[0]["step"] == ends[1]["step"] == step
    for part in ("model", "averaged", "margin_loss"):
        for name, tensor in ends[0][part].items():
            torch.testing.assert_close(ends[1][part][name], tensor, atol=0, rtol=0, msg=f"{part}.{name}")


@pytest.mark.parametrize("triplet_weight", [0.0, 0.5])  # the shuffled-pass sampler, and the P x K one
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, shared_data, monkeypatch, triplet_weight):
    import facekit.training.train as training

    _crop_folder(tmp_path / "crops", shared_data)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "whole"), width=0.125,
                         blocks=(1, 1, 1), embedding_size=32, batch_size=12, epochs=5, lr=0.05,
                         triplet_weight=triplet_weight, pk_k=3, average_from=0.5, log_every=1, checkpoint_every=4,
                         device="cpu")
    train(config)
    # The same run, killed after its step-4 checkpoint (during step 6) and started again.
    calls = {"n": 0}

    def killed_at_step_6(x):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return augment(x)

    interrupted = TrainConfig(**{**vars(config), "output": str(tmp_path / "interrupted")})
    monkeypatch.setattr(training, "augment", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.undo()
    train(interrupted)
    _assert_runs_end_alike(tmp_path / "whole", tmp_path / "interrupted", 15)
    # Its log holds each step once: the step-5 row written before the kill is not repeated.
    with open(tmp_path / "interrupted" / "log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 16))


def test_the_first_warm_up_step_learns(tmp_path, shared_data, monkeypatch):
    import facekit.training.train as training

    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=5, lr=0.05, warmup_fraction=0.5, log_every=1,
                         device="cpu")
    assert train(config)["steps"] == 10
    # Warm-up step k of 5 runs at (k + 1) / 5 of the rate, where the first ran at 0; the cosine decay after it
    # is as it was.
    cosine = [0.5 * (1 + np.cos(np.pi * rest)) for rest in (0.0, 0.2, 0.4, 0.6, 0.8)]
    with open(tmp_path / "run" / "log.csv") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    np.testing.assert_allclose(rates, [0.05 * f for f in (0.2, 0.4, 0.6, 0.8, 1.0, *cosine)], atol=1e-6)
    # Under a time budget a step's share is known once it has been computed: a first step that takes a sixth of
    # the 1.2 s budget runs at a third of the rate, where it ran at 0. Train's clock moves 0.2 s a step and only
    # then, as in the test below: a real sleep would add the step's own time, which a loaded machine stretches.
    now = [0.0]
    monkeypatch.setattr(training, "time", SimpleNamespace(time=lambda: now[0]))

    def step_of_a_sixth_of_the_budget(x):
        now[0] += 0.2
        return augment(x)

    monkeypatch.setattr(training, "augment", step_of_a_sixth_of_the_budget)
    timed = TrainConfig(**{**vars(config), "output": str(tmp_path / "timed"), "minutes": 0.02})
    assert train(timed)["steps"] == 6
    with open(tmp_path / "timed" / "log.csv") as handle:
        first = float(next(csv.DictReader(handle))["lr"])
    assert first == pytest.approx(0.05 / 3, abs=1e-6)


def test_compiling_is_done_before_the_budget_starts(tmp_path, shared_data, monkeypatch):
    """torch.compile compiles on the first call (96 s for a tiny model on this CPU). Stood in for here by a first
    call that moves train's clock on ten minutes, far past the whole budget: it must neither count against
    --minutes nor take the first step past the warm-up, and the pass that compiles must leave the run as it would
    have been."""
    import facekit.training.train as training

    # The clock moved on, not a sleep of 4 s: on a loaded machine the first step alone took longer than that
    # (5.4 s), and one that takes over the warm-up's 3 s runs at the full rate without compiling at all.
    compiled_for = [0.0]
    monkeypatch.setattr(training, "time", SimpleNamespace(time=lambda: time.time() + compiled_for[0]))

    def slow_to_compile(module):
        calls = []

        def compiled(*args, **kwargs):
            if not calls:
                compiled_for[0] += 600.0
            calls.append(1)
            return module(*args, **kwargs)

        return compiled

    _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "plain"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=8, epochs=2, lr=0.05, warmup_fraction=0.5, log_every=1,
                         device="cpu")
    train(config)
    monkeypatch.setattr(torch, "compile", slow_to_compile)
    train(TrainConfig(**{**vars(config), "output": str(tmp_path / "compiled"), "compile": True}))
    plain, compiled = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
                       for name in ("plain", "compiled"))
    for part in ("model", "margin_loss"):  # batch-norm statistics, dropout's draws and gradients included
        for name, tensor in plain[part].items():
            torch.testing.assert_close(compiled[part][name], tensor, atol=0, rtol=0, msg=f"{part}.{name}")
    # A budget of 6 s, whose first half is warm-up: counted, compiling would take all of it, and the first step
    # the full rate.
    train(TrainConfig(**{**vars(config), "output": str(tmp_path / "timed"), "compile": True, "minutes": 0.1}))
    with open(tmp_path / "timed" / "log.csv") as handle:
        first = next(csv.DictReader(handle))
    elapsed = float(first["elapsed_s"])
    assert elapsed < 600.0
    # Its rate is the first step's own share of the 3 s warm-up (the log rounds to 0.1 s), however slow that step.
    assert 0 < float(first["lr"]) <= config.lr * min(1.0, (elapsed + 0.05) / 3.0) + 1e-6


def test_a_run_that_cannot_be_trained_or_resumed_says_why(tmp_path, shared_data):
    _crop_folder(tmp_path / "crops", shared_data)  # 36 crops of 6 identities
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=12, epochs=1, device="cpu")
    for change, message in (({"batch_size": 64}, "a batch of 64 needs at least that many crops"),
                            ({"triplet_weight": 0.5, "batch_size": 24, "pk_k": 2}, "needs 12 identities .* are 6"),
                            ({"minutes": 0.0}, "--minutes must be above 0"),
                            ({"minutes": -1.0}, "--minutes must be above 0")):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(**{**vars(config), **change, "output": str(tmp_path / "never")}))
    train(config)
    with pytest.raises(ValueError, match="does not fit this run .*--no-resume"):
        train(TrainConfig(**{**vars(config), "embedding_size": 16}))
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        train(config)


def test_the_crop_cache_follows_the_files(tmp_path, shared_data):
    _crop_folder(tmp_path / "crops", shared_data)
    first = load_crops(tmp_path / "crops", tmp_path / "cache")
    assert np.bincount(first.labels).tolist() == [6] * 6 and len(list((tmp_path / "cache").iterdir())) == 1
    assert load_crops(tmp_path / "crops", tmp_path / "cache").key == first.key  # read back, not decoded again
    # One crop moved to another identity: same count of files, other labels.
    people = sorted(p for p in (tmp_path / "crops").iterdir())
    moved = sorted(people[0].iterdir())[0]
    moved.rename(people[-1] / f"moved{moved.suffix}")
    again = load_crops(tmp_path / "crops", tmp_path / "cache")
    assert again.key != first.key and np.bincount(again.labels).tolist() == [5, 6, 6, 6, 6, 7]


def test_processes_writing_the_crop_cache_at_once_each_write_their_own(tmp_path, shared_data):
    """Under torchrun every process decodes the pool and writes the cache: each must rename its own file."""
    _crop_folder(tmp_path / "crops", shared_data, identities=2, per_identity=2)
    (tmp_path / "written").mkdir()
    # Each process, once its file is written, waits until the other has written its own before renaming it.
    writer = tmp_path / "writer.py"
    writer.write_text(textwrap.dedent(f"""\
        import sys
        import time
        from pathlib import Path

        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import numpy as np

        from facekit.training.data import load_crops

        save, written = np.savez, Path({str(tmp_path / "written")!r})


        def save_then_wait(file, **arrays):
            save(file, **arrays)
            (written / sys.argv[1]).touch()
            deadline = time.time() + 60
            while len(list(written.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.05)


        np.savez = save_then_wait
        load_crops({str(tmp_path / "crops")!r}, {str(tmp_path / "cache")!r})
        """))
    processes = [subprocess.Popen([sys.executable, str(writer), name], stderr=subprocess.PIPE, text=True)
                 for name in ("first", "second")]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
    [cache] = (tmp_path / "cache").iterdir()  # no temporary file left behind
    assert np.array_equal(load_crops(tmp_path / "crops", tmp_path / "cache").images,
                          load_crops(tmp_path / "crops").images)


def test_identities_left_short_by_crops_that_do_not_decode_are_dropped(tmp_path, shared_data, capsys):
    people = sorted(_crop_folder(tmp_path / "crops", shared_data))  # 36 crops of 6 identities
    short, one_less = (sorted((tmp_path / "crops" / name).iterdir()) for name in people[:2])
    for crop in short[:4] + one_less[:1]:
        crop.write_bytes(b"not an image")
    # min_per_class 3 is met by the 6 files of each identity, but only 2 of the first identity's decode.
    for cache in (None, tmp_path / "cache", tmp_path / "cache"):  # decoded, decoded and cached, read back
        crops = load_crops(tmp_path / "crops", cache, min_per_class=3)
        assert crops.class_names == people[1:] and (crops.undecodable, crops.classes_dropped) == (5, 1)
        assert np.bincount(crops.labels).tolist() == [5, 6, 6, 6, 6] and len(crops.images) == 29
    assert np.array_equal(crops.images, load_crops(tmp_path / "crops", min_per_class=2).images[2:])  # its 2 first
    # The checks of a batch count what is left: 29 crops of 5 identities (31 crops of 6 decoded).
    config = TrainConfig(data=str(tmp_path / "crops"), output=str(tmp_path / "run"), width=0.125, blocks=(1, 1, 1),
                         embedding_size=32, batch_size=30, epochs=1, min_per_class=3, device="cpu")
    for change, message in (({}, "a batch of 30 needs at least that many crops, and there are 29"),
                            ({"triplet_weight": 0.5, "batch_size": 12, "pk_k": 2}, "needs 6 identities .* are 5")):
        with pytest.raises(ValueError, match=message):
            train(TrainConfig(**{**vars(config), **change}))
    assert "warning: left out 5 crops under" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did not decode"):  # none left at all
        load_crops(tmp_path / "crops", min_per_class=6, limit_classes=2)


def test_the_in_training_check_counts_a_pair_without_its_crop_as_an_error(tmp_path, astronaut_bgr, grace_hopper_bgr):
    """As `facekit eval` counts a pair without a face: an error, and no say in the threshold."""
    from facekit.training.train import VerificationCallback

    rng = np.random.default_rng(0)
    for name, image in (("Ann", astronaut_bgr), ("Bea", grace_hopper_bgr)):
        (tmp_path / name).mkdir()
        for number in (1, 2, 3):
            if (name, number) == ("Ann", 3):
                continue  # lost when the crops were made
            y, x = rng.integers(0, 40, 2)
            crop = cv2.resize(image[y:y + 400, x:x + 400], (112, 112), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(tmp_path / name / f"{name}_{number:04d}.png"), crop)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t2\nAnn\t1\t2\nBea\t1\t2\nAnn\t1\tBea\t1\nAnn\t2\tBea\t2\n"
                     "Ann\t1\t3\nBea\t2\t3\nAnn\t3\tBea\t3\nAnn\t2\tBea\t3\n")
    torch.manual_seed(0)
    result = VerificationCallback(str(pairs), str(tmp_path), torch.device("cpu"))(build_model(width=0.25))
    assert result["missing_crops"] == 2 and result["no_face"] == 2
    assert result["accuracy"] <= 6 / 8


def _triplet_loss_by_definition(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, mining: str) -> float:
    """The triplet loss anchor by anchor, on triplet_loss's distances: the mean over the anchors with a positive."""
    unit = torch.nn.functional.normalize(embeddings)
    distance = (2.0 - 2.0 * unit @ unit.t()).clamp_min(0.0).add(1e-12).sqrt().tolist()
    labels, losses = labels.tolist(), []
    for anchor, (label, row) in enumerate(zip(labels, distance)):
        positives = [row[other] for other, theirs in enumerate(labels) if theirs == label and other != anchor]
        negatives = [row[other] for other, theirs in enumerate(labels) if theirs != label]
        if not positives:
            continue
        farther = [d for d in negatives if d > max(positives)]  # semi-hard: the closest of these, where there is one
        negative = min(farther) if mining == "semi_hard" and farther else min(negatives)
        losses.append(max(max(positives) - negative + margin, 0.0))
    return sum(losses) / len(losses) if losses else 0.0


def test_triplet_loss_is_the_mean_over_anchors_with_a_positive_without_waiting_for_the_device(monkeypatch):
    """Anchors without a positive (an identity once in the batch) are left out of the mean, and a batch of only
    those gives 0 that still backpropagates; and no value is read back on the way, which on a GPU would wait for
    every queued kernel each step (counted on the CPU, as in the training-step test)."""
    generator = torch.Generator().manual_seed(0)
    label_sets = [[0, 0, 1, 2, 2, 3], [0, 1, 2, 3, 4, 5], torch.randint(6, (12,), generator=generator).tolist(),
                  torch.randint(3, (16,), generator=generator).tolist()]
    batches = [(torch.randn(len(labels), 8, generator=generator, requires_grad=True), torch.tensor(labels))
               for labels in label_sets]
    reads = _count_reads(monkeypatch, ("item", "__bool__", "__int__", "__float__", "tolist", "__getitem__", "nonzero"))
    losses = {(index, mining): triplet_loss(embeddings, labels, 0.2, mining)
              for index, (embeddings, labels) in enumerate(batches) for mining in ("batch_hard", "semi_hard")}
    monkeypatch.undo()
    assert reads == []
    for (index, mining), loss in losses.items():
        embeddings, labels = batches[index]
        assert loss.item() == pytest.approx(_triplet_loss_by_definition(embeddings.detach(), labels, 0.2, mining),
                                            rel=1e-5, abs=1e-6), (label_sets[index], mining)
    nobody_twice = losses[1, "batch_hard"]
    assert nobody_twice.item() == 0.0
    nobody_twice.backward()
    assert torch.equal(batches[1][0].grad, torch.zeros(6, 8))


def _tiny_config(tmp_path, shared_data, **changes) -> TrainConfig:
    """16 real crops of 4 identities and a tiny model: 2 steps an epoch."""
    if not (tmp_path / "crops").exists():
        _crop_folder(tmp_path / "crops", shared_data, identities=4, per_identity=4)
    settings = {"data": str(tmp_path / "crops"), "output": str(tmp_path / "run"), "width": 0.125, "blocks": (1, 1, 1),
                "embedding_size": 32, "batch_size": 8, "epochs": 2, "lr": 0.05, "device": "cpu"}
    return TrainConfig(**{**settings, **changes})


def test_distillation_alone_trains_through_batches_without_a_teacher_target(tmp_path, shared_data):
    """A teacher table that has reached crop 2 of 16: of the 4 batches of a shuffled pass, 2 or more have no target,
    and their loss, distillation alone, was a constant with nothing to differentiate."""
    np.save(tmp_path / "teacher.npy", np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32))
    config = _tiny_config(tmp_path, shared_data, arcface_weight=0.0, teacher=str(tmp_path / "teacher.npy"),
                          distill_weight=1.0, batch_size=4, epochs=1, log_every=1)
    assert train(config)["steps"] == 4
    with open(tmp_path / "run" / "log.csv") as handle:
        distill = [float(row["distill"]) for row in csv.DictReader(handle)]
    assert len(distill) == 4 and 0.0 in distill and max(distill) > 0


def _stop_at_step(signum: int, step: int):
    """augment, with the signal sent to this process during the given step."""
    calls = {"n": 0}

    def augment_then_signal(x):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return augment(x)

    return augment_then_signal


def test_ctrl_c_checkpoints_the_step_in_hand_and_the_run_resumes_from_it(tmp_path, shared_data, monkeypatch):
    import signal

    import facekit.training.train as training

    config = _tiny_config(tmp_path, shared_data, output=str(tmp_path / "whole"), epochs=3, average_from=0.5)
    train(config)
    interrupted = TrainConfig(**{**vars(config), "output": str(tmp_path / "interrupted")})
    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(training, "augment", _stop_at_step(signal.SIGINT, 3))
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(interrupted)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert "stopped by Ctrl-C after step 3" in str(stopped.value) and "resumes" in str(stopped.value)
    assert torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)["step"] == 3
    train(interrupted)
    _assert_runs_end_alike(tmp_path / "whole", tmp_path / "interrupted", 6)


def test_sigterm_stops_facekit_train_with_a_checkpoint_and_says_how_to_resume(tmp_path, shared_data, capsys):
    _tiny_config(tmp_path, shared_data)
    command = ["train", str(tmp_path / "crops"), "--output", str(tmp_path / "run"), "--width", "0.125", "--blocks",
               "1,1,1", "--embedding-size", "32", "--batch-size", "8", "--epochs", "3", "--device", "cpu"]
    stopped_by_sigterm = ("import signal, sys; import facekit.training.train as training; "
                          "from test_training import _stop_at_step; from facekit.cli import main; "
                          "training.augment = _stop_at_step(signal.SIGTERM, 3); sys.exit(main(sys.argv[1:]))")
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    completed = subprocess.run([sys.executable, "-c", stopped_by_sigterm, *command], capture_output=True, text=True,
                               env=env, timeout=300)
    assert completed.returncode == 128 + 15, completed.stderr[-2000:]
    last_line = completed.stderr.strip().splitlines()[-1]  # the progress bar is not drawn after it
    assert last_line.startswith("stopped by SIGTERM after step 3, which ") and "Traceback" not in completed.stderr
    assert "the same command again resumes the run" in last_line
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    with open(tmp_path / "run" / "log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [3]  # the step it stopped at is logged
    from facekit.cli import main

    assert main(command) == 0
    assert "at step 3" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 6


_BLOCKED_IN_A_REDUCTION = """
    import sys, time
    from datetime import timedelta
    import torch, torch.distributed as dist
    rank, store = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    if rank == 1:  # a peer that joined the group and is gone from the run
        time.sleep(60)
    else:
        from facekit.training.train import _stop_requests
        with _stop_requests():
            print("reducing", flush=True)
            dist.all_reduce(torch.ones(1))
"""


def test_a_second_signal_ends_a_process_waiting_in_cpp_at_once(tmp_path):
    """A DDP step whose peer is gone waits in C++, where Python runs no signal handler: the first signal waits for
    the step, to checkpoint it; the second was to end the process at once, and ended nothing either."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    peer, waiting = (subprocess.Popen([sys.executable, "-c", textwrap.dedent(_BLOCKED_IN_A_REDUCTION), str(rank),
                                       str(tmp_path / "store")], env=env, stdout=subprocess.PIPE, text=True)
                     for rank in (1, 0))
    try:
        assert waiting.stdout.readline() == "reducing\n"
        time.sleep(0.5)  # into the reduction, which rank 1 never joins
        waiting.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert waiting.poll() is None  # the first asks for a stop after the step in hand
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=5) == 128 + signal.SIGTERM
    finally:
        for process in (peer, waiting):
            process.kill()
            process.wait()


def test_a_resume_reads_its_checkpoint_onto_the_cpu_and_lets_it_go_once_loaded(tmp_path, shared_data, monkeypatch):
    """Under torchrun every process read it onto the training device before taking its own GPU, so all onto GPU 0,
    and kept it for the whole run. The modules and the optimizer copy what they load onto their own device."""
    import weakref

    import facekit.training.train as training

    config = _tiny_config(tmp_path, shared_data, epochs=1)
    train(config)
    read, read_onto, kept = training._read_checkpoint, [], []

    def reading_onto_a_gpu(path, device):  # this machine may have none: where it is read is all that is asked
        read_onto.append(torch.device(device))
        raise ValueError("read")

    with monkeypatch.context() as patched:
        patched.setattr(training, "_training_device", lambda name: torch.device("cuda"))
        patched.setattr(training, "_read_checkpoint", reading_onto_a_gpu)
        with pytest.raises(ValueError, match="^read$"):
            train(TrainConfig(**{**vars(config), "device": "cuda", "epochs": 2}))
    assert read_onto == [torch.device("cpu")]

    def reading(path, device):
        checkpoint = read(path, device)
        kept.append(weakref.ref(checkpoint["model"][next(iter(checkpoint["model"]))]))
        return checkpoint

    def augment_once_loaded(x):
        gc.collect()
        kept.append(kept[0]())
        return augment(x)

    monkeypatch.setattr(training, "_read_checkpoint", reading)
    monkeypatch.setattr(training, "augment", augment_once_loaded)
    assert train(TrainConfig(**{**vars(config), "epochs": 2}))["steps"] == 4
    assert kept[1:] == [None, None]  # the weights read are let go before the first step


def test_a_run_resumes_only_under_the_settings_that_made_its_checkpoint(tmp_path, shared_data):
    config = _tiny_config(tmp_path, shared_data, epochs=1)
    train(config)
    card = (tmp_path / "run" / "model.json").read_bytes()
    release = str(tmp_path / "run" / "model.safetensors")
    for change, differing in (({"lr": 0.01}, "--lr 0.05 there, 0.01 here"),
                              ({"init_from": release}, f"--init-from unset there, {Path(release).resolve()} here"),
                              ({"blocks": (1, 2, 1), "seed": 1}, "--blocks 1,1,1 there, 1,2,1 here; --seed 0 there")):
        with pytest.raises(ValueError, match=r"checkpoint.pt does not fit this run \(settings differ: ") as refused:
            train(TrainConfig(**{**vars(config), **change}))
        assert differing in str(refused.value) and "another --output" in str(refused.value)
    assert (tmp_path / "run" / "model.json").read_bytes() == card  # no card for weights the options did not make
    # What changes neither weights nor batches may differ, and more epochs take a finished run further.
    assert train(TrainConfig(**{**vars(config), "epochs": 2, "log_every": 1, "checkpoint_every": 3}))["steps"] == 4
    # A checkpoint from before the settings were kept: an --init-from cannot be told from its own start, and the
    # way to resume it is to leave --init-from out (saying to give the same, which it has no record of, was no way).
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del checkpoint["settings"]
    torch.save(checkpoint, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="predates the settings a checkpoint keeps") as refused:
        train(TrainConfig(**{**vars(config), "epochs": 2, "init_from": release}))
    assert "leave --init-from out to resume it" in str(refused.value) and "give the same" not in str(refused.value)
    assert train(TrainConfig(**{**vars(config), "epochs": 3}))["steps"] == 6


def test_finished_run_logs_its_last_step_and_its_card_keeps_budget_and_time_apart(tmp_path, shared_data):
    for name, budget in (("epochs", {"epochs": 1.5}), ("minutes", {"minutes": 0.01})):
        config = _tiny_config(tmp_path, shared_data, output=str(tmp_path / name), **budget)
        result = train(config)
        with open(Path(config.output) / "log.csv") as handle:
            assert [int(row["step"]) for row in csv.DictReader(handle)][-1] == result["steps"]  # log_every is 20
        training = json.loads((Path(config.output) / "model.json").read_text())["training"]
        # "minutes" is the time trained (tools/release_model.py adds it up over stages), not the --minutes budget;
        # a --minutes run never ran the default 10 epochs, and its card does not say it did.
        assert training["minutes"] == result["minutes"] and training["budget_minutes"] == budget.get("minutes")
        assert training["epochs"] == budget.get("epochs") and "budgets" not in training


def test_a_card_records_the_budget_that_made_its_weights_and_a_finished_run_keeps_its_own(tmp_path, shared_data,
                                                                                           capsys):
    config = _tiny_config(tmp_path, shared_data, epochs=2)
    assert train(config)["steps"] == 4
    run = tmp_path / "run"
    finished = {name: (run / name).read_bytes() for name in ("model.json", "model.safetensors", "result.json")}
    # Run again with a budget it has already passed: nothing to train, and a card rewritten then recorded a budget
    # that did not make its weights ("epochs": 1 for weights of 2).
    assert train(TrainConfig(**{**vars(config), "epochs": 1}))["steps"] == 4
    assert "had already finished, at step 4 of --epochs 2: nothing was trained" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in finished} == finished
    # One whose card was never written (the process ended just after its last checkpoint) gets it as trained.
    (run / "model.json").unlink()
    train(TrainConfig(**{**vars(config), "epochs": 1}))
    training = json.loads((run / "model.json").read_text())["training"]
    assert (training["epochs"], training["budget_minutes"], training["steps"]) == (2, None, 4)
    # A larger budget takes it further: the card records the budget it ended under, and each one with its first step.
    assert train(TrainConfig(**{**vars(config), "epochs": 3}))["steps"] == 6
    training = json.loads((run / "model.json").read_text())["training"]
    assert (training["epochs"], training["budget_minutes"]) == (3, None)
    assert training["budgets"] == [{"budget_minutes": None, "epochs": 2, "from_step": 0},
                                   {"budget_minutes": None, "epochs": 3, "from_step": 4}]
    # A run stopped before its budget's end cannot be finished under one that ends before its step.
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["budgets"] = [{"budget_minutes": None, "epochs": 5, "from_step": 0}]
    torch.save(checkpoint, run / "checkpoint.pt")
    card = (run / "model.json").read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint.pt is at step 6, already past the end of --epochs 1: give the "
                                         r"budget it was trained under \(--epochs 5\) to finish it"):
        train(TrainConfig(**{**vars(config), "epochs": 1}))
    assert (run / "model.json").read_bytes() == card


def _val_crops(tmp_path: Path, crops: Path, without: str | None = None) -> Path:
    """LFW-style pairs.txt over the training crops, copied to LFW's names; without: one crop left out."""
    people = sorted(path.name for path in crops.iterdir())
    for person in people:
        for number, crop in enumerate(sorted((crops / person).iterdir()), 1):
            name = f"{person}_{number:04d}.png"
            if name != without:
                (tmp_path / "val" / person).mkdir(parents=True, exist_ok=True)
                shutil.copy(crop, tmp_path / "val" / person / name)
    same = [f"{person}\t1\t2" for person in people]
    different = [f"{first}\t1\t{second}\t3" for first, second in zip(people, people[1:] + people[:1])]
    (tmp_path / "pairs.txt").write_text(f"1\t{len(people)}\n" + "\n".join(same + different) + "\n")
    return tmp_path / "pairs.txt"


def test_the_log_has_a_row_at_every_evaluation_and_one_line_ending_after_a_resume(tmp_path, shared_data, capsys):
    config = _tiny_config(tmp_path, shared_data, epochs=1, eval_every=1, val_root=str(tmp_path / "val"))
    config.val_pairs = str(_val_crops(tmp_path, tmp_path / "crops"))
    train(config)
    train(TrainConfig(**{**vars(config), "epochs": 2}))
    log = (tmp_path / "run" / "log.csv").read_bytes()
    # The resumed run's rows end as csv ends them, and so do the rows kept from before (read back as \n).
    assert log.count(b"\r\n") == log.count(b"\n") == 5
    with open(tmp_path / "run" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # log_every is 20: the rows of steps 1 and 3 are there for their evaluations, which were printed alone.
    assert [(row["step"], row["val_accuracy"] != "") for row in rows] == [(str(step), True) for step in range(1, 5)]
    # The bar shows the share of the run, not a rate in thousandths of it.
    err = capsys.readouterr().err
    assert "training: " in err and "‰" not in err


def test_a_validation_folder_of_raw_photos_or_short_of_crops_says_so(tmp_path, shared_data, capsys,
                                                                     astronaut_bgr):
    config = _tiny_config(tmp_path, shared_data, epochs=1, val_root=str(tmp_path / "val"))
    people = sorted(path.name for path in (tmp_path / "crops").iterdir())
    config.val_pairs = str(_val_crops(tmp_path, tmp_path / "crops", without=f"{people[0]}_0002.png"))
    train(config)
    err = capsys.readouterr().err
    # The pair without its crop counts as an error, which lowered the accuracy without a word.
    assert err.count(f"warning: 1 of the 8 pairs of {config.val_pairs} lack a 112x112 crop under") == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["val"]["missing_crops"] == 1
    # LFW's own 250x250 photos: each was left out, and the first evaluation ended the run with "no pair of the 8
    # has a face found in both images".
    for path in (tmp_path / "val").rglob("*.png"):
        cv2.imwrite(str(path.with_suffix(".jpg")), cv2.resize(astronaut_bgr, (250, 250)))
        path.unlink()
    with pytest.raises(ValueError, match=r"--val-root .*val: 11 of the 12 images that .*pairs.txt names are not "
                                         r"aligned 112x112 crops \(such as .*\.jpg, 250x250\): give the folder "
                                         r"tools/align_dataset.py wrote"):
        train(TrainConfig(**{**vars(config), "output": str(tmp_path / "raw")}))


def test_the_weights_get_the_mode_the_umask_gives_as_the_rest_of_a_run_does(tmp_path, shared_data, load_tool):
    """safetensors' save_file made the weights 0600, beside a 0644 card."""
    previous = os.umask(0o027)
    try:
        train(_tiny_config(tmp_path, shared_data, epochs=1))
        assert load_tool("release_model").main([str(tmp_path / "run"), "--output", str(tmp_path / "rel" / "m")]) == 0
    finally:
        os.umask(previous)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {"0o640"}, modes
    # (facekit.export writes the release's ONNX file 0644, whatever the umask.)
    assert {oct((tmp_path / "rel" / name).stat().st_mode & 0o777) for name in ("m.safetensors", "m.json")} == {"0o640"}


def test_evaluating_a_run_before_its_release_does_not_ask_for_an_option_eval_lacks(tmp_path, capsys):
    """Eval chooses its own thresholds; the embedder told it to pass --threshold, an option of verify and identify."""
    from facekit.cli import main
    from facekit.model import ModelConfig
    from facekit.training.train import save_weights

    save_weights(build_model(width=0.125, blocks=(1, 1, 1)).eval(), ModelConfig(width=0.125, blocks=(1, 1, 1)),
                 tmp_path / "run" / "model", {})  # a training run's card: no calibrated threshold yet
    (tmp_path / "pairs.csv").write_text("path1,path2,same\na.png,b.png,1\na.png,c.png,0\n")
    assert main(["eval", "pairs", str(tmp_path / "pairs.csv"), "--weights", str(tmp_path / "run" / "model")]) == 2
    err = capsys.readouterr().err
    assert "calibrated threshold" not in err and "--threshold" not in err


def test_an_evaluation_that_could_not_run_is_refused_at_the_start(tmp_path, shared_data):
    config = _tiny_config(tmp_path, shared_data, val_pairs=str(tmp_path / "pairs.txt"))
    (tmp_path / "pairs.txt").write_text("1\nAnn\t1\t2\nAnn\t1\tBea\t1\n")
    with pytest.raises(ValueError, match="--val-pairs needs --val-root"):
        train(config)
    with pytest.raises(ValueError, match="--val-root needs --val-pairs"):
        train(TrainConfig(**{**vars(config), "val_pairs": None, "val_root": str(tmp_path)}))
    with pytest.raises(ValueError, match=r"--val-root .*lfw-aligned holds no pair of the 2 that .*pairs.txt names \(no "
                                         r".*Ann_0001.png, say\)"):
        train(TrainConfig(**{**vars(config), "val_root": str(tmp_path / "lfw-aligned")}))
    assert not (tmp_path / "run").exists()


def test_options_that_would_do_nothing_or_mislead_are_one_line_errors(tmp_path, capsys):
    from facekit.cli import main

    np.save(tmp_path / "teacher.npy", np.ones((4, 8), np.float32))
    for options, message in (
            (["--triplet-weight", "1", "--batch-size", "3"],
             "--triplet-weight draws batches of identities, 4 crops of each: --batch-size 3 holds none; raise it to 4"),
            (["--teacher", str(tmp_path / "teacher.npy")], "--teacher is read only for --distill-weight or"),
            (["--distill-weight", "1"], "--distill-weight needs --teacher"),
            (["--relation-weight", "1"], "--relation-weight needs --teacher")):
        assert main(["train", str(tmp_path / "crops"), "--output", str(tmp_path / "run"), *options]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], options
    assert not (tmp_path / "run").exists()


def test_one_gpu_index_for_every_process_under_torchrun_is_refused(tmp_path, monkeypatch):
    """DDP gives each process the GPU of its LOCAL_RANK; `--device cuda:0` put every process's work on GPU 0."""
    import torch.distributed as dist

    def init_process_group(backend: str) -> None:
        raise AssertionError("a process group started")

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cuda:0 under torchrun would put every process on one GPU"):
        train(TrainConfig(data=str(tmp_path), output=str(tmp_path / "run"), device="cuda:0"))


def test_the_weight_average_is_kept_on_the_training_device(tmp_path, shared_data, monkeypatch):
    """Kept on the CPU (no device given), the count of averaged steps made each update on a GPU copy between the
    two hundreds of times, each copy waiting for the GPU's queue."""
    from torch.optim.swa_utils import AveragedModel

    devices = []

    class RecordingAveragedModel(AveragedModel):
        def __init__(self, model, device=None, **kwargs):
            devices.append(device)
            super().__init__(model, device, **kwargs)

    monkeypatch.setattr(torch.optim.swa_utils, "AveragedModel", RecordingAveragedModel)
    assert train(_tiny_config(tmp_path, shared_data, epochs=1, average_from=0.5))["steps_averaged"] == 1
    assert devices == [torch.device("cpu")]


def test_a_checkpoint_that_does_not_fit_names_the_first_mismatch(tmp_path, shared_data):
    """load_state_dict's first line names only the model's class ("...for InceptionResNetV2:"); what differs follows."""
    config = _tiny_config(tmp_path, shared_data, epochs=1)
    train(config)
    with pytest.raises(ValueError, match=r"does not fit this run .*: size mismatch for embedding.weight: copying a "
                                         r"param with shape torch.Size\(\[32, 192\]\) .*; --init-from a run of"):
        train(TrainConfig(**{**vars(config), "embedding_size": 16, "output": str(tmp_path / "other"),
                             "init_from": str(tmp_path / "run" / "checkpoint.pt")}))
