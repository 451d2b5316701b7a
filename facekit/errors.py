"""An exception as the one line that facekit's errors and the CLI show."""

from __future__ import annotations

import codecs
import sys


def one_line(error: BaseException) -> str:
    """The error's text with its line breaks and runs of spaces collapsed; its class name if it has none."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line only, for errors that list details below a summary (torch's load_state_dict mismatches)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def printable_path(path: str) -> str:
    """A file name as text that can be stored and printed: its bytes that are not UTF-8 (a name in Latin-1,
    say), which Python reads as lone surrogates that neither SQLite nor a UTF-8 stream accepts, as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
