"""Running a grid's cells on one process, many processes, or SLURM, with one outcome.

A grid runs in phases (``lore paper vtab``: "tune", then "final" on the chosen pairs); a phase is a
list of cells, each a ``lore train`` run (:mod:`lore.cells`). :func:`run_phase` writes each cell
to ``OUT/grid/cells/<phase>/<NNNNN>.json``, hands the files to the launcher (inline: this process,
local: ``--jobs`` worker processes, slurm: a job array), then reads every cell's outcome from its
run directory: ``final.json`` done, ``failed.json`` failed, lock held by a live process: waited
for, left unfinished (a worker died): resumed here. So the outcome never depends on the launcher,
on the order cells finished in, or on which of several processes sharing one ``--out`` ran what.

A failure recorded before this command started is retried (a re-run is a new attempt, as before);
one recorded while it runs (by it or a process beside it) is kept, so concurrent processes agree.
``OUT/grid/manifest.json`` lists the phases and their cells' run directories for ``lore grid status``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
from pathlib import Path

from .. import rundir
from ..io import atomic_write_json, read_json
from .options import LaunchOptions, add_launcher_arguments  # noqa: F401  (the grid commands' API)

POLL_SECONDS = float(os.environ.get("LORE_GRID_POLL_SECONDS", "2"))
WAIT_REPORT_SECONDS = 60.0


def grid_dir(out: Path) -> Path:
    return Path(out) / "grid"


def write_cell_files(out: Path, phase: str, cells: list[tuple[object, str]]) -> list[Path]:
    """One ``{"config", "prefix"}`` file per (TrainConfig, prefix), in order; stale ones removed."""
    folder = grid_dir(out) / "cells" / phase
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (cfg, prefix) in enumerate(cells):
        path = folder / f"{i:05d}.json"
        atomic_write_json(path, {"config": dataclasses.asdict(cfg), "prefix": prefix})
        paths.append(path)
    for stale in folder.glob("*.json"):
        if stale.stem.isdigit() and int(stale.stem) >= len(cells):
            stale.unlink(missing_ok=True)
    return paths


def update_manifest(out: Path, phase: str, run_dirs: list[str], opts: LaunchOptions) -> None:
    """Record the phase's cells (phases in the order first run) for ``lore grid status``."""
    path = grid_dir(out) / "manifest.json"
    manifest = read_json(path, "grid manifest") if path.is_file() else {}
    phases = manifest.get("phases") if isinstance(manifest.get("phases"), list) else []
    entry = {"name": phase, "cells": run_dirs}
    names = [p.get("name") for p in phases]
    if phase in names:
        phases[names.index(phase)] = entry
    else:
        phases.append(entry)
    atomic_write_json(path, {"phases": phases, "launcher": opts.launcher, "jobs": opts.jobs})


def clear_old_failures(run_dirs: list[Path], started: float) -> None:
    """Failures recorded before this command started (an earlier attempt's) are tried again."""
    for run_dir in run_dirs:
        path = run_dir / rundir.FAILED
        try:
            if path.stat().st_mtime < started:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


def outcome(run_dir: Path) -> dict | None:
    """What the run directory says: done / failed / busy, or None (not run, or left unfinished)."""
    from .. import lock
    from .worker import recorded_failure

    if rundir.finished(run_dir):
        return {"status": "done", "final": read_json(run_dir / rundir.FINAL, "cell result"), "how": "skipped"}
    error = recorded_failure(run_dir)
    if error is not None:
        return {"status": "failed", "error": error}
    if lock.held_elsewhere(run_dir):
        return {"status": "busy", "pid": lock.holder(run_dir)[0]}
    return None


def run_phase(out: Path, phase: str, cells: list[tuple[object, str]], opts: LaunchOptions | None = None) -> list[dict]:
    """Run one phase's (TrainConfig, progress prefix) cells on the launcher; every cell's outcome,
    in order: {"status": "done", "final", "how"} or {"status": "failed", "error"}, or, after
    ``--no-wait``, {"status": "pending"} for a cell still queued or running."""
    from .worker import run_cell

    opts = opts or LaunchOptions()
    files = write_cell_files(out, phase, cells)
    run_dirs = [Path(cfg.out).absolute() for cfg, _ in cells]
    update_manifest(out, phase, [str(d) for d in run_dirs], opts)
    clear_old_failures(run_dirs, opts.started)
    results: dict[int, dict] = {}
    if opts.launcher == "inline" or (opts.launcher == "local" and opts.jobs == 1):
        for i, (cfg, prefix) in enumerate(cells):
            results[i] = run_cell(cfg, prefix)
    elif opts.launcher == "local":
        from .local import launch
        launch(files, opts.jobs)
    else:
        try:  # by name: the optional SLURM launcher (submitit) is loaded only when asked for
            slurm = importlib.import_module("lore.grid.slurm")
        except ImportError:
            from ..errors import LoreError
            raise LoreError("--launcher slurm needs lore-vit[slurm] (pip install 'lore-vit[slurm]')") from None
        job = slurm.launch(files, opts, Path(out) / "slurm", wait=not opts.no_wait)
        if opts.no_wait:
            print(f"grid phase {phase}: submitted SLURM job {job}; `lore grid status {out}` shows where it "
                  "stands, and the same command run again collects the table", file=sys.stderr)
            return [_settled(outcome(d)) for d in run_dirs]
    return collect(cells, run_dirs, results, phase)


def _settled(o: dict | None) -> dict:
    return o if o is not None and o["status"] in ("done", "failed") else {"status": "pending"}


def collect(cells: list[tuple[object, str]], run_dirs: list[Path], results: dict[int, dict],
            phase: str) -> list[dict]:
    """Every cell's outcome from its run directory: cells another process holds are waited for,
    cells left unfinished (their worker died, or nobody reached them) are run here."""
    from .worker import run_cell

    waiting_since, reported = time.monotonic(), None
    todo = [i for i in range(len(cells)) if results.get(i, {}).get("status") not in ("done", "failed")]
    while todo:
        busy = []
        for i in todo:
            o = outcome(run_dirs[i])
            if o is None:
                o = run_cell(*cells[i])
            if o["status"] == "busy":
                busy.append(i)
            else:
                results[i] = o
        todo = busy
        if todo:
            if reported is None or time.monotonic() - reported >= WAIT_REPORT_SECONDS:
                print(f"grid phase {phase}: waiting for {len(todo)} cell(s) held by other processes "
                      f"(first: {run_dirs[todo[0]]}), {time.monotonic() - waiting_since:.0f} s so far",
                      file=sys.stderr)
                reported = time.monotonic()
            time.sleep(POLL_SECONDS)
    return [results[i] for i in range(len(cells))]
