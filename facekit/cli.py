"""The `facekit` command line: a thin layer over facekit.recognition, .datastore and .evaluation.

Exit codes: 0 success, every photo done; 1 a photo that could not be read or held no face (the others still
done), nothing to do or remove, a failed check; 2 usage error (bad arguments, missing path, unusable gallery or model).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from facekit.detector_names import DETECTOR_BACKENDS, DETECTOR_HELP
from facekit.errors import (
    ESCAPE_UNENCODABLE,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    OutputError,
    StderrThatNeverFails,
    StdoutThatSaysWhy,
    discard_output,
    escape_control_characters,
    escape_unencodable_output,
    json_record,
)

if TYPE_CHECKING:
    import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# What enroll passes over by its own rule, not a photo that failed: these alone leave its exit code 0.
ENROLL_PASSES_OVER = ("not an image file name", "symlinked folder not followed")


def not_enrolled_as(reason: str) -> str:
    """How enroll says a file it did not enroll: "failed" (its exit code is then 1), or "skipped" by rule."""
    return "skipped" if reason in ENROLL_PASSES_OVER else "failed"


def not_enrolled_line(path: str, reason: str) -> str:
    """'failed PATH: reason'. An image's own error names the file ("not an image: PATH", "cannot read PATH: ..."),
    which the line has just named: it is said once."""
    return f"{not_enrolled_as(reason)} {path}: {reason.replace(f': {path}', '').replace(f' {path}', '')}"


class CliError(Exception):
    """A user-facing failure: printed as one line, exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is an error under its own usage line. argparse hands it up
    to the top-level parser, whose usage (`facekit [-h] [--version] COMMAND ...`) does not show the options meant."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class VersionAction(argparse.Action):
    """--version, which looks the installed version up (importlib.metadata, tens of ms) only when it is given, not
    for every command as argparse's own "version" action, handed the string, would."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"facekit {_version()}")
        parser.exit()


def _add_pipeline_options(parser: argparse.ArgumentParser, enrolls: bool = False) -> None:
    parser.add_argument("--detector", choices=DETECTOR_BACKENDS, default="auto",
                        help=DETECTOR_HELP)
    parser.add_argument("--yunet-model", metavar="PATH", help="YuNet ONNX file (or set FACEKIT_YUNET_MODEL)")
    parser.add_argument("--weights", metavar="PATH", help="embedding model (.safetensors + .json card)")
    parser.add_argument("--min-face", type=int, metavar="PX",
                        help="smallest face width to find, in pixels; photos over 640 px are searched on a copy "
                             "that large, so by default faces under 1/32 of the longer side are missed; "
                             "asking for smaller ones searches a larger copy, which takes longer (default: 20 "
                             "in a copy of at most 640 px)" + ("; enroll takes faces from 32 px, or from PX if smaller"
                                                              if enrolls else ""))
    parser.add_argument("--no-flip", action="store_true", help="skip mirror test-time augmentation (faster)")


def _add_gallery_option(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--gallery", metavar="PATH", default=default,
                        help="gallery folder (default: $FACEKIT_GALLERY or ./galleries/default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facekit", description="Offline face recognition: enroll, identify, verify.")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=SubcommandParser)

    enroll = commands.add_parser("enroll", help="enroll a folder with one sub-folder of photos per person")
    enroll.add_argument("people_dir", metavar="PEOPLE_DIR",
                        help="a folder with a sub-folder of photos per person, named as the person")
    _add_gallery_option(enroll)
    _add_pipeline_options(enroll, enrolls=True)
    enroll.add_argument("--workers", type=int, default=1, help="look-ahead: up to 2 x N images decoded and detected "
                        "in a background thread while others are embedded; 0 for none (default: 1)")
    enroll.add_argument("--json", action="store_true", help="print the summary as JSON")
    enroll.add_argument("--quiet", action="store_true", help="no progress bar")
    enroll.add_argument("--sync", action="store_true", help="then remove the faces enrolled from photos in PEOPLE_DIR "
                        "that have since been deleted from it or changed (by default they stay), and follow photos "
                        "renamed or moved in it: to their new path, and to the person whose folder holds them now")

    identify = commands.add_parser("identify", help="name every face in images or folders")
    identify.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                          help="a photo, or a folder searched for photos, its sub-folders too")
    _add_gallery_option(identify)
    _add_pipeline_options(identify)
    identify.add_argument("--threshold", type=float, help="minimum cosine similarity for a match, -1 to 1: higher "
                                                          "names fewer strangers and misses more of the enrolled "
                                                          "(default: from the model card, calibrated on LFW for "
                                                          "search in a gallery, stricter as the gallery grows)")
    identify.add_argument("--top-k", type=int, default=3,
                          help="candidates searched per face and listed in --json (default: 3); where a face's "
                               "best is given to a more similar face in the photo, it is named as one of its other "
                               "top-k candidates, or unknown")
    output = identify.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object per image per line: {image, faces}, or {image, error} for an image "
                             "that cannot be read")
    output.add_argument("--csv", action="store_true",
                        help="CSV, one row per face: image, face, x, y, w, h, identity (empty if unknown), "
                             "similarity, error; an image without faces or that cannot be read gets one row with "
                             "only image and error")
    identify.add_argument("--annotate", metavar="OUT_DIR",
                          help="write copies with boxes and names drawn, as OUT_DIR/NAME.annotated.jpg (NAME-2... "
                               "where that is taken): a copy replaces only an annotated copy facekit wrote before, "
                               "never a photo being identified, and those in OUT_DIR are identified only if named")

    verify = commands.add_parser("verify", help="are the main faces in two images the same person?")
    verify.add_argument("image_a", metavar="A", help="the first photo")
    verify.add_argument("image_b", metavar="B", help="the second photo")
    _add_pipeline_options(verify)
    verify.add_argument("--threshold", type=float,
                        help="cosine similarity from which two faces are the same person, -1 to 1: higher is "
                             "stricter (default: the model card's, LFW's 10-fold threshold)")
    verify.add_argument("--json", action="store_true",
                        help='one JSON object: {"same", "similarity", "threshold"}, or {"image", "error"} for a '
                             "photo without a face or that cannot be read")

    gallery = commands.add_parser("gallery", help="inspect and maintain a gallery")
    _add_gallery_option(gallery)
    actions = gallery.add_subparsers(dest="action", metavar="ACTION", required=True)
    list_action = actions.add_parser("list", help="one identity per line")
    list_format = list_action.add_mutually_exclusive_group()
    list_format.add_argument("--json", action="store_true", help="one JSON object per identity per line, with its "
                                                                  "number of faces")
    list_format.add_argument("--csv", action="store_true", help="CSV, one row per identity: identity, faces")
    stats = actions.add_parser("stats", help="counts, index type, size on disk")
    stats.add_argument("--json", action="store_true", help="one JSON object of the same counts")
    photos = actions.add_parser("photos", help="the photos enrolled, one per line: identity, created (when "
                                                  "enrolled, UTC), sha256, path")
    photos.add_argument("name", nargs="?", help="only this identity's")
    photo_format = photos.add_mutually_exclusive_group()
    photo_format.add_argument("--json", action="store_true", help="one JSON object per photo per line")
    photo_format.add_argument("--csv", action="store_true", help="CSV, one row per photo")
    remove = actions.add_parser("remove", help="remove an identity and all its faces")
    remove.add_argument("name")
    remove_photo = actions.add_parser(
        "remove-photo", help="remove the faces enrolled from these photos, and no others of their people")
    remove_photo.add_argument("photos", nargs="+", metavar="PHOTO",
                              help="a photo file (matched by content and path), its path as enrolled (relative or "
                                   "absolute), or its sha256")
    rename = actions.add_parser("rename", help="rename an identity")
    rename.add_argument("old", help="the identity's name now")
    rename.add_argument("new", help="its new name")
    rename.add_argument("--merge", action="store_true", help="merge into NEW if it exists")
    check = actions.add_parser("check", help="verify that the index and the database agree; exit 1 if not, or "
                                                     "if opening it had to repair the index")
    check.add_argument("--json", action="store_true", help='one JSON object: {"ok", "faces", "problems"}')
    rebuild = actions.add_parser("rebuild", help="remake the search index from the database")
    rebuild.add_argument("--index", choices=["auto", "flat", "hnsw", "ivf"],
                         help="the index kind to build, and keep from now on (default: the gallery's own)")
    for action in (list_action, stats, photos, remove, remove_photo, rename, check, rebuild):
        # `facekit gallery list --gallery G` as well as `facekit gallery --gallery G list`.
        _add_gallery_option(action, default=argparse.SUPPRESS)

    from facekit import evaluation_cli, export, training_cli

    training_cli.add_parser(commands)
    export.add_parser(commands)
    evaluation_cli.add_parser(commands, _add_pipeline_options)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("facekit")
    except Exception:
        return "unknown"


def require_existing(paths: list[str]) -> None:
    """A path that does not exist (a typo) is a usage error, said before any model loads or work is done."""
    for given in paths:
        if not Path(given).exists():
            raise CliError(f"not found: {given}")


def make_pipeline(args: argparse.Namespace):
    from facekit.recognition import FacePipeline, HeldInterrupts

    try:
        # Ctrl-C is held while the models load: ONNX Runtime's import turns one that lands in it into an ImportError,
        # so facekit took ONNX Runtime for missing, ran on torch (ten times slower) and went on to the end.
        with HeldInterrupts(hold=True):
            return FacePipeline(detector_backend=args.detector, yunet_model=args.yunet_model, weights=args.weights,
                                min_face=args.min_face, flip=not args.no_flip)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc


def open_gallery(args: argparse.Namespace, create: bool, dim: int | None = None):
    from facekit.datastore import DB_NAME, Gallery, default_gallery_path, holds_index_files

    path = default_gallery_path(args.gallery)
    enroll_would_make_one = not path.exists() or (path.is_dir() and not holds_index_files(path))
    if not create and not (path / DB_NAME).exists() and enroll_would_make_one:
        # Often the first command a newcomer runs, before any enroll: say how a gallery is made, or found. Index
        # files without their database, or a file in the way, get Gallery.open's own diagnosis: enroll refuses both.
        raise CliError(f"no gallery at {path} (no {DB_NAME} there): enroll people first with `facekit enroll "
                       "PEOPLE_DIR`, or point --gallery (or $FACEKIT_GALLERY) at one")
    return Gallery.open(path, create=create, dim=dim)


def refuse_a_new_gallery_among_the_photos(args: argparse.Namespace, people: Path) -> None:
    """A gallery made in PEOPLE_DIR or one of its folders (`--gallery people`, a slip) puts the faces' embeddings
    among the photos, which every later enroll lists as files passed over. One there already is left as it is."""
    from facekit.datastore import DB_NAME, default_gallery_path

    gallery = default_gallery_path(args.gallery)
    if (gallery / DB_NAME).exists() or not people.is_dir():
        return
    # As named (a symlink there to a folder elsewhere is listed by every enroll) and as resolved; enroll passes over
    # hidden folders, so a gallery in one is no trouble.
    named = (Path(os.path.abspath(gallery)), Path(os.path.abspath(people)))
    for where, folder in (named, (gallery.resolve(), people.resolve())):
        inside = where.relative_to(folder).parts if where.is_relative_to(folder) else None
        if inside is not None and not any(part.startswith(".") for part in inside):
            raise CliError(f"the gallery {gallery} would be made inside {people}, among the photos: give --gallery "
                           "a folder outside it")


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """'1 face', '2 faces': for the human-readable summaries."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def shows_progress(args: argparse.Namespace) -> bool:
    """A progress bar only for a person watching: not with --quiet or --json, nor into a redirected log, where its
    redrawn frames would bury the summary."""
    return not (args.quiet or args.json) and sys.stderr.isatty()


def check_workers(workers: int) -> None:
    if workers < 0:
        raise CliError("--workers must be 0 or more")


def check_threshold(threshold: float | None) -> None:
    from facekit import check_threshold as check

    check(threshold, "--threshold")  # the API's check, so that both refuse the same values in the same words


def csv_output(header: list[str]):
    """A CSV writer on stdout, its header row written. The csv module's own dialect (\\r\\n line ends) for every
    --csv: one CSV style for the whole CLI."""
    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    return writer


# What makes a spreadsheet take a cell for a formula (OWASP's list for CSV injection; its tab and carriage return
# never start a cell, which csv_text escapes first).
# A ' too: a name that starts with one gets another, so that a reader strips exactly one ' from a cell that
# starts with one, and "'@alex" and "@alex" are two cells, not one.
FORMULA_STARTS = ("=", "+", "-", "@", "'")


def csv_text(cell: str) -> str:
    """A text cell (a name, a path, an error) for --csv, its control characters escaped as text mode escapes them
    (a CSV file shown in a terminal runs an ESC in a file name as text would, and a row stays one line); one that a
    spreadsheet would run as a formula, such as an identity renamed to =HYPERLINK(...), gets a leading ' so that it
    is shown instead (and one that starts with ' another, see FORMULA_STARTS). Never for numbers: a negative
    similarity starts with '-' and must stay a number."""
    text = escape_control_characters(cell)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def csv_error_row(path: str, error: str) -> list[str]:
    """identify --csv's one row for a photo without faces or that cannot be read: only its image and error."""
    return [csv_text(path), *[""] * 7, csv_text(error), ""]


def cmd_enroll(args: argparse.Namespace) -> int:
    from facekit import FacekitWarning
    from facekit.recognition import collect_people, enroll

    check_workers(args.workers)
    people = Path(args.people_dir)
    refuse_a_new_gallery_among_the_photos(args, people)
    with warnings.catch_warnings():  # enroll() collects again below, and says them then
        warnings.simplefilter("ignore", FacekitWarning)
        # A PEOPLE_DIR missing or not a folder: a usage error (2) from here. A folder of the reserved name is kept
        # for enroll(), which refuses it only if the gallery has not renamed its person.
        photos, skipped = collect_people(people, keep_reserved=True)
    if not photos:
        # Why there were none: the one entry passed over, in the error's line, or each of several above it (in
        # every output mode: nothing was enrolled, and one of them alone would hide the others' reasons).
        why = f"; {not_enrolled_line(*skipped[0])}" if len(skipped) == 1 else ""
        if len(skipped) > 1:
            for path, reason in skipped:
                print(escape_control_characters(not_enrolled_line(path, reason)), file=sys.stderr)
            why = f"; the {len(skipped)} files and folders above were passed over"
        raise CliError(f"no photos to enroll in {people} (one sub-folder of photos per person){why}", EXIT_FAILED)
    pipeline = make_pipeline(args)
    with open_gallery(args, create=True, dim=pipeline.embedder.dim) as gallery:
        gallery.require_writable()  # a read-only gallery: said before any photo is read, not after a batch
        report = enroll(pipeline, gallery, people, workers=args.workers, progress=shows_progress(args),
                        sync=args.sync)
        total = len(gallery)
    # A photo unreadable, without a face or under a name the gallery cannot hold, or a folder that could not be
    # listed: the others were still enrolled, and the exit code tells a script that not every photo was.
    failed = [(path, reason) for path, reason in report.skipped if not_enrolled_as(reason) == "failed"]
    summary = {
        "people": len(report.people), "files": report.files, "images": report.images, "enrolled": report.enrolled,
        # "skipped" and "skipped_files" count and list the failed ones too, as they did before "failed" was added.
        "already_enrolled": report.already_enrolled, "skipped": len(report.skipped), "failed": len(failed),
        "gallery_faces": total, "skipped_files": [{"path": p, "reason": r} for p, r in report.skipped],
        "warnings": report.warnings,
    }
    if args.sync:
        summary["removed"] = len(report.removed)
        summary["removed_files"] = [{"path": p, "identity": who} for p, who in report.removed]
        summary["moved_files"] = [{"path": p, "identity": who, "old_path": old, "old_identity": was}
                                  for p, who, old, was in report.moved]
    if args.json:
        for path, reason in failed:  # as text mode says them: stderr names what failed, whatever stdout holds
            print(escape_control_characters(not_enrolled_line(path, reason)), file=sys.stderr)
        print(json_record(summary))
    else:
        for warning in report.warnings:
            say_warning(warning)
        for path, reason in report.skipped:
            print(escape_control_characters(not_enrolled_line(path, reason)), file=sys.stderr)
        print(f"{counted(summary['people'], 'person', 'people')}, {counted(report.files, 'file')}: "
              f"{counted(report.enrolled, 'face')} enrolled, {report.already_enrolled} already enrolled, "
              f"{len(failed)} failed, {len(report.skipped) - len(failed)} skipped; "
              f"gallery now holds {counted(total, 'face')}")
        if args.sync:
            for path, identity in report.removed:
                print(escape_control_characters(f"removed {path} from {identity}"))
            print(escape_control_characters(f"--sync: {counted(len(report.removed), 'face')} removed (photo deleted "
                                            f"from {people} or changed)"))
            for path, identity, _, was in report.moved:
                print(escape_control_characters(f"moved {path} from {was} to {identity}"))
            if report.moved:
                print(f"--sync: {counted(len(report.moved), 'face')} moved (photo moved to another person's folder)")
    nothing_done = report.enrolled == 0 and report.already_enrolled == 0
    return EXIT_FAILED if nothing_done or failed else EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    from facekit import check_top_k
    from facekit.imageio import IMAGE_EXTENSIONS
    from facekit.recognition import identify_image

    check_top_k(args.top_k, "--top-k")
    if args.annotate == "":
        raise CliError('--annotate is empty (an unset variable in "$VAR"?); give the folder for the annotated copies')
    check_threshold(args.threshold)
    require_existing(args.images)
    pipeline = make_pipeline(args)
    gallery = open_gallery(args, create=False, dim=pipeline.embedder.dim)
    threshold = pipeline.identify_threshold_for(len(gallery)) if args.threshold is None else args.threshold
    annotate_dir = annotation_folder(args.annotate) if args.annotate else None
    if annotate_dir:
        from facekit.drawing import draw_results  # PIL's ImageDraw and fonts: only for the copies
    annotated: set[Path] = set()
    # threshold: as in JSON, the one the names were decided by; a face whose similarity reaches it but has no name
    # gave that name to a more similar face in the photo (identify_image).
    # Last, where it was added, so that a reader taking columns by position still finds error at 8.
    writer = csv_output(["image", "face", "x", "y", "w", "h", "identity", "similarity", "error", "threshold"]
                        ) if args.csv else None
    processed = found = failed = not_annotated = 0

    def unreadable(error: OSError) -> None:
        nonlocal found, failed
        found += 1  # a folder that could not be listed may hold images: "no images" would not be true
        failed += 1
        message = f"error: cannot read folder {error.filename}: {error.strerror or error}"
        print(escape_control_characters(message), file=sys.stderr)

    with gallery:
        def passed_over(path: str, reason: str) -> None:  # as enroll lists them, in text mode
            print(escape_control_characters(f"skipped {path}: {reason}"), file=sys.stderr)

        photos, copies_passed_over = photos_to_identify(args.images, annotate_dir, unreadable,
                                                        None if args.json or args.csv else passed_over)
        # Only a copy's name needs them: without --annotate, no photo is looked up again.
        being_identified = {file_identity(photo) for photo in photos} - {None} if annotate_dir else set()
        for item in pipeline.load_many(photos):
            found += 1
            if item.error:
                failed += 1
                print(f"error: {escape_control_characters(item.error)}", file=sys.stderr)
                if args.json:  # a record for every image, so that a reader of the stream knows which ones failed
                    print(json_record({"image": item.path, "error": item.error}), flush=True)
                elif writer:
                    writer.writerow(csv_error_row(item.path, item.error))
                continue
            processed += 1
            located = pipeline.find_faces(item.image, item.faces)
            if located.warning:  # as verify says it: the photo lacks its EXIF orientation
                say_warning(f"{item.path}: {located.warning}")
            faces = identify_image(pipeline, gallery, item.image, threshold, args.top_k, faces=located.faces)
            # Why this photo makes the exit code 1, in its JSON record and CSV rows too, so that a reader of the
            # output knows which photo it was. "0 faces" is still printed below, so that every photo has its record.
            problem = None if faces else "no face found"
            if not faces:
                failed += 1
                print(f"error: {escape_control_characters(f'no face found in {item.path}')}", file=sys.stderr)
            annotated_copy = None
            if annotate_dir:
                out = annotated_path(annotate_dir, item.path, annotated, being_identified)
                annotated.add(out)
                not_written = write_annotated(out, draw_results(item.image, faces))
                if not_written:  # as for an image that cannot be read: said, and the other images still identified
                    problem = problem or f"cannot write {out}: {not_written}"
                    not_annotated += 1
                    print(f"error: {escape_control_characters(f'cannot write {out}: {not_written}')}", file=sys.stderr)
                else:
                    annotated_copy = out
            if args.json:
                # The copy's name is the tool's choice (numbered on a clash): a reader of the stream needs it.
                # The threshold the names were decided by: the default grows with the gallery (Two thresholds).
                print(json_record({"image": item.path, "threshold": round(threshold, 4), "faces": faces,
                                  **({"annotated": str(annotated_copy)} if annotated_copy else {}),
                                  **({"error": problem} if problem else {})}), flush=True)
            elif writer:
                if not faces:
                    writer.writerow(csv_error_row(item.path, problem))
                for number, face in enumerate(faces):
                    # Empty, as JSON's null: "unknown" would read as the name of someone enrolled as unknown.
                    writer.writerow([csv_text(item.path), number, *face["box"], csv_text(face["identity"] or ""),
                                     "" if face["similarity"] is None else face["similarity"],
                                     csv_text(problem or ""), round(threshold, 4)])
            else:
                print(f"{escape_control_characters(item.path)}: {counted(len(faces), 'face')}")
                for face in faces:
                    x, y, w, h = face["box"]
                    best = face["candidates"][0] if face["candidates"] else None
                    name = face["identity"] or (f"unknown (closest: {best['identity']})" if best else "unknown")
                    if not face["identity"] and best and best["similarity"] >= threshold:  # see identify_image
                        name = f"unknown (closest: {best['identity']}, named on another face in this photo)"
                    similarity = "no one enrolled to compare with" if face["similarity"] is None \
                        else f"similarity {face['similarity']:.3f} (threshold {threshold:.3f})"
                    line = f"  at x={x:.0f} y={y:.0f} w={w:.0f} h={h:.0f}: {name}  {similarity}"
                    # The names are the gallery's: one crafted with an ESC or a newline must not steer the terminal.
                    print(escape_control_characters(line))
                if annotated_copy:  # the name is the tool's choice (never the photo's own): say it
                    print(f"  annotated copy: {escape_control_characters(str(annotated_copy))}")
    if processed == 0:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        if found:
            message = "no image could be read"
        elif copies_passed_over:  # "no images" while the folder visibly holds some would read as a bug
            message = (f"no photos to identify in {', '.join(args.images)}, only annotated copies facekit wrote "
                       f"({copies_passed_over}), which are not identified again: name one to identify it")
        else:
            message = f"no images ({extensions}) in {', '.join(args.images)}"
        print(f"error: {escape_control_characters(message)}", file=sys.stderr)
        return EXIT_FAILED
    # A photo unreadable or without a face, or a copy asked for and not written (each said above): the other photos
    # were identified, and the exit code tells a script that not every one was.
    return EXIT_FAILED if failed or not_annotated else EXIT_OK


def annotation_folder(path: str) -> Path:
    """--annotate's folder, made if need be and written to once: one that cannot take the copies (read-only, no
    permission) stops the command with the reason before any photo is read, rather than at every photo."""
    from facekit.imageio import IMAGE_EXTENSIONS

    folder = Path(path)
    if folder.exists() and not folder.is_dir():  # mkdir's own "File exists" does not say what is wrong with it
        raise CliError(f"cannot write annotated copies to {folder}: a file, not a folder")
    if not folder.exists() and folder.suffix.lower() in IMAGE_EXTENSIONS and not path.endswith(("/", os.sep)):
        # `--annotate result.png` made a folder of that name, the copy inside it: a file name was meant (a trailing
        # slash says a folder is).
        raise CliError(f"--annotate takes a folder for the annotated copies, not a file name: {folder} (each "
                       "copy is named after its photo, photo.annotated.jpg)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CliError(f"cannot write annotated copies to {folder}: {exc.strerror or exc}") from exc
    return folder


JPEG_START = b"\xff\xd8"
# A JPEG comment right after the start of the image: what tells the copies facekit wrote from the photos beside them,
# which may have any name (a user's own b.annotated.jpg).
ANNOTATED_COPY_COMMENT = b"facekit annotated copy"
ANNOTATED_COPY_START = (JPEG_START + b"\xff\xfe" + (len(ANNOTATED_COPY_COMMENT) + 2).to_bytes(2, "big")
                        + ANNOTATED_COPY_COMMENT)


def write_annotated(out: Path, image: np.ndarray) -> str | None:
    """Writes the JPEG; why it could not be written, or None. Encoded here and written by Python, which knows the
    reason (a full disk, a folder of that name) where cv2.imwrite only returns False."""
    import cv2

    try:
        encoded, data = cv2.imencode(".jpg", image)
    except cv2.error:
        encoded = False
    if not encoded:
        return f"OpenCV cannot encode a {image.shape[1]}x{image.shape[0]} image as JPEG"
    try:
        out.write_bytes(ANNOTATED_COPY_START + data.tobytes()[len(JPEG_START):])
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def is_annotated_copy(path: Path) -> bool:
    """A file (not a link, nor a pipe that would block the read) that facekit wrote as an annotated copy."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(ANNOTATED_COPY_START)) == ANNOTATED_COPY_START
    except OSError:  # gone, or cannot be read: not a copy facekit may replace
        return False


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """The file under a path, however it is reached (a symlink, a hard link), or None where there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def photos_to_identify(inputs: list[str], annotate_dir: Path | None, unreadable: Callable[[OSError], None],
                       skipped: Callable[[str, str], None] | None = None) -> tuple[list[str], int]:
    """The photos named and those found in the folders named, less the annotated copies in OUT_DIR that an earlier
    run wrote (`identify photos --annotate photos` run again took them for photos and drew on them), and how many
    such copies were passed over."""
    from facekit.recognition import iter_image_paths

    photos, passed_over = [], 0
    for given in inputs:
        found = iter_image_paths([given], unreadable, skipped)
        if annotate_dir and Path(given).is_dir():
            out_dir = annotate_dir.resolve()
            for path in found:
                if Path(path).parent.resolve() == out_dir and is_annotated_copy(Path(path)):
                    passed_over += 1
                else:
                    photos.append(path)
        else:
            photos.extend(found)
    return photos, passed_over


def annotated_path(annotate_dir: Path, image_path: str, written: set[Path],
                   being_identified: set[tuple[int, int]]) -> Path:
    """OUT_DIR/<stem>.annotated.jpg, or <stem>-2..., the first name that this run has not written to and that holds
    nothing, or an annotated copy facekit wrote that is not a photo being identified. Any other file there, a photo
    most of all, is never replaced (a folder is left to fail at writing, and be said)."""
    stem, number = Path(image_path).stem, 1
    out = annotate_dir / f"{stem}.annotated.jpg"
    while out in written or not may_replace(out, being_identified):
        number += 1
        out = annotate_dir / f"{stem}-{number}.annotated.jpg"
    return out


def may_replace(out: Path, being_identified: set[tuple[int, int]]) -> bool:
    """Whether an annotated copy may be written at out: nothing is there, or a copy facekit wrote that is not being
    identified in this run (a folder is let through, to fail at writing with its own reason)."""
    if not os.path.lexists(out) or (out.is_dir() and not out.is_symlink()):
        return True
    return is_annotated_copy(out) and file_identity(out) not in being_identified


def cmd_verify(args: argparse.Namespace) -> int:
    check_threshold(args.threshold)
    require_existing([args.image_a, args.image_b])
    for given in (args.image_a, args.image_b):
        if Path(given).is_dir():  # a usage error (2), as a path that is not there is: not a photo that failed (1)
            raise CliError(f"not a file: {given} (verify compares two photos)")
    pipeline = make_pipeline(args)
    threshold = pipeline.threshold if args.threshold is None else args.threshold
    embeddings = []
    for path in (args.image_a, args.image_b):
        item = pipeline.load(path, expect_face=True)
        problem = item.error or (None if item.faces else "no face found")
        if problem:
            if args.json:  # as identify --json's record for such an image: a reader of stdout learns which failed
                print(json_record({"image": path, "error": problem}))
            raise CliError(item.error or f"no face found in {path}", EXIT_FAILED)
        if item.found.warning:
            say_warning(f"{path}: {item.found.warning}")
        if item.found.likely_faces > 1:  # as enroll says it: a group photo's largest face may not be the one meant
            say_warning(f"{path}: {item.found.likely_faces} faces, compared the largest")
        embeddings.append(pipeline.embed_found(item.image, item.found))
    similarity = float(embeddings[0] @ embeddings[1])
    same = similarity >= threshold
    if args.json:
        print(json_record({"same": same, "similarity": round(similarity, 4), "threshold": threshold}))
    else:
        verdict = "same person" if same else "different people"
        print(f"{verdict}: similarity {similarity:.3f} (threshold {threshold:.3f})")
    return EXIT_OK


def print_photos(photos: list[dict], args: argparse.Namespace) -> None:
    writer = csv_output(["identity", "created", "sha256", "path"]) if args.csv else None
    for photo in photos:
        created = datetime.fromtimestamp(photo["created"], timezone.utc).isoformat(timespec="seconds")
        if args.json:
            print(json_record({**photo, "created": created}))
        elif writer:
            writer.writerow([csv_text(photo["identity"]), created, photo["sha256"], csv_text(photo["path"])])
        else:
            print(escape_control_characters(f"{photo['identity']}  {created}  {photo['sha256'][:12]}  {photo['path']}"))


def photo_keys(photo: str) -> set[str]:
    """What the gallery is asked for one remove-photo argument: the argument, which Gallery.remove_photos matches
    as a sha256 or a path in any spelling, and a file's content, which it cannot know."""
    if not photo:
        raise CliError('a PHOTO argument is empty (an unset variable in "$VAR"?)')
    path = Path(photo)
    if path.is_dir():
        raise CliError(f"a folder, not a photo: {photo}")
    keys = {photo}
    if path.is_file():  # by content too: the photo may have been enrolled from another path
        try:
            keys.add(file_sha256(path))
        except OSError as exc:
            raise CliError(f"cannot read {photo}: {exc.strerror or exc}") from exc
    return keys


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):  # a piece at a time: the argument may be a file of any size
            digest.update(chunk)
    return digest.hexdigest()


def remove_photos(gallery, photos: list[str]) -> int:
    # Every argument is looked at before anything is removed: a folder or an unreadable file stops the command.
    asked: dict[str, set[str]] = {}  # what the gallery is asked for -> the arguments it stands for
    for photo in photos:
        for key in photo_keys(photo):
            asked.setdefault(key, set()).add(photo)
    removed = gallery.remove_photos(list(asked))
    matched: set[str] = set()
    for face in removed:
        print(escape_control_characters(f"removed {face['path']} from {face['identity']}"))
        for key in face["named_by"]:
            matched |= asked[key]
    missing = [photo for photo in dict.fromkeys(photos) if photo not in matched]
    for photo in missing:
        print(escape_control_characters(f"error: not enrolled in {gallery.root}: {photo}"), file=sys.stderr)
    return EXIT_FAILED if missing else EXIT_OK


def stored_name(name: str, faces: dict[str, int]) -> str:
    """name as the gallery holds it: as given where a person is stored so (a database edited by hand may hold a name
    clean_identity refuses, and its person must still be removable), else its clean_identity form."""
    from facekit.datastore import clean_identity

    return name if name in faces else clean_identity(name)


def require_enrolled(gallery, name: str) -> dict[str, int]:
    """The gallery's faces per person, once name is found among them. As remove-photo: a name that is not enrolled is
    a valid request that found nothing (1), while a name no identity can have stays a usage error (2), from
    clean_identity."""
    faces = dict(gallery.identities())
    if stored_name(name, faces) not in faces:
        likely = names_like(name, faces)
        hint = f" (did you mean {' or '.join(likely)}?)" if likely else ""
        raise CliError(f"not enrolled in {gallery.root}: {name}{hint}", EXIT_FAILED)
    return faces


def names_like(name: str, enrolled: Iterable[str], most: int = 3) -> list[str]:
    """The enrolled names a mistyped one probably meant: the same but for case, one holding it as a word of the full
    name ("Obama" for "Barack_Obama", which spelling similarity alone ranks too low), then the closest spellings."""
    import difflib
    import re

    folded = {}  # lower case -> the enrolled spellings
    for enrolled_name in enrolled:
        folded.setdefault(enrolled_name.lower(), []).append(enrolled_name)
    wanted = name.lower()
    word = re.compile(rf"(^|[\W_]){re.escape(wanted)}($|[\W_])") if wanted else None
    holding = [key for key in folded if word and word.search(key)]
    close = difflib.get_close_matches(wanted, list(folded), n=most, cutoff=0.75)
    keys = dict.fromkeys([*([wanted] if wanted in folded else []), *sorted(holding), *close])
    return [spelling for key in keys for spelling in sorted(folded[key])][:most]


def say_photos_left(name: str, enrolled_from: list[str]) -> None:
    """A warning where the photos a removed person was enrolled from are still there: the next enroll of their
    folder adds them again, without a word, to a user who removed them to erase that person."""
    left = [path for path in enrolled_from if Path(path).is_file()]
    if not left:
        return
    folders = sorted({str(Path(path).parent) for path in left})
    shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")
    say_warning(f"{counted(len(left), 'photo')} {name} was enrolled from {'is' if len(left) == 1 else 'are'} still "
                f"in {shown}: the next enroll of that folder adds them again; delete or move them to keep them out")


def rename_identity(gallery, old: str, new: str, merge: bool) -> int:
    """Checked here, before Gallery.rename, so that a name taken is refused in the CLI's terms (--merge), and a merge
    is said as one: two people's faces are now one person's."""
    from facekit.datastore import clean_identity

    faces = require_enrolled(gallery, old)
    old_name, new_name = stored_name(old, faces), clean_identity(new)  # as the gallery holds them
    merging = new_name in faces and new_name != old_name
    if merging and not merge:
        raise CliError(f"identity {new_name!r} already exists: add --merge to merge {old}'s faces into it")
    gallery.rename(old, new, merge=merge)
    if merging:
        print(escape_control_characters(f"merged {old} into {new} ({counted(faces[old_name], 'face')})"))
    else:
        print(escape_control_characters(f"renamed {old} to {new}"))
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    from facekit.datastore import IVF_MIN_VECTORS, GalleryWarning

    # Opening repairs a damaged index from the database; `check` must still report that it found damage.
    with warnings.catch_warnings(record=True) as repairs:
        warnings.simplefilter("always", GalleryWarning)
        gallery = open_gallery(args, create=False)
    repaired = [str(w.message) for w in repairs if issubclass(w.category, GalleryWarning)]
    if args.action != "check":
        for message in repaired:
            say_warning(message)
    from facekit.recognition import HeldInterrupts

    # A Ctrl-C in a write is held until it ends, as in enroll: one cut short committed the removal, said nothing of
    # it, and left the removed faces' vectors in the index files until the next writer's open.
    writes = args.action in ("remove", "remove-photo", "rename", "rebuild")
    with HeldInterrupts(hold=writes), gallery:
        if args.action == "list":
            writer = csv_output(["identity", "faces"]) if args.csv else None
            for name, count in gallery.identities():
                if args.json:
                    print(json_record({"identity": name, "faces": count}))
                elif writer:
                    writer.writerow([csv_text(name), count])
                else:
                    print(escape_control_characters(name))
        elif args.action == "stats":
            stats = gallery.stats()
            if args.json:
                print(json_record(stats))
            else:
                for key, value in stats.items():
                    print(escape_control_characters(f"{key}: {value}"))
        elif args.action == "photos":
            if args.name is not None:
                require_enrolled(gallery, args.name)
            print_photos(gallery.photos(args.name), args)
        elif args.action == "remove":
            require_enrolled(gallery, args.name)
            enrolled_from = [photo["path"] for photo in gallery.photos(args.name)]
            removed = gallery.remove(args.name)
            print(escape_control_characters(f"removed {args.name} ({counted(removed, 'face')})"))
            say_photos_left(args.name, enrolled_from)
        elif args.action == "remove-photo":
            return remove_photos(gallery, args.photos)
        elif args.action == "rename":
            return rename_identity(gallery, args.old, args.new, args.merge)
        elif args.action == "check":
            problems = [f"{message} (repaired on opening)" for message in repaired] + gallery.check()
            if args.json:
                print(json_record({"ok": not problems, "faces": len(gallery), "problems": problems}))
            else:
                for problem in problems:
                    print(f"problem: {escape_control_characters(problem)}")
                if not problems:
                    print(f"ok: {counted(len(gallery), 'face')}, index and database agree")
            if problems:
                return EXIT_FAILED
        elif args.action == "rebuild":
            gallery.rebuild(args.index)
            stats = gallery.stats()
            # IVF needs faces to train its clusters on: a small gallery keeps a flat index until it has them.
            waiting = (f" (ivf once it holds {IVF_MIN_VECTORS} faces)"
                       if stats["index_request"] == "ivf" and stats["index"] != "ivf" else "")
            print(f"rebuilt the {stats['index']} index from {counted(len(gallery), 'face')}{waiting}")
    return EXIT_OK


COMMANDS = {"enroll": cmd_enroll, "identify": cmd_identify, "verify": cmd_verify, "gallery": cmd_gallery}


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        # Built in here: a Ctrl-C while the parser imports what its choices come from is one line too.
        args = build_parser().parse_args(argv)
        quiet_opencv()
        show_warnings_as_lines()
        handler = COMMANDS.get(args.command) or args.handler
        return handler(args)

    return report_errors(run, INTERRUPTED)


def say_warning(text: str) -> None:
    """One `warning:` line on stderr; a file name's or a gallery's name's control characters escaped."""
    print(f"warning: {escape_control_characters(text)}", file=sys.stderr)


def show_warnings_as_lines() -> None:
    """Library chatter stays quiet; what facekit itself warns about (an index repaired on open, a font lacking a
    name's letters) is one `warning:` line, not Python's two with the file and source line."""
    from facekit import FacekitWarning

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("always", category=FacekitWarning)
    warnings.showwarning = lambda message, *_args, **_kwargs: say_warning(str(message))


def quiet_opencv() -> None:
    """No log lines of OpenCV's own ("[ WARN:0@0.4] global loadsave.cpp ...") or of the FFmpeg it reads videos with
    ("[mjpeg @ 0x...] No JPEG data found"): facekit says what failed in one line of its own. OPENCV_LOG_LEVEL and
    OPENCV_FFMPEG_LOGLEVEL, where set, still decide, to debug OpenCV itself."""
    from facekit.imageio import OPENCV_LOG_SILENT, set_opencv_log_level

    if "OPENCV_LOG_LEVEL" not in os.environ:
        set_opencv_log_level(OPENCV_LOG_SILENT)
    # AV_LOG_QUIET. OpenCV reads it as it first opens a video, so it holds where none has been opened yet.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def report_errors(run: Callable[[], int], interrupted: str = "interrupted", results_on_stdout: bool = True) -> int:
    """run(), with bad input, a missing file or a full disk reported as one `error:` line on stderr and exit 2
    (or a CliError's own code), never a traceback. The commands and the scripts in tools/ share it.

    results_on_stdout: a closed stdout is refused before run(); False for a program whose results are files or a
    window (the webcam's), which runs on with print()s going nowhere."""
    import sqlite3

    escape_unencodable_output()
    if sys.stdout is None and results_on_stdout:  # started with it closed (`>&-`): every result would vanish, exit 0
        print("error: standard output is closed; send it to a file, or to /dev/null to discard it", file=sys.stderr)
        return EXIT_USAGE
    stdout, stderr = sys.stdout, sys.stderr
    # A closed stderr (`2>&-`) is None, which the wrapper could not write to: /dev/null stands in.
    no_stderr = (open(os.devnull, "w", encoding="utf-8", errors=ESCAPE_UNENCODABLE)  # as a real stderr; closed below
                 if stderr is None else None)
    sys.stderr = StderrThatNeverFails(stderr or no_stderr)  # type: ignore[assignment]
    if stdout is not None:
        sys.stdout = StdoutThatSaysWhy(stdout)  # type: ignore[assignment]
    try:
        code = run()
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe or a full disk meets output still buffered here, not at exit
        return code
    except (CliError, OutputError) as exc:
        print(f"error: {escape_control_characters(str(exc))}", file=sys.stderr)
        return exc.code if isinstance(exc, CliError) else EXIT_USAGE
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error worth a traceback.
        discard_output(sys.stdout)
        return EXIT_OK
    except Exception as exc:
        if isinstance(exc, _input_errors()):
            message = str(exc)
        elif isinstance(exc, sqlite3.Error):  # a full disk, or a database damaged where opening it did not look
            message = f"gallery database: {exc}"
        elif isinstance(exc, OSError):  # a folder that cannot be created or written (read-only, no permission)
            message = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
        else:
            raise
        print(f"error: {escape_control_characters(message)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        if no_stderr is not None:
            no_stderr.close()


def _input_errors() -> tuple[type[Exception], ...]:
    """The errors that describe bad input. facekit's own classes are taken from their modules only if those were
    imported, since a tool that never opens a gallery may run where faiss is not installed."""
    own = [getattr(sys.modules.get(module), name, None)
           for module, name in (("facekit.datastore", "GalleryError"), ("facekit.imageio", "ImageError"))]
    # ModuleNotFoundError: an optional extra not installed (torch, for the train extra).
    return (FileNotFoundError, NotADirectoryError, ValueError, ModuleNotFoundError, *(c for c in own if c))


if __name__ == "__main__":
    # Run as `python -m facekit.cli`, this file is __main__, and the subcommands' modules import facekit.cli
    # afresh: its main catches the CliError class they raise, this copy's would not.
    from facekit.cli import main as package_main

    sys.exit(package_main())
