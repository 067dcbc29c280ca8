"""User-facing errors.

Anything a user can cause (a missing file, a typo in a name, a wrong shape) raises
:class:`EdgesegError` with one sentence that names the culprit and the fix. The CLI prints
that sentence and exits with status 2 instead of a traceback.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """A problem with the user's input, explained in one line."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
