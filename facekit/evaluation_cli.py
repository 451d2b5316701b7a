"""`facekit eval lfw|pairs|identify`: benchmarks through the full pipeline (raw image -> detect -> align -> embed)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from facekit.errors import json_record

if TYPE_CHECKING:
    from facekit.evaluation import Pair

Parsed = TypeVar("Parsed")


def add_parser(commands: argparse._SubParsersAction, add_pipeline_options: Callable) -> None:
    parser = commands.add_parser("eval", help="accuracy on standard benchmarks, through the full pipeline")
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)

    lfw = protocols.add_parser("lfw", help="LFW: the official 6,000 pairs, 10 folds")
    lfw.add_argument("--root", required=True, help="LFW images folder (<Name>/<Name>_NNNN.jpg)")
    lfw.add_argument("--pairs", required=True, help="the official pairs.txt")

    pairs = protocols.add_parser("pairs", help="any pair list: CSV with path1,path2,same[,fold]")
    pairs.add_argument("pairs_csv", metavar="PAIRS.csv",
                       help="a header row path1,path2,same[,fold], then a row per pair: same is 1 or 0, and a fold "
                            "number on every row or on none")
    pairs.add_argument("--root", help="folder the CSV's relative paths start from (default: the CSV's folder)")

    identify = protocols.add_parser("identify", help="rank-1 / rank-5 identification")
    identify.add_argument("--gallery-dir", required=True, help="people folder to enroll (one sub-folder each)")
    identify.add_argument("--probes", required=True,
                          help="CSV with a header row path,identity, then a row per probe photo")
    identify.add_argument("--root", help="folder the probe paths start from (default: the CSV's folder)")

    for sub in (lfw, pairs, identify):
        add_pipeline_options(sub)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        sub.add_argument("--plot", metavar="PNG", help="save the ROC curve")
        sub.add_argument("--workers", type=int, default=1, help="look-ahead, as for enroll (default: 1)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.set_defaults(handler=run)


def embed_paths(pipeline, paths: list[str], workers: int = 1, progress: bool = True, pick: str = "primary",
                unreadable: dict[str, str] | None = None) -> dict[str, np.ndarray | None]:
    """One embedding per image (its primary face), None where the image has no usable face or cannot be read.
    Where `unreadable` is given, each image that cannot be read (a corrupt file) goes into it with the reason."""
    from tqdm import tqdm

    from facekit.recognition import primary_face

    table: dict[str, np.ndarray | None] = {}
    for item in tqdm(pipeline.load_many(paths, workers=workers), total=len(paths), desc="embedding",
                     unit="img", disable=not progress, file=sys.stderr):
        if item.image is None and unreadable is not None:
            unreadable[item.path] = str(item.error)
        face = None
        if item.image is not None:
            face = primary_face(item.faces, item.image.shape) if pick == "primary" else (item.faces or [None])[0]
        table[item.path] = pipeline.embed_faces(item.image, [face])[0] if face is not None else None
    return table


def pair_scores(pairs, table: dict[str, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, same flags, folds and a failed mask; a pair with a missing face scores -1."""
    scores, failed = [], []
    for pair in pairs:
        a, b = table.get(pair.path1), table.get(pair.path2)
        failed.append(a is None or b is None)
        scores.append(-1.0 if failed[-1] else float(a @ b))
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold if p.fold is not None else 0 for p in pairs])
    return np.array(scores), same, folds, np.array(failed)


def run(args: argparse.Namespace) -> int:
    from facekit.cli import CliError, check_workers, make_pipeline, require_existing, shows_progress
    from facekit.errors import escape_control_characters
    from facekit.evaluation import (
        format_metrics,
        impostor_thresholds,
        plot_roc,
        read_lfw_pairs,
        read_pairs_csv,
        refuse_one_kind,
        verification_metrics,
    )

    check_workers(args.workers)
    if args.plot:
        check_plot_path(args.plot)
    # The list is read before the models load: a wrong file is said at once.
    if args.protocol == "lfw":
        require_existing([args.root])
        pairs = read_list_file(args.pairs, "text file", lambda: read_lfw_pairs(args.pairs, args.root))
    elif args.protocol == "pairs":
        pairs = read_list_file(args.pairs_csv, "CSV file", lambda: read_pairs_csv(args.pairs_csv, args.root))
    if args.protocol != "identify":
        has_folds = args.protocol == "lfw" or any(p.fold is not None for p in pairs)
        try:  # pairs of one kind were refused only once every image had been embedded
            refuse_one_kind(np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]) if has_folds else None)
        except ValueError as exc:
            raise CliError(f"{args.pairs if args.protocol == 'lfw' else args.pairs_csv}: {exc}") from None
    from facekit.representation import UncalibratedThresholdWarning

    with warnings.catch_warnings():
        # Eval chooses its own thresholds, and its output is what calibrates a model: the stand-in is not used, and
        # the warning's advice (pass --threshold, an option of verify and identify) does not apply.
        warnings.simplefilter("ignore", UncalibratedThresholdWarning)
        pipeline = make_pipeline(args)
    progress = shows_progress(args)
    extra: dict = {}
    if args.protocol == "identify":
        result, scores, same = identification(pipeline, args, progress)
    else:
        paths = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
        missing = [path for path in paths if not Path(path).is_file()]
        if missing:  # a wrong --root or a misspelt path, not a face the detector missed
            raise CliError(f"{len(missing)} of the {len(paths)} images are missing, such as {missing[0]} "
                           "(relative paths start from --root, or the list's folder)")
        if args.protocol == "pairs":
            pairs = one_spelling_per_image(args.pairs_csv, pairs)
            paths = sorted({p for pair in pairs for p in (pair.path1, pair.path2)})
        unreadable: dict[str, str] = {}
        table = embed_paths(pipeline, paths, args.workers, progress, unreadable=unreadable)
        scores, same, folds, failed = pair_scores(pairs, table)
        result = verification_metrics(scores, same, folds if has_folds else None, failed=failed)
        # As for identify: a pair with a broken file failed, but not because a face was missed.
        unread_pairs = sum(p.path1 in unreadable or p.path2 in unreadable for p in pairs)
        extra = {"images": len(paths), "images_without_face": sum(v is None for v in table.values()) - len(unreadable),
                 "images_unreadable": len(unreadable), "unreadable": unread_pairs,
                 "unreadable_images": unreadable_records(unreadable)}
        if args.protocol == "lfw":
            # LFW names each image's person by its folder, so every different-person pair is known.
            found = [path for path in paths if table[path] is not None]
            extra.update(impostor_thresholds(np.stack([table[path] for path in found]) if found else np.zeros((0, 1)),
                                             [Path(path).parent.name for path in found]))
        result["no_face"] = int(failed.sum()) - unread_pairs
    result.update(extra)
    result["detector"] = type(pipeline.detector).__name__
    result["flip_tta"] = pipeline.flip
    if args.protocol == "identify" and result["gallery_identities"] <= 5:
        # Every probe with a face found ranks 5th or better among 5 people: the figure measures nothing.
        print(f"warning: rank-5 is the share of probes with a face found, by construction: the gallery has only "
              f"{result['gallery_identities']} people (more than 5 make it a measure)", file=sys.stderr)
    if args.json:
        print(json_record(result))
    else:
        for image in result.get("unreadable_images", []):
            print(f"warning: {escape_control_characters(image['reason'])}", file=sys.stderr)
        print("\n".join(format_metrics(result)))
        if "rank1" in result:
            print(f"rank-1          {result['rank1'] * 100:.2f} %")
            print(f"rank-5          {result['rank5'] * 100:.2f} %")
            print(f"probes          {result['probes']} ({result['probes_without_face']} with a face not found, "
                  f"{result['probes_unreadable']} unreadable: a miss at every rank)")
            print(f"gallery         {result['gallery_identities']} people (images left out: "
                  f"{result['gallery_images_without_face']} with a face not found, "
                  f"{result['gallery_images_unreadable']} unreadable)")
    if args.plot:
        # Plotted after the results are printed: a plot that fails (its folder removed meanwhile) costs only the plot.
        sys.stdout.flush()
        try:
            plot_roc(scores, same, args.plot)
        except (OSError, ValueError) as exc:
            raise CliError(f"the results are above, but the ROC plot was not saved to {args.plot}: "
                           f"{getattr(exc, 'strerror', None) or exc}") from exc
    return 0


def one_spelling_per_image(pairs_file: str, pairs: list[Pair]) -> list[Pair]:
    """The pairs with each image under the first name the list gives its content, so that it is embedded and
    counted once. As `eval identify` does for probes, one image under two names (an absolute path and a relative
    one, or a copy) is found by its SHA-256: paired with itself, or in a pair listed twice, it scored about 1 and
    raised the accuracy; such a list is refused."""
    from dataclasses import replace

    from facekit.evaluation import refuse_repeated_pairs

    first_name: dict[str, str] = {}  # content digest (an unreadable file's real path) -> the first path with it
    names: dict[str, str] = {}  # path -> that first path

    def image(path: str) -> str:
        if path not in names:
            names[path] = first_name.setdefault(content_digest(path) or os.path.realpath(path), path)
        return names[path]

    refuse_repeated_pairs(pairs_file, [(pair.line, pair) for pair in pairs], image, "the same file content")
    return [replace(pair, path1=image(pair.path1), path2=image(pair.path2)) for pair in pairs]


def read_list_file(path: str, kind: str, read: Callable[[], Parsed]) -> Parsed:
    """read() of the list at path (kind: "CSV file"), with a folder, a missing file or one that is not UTF-8 text (a
    spreadsheet's own format) said as such, naming it."""
    from facekit.cli import CliError

    if Path(path).is_dir():
        raise CliError(f"{path} is a folder, not a {kind}")
    if not Path(path).is_file():
        raise CliError(f"file not found: {path}")
    try:
        return read()
    except UnicodeDecodeError:
        raise CliError(f"{path} is not a UTF-8 {kind}") from None


def check_plot_path(path: str) -> None:
    """Refuse a --plot that cannot be saved before the evaluation (an hour on LFW), not after it."""
    from facekit.cli import CliError

    try:  # an optional dependency
        import matplotlib  # noqa: F401
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise CliError("--plot needs matplotlib (pip install matplotlib)") from None
    target = Path(path)
    folder = target.parent
    kind = target.suffix.lower().lstrip(".")
    if kind and kind not in FigureCanvasBase.get_supported_filetypes():
        raise CliError(f"--plot {path}: matplotlib cannot write .{kind} files (use .png, .svg or .pdf)")
    if target.is_dir():
        raise CliError(f"--plot {path}: a folder, not a file name")
    if not folder.is_dir():
        raise CliError(f"--plot {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CliError(f"--plot {path}: not writable")


def identification(pipeline, args: argparse.Namespace, progress: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    """Rank-1/rank-5 of probes against a gallery of people, plus verification metrics of probe-identity scores."""
    from facekit.cli import CliError
    from facekit.datastore import DB_NAME, GalleryError, clean_identity
    from facekit.evaluation import csv_rows, verification_metrics
    from facekit.recognition import collect_people

    if (Path(args.gallery_dir) / DB_NAME).exists():  # `--gallery G`, as identify takes it, is read as --gallery-dir
        raise CliError(f"{args.gallery_dir} is an enrolled gallery; --gallery-dir takes the folder of photos to enroll "
                       "(one sub-folder per person), which eval enrolls itself")
    enrolled, _ = collect_people(args.gallery_dir)
    if not enrolled:
        raise CliError(f"no photos in {args.gallery_dir} (one sub-folder of photos per person)")
    people = {identity for identity, _ in enrolled}
    probes_file = Path(args.probes)
    rows = read_list_file(args.probes, "CSV file", lambda: csv_rows(probes_file, {"path", "identity"}))
    root = Path(args.root) if args.root else probes_file.parent
    probes = []
    probe_lines: list[tuple[int, str]] = []  # (line, path), for naming the lines of a probe listed twice
    for line, row in rows:
        try:  # spelled as the gallery spells its people: NFC, no surrounding spaces
            identity = clean_identity(row["identity"])
        except GalleryError as exc:
            raise CliError(f"{probes_file}: line {line}: {exc}") from exc
        # Rank-k is closed-set: a person the gallery lacks (or misspelt) would be a miss at every rank, unannounced.
        if identity not in people:
            raise CliError(f"{probes_file}: line {line}: {identity!r} has no folder in {args.gallery_dir}")
        probes.append((str(root / row["path"].strip()), identity))
        probe_lines.append((line, probes[-1][0]))
    if not probes:
        raise CliError(f"no probes in {probes_file}")
    missing = sorted({path for path, _ in probes if not Path(path).is_file()})
    if missing:  # a wrong --root or a misspelt path, not a face the detector missed
        raise CliError(f"{len(missing)} of the probe images are missing, such as {missing[0]} "
                       "(relative paths start from --root, or the list's folder)")
    refuse_repeated_probes(probes_file, probe_lines, [path for _, path in enrolled])
    gallery_unreadable: dict[str, str] = {}
    gallery_table = embed_paths(pipeline, [p for _, p in enrolled], args.workers, progress, pick="largest",
                                unreadable=gallery_unreadable)
    names = sorted(people)
    centre = {name: [] for name in names}
    for identity, path in enrolled:
        if gallery_table[path] is not None:
            centre[identity].append(gallery_table[path])
    names = [n for n in names if centre[n]]
    if not names:
        raise CliError(f"no face found in any gallery image{unreadable_note(gallery_unreadable)}")
    # As a person without a folder: a miss at every rank, unannounced. All of them named at once, as finding them
    # took embedding the whole gallery.
    faceless: dict[str, int] = {}  # person -> the first probe line of theirs
    for (line, _), (_, identity) in zip(probe_lines, probes):
        if not centre[identity]:
            faceless.setdefault(identity, line)
    if faceless:
        (identity, line), *others = faceless.items()
        own = {path: gallery_unreadable[path] for who, path in enrolled
               if who == identity and path in gallery_unreadable}
        more = ", ".join(f"{who!r} (line {at})" for who, at in others[:5]) + (", ..." if len(others) > 5 else "")
        raise CliError(f"{probes_file}: line {line}: {identity!r} has no photo with a face found in "
                       f"{args.gallery_dir}{unreadable_note(own)}" + (f"; nor has {more}" if others else ""))
    if len(names) < 2:  # every probe would be first among one, and no comparison would be of different people
        raise CliError(f"identification needs 2 or more people with a face found in the gallery, not only {names[0]!r}")
    stacked = [np.stack(centre[n]) for n in names]
    probe_unreadable: dict[str, str] = {}
    probe_table = embed_paths(pipeline, [p for p, _ in probes], args.workers, progress, unreadable=probe_unreadable)
    if not any(probe_table.get(path) is not None for path, _ in probes):
        raise CliError(f"no face found in any probe image of {probes_file}{unreadable_note(probe_unreadable)}")
    ranks, scores, same, failed, unread = [], [], [], [], []
    for path, identity in probes:
        embedding = probe_table.get(path)
        # A probe without a face is a miss at every rank, and its comparisons count as failed ones.
        per_identity = (np.full(len(names), -1.0) if embedding is None else
                        np.array([float((vectors @ embedding).max()) for vectors in stacked]))
        found = embedding is not None and identity in names
        # Identities scoring as high as the right one rank above it: a tie is not counted in the probe's favour.
        ranks.append(int((per_identity >= per_identity[names.index(identity)]).sum()) if found else np.inf)
        scores.extend(per_identity.tolist())
        same.extend([n == identity for n in names])
        failed.extend([embedding is None] * len(names))
        unread.extend([path in probe_unreadable] * len(names))
    ranks_array = np.array(ranks)
    scores_array, same_array = np.array(scores), np.array(same, dtype=bool)
    result = verification_metrics(scores_array, same_array, failed=np.array(failed, dtype=bool))
    # no_face and unreadable count comparisons, like "pairs"; the probes and gallery images have their own counts.
    # An unreadable image is a broken file, not a face the detector missed, so the two are never one figure; an
    # unreadable probe is still a miss at every rank, as leaving it out would raise the rates.
    result["unreadable"] = int(sum(unread))
    result["no_face"] -= result["unreadable"]
    probes_without_face = sum(probe_table.get(p) is None and p not in probe_unreadable for p, _ in probes)
    gallery_without_face = sum(vector is None and path not in gallery_unreadable
                               for path, vector in gallery_table.items())
    result.update({"rank1": float((ranks_array <= 1).mean()), "rank5": float((ranks_array <= 5).mean()),
                   "probes": len(probes), "probes_without_face": probes_without_face,
                   "probes_unreadable": sum(p in probe_unreadable for p, _ in probes),
                   "gallery_identities": len(names), "gallery_images_without_face": gallery_without_face,
                   "gallery_images_unreadable": len(gallery_unreadable),
                   "unreadable_images": unreadable_records({**gallery_unreadable, **probe_unreadable})})
    return result, scores_array, same_array


def content_digest(path: str) -> str | None:
    """The SHA-256 of the image file's bytes, by which one image under two names is found; None for a file that
    cannot be read, reported as unreadable when the images are embedded."""
    from facekit.imageio import ImageError, read_image_file

    try:
        return hashlib.sha256(read_image_file(path)).hexdigest()
    except ImageError:
        return None


def refuse_repeated_probes(probes_file: Path, numbered: list[tuple[int, str]], gallery_paths: list[str]) -> None:
    """A probe listed twice, under one name or two, counts twice in every rate (and under two identities is a
    miss for one whatever the model does), and a probe that is one of the gallery's photos is found by itself;
    as with a pair list, the list is refused, not quietly mended."""
    from facekit.cli import CliError

    in_gallery = {found: path for path in gallery_paths if (found := content_digest(path))}
    seen: dict[str, int] = {}
    for line, path in numbered:
        found = content_digest(path)
        if found in in_gallery:
            raise CliError(f"{probes_file}: line {line} is the image of gallery photo {in_gallery[found]} (the same "
                           "file content), which would find itself; a probe must be a photo the gallery lacks")
        if found in seen:
            raise CliError(f"{probes_file}: line {line} repeats the image of line {seen[found]} (the same file "
                           "content), which would count it twice; list each probe once")
        if found:
            seen[found] = line


def unreadable_records(unreadable: dict[str, str]) -> list[dict[str, str]]:
    """The JSON's `unreadable_images`: each image that could not be read, with the reason."""
    return [{"path": path, "reason": reason} for path, reason in unreadable.items()]


def unreadable_note(unreadable: dict[str, str]) -> str:
    """What an error about images without a face adds where some could not be read at all."""
    return f"; {len(unreadable)} could not be read, such as {next(iter(unreadable.values()))}" if unreadable else ""
