"""Verification metrics and pair-list parsing."""

from __future__ import annotations

import numpy as np
import pytest

from facekit.evaluation import (
    OPEN_SET_FARS,
    Pair,
    best_threshold,
    csv_rows,
    format_metrics,
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
    # Each fold scored at the threshold chosen on the other nine, as the plain reimplementation below does.
    accuracies, thresholds = reference_kfold(scores, same, folds, np.zeros(same.size, bool))
    assert metrics["accuracy"] == pytest.approx(np.mean(accuracies))
    assert metrics["threshold"] == pytest.approx(np.mean(thresholds))
    # Choosing each fold's threshold on the fold itself would score higher: the figures above are not that.
    own = [((scores[folds == f] >= best_threshold(scores[folds == f], same[folds == f])) == same[folds == f]).mean()
           for f in range(10)]
    assert np.mean(own) > metrics["accuracy"]


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
    (tmp_path / "bad.csv").write_text("path1,path2\na.jpg,b.jpg\n")
    with pytest.raises(ValueError, match="missing columns: same$"):
        read_pairs_csv(tmp_path / "bad.csv")
    # Without a header the first pair was read as one, and reported as missing every column.
    (tmp_path / "headless.csv").write_text("a.jpg,b.jpg,1\na.jpg,c.jpg,0\n")
    with pytest.raises(ValueError, match=r"headless\.csv: no header row: its first line must name the columns "
                                         r"\(path1, path2, same\), then a row per line$"):
        read_pairs_csv(tmp_path / "headless.csv")
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


# --- the statistics against plain reference code ----------------------------------------------------------


def reference_kfold(scores, same, folds, failed):
    """Each fold's accuracy at the threshold most accurate on the others (the lowest of equally accurate ones),
    the candidates being every midpoint between distinct training scores and one beyond each end."""
    accuracies, thresholds = [], []
    for fold in sorted(set(folds.tolist())):
        train = (folds != fold) & ~failed
        values = sorted(set(scores[train].tolist()))
        candidates = [values[0] - 1e-6] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-6]
        correct = [int(((scores[train] >= t) == same[train]).sum()) for t in candidates]
        threshold = candidates[correct.index(max(correct))]
        test = folds == fold
        accuracies.append(float((((scores[test] >= threshold) == same[test]) & ~failed[test]).mean()))
        thresholds.append(threshold)
    return accuracies, thresholds


def reference_auc(scores, same):
    """Mann-Whitney: the share of (same, different) pairs ordered rightly, a tie counting half."""
    positive, negative = scores[same][:, None], scores[~same][None, :]
    return float(((positive > negative) + 0.5 * (positive == negative)).mean())


def reference_eer(scores, same):
    """Bisection for FAR = FRR on the ROC curve drawn straight between the rates at each distinct threshold."""
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    far = np.array([(scores[~same] >= t).mean() for t in thresholds])
    tar = np.array([(scores[same] >= t).mean() for t in thresholds])
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        # FRR at FAR = middle; on a vertical stretch of the curve np.interp takes either end, and the bisection
        # closes on that FAR all the same.
        if 1 - np.interp(middle, far, tar) > middle:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def tied_scores(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(size) < 0.5
    # Rounded to a coarse grid, so many scores tie, across the classes too.
    return np.round(np.where(same, rng.normal(0.5, 0.2, size), rng.normal(0.2, 0.2, size)), 1), same


@pytest.mark.parametrize("seed", range(4))
def test_kfold_accuracy_matches_a_plain_reimplementation(seed):
    scores, same = tied_scores(seed, 300)
    folds = np.random.default_rng(seed).choice([3, 7, 11, 42], 300)  # fold labels need not be 1..10
    failed = np.random.default_rng(seed + 100).random(300) < 0.05
    metrics = verification_metrics(scores, same, folds, failed=failed)
    accuracies, thresholds = reference_kfold(scores, same, folds, failed)
    mean = sum(accuracies) / 4
    assert metrics["accuracy"] == pytest.approx(mean)
    assert metrics["threshold"] == pytest.approx(sum(thresholds) / 4)
    # accuracy_std: the population deviation (FaceNet's and InsightFace's np.std); accuracy_sem: LFW's standard
    # error of the mean, the sample deviation over the square root of the fold count.
    squares = sum((a - mean) ** 2 for a in accuracies)
    assert metrics["accuracy_std"] == pytest.approx((squares / 4) ** 0.5)
    assert metrics["accuracy_sem"] == pytest.approx((squares / 3) ** 0.5 / 4 ** 0.5)
    assert metrics["folds"] == 4


@pytest.mark.parametrize("seed", range(4))
def test_roc_figures_match_plain_reimplementations_with_ties(seed):
    scores, same = tied_scores(seed, 200)
    metrics = verification_metrics(scores, same)
    assert metrics["auc"] == pytest.approx(reference_auc(scores, same))
    assert metrics["eer"] == pytest.approx(reference_eer(scores, same), abs=1e-9)


def test_eer_is_where_the_curve_crosses_not_its_nearest_point():
    # 3 same and 2 different pairs: the curve meets FAR = FRR on its vertical stretch at FAR 0.5; the nearest
    # point's mean gave 0.42.
    scores, same = np.array([0.9, 0.8, 0.7, 0.3, 0.2]), np.array([1, 0, 1, 1, 0], bool)
    assert verification_metrics(scores, same)["eer"] == pytest.approx(0.5) == reference_eer(scores, same)
    scores, same = np.array([0.9, 0.6, 0.5, 0.1]), np.array([1, 0, 1, 0], bool)
    assert verification_metrics(scores, same)["eer"] == pytest.approx(0.5)


def test_auc_without_numpy_2(monkeypatch):
    # np.trapezoid is numpy 2's; pyproject allows numpy 1.24.
    monkeypatch.delattr(np, "trapezoid", raising=False)
    scores, same = tied_scores(9, 100)
    assert verification_metrics(scores, same)["auc"] == pytest.approx(reference_auc(scores, same))


def test_tar_at_a_far_finer_than_the_negatives_can_measure_is_labelled_so():
    # LFW's shape: 3,000 different pairs resolve a FAR of 1/3,000 = 3.3e-4 at best, so "TAR at FAR 1e-4" is the
    # TAR at no false accept at all, and is printed as such.
    rng = np.random.default_rng(5)
    same = np.r_[np.ones(3000, bool), np.zeros(3000, bool)]
    scores = np.where(same, rng.normal(0.7, 0.1, 6000), rng.normal(0.1, 0.1, 6000))
    metrics = verification_metrics(scores, same, np.tile(np.repeat(np.arange(10), 300), 2))
    negatives = np.sort(scores[~same])
    assert metrics["different_pairs"] == 3000
    assert metrics["tar_at_far_1e-4"] == (scores[same] > negatives[-1]).mean()  # no false accept
    assert metrics["tar_at_far_1e-3"] == (scores[same] > negatives[-4]).mean()  # 3 false accepts of 3,000
    lines = format_metrics(metrics)
    assert "at no false accept" in next(line for line in lines if line.startswith("TAR @ FAR=1e-4"))
    assert "false accept" not in next(line for line in lines if line.startswith("TAR @ FAR=1e-3"))
    assert "std over the 10 folds, ddof 0; standard error of the mean" in lines[0]


def test_metrics_refuse_pairs_of_one_kind():
    # AUC came out 0 and EER 0 or 1: figures that say nothing about a list of one kind.
    scores = np.array([0.9, 0.8, 0.7])
    for label in (True, False):
        with pytest.raises(ValueError, match="all (same|different)-person pairs"):
            verification_metrics(scores, np.full(3, label))


def test_failed_pairs_rank_below_every_score_not_only_below_minus_one():
    # Negated distances as scores: a different pair without a face, scored -1, was the first accepted.
    scores = np.array([-0.5, -0.8, -2.0, -3.0, 0.0])
    same = np.array([1, 1, 0, 0, 0], bool)
    failed = np.array([False, False, False, False, True])
    metrics = verification_metrics(scores, same, failed=failed)
    assert metrics["tar_at_far_1e-3"] == 1.0 and metrics["auc"] == 1.0 and metrics["eer"] == 0.0


def test_metrics_refuse_scores_that_are_not_numbers():
    with pytest.raises(ValueError, match="1 scores are not finite"):
        verification_metrics(np.array([0.9, np.nan, 0.1, 0.2]), np.array([1, 1, 0, 0], bool))


def test_without_folds_the_accuracy_says_its_threshold_saw_its_pairs():
    metrics = verification_metrics(np.array([0.9, 0.1]), np.array([True, False]))
    assert metrics["folds"] == 1 and metrics["accuracy_std"] == 0.0
    assert "no folds" in format_metrics(metrics)[0]


# --- parsing ---------------------------------------------------------------------------------------------


def lfw_file(tmp_path, header: str, rows: list[str], prefix: bytes = b"", newline: str = "\n"):
    path = tmp_path / "pairs.txt"
    path.write_bytes(prefix + newline.join([header, *rows, ""]).encode())
    return path


TWO_FOLDS = ["A\t1\t2", "B\t1\tC\t3", "D\t4\t5", "E\t1\tF\t2"]


def test_lfw_pairs_with_a_bom_and_windows_line_ends(tmp_path):
    pairs = read_lfw_pairs(lfw_file(tmp_path, "2\t1", TWO_FOLDS, "\ufeff".encode(), "\r\n"), "/lfw")
    assert [p.fold for p in pairs] == [0, 0, 1, 1] and pairs[1].path2 == "/lfw/C/C_0003.jpg"


def test_lfw_header_must_describe_the_file(tmp_path):
    # 2 folds of 2 same and 2 different pairs under "4 folds of 1", "1 fold of 4" or "4": each was the right
    # count, and the pairs were put in folds of one kind, or in one fold, without a word.
    rows = ["A\t1\t2", "G\t1\t2", "B\t1\tC\t3", "B\t1\tC\t4", "D\t4\t5", "H\t1\t2", "E\t1\tF\t2", "E\t1\tF\t3"]
    assert [p.fold for p in read_lfw_pairs(lfw_file(tmp_path, "2\t2", rows), "/lfw")] == [0] * 4 + [1] * 4
    for header, line in (("4\t1", 3), ("1\t4", 4), ("4", 4)):
        with pytest.raises(ValueError, match=f"line {line}: a (same|different) pair where the header"):
            read_lfw_pairs(lfw_file(tmp_path, header, rows), "/lfw")
    with pytest.raises(ValueError, match="expected 12 pairs, found 8"):
        read_lfw_pairs(lfw_file(tmp_path, "3\t2", rows), "/lfw")
    for header in ("ten\t300", "10\t0", "", "1\t2\t3"):
        with pytest.raises(ValueError, match="line 1 must give the folds"):
            read_lfw_pairs(lfw_file(tmp_path, header, rows), "/lfw")


@pytest.mark.parametrize("line, message", [
    ("D\t4", "malformed pair line 5"),  # counted in the file's lines, blank ones too
    ("../../etc\t4\t5", "malformed pair line 5"),  # a name is one folder of the LFW folder
    ("D\t4\tC/x\t5", "malformed pair line 5"),
    ("D\t1_0\t5", "malformed pair line 5"),  # int() takes "1_0" as 10
    ("A\t2\t1", "line 5 repeats the pair of line 2"),
    ("D\t4\t4", "line 5: an image paired with itself"),
])
def test_lfw_lines_that_are_no_pair(tmp_path, line, message):
    rows = [TWO_FOLDS[0], "", TWO_FOLDS[1], line, TWO_FOLDS[3]]
    with pytest.raises(ValueError, match=message):
        read_lfw_pairs(lfw_file(tmp_path, "2\t1", rows), "/lfw")


def test_pair_subset_spreads_over_the_whole_list_above_half_its_length():
    # A stride of len // limit is 1 over half the list: 4,000 of LFW's 6,000 pairs were its first 7 folds.
    pairs = [Pair(f"{fold}-{i}", "x", i < 300, fold) for fold in range(10) for i in range(600)]
    subset = spread_subset(pairs, 4000)
    assert len(subset) == len(set(subset)) == 4000
    for fold in range(10):
        assert 390 <= sum(p.fold == fold for p in subset) <= 410


@pytest.mark.parametrize("value, same", [("yes", True), ("No", False), ("True", True), ("FALSE", False),
                                         ("1", True), ("0", False), (" same ", True), ("different", False)])
def test_pairs_csv_same_values(tmp_path, value, same):
    (tmp_path / "pairs.csv").write_text(f"path1,path2,same\na.jpg,b.jpg,{value}\n")
    assert read_pairs_csv(tmp_path / "pairs.csv")[0].same is same


def test_pairs_csv_from_windows_with_any_fold_numbers(tmp_path):
    (tmp_path / "pairs.csv").write_bytes("\ufeffpath1,path2,same,fold\r\na.jpg,b.jpg,1,7\r\na.jpg,c.jpg,0,-3\r\n"
                                         .encode())
    pairs = read_pairs_csv(tmp_path / "pairs.csv", "/root")
    assert [(p.path2, p.same, p.fold) for p in pairs] == [("/root/b.jpg", True, 7), ("/root/c.jpg", False, -3)]


@pytest.mark.parametrize("body, message", [
    ("", "no pairs"),
    ("a.jpg,b.jpg,1\nb.jpg,./a.jpg,0\n", "line 3 repeats the pair of line 2"),
    ("a.jpg,b.jpg,1\nx/../a.jpg,b.jpg,1\n", "line 3 repeats the pair of line 2"),
    ("a.jpg,a.jpg,1\n", "line 2: an image paired with itself"),
])
def test_pairs_csv_lists_that_measure_nothing_or_count_twice(tmp_path, body, message):
    (tmp_path / "pairs.csv").write_text("path1,path2,same\n" + body)
    with pytest.raises(ValueError, match=message):
        read_pairs_csv(tmp_path / "pairs.csv")


@pytest.mark.parametrize("text", [
    '\ufeff"path1";"path2";"same";"fold"\r\n"a.jpg";"x,1.jpg";"1";"0"\r\n"a.jpg";"c.jpg";"0";"1"\r\n',  # European Excel
    "path1\tpath2\tsame\tfold\na.jpg\tx,1.jpg\t1\t0\na.jpg\tc.jpg\t0\t1\n",  # tab-separated
    "Path1,Path2,Same,Fold\na.jpg,\"x,1.jpg\",1,0\na.jpg,c.jpg,0,1\n",  # capitalised
    "path1 , path2,same ,fold\na.jpg,\"x,1.jpg\",1,0\na.jpg,c.jpg,0,1\n",  # spaces around the names
    # Another separator in a quoted column's name: counted, the semicolons won ("no header row").
    'path1,path2,same,fold,"notes; a; b; c; d; e"\na.jpg,"x,1.jpg",1,0,n\na.jpg,c.jpg,0,1,n\n',
])
def test_pairs_csv_headers_as_spreadsheets_write_them(tmp_path, text):
    # Each header was "no header row: its first line must name the columns".
    (tmp_path / "pairs.csv").write_bytes(text.encode())
    pairs = read_pairs_csv(tmp_path / "pairs.csv", "/root")
    assert [(p.path2, p.same, p.fold) for p in pairs] == [("/root/x,1.jpg", True, 0), ("/root/c.jpg", False, 1)]


def test_probe_csv_header_in_any_case_and_an_empty_file(tmp_path):
    (tmp_path / "probes.csv").write_text("Path;Identity\nx,1.jpg;ada\n")
    assert csv_rows(tmp_path / "probes.csv", {"path", "identity"}) == [(2, {"path": "x,1.jpg", "identity": "ada"})]
    for text in ("", "\ufeff\r\n\n"):
        (tmp_path / "empty.csv").write_text(text)
        with pytest.raises(ValueError, match=r"empty\.csv: empty file: its first line must name the columns"):
            csv_rows(tmp_path / "empty.csv", {"path", "identity"})


def test_pairs_csv_one_image_as_a_relative_and_an_absolute_path(tmp_path, monkeypatch):
    # With a relative --root, "a.jpg" and its absolute path were two images: a pair of it with itself scored 1.0.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.csv").write_text(f"path1,path2,same\na.jpg,{tmp_path / 'a.jpg'},1\n")
    with pytest.raises(ValueError, match="line 2: an image paired with itself: a.jpg and /"):
        read_pairs_csv("pairs.csv", ".")
    (tmp_path / "pairs.csv").write_text(f"path1,path2,same\na.jpg,b.jpg,1\n{tmp_path / 'b.jpg'},a.jpg,0\n")
    with pytest.raises(ValueError, match=r"line 3 repeats the pair of line 2 \(in either order\)$"):
        read_pairs_csv("pairs.csv", ".")


def test_metrics_refuse_a_fold_tuned_on_pairs_of_one_kind():
    # Fold 0's threshold came from fold 1's different pairs only: above them all, so fold 0's same pairs were all
    # rejected and its accuracy was the share of its different pairs, whatever the scores.
    scores, same = np.array([0.9, 0.8, 0.7, 0.2, 0.1]), np.array([True, True, False, False, False])
    with pytest.raises(ValueError, match="the pairs outside fold 0 are all different-person pairs, so fold 0's "):
        verification_metrics(scores, same, folds=np.array([0, 0, 0, 1, 1]))
    # Where faces were missed, the pairs left may be of one kind: with the first pair failed, those outside fold 1
    # are two different pairs.
    folds = np.array([0, 1, 0, 1, 0])
    assert verification_metrics(scores, same, folds=folds)["folds"] == 2
    with pytest.raises(ValueError, match="the pairs outside fold 1 with a face found in both images are all "
                                         "different-person pairs"):
        verification_metrics(scores, same, folds=folds, failed=np.array([True, False, False, False, False]))
    # One fold number on every row is no folds.
    assert verification_metrics(scores, same, folds=np.zeros(5, int))["folds"] == 1


def test_the_rates_a_yes_no_at_the_threshold_gives_are_reported():
    """verify answers at the LFW threshold: how many strangers it calls the same person was in no output."""
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.75, 0.3, 0.2, 0.1, 0.0])
    failed = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1], bool)
    metrics = verification_metrics(scores, same, failed=failed)
    threshold = metrics["threshold"]
    assert 0.3 < threshold <= 0.7  # 0.7, 0.8, 0.9 of the same pairs and 0.75 of the different ones pass
    assert metrics["tar_at_threshold"] == 3 / 4 and metrics["far_at_threshold"] == 1 / 5
    assert "accepts 75.0 % of same pairs, 20.0 % of different pairs" in "\n".join(format_metrics(metrics))
