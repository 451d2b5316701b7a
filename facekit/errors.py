"""An exception as the one line that facekit's errors and the CLI show."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """The error's text with its line breaks and runs of spaces collapsed; its class name if it has none."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException) -> str:
    """The first line only, for errors that list details below a summary (torch's load_state_dict mismatches)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
