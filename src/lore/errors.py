"""User-facing errors.

Anything the user can fix (a path, an option, a file's content) raises :class:`LoreError`; the CLI
prints its one-line message and exits with status 2, without a traceback.
"""


class LoreError(Exception):
    """A problem with the user's input, reported as one clear line."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise LoreError(message)
