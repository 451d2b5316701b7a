"""Verification metrics and pair-list parsing."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.evaluation import (
    OPEN_SET_FARS,
    Pair,
    best_threshold,
    impostor_thresholds,
    read_lfw_pairs,
    read_pairs_csv,
    roc_curve,
    spread_subset,
    verification_metrics,
)


def test_perfectly_separable_scores():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    metrics = verification_metrics(scores, same)
    assert metrics["accuracy"] == 1.0 and metrics["auc"] == pytest.approx(1.0) and metrics["eer"] == 0.0
    assert 0.2 < metrics["threshold"] < 0.7


def test_tenfold_thresholds_come_from_the_other_folds():
    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(same, rng.normal(0.6, 0.1, same.size), rng.normal(0.2, 0.1, same.size))
    folds = np.repeat(np.arange(10), 60)
    metrics = verification_metrics(scores, same, folds)
    assert 0.95 < metrics["accuracy"] <= 1.0
    assert metrics["accuracy_std"] > 0
    assert metrics["pairs"] == 600


def test_random_scores_are_near_chance():
    rng = np.random.default_rng(1)
    same = rng.random(4000) < 0.5
    metrics = verification_metrics(rng.random(4000), same, np.repeat(np.arange(10), 400))
    assert 0.45 < metrics["accuracy"] < 0.56 and 0.45 < metrics["auc"] < 0.55


def test_failed_pairs_count_as_errors_even_when_different():
    scores = np.array([0.9, 0.8, 0.1, 0.0])
    same = np.array([1, 1, 0, 0], bool)
    failed = np.array([False, False, False, True])
    metrics = verification_metrics(scores, same, failed=failed)
    assert metrics["accuracy"] == 0.75 and metrics["no_face"] == 1


def test_best_threshold_maximises_accuracy():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    same = np.array([0, 0, 1, 1], bool)
    threshold = best_threshold(scores, same)
    assert ((scores >= threshold) == same).mean() == 0.75


def test_tar_at_far():
    scores = np.r_[np.linspace(0.5, 1.0, 100), np.linspace(0.0, 0.6, 1000)]
    same = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    far, tar, _ = roc_curve(scores, same)
    assert far[0] == 0 and tar[-1] == 1 and np.all(np.diff(far) >= 0)
    metrics = verification_metrics(scores, same)
    assert metrics["tar_at_far_1e-3"] == pytest.approx(0.80, abs=0.02)


def test_impostor_thresholds_use_every_different_person_pair_once():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(23, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    identities = [f"person{i % 5}" for i in range(23)]
    # A block smaller than the set, so rows are scored in several pieces.
    result = impostor_thresholds(embeddings, identities, block=4)
    brute = [float(embeddings[i] @ embeddings[j]) for i in range(23) for j in range(i + 1, 23)
             if identities[i] != identities[j]]
    assert result["impostor_pairs"] == len(brute) == 23 * 22 // 2 - sum(n * (n - 1) // 2 for n in (5, 5, 5, 4, 4))
    for name, far in OPEN_SET_FARS.items():
        threshold = result["threshold_at_far"][name]
        assert threshold == pytest.approx(np.quantile(brute, 1 - far, method="higher"), abs=1e-4)
        assert np.mean(np.array(brute) > threshold) <= far  # rounded up: the stated share, not a pair more
    # Stricter rates need higher similarities.
    values = list(result["threshold_at_far"].values())
    assert values == sorted(values)


def test_lfw_pairs_parsing(tmp_path):
    text = "2\t1\nA\t1\t2\nB\t1\tC\t3\nD\t4\t5\nE\t1\tF\t2\n"
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", "/lfw")
    assert [p.same for p in pairs] == [True, False, True, False]
    assert [p.fold for p in pairs] == [0, 0, 1, 1]
    assert pairs[1].path2 == "/lfw/C/C_0003.jpg"


def test_official_lfw_pairs(shared_data):
    pairs = read_lfw_pairs(shared_data / "lfw" / "pairs.txt", shared_data / "lfw" / "images")
    assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000
    assert all(__import__("os").path.exists(p.path1) for p in pairs[:50])


def test_pairs_csv(tmp_path):
    (tmp_path / "pairs.csv").write_text("path1,path2,same,fold\na.jpg,b.jpg,1,0\na.jpg,c.jpg,0,1\n")
    pairs = read_pairs_csv(tmp_path / "pairs.csv")
    assert pairs[0].same and not pairs[1].same and pairs[1].fold == 1
    assert pairs[0].path1 == str(tmp_path / "a.jpg")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_pairs_csv(tmp_path / "bad.csv")
    # Excel's "CSV UTF-8" starts with a BOM; blank lines and spaces after commas are fine; "different" is 0.
    (tmp_path / "excel.csv").write_bytes("\ufeffpath1,path2,same\na.jpg, b.jpg, different\n\n".encode())
    (pair,) = read_pairs_csv(tmp_path / "excel.csv")
    assert (pair.path2, pair.same, pair.fold) == (str(tmp_path / "b.jpg"), False, None)


@pytest.mark.parametrize("body, message", [
    ("a.jpg,b.jpg,maybe\n", "line 2: 'same' must be 1 or 0"),
    ("a.jpg,b.jpg\n", "line 2: expected 3 columns"),
    ("x,y.jpg,b.jpg,1\n", "line 2: expected 3 columns"),  # an unquoted comma in a path
    ("a.jpg,,1\n", "line 2: empty path2"),
])
def test_pairs_csv_rows_that_cannot_be_read_name_their_line(tmp_path, body, message):
    (tmp_path / "pairs.csv").write_text("path1,path2,same\n" + body)
    with pytest.raises(ValueError, match=message):
        read_pairs_csv(tmp_path / "pairs.csv")


def test_pairs_csv_folds_are_integers_on_every_row_or_none(tmp_path):
    (tmp_path / "pairs.csv").write_text("path1,path2,same,fold\na.jpg,b.jpg,1,0\na.jpg,c.jpg,0,\n")
    with pytest.raises(ValueError, match="on every row or on none"):
        read_pairs_csv(tmp_path / "pairs.csv")
    (tmp_path / "pairs.csv").write_text("path1,path2,same,fold\na.jpg,b.jpg,1,first\n")
    with pytest.raises(ValueError, match="line 2: fold must be an integer"):
        read_pairs_csv(tmp_path / "pairs.csv")


def test_metrics_need_one_pair_with_both_faces():
    scores, same = np.array([0.9, 0.1]), np.array([True, False])
    with pytest.raises(ValueError, match="no pair of the 2 has a face"):
        verification_metrics(scores, same, failed=np.array([True, True]))
    with pytest.raises(ValueError, match="outside fold 0"):
        verification_metrics(scores, same, folds=np.array([0, 1]), failed=np.array([False, True]))


def test_pair_subset_keeps_both_kinds_in_every_fold():
    pairs = [Pair(f"{fold}-{i}", "x", i < 300, fold) for fold in range(10) for i in range(600)]
    subset = spread_subset(pairs, 200)
    assert len(subset) == 200
    for fold in range(10):
        kinds = {p.same for p in subset if p.fold == fold}
        assert kinds == {True, False}
    assert spread_subset(pairs, None) is pairs
