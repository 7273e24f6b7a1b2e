"""A folder's image listing, made once per process and reused while the folder is unchanged.

Every cell of a grid reads its dataset again; listing ImageNet's training set (1.28 M files) costs
tens of seconds of CPU each time. The grids run their cells in one process, so the listing is kept
here, keyed on the folder and the modification times of every directory it walked: adding,
removing or renaming a file changes its directory's modification time, so a changed folder is
listed again (a file rewritten in place keeps its name and needs no new listing). A directory
changed in the last two seconds is listed every time (time stamps are coarser than that on some
file systems).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

# a listing of a directory modified less than this before it is not kept
RACY_NS = 2_000_000_000
# (folder, recursive) -> ({directory: mtime_ns}, the listing)
_INDEX: dict[tuple[str, bool], tuple[dict[str, int], list[Path]]] = {}


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _directories(folder: Path, recursive: bool) -> dict[str, int | None]:
    """The directories a listing depends on, with their modification times now."""
    if not recursive:
        return {str(folder): _mtime(str(folder))}
    return {d: _mtime(d) for d, _, _ in os.walk(folder)}


def listing(folder: Path, recursive: bool, scan: Callable[[Path], list[Path]]) -> list[Path]:
    """``scan(folder)``, or the listing made earlier while no directory it read has changed."""
    key = (os.path.abspath(folder), recursive)
    known = _INDEX.get(key)
    # a new subdirectory changes its parent's modification time: the known directories suffice
    if known is not None and all(_mtime(d) == t for d, t in known[0].items()):
        return list(known[1])
    dirs = _directories(folder, recursive)  # before the scan: a change during it lists again next time
    found = scan(folder)
    # a directory changed within the clock's granularity of the scan could change again unseen
    # with the same time stamp (as git's "racy" entries): such a listing is not kept
    if all(t is not None and time.time_ns() - t > RACY_NS for t in dirs.values()):
        _INDEX[key] = (dirs, list(found))
    return found


def clear() -> None:
    """Forget every listing (tests; a long-lived process that wants fresh listings)."""
    _INDEX.clear()
