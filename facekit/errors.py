"""One line of text, as facekit's errors and the CLI show it: an exception's message, and a file name with its control
characters and its bytes that are not UTF-8 escaped."""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
from typing import TextIO

# What the CLI says for a Ctrl-C, and its exit status (128 + SIGINT, as a shell gives it). Here, not in facekit.cli,
# so that facekit.__main__ can say it while facekit.cli is still importing.
INTERRUPTED = "interrupted; everything committed before this point is kept"
EXIT_INTERRUPTED = 130

# Characters that end a line or steer a terminal (a newline or an ESC in a file name), Unicode's line breaks, the
# bidirectional overrides and isolates (U+202E shows the rest of a line reversed: "gpj.exe") and the invisible
# spaces (a zero-width space makes "Ali\u200bce" look like "Alice"). The joiners (U+200C, U+200D) and the
# directional marks (U+200E, U+200F, U+061C) stay: names in Persian, Hindi, Hebrew or Arabic use them.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b\u2028-\u202e\u2060\u2066-\u2069\ufeff]")


def one_line(error: BaseException) -> str:
    """The error's text with its line breaks and runs of spaces collapsed; its class name if it has none."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line only, for errors that list details below a summary (torch's load_state_dict mismatches)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def escape_control_characters(text: str) -> str:
    """text for a human's line of output: a control character in it (a newline in a file name, say) as an escape
    (\\n), so that an error stays one line and a record cannot be taken for two. JSON and CSV escape their own."""
    return CONTROL_CHARACTERS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def printable_path(path: str) -> str:
    """A file name as text that can be stored and printed: its bytes that are not UTF-8 (a name in Latin-1,
    say), which Python reads as lone surrogates that neither SQLite nor a UTF-8 stream accepts, as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def json_record(record: object) -> str:
    """record as one line of JSON, its strings as printable_path writes them: json.dumps would write a byte of a
    file name that is not UTF-8 as a lone surrogate escape (\\udce9), which strict JSON readers reject."""
    return json.dumps(_printable_strings(record))


def _printable_strings(value: object) -> object:
    if isinstance(value, str):
        return printable_path(value)
    if isinstance(value, dict):
        return {_printable_strings(key): _printable_strings(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_strings(item) for item in value]
    return value


def _escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start:error.end]
    escaped = "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                      else c.encode("ascii", "backslashreplace").decode("ascii") for c in bad)
    return escaped, error.end


ESCAPE_UNENCODABLE = "facekit.escape"
codecs.register_error(ESCAPE_UNENCODABLE, _escape_unencodable)


def escape_unencodable_output() -> None:
    """stdout and stderr print what they cannot encode as escapes (a non-UTF-8 byte of a file name as \\xNN, as
    printable_path and the gallery write it) where they would raise, and one odd file name would end a run."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors=ESCAPE_UNENCODABLE)


def discard_output(stream: TextIO) -> None:
    """What is written to stream from now on, and what its buffer still holds, goes to /dev/null: its file can no
    longer be written (a pipe closed by `head`, a full disk), and Python's own flush at exit would otherwise print
    two lines of 'Exception ignored' and exit 120."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # not a file (a test's StringIO), or closed
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


class OutputError(Exception):
    """stdout can no longer be written (a full disk): the results are lost, which the exit status must say."""


class _GuardedStream:
    """A stream whose write and flush failures (OSError) go to _failed; the rest is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            self._failed(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            self._failed(exc)

    def _failed(self, error: OSError) -> None:
        raise error

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


class StdoutThatSaysWhy(_GuardedStream):
    """sys.stdout whose failures (other than a pipe closed early) are an OutputError, told apart from a gallery's
    or an annotated copy's OSError, and after which what it still buffers is discarded rather than tried at exit."""

    def _failed(self, error: OSError) -> None:
        if isinstance(error, BrokenPipeError):
            raise error
        discard_output(self.stream)
        raise OutputError(f"cannot write the output: {error.strerror or error}") from error


class StderrThatNeverFails(_GuardedStream):
    """sys.stderr that, once it cannot be written (a full log disk, 2>/dev/full), drops what follows: a warning that
    cannot be shown must not end the work it warns about, nor change its exit status."""

    def _failed(self, error: OSError) -> None:
        discard_output(self.stream)
