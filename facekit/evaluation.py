"""Verification and identification metrics, and the standard benchmark protocols.

The LFW protocol: 10 folds of 600 pairs; each fold's threshold is the one that maximises
accuracy on the other nine, so no fold is scored with a threshold tuned on itself.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Pair:
    path1: str
    path2: str
    same: bool
    fold: int | None = None
    line: int | None = field(default=None, compare=False)  # of a pairs CSV, for naming it in an error


def read_lfw_pairs(pairs_file: str | Path, image_root: str | Path) -> list[Pair]:
    """Parse LFW's pairs.txt ("10\\t300", then per fold 300 same and 300 different pairs).

    A pair's fold is known only from its place in the file, so the header must describe the file: a same pair
    where the header puts a different one, a line that is no pair, a name that is not one folder or a pair
    listed twice is a ValueError naming its line."""
    lines = Path(pairs_file).read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split() if lines else []
    if len(header) not in (1, 2) or not all(_is_number(count) and int(count) > 0 for count in header):
        raise ValueError(f"{pairs_file}: line 1 must give the folds and the pairs of each kind in a fold "
                         f"(\"10<tab>300\"), not {lines[0] if lines else ''!r}")
    folds, per_fold = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    root = Path(image_root)

    def image(name: str, number: str) -> str:
        # A name is one folder: "../x" or "a/b" would lead out of the LFW folder, so the line is no LFW pair.
        if name in ("", ".", "..") or "/" in name or "\\" in name or not _is_number(number):
            raise ValueError(name, number)
        return str(root / name / f"{name}_{int(number):04d}.jpg")

    rows = [(number, [field.strip() for field in (line.split("\t") if "\t" in line else line.split())])
            for number, line in enumerate(lines[1:], 2) if line.strip()]
    if len(rows) != folds * per_fold * 2:
        raise ValueError(f"{pairs_file}: expected {folds * per_fold * 2} pairs, found {len(rows)}")
    numbered: list[tuple[int, Pair]] = []
    for index, (number, row) in enumerate(rows):
        fold, place = divmod(index, 2 * per_fold)
        try:
            if len(row) == 3:
                pair = Pair(image(row[0], row[1]), image(row[0], row[2]), True, fold)
            elif len(row) == 4:
                pair = Pair(image(row[0], row[1]), image(row[2], row[3]), False, fold)
            else:
                raise ValueError(row)
        except ValueError:
            raise ValueError(f"{pairs_file}: malformed pair line {number}: {row!r}") from None
        if pair.same != (place < per_fold):
            raise ValueError(f"{pairs_file}: line {number}: a {'same' if pair.same else 'different'} pair where "
                             f"the header ({folds} folds of {per_fold} same, then {per_fold} different pairs) "
                             f"puts a {'different' if pair.same else 'same'} one")
        numbered.append((number, pair))
    refuse_repeated_pairs(pairs_file, numbered)
    return [pair for _, pair in numbered]


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()  # int() would also take "+1", "1_0" and other scripts' digits


def refuse_repeated_pairs(source: str | Path, numbered: list[tuple[int, Pair]],
                          image: Callable[[str], str] = os.path.abspath, alike: str = "") -> None:
    """A pair listed twice counts twice in every figure, and where its copies lie in different folds one is
    scored with a threshold tuned on the other; an image paired with itself measures nothing (it scores about 1).
    image(path) names an image: by default its absolute path, so "a.jpg" and "/data/a.jpg" under root /data are
    one; `eval pairs` passes the file's content. alike says how two names were found alike."""
    seen: dict[frozenset[str], int] = {}
    for line, pair in numbered:
        key = frozenset(image(path) for path in (pair.path1, pair.path2))
        if len(key) == 1:
            raise ValueError(f"{source}: line {line}: an image paired with itself: {pair.path1}"
                             + (f" and {pair.path2}" if pair.path2 != pair.path1 else "")
                             + (f" ({alike})" if alike else ""))
        if key in seen:
            raise ValueError(f"{source}: line {line} repeats the pair of line {seen[key]} (in either order"
                             f"{'; ' + alike if alike else ''})")
        seen[key] = line


def spread_subset(items: list[T], limit: int | None) -> list[T]:
    """Every k-th item, so a quick run still covers the whole list (for pairs: same and different ones in every
    fold)."""
    if not limit or limit >= len(items):
        return items
    # Evenly spaced indices: a stride of len // limit is 1 for any limit over half the list, which kept only its
    # head (the first 7 of LFW's 10 folds for 4,000 of the 6,000 pairs).
    return [items[index * len(items) // limit] for index in range(limit)]


SAME_VALUES = {"1", "true", "yes", "same"}
DIFFERENT_VALUES = {"0", "false", "no", "different"}


SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _separator(header: str, columns: set[str]) -> str:
    """The separator that splits the header line into the most of the columns, else the one it holds most of (a tie,
    such as a header of one column, is the comma). Named, not counted, first: a quoted column name may hold another
    separator ("notes; a; b")."""
    def columns_named(separator: str) -> int:
        fields = next(csv.reader([header], delimiter=separator, skipinitialspace=True), [])
        return len(columns & {field.strip().lower() for field in fields})

    return max(SEPARATORS, key=lambda separator: (columns_named(separator), header.count(separator)))


def csv_rows(csv_file: str | Path, columns: set[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each row of a CSV that has the columns; a row that is short, too long (a comma
    in an unquoted path) or has an empty one of them is a ValueError naming its line. A BOM is allowed.

    The separator is the comma, semicolon or tab that splits the header into the columns (European Excel writes
    semicolons, other tools tabs), and column names match in any case, with spaces around them ignored."""
    rows = []
    with open(csv_file, newline="", encoding="utf-8-sig") as handle:
        header = next((line for line in handle if line.strip()), None)
        if header is None:
            raise ValueError(f"{csv_file}: empty file: its first line must name the columns "
                             f"({', '.join(sorted(columns))}), then a row per line")
        separator = _separator(header, columns)
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter=separator, skipinitialspace=True)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        missing = columns - set(reader.fieldnames or [])
        if missing and not set(reader.fieldnames or []) & columns:  # a pair or probe where the names should be
            raise ValueError(f"{csv_file}: no header row: its first line must name the columns "
                             f"({', '.join(sorted(columns))}), then a row per line")
        if missing:
            raise ValueError(f"{csv_file}: missing columns: {', '.join(sorted(missing))}")
        for row in reader:
            if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
                continue  # a blank line
            if None in row or None in row.values():
                raise ValueError(f"{csv_file}: line {reader.line_num}: expected {len(reader.fieldnames)} columns "
                                 f"(quote a path that holds a {SEPARATORS[separator]})")
            empty = sorted(name for name in columns if not row[name].strip())
            if empty:
                raise ValueError(f"{csv_file}: line {reader.line_num}: empty {', '.join(empty)}")
            rows.append((reader.line_num, row))
    return rows


def read_pairs_csv(csv_file: str | Path, root: str | Path | None = None) -> list[Pair]:
    """Pairs from a CSV with the columns path1,path2,same[,fold]; relative paths resolve against root.

    same: 1/true/yes/same or 0/false/no/different. fold: an integer on every row, or on none. A path may lead
    out of root ("../x.jpg", or an absolute one): the list is the caller's own, and its images are only read."""
    base = Path(root) if root else Path(csv_file).parent
    numbered: list[tuple[int, Pair]] = []
    for line, row in csv_rows(csv_file, {"path1", "path2", "same"}):
        label = row["same"].strip().lower()
        if label not in SAME_VALUES | DIFFERENT_VALUES:
            raise ValueError(f"{csv_file}: line {line}: 'same' must be 1 or 0 (true/false, yes/no), not {label!r}")
        fold_text = (row.get("fold") or "").strip()
        try:
            fold = int(fold_text) if fold_text else None
        except ValueError:
            raise ValueError(f"{csv_file}: line {line}: fold must be an integer, not {fold_text!r}") from None
        numbered.append((line, Pair(str(base / row["path1"].strip()), str(base / row["path2"].strip()),
                                    label in SAME_VALUES, fold, line)))
    pairs = [pair for _, pair in numbered]
    if not pairs:
        raise ValueError(f"{csv_file}: no pairs")
    if len({pair.fold is None for pair in pairs}) > 1:
        raise ValueError(f"{csv_file}: give a fold on every row or on none")
    refuse_repeated_pairs(csv_file, numbered)
    return pairs


def refuse_one_kind(same: np.ndarray, folds: np.ndarray | None = None, found: str = "") -> None:
    """Verification needs both kinds of pair: of one kind, AUC came out 0 and EER 0 or 1. With folds, so does
    each fold's threshold, tuned on the pairs outside it; of one kind, it lands beyond all of them and the fold
    scores the share of its pairs of the other kind, whatever the model. found: which pairs were counted."""
    if same.all() or not same.any():
        raise ValueError(f"the {len(same)} pairs{found} are all {'same' if same.any() else 'different'}-person "
                         "pairs: verification needs both kinds")
    pairs_in = Counter(folds.tolist() if folds is not None else [])
    if len(pairs_in) < 2:  # no folds: one threshold is tuned on all the pairs
        return
    same_in = Counter(folds[same].tolist())
    for fold, count in pairs_in.items():
        outside_same = int(same.sum()) - same_in[fold]
        if outside_same == 0 or outside_same == len(same) - count:
            raise ValueError(f"the pairs outside fold {fold}{found} are all "
                             f"{'different' if outside_same == 0 else 'same'}-person pairs, so fold {fold}'s "
                             "threshold cannot be tuned on them: give every fold's complement both kinds")


def _accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float, failed: np.ndarray) -> float:
    correct = ((scores >= threshold) == same) & ~failed
    return float(correct.mean())


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold maximising accuracy (a pair is accepted at or above it), placed midway between neighbouring
    scores; every such gap is a candidate, no fixed grid. Where several are as accurate, the lowest wins."""
    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    # Vectorised accuracy over all candidate thresholds via sorted cumulative counts.
    sorted_idx = np.argsort(scores)
    sorted_scores, sorted_same = scores[sorted_idx], same[sorted_idx]
    below = np.searchsorted(sorted_scores, candidates, side="left")
    positives_below = np.concatenate([[0], np.cumsum(sorted_same)])[below]
    negatives_below = below - positives_below
    total_positive = sorted_same.sum()
    correct = negatives_below + (total_positive - positives_below)
    return float(candidates[int(np.argmax(correct))])


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False accept rate, true accept rate and thresholds, from the strictest threshold down. Tied scores are
    one point, so the curve runs straight across a tie, as a threshold cannot split one."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tp = np.cumsum(sorted_same)[distinct]
    fp = np.cumsum(1 - sorted_same)[distinct]
    tar = np.r_[0.0, tp / max(sorted_same.sum(), 1)]
    far = np.r_[0.0, fp / max((1 - sorted_same).sum(), 1)]
    return far, tar, np.r_[np.inf, sorted_scores[distinct]]


def tar_at_far(far: np.ndarray, tar: np.ndarray, target_far: float) -> float:
    """The highest TAR of a threshold whose measured FAR is at most the target. Below one false accept in the
    negatives (1 / 3,000 on LFW) that is the TAR at no false accept at all, whatever the target."""
    allowed = far <= target_far
    return float(tar[allowed].max()) if allowed.any() else 0.0


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """Where the ROC curve, straight between its points, crosses FAR = FRR. The point nearest the crossing was
    off by up to half a step of the curve: 0.42 where 0.5 is right, for 3 same and 2 different pairs."""
    gap = far - (1.0 - tar)  # rises from -1 at the strictest threshold to 1 at the most lenient
    after = int(np.argmax(gap >= 0))
    share = -gap[after - 1] / (gap[after] - gap[after - 1])
    return float(far[after - 1] + share * (far[after] - far[after - 1]))


def verification_metrics(scores: np.ndarray, same: np.ndarray, folds: np.ndarray | None = None,
                         failed: np.ndarray | None = None) -> dict:
    """Accuracy (k-fold when folds are given), AUC, EER, TAR at FAR 1e-3 and 1e-4, and the threshold.

    With folds, each fold is scored at the threshold chosen on the others. `accuracy_std` is the population
    standard deviation (ddof 0) of the folds' accuracies, as FaceNet's and InsightFace's LFW code and most
    papers' "±" compute it; `accuracy_sem` is LFW's own figure (Huang et al. 2007), the standard error of the
    mean: the sample deviation (ddof 1) over the square root of the folds, a third of the std for 10 folds.
    Without folds (or with one), one threshold is chosen on all pairs and scored on them too, an optimistic
    accuracy; both spreads are then 0 and `folds` is 1.

    `failed` marks pairs where a face was not found. They count as errors in the accuracy, whatever their
    label. In the ROC figures they score below every pair, never accepted, as a system that finds no face
    answers: a miss for a same pair, a correct rejection for a different one (ISO/IEC 19795-1 counts a failure
    to acquire so). A TAR at a FAR under 1 / `different_pairs` is the TAR at no false accept (tar_at_far).
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    failed = np.zeros(len(scores), bool) if failed is None else np.asarray(failed, dtype=bool)
    refuse_one_kind(same)
    if failed.all():
        raise ValueError(f"no pair of the {len(scores)} has a face found in both images")
    if not np.isfinite(scores[~failed]).all():
        raise ValueError(f"{int((~np.isfinite(scores[~failed])).sum())} scores are not finite numbers")
    # -1 is below any cosine, but not below every score a caller may pass (a negated distance, say).
    scores = np.where(failed, min(-1.0, scores[~failed].min() - 1.0), scores)
    fold_count = len(np.unique(folds)) if folds is not None else 1
    if fold_count > 1:
        accuracies, thresholds = [], []
        for fold in np.unique(folds):
            if not ((folds != fold) & ~failed).any():
                raise ValueError(f"no pair outside fold {fold} has a face found in both images")
        # Where faces were missed, the pairs left to tune a fold's threshold on may be of one kind.
        refuse_one_kind(same[~failed], folds[~failed], " with a face found in both images" if failed.any() else "")
        for fold in np.unique(folds):
            test = folds == fold
            usable = ~test & ~failed
            threshold = best_threshold(scores[usable], same[usable])
            thresholds.append(threshold)
            accuracies.append(_accuracy_at(scores[test], same[test], threshold, failed[test]))
        accuracy, accuracy_std = float(np.mean(accuracies)), float(np.std(accuracies))
        accuracy_sem = float(np.std(accuracies, ddof=1) / math.sqrt(fold_count))
        threshold = float(np.mean(thresholds))
    else:
        threshold = best_threshold(scores[~failed], same[~failed])
        accuracy, accuracy_std, accuracy_sem = _accuracy_at(scores, same, threshold, failed), 0.0, 0.0
    far, tar, _ = roc_curve(scores, same)
    # The trapezoid rule by hand: np.trapezoid is numpy 2's, and numpy 1.24 is enough for the rest of facekit.
    auc = float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))
    return {
        "accuracy": accuracy,
        "accuracy_std": accuracy_std,
        "accuracy_sem": accuracy_sem,
        "folds": fold_count,
        "auc": auc,
        "eer": equal_error_rate(far, tar),
        "tar_at_far_1e-3": tar_at_far(far, tar, 1e-3),
        "tar_at_far_1e-4": tar_at_far(far, tar, 1e-4),
        "threshold": threshold,
        # What a yes/no at that threshold (verify's default is this figure from LFW) does on these pairs: the share
        # of same pairs it accepts, and of different pairs it takes for the same person.
        "tar_at_threshold": float((scores[same] >= threshold).mean()),  # both kinds are there: refuse_one_kind
        "far_at_threshold": float((scores[~same] >= threshold).mean()),
        "pairs": int(len(scores)),
        "different_pairs": int((~same).sum()),
        "no_face": int(failed.sum()),
    }


OPEN_SET_FARS = {"1e-2": 1e-2, "5e-3": 5e-3, "1e-3": 1e-3, "1e-4": 1e-4}


def impostor_thresholds(embeddings: np.ndarray, identities: list[str], block: int = 1024) -> dict:
    """The similarity that each false accept rate of OPEN_SET_FARS allows, over every different-person pair.

    Every pair of images of two different people counts, not only the listed negative pairs: LFW's
    3,000 leave 3 scores above FAR 1e-3, too few to place a threshold that 1:N search can rely on.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    _, person = np.unique(np.asarray(identities), return_inverse=True)
    impostor_scores = []
    for start in range(0, len(embeddings), block):
        rows = slice(start, start + block)
        scores = embeddings[rows] @ embeddings.T
        row_index = np.arange(start, start + scores.shape[0])[:, None]
        # Each unordered pair once (column after row), and only pairs of different people.
        keep = (np.arange(len(embeddings))[None, :] > row_index) & (person[rows, None] != person[None, :])
        impostor_scores.append(scores[keep])
    impostors = np.concatenate(impostor_scores) if impostor_scores else np.zeros(0, np.float32)
    if len(impostors) == 0:
        return {"threshold_at_far": {}, "impostor_pairs": 0}
    # "higher" picks an observed score, so no more than the stated share of pairs lies above it; rounding up
    # keeps it so, where rounding to the nearest let a few more through (452 of 4.5 M where 449 may, at 1e-4).
    thresholds = {name: math.ceil(float(np.quantile(impostors, 1 - far, method="higher")) * 1e4) / 1e4
                  for name, far in OPEN_SET_FARS.items()}
    return {"threshold_at_far": thresholds, "impostor_pairs": int(len(impostors))}


def plot_roc(scores: np.ndarray, same: np.ndarray, path: str | Path, label: str = "facekit") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far, tar, _ = roc_curve(np.asarray(scores, float), np.asarray(same, bool))
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.semilogx(np.clip(far, 1e-5, 1), tar, label=label)
    axis.set_xlabel("false accept rate")
    axis.set_ylabel("true accept rate")
    axis.set_xlim(1e-4, 1)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_metrics(result: dict) -> list[str]:
    """The human-readable lines of a verification result, as `facekit eval` prints them."""
    if result["folds"] > 1:
        accuracy = (f"{result['accuracy'] * 100:.2f} +- {result['accuracy_std'] * 100:.2f} %  (std over the "
                    f"{result['folds']} folds, ddof 0; standard error of the mean {result['accuracy_sem'] * 100:.2f})")
    else:
        accuracy = f"{result['accuracy'] * 100:.2f} %  (no folds: the threshold was chosen on the pairs it scores)"

    def tar(far: str) -> str:
        line = f"TAR @ FAR={far}  {result[f'tar_at_far_{far}']:.4f}"
        negatives = result["different_pairs"]
        if float(far) < 1 / negatives:  # no threshold can be shown to allow this rate
            line += (f"  (at no false accept: {negatives:,} different pairs cannot measure a FAR under "
                     f"{1 / negatives:.1e})")
        return line

    # A broken file is no face the detector missed, so where it is counted (eval identify) it is named apart.
    unreadable = f"{result['unreadable']} with an unreadable image, " if "unreadable" in result else ""
    lines = [
        f"accuracy        {accuracy}",
        f"AUC             {result['auc']:.4f}",
        f"EER             {result['eer'] * 100:.2f} %",
        tar("1e-3"),
        tar("1e-4"),
        f"threshold       {result['threshold']:.4f}  (accepts {result['tar_at_threshold'] * 100:.1f} % of same pairs, "
        f"{result['far_at_threshold'] * 100:.1f} % of different pairs)",
        f"pairs           {result['pairs']} ({result['no_face']} with a face not found, {unreadable}counted as errors)",
    ]
    if result.get("threshold_at_far"):
        lines.append(f"1:N thresholds  over all {result['impostor_pairs']:,} different-person pairs of the images:")
        lines += [f"  at FAR={far:<6}  {value:.4f}" for far, value in result["threshold_at_far"].items()]
    return lines
