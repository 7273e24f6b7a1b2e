"""One writer per run directory.

A run holds an exclusive ``flock`` on ``RUN/.lock`` for its whole lifetime. The kernel drops the
lock when the process ends in any way (exit, exception, SIGKILL), so a crashed run never leaves a
stale lock behind, and a second ``lore train --out RUN`` (or ``--resume RUN``, or a sweep writing
the same cell) is refused with one clear error instead of mixing two runs' files. The lock file
itself stays (removing it would race with a process that has just opened it); it holds the pid of
the last holder, for the error message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import LoreError
from .io import check_output_dir
from . import rundir

LOCK_NAME = rundir.LOCK
# run directories whose lock this process already holds (a grid worker takes a cell's lock before it
# decides what to do with the cell, then trains it): run_lock() does not take them a second time
HELD_HERE: set[Path] = set()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def acquire(run_dir: str | os.PathLike, flag: str = "--out") -> int:
    """Take the run's lock without waiting; returns the open descriptor that holds it (close it
    to release). Creates ``run_dir`` if needed."""
    run_dir = check_output_dir(run_dir, flag)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    try:  # never follow a planted link: the pid written below would land outside the run
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink() or e.errno == errno.ELOOP:
            raise LoreError(f"{flag} {run_dir}: {path.name} is a symbolic link; a run's lock must be a "
                            "plain file there (remove the link, or choose another directory)") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LoreError(f"{flag} {run_dir} is in use by another lore process{_holder(path)}; wait for "
                        "it to finish (or stop it) before writing to this run, or choose another "
                        "directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.fsync(fd)
    remove_stale_temporaries(run_dir)
    return fd


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporaries of atomic writes (``.NAME.XXXX.tmp``) that a killed process left in
    the run. Only safe while holding the run's lock: no one else can be writing them."""
    stale = [p for folder in (run_dir, run_dir / rundir.CHECKPOINTS) if folder.is_dir()
             for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike | None, enabled: bool = True, flag: str = "--out") -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block (no-op when disabled, e.g. on ranks > 0 of a
    DDP run, whose rank 0 holds it for all)."""
    if run_dir is None or not enabled or Path(run_dir).resolve() in HELD_HERE:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    fd = acquire(run_dir, flag)
    try:
        yield
    except BaseException:
        if created:
            _remove_if_empty_run(run_dir)
        raise
    finally:
        os.close(fd)


def _remove_if_empty_run(run_dir: Path) -> None:
    """A run that failed before producing anything (no weights, a wrong option found late) leaves
    no folder behind; anything beyond the options file is kept for the user to inspect."""
    names = {p.name for p in run_dir.iterdir()}
    if names <= {LOCK_NAME, rundir.CONFIG}:
        for name in names:
            (run_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def held_elsewhere(run_dir: str | os.PathLike) -> bool:
    """Another live process holds ``run_dir``'s lock now (never call it while holding it here)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock too


def holder(run_dir: str | os.PathLike) -> tuple[int | None, float | None]:
    """(pid, since when as a UNIX time) of the lock's last holder, from the lock file."""
    path = Path(run_dir) / LOCK_NAME
    try:
        text, since = path.read_text(encoding="utf-8").strip(), path.stat().st_mtime
    except OSError:
        return None, None
    return (int(text) if text.isdigit() else None), since
