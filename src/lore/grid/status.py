"""``lore grid status OUT`` (and ``--status`` on every grid command): where a grid stands, from its
manifest and its cells' run directories alone: per phase, cells done / running (pid, since when) /
failed (the error line) / pending, the measured seconds per finished cell (final.json), and an
estimate of the time left at the grid's --jobs."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from .. import rundir
from ..errors import LoreError
from ..io import read_json


def cell_state(run_dir: Path) -> dict:
    from .. import lock
    from .worker import recorded_failure

    if rundir.finished(run_dir):
        final = read_json(run_dir / rundir.FINAL, "cell result")
        return {"state": "done", "seconds": final.get("seconds") if isinstance(final, dict) else None}
    error = recorded_failure(run_dir)
    if error is not None:
        return {"state": "failed", "error": error}
    if lock.held_elsewhere(run_dir):
        pid, since = lock.holder(run_dir)
        return {"state": "running", "pid": pid, "since": since}
    return {"state": "pending", "resumable": rundir.resumable(run_dir)}


def grid_status(out: Path, jobs: int | None = None) -> dict:
    """{"phases": [{"name", "done", "running", "failed", "pending", "cells": [...]}], "seconds_per_cell",
    "jobs", "seconds_left"}."""
    path = Path(out) / "grid" / "manifest.json"
    if not path.is_file():
        raise LoreError(f"lore grid status: {path} not found; {out} holds no grid started by this version of lore")
    manifest = read_json(path, "grid manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("phases"), list):
        raise LoreError(f"lore grid status: {path} is not a grid manifest (no list 'phases')")
    phases, seconds = [], []
    for phase in manifest["phases"]:
        cells = [{"run_dir": d, **cell_state(Path(d))} for d in phase.get("cells", [])]
        counts = {s: sum(c["state"] == s for c in cells) for s in ("done", "running", "failed", "pending")}
        seconds += [c["seconds"] for c in cells if c["state"] == "done" and c.get("seconds")]
        phases.append({"name": phase.get("name"), **counts, "cells": cells})
    jobs = jobs or int(manifest.get("jobs") or 1)
    per_cell = statistics.fmean(seconds) if seconds else None
    left = sum(p["pending"] + p["running"] for p in phases)
    return {"out": str(out), "phases": phases, "seconds_per_cell": per_cell, "jobs": jobs,
            "seconds_left": None if per_cell is None else per_cell * left / jobs}


def render(status: dict) -> str:
    lines = [f"grid {status['out']}"]
    for p in status["phases"]:
        lines.append(f"phase {p['name']}: {p['done']} done, {p['running']} running, {p['failed']} failed, "
                     f"{p['pending']} pending (of {len(p['cells'])})")
        for c in p["cells"]:
            if c["state"] == "running":
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["since"])) if c["since"] else "?"
                lines.append(f"  running: {c['run_dir']} (pid {c['pid']}, since {since})")
            elif c["state"] == "failed":
                lines.append(f"  failed: {c['run_dir']}: {c['error']}")
    per_cell = status["seconds_per_cell"]
    if per_cell is None:
        lines.append("no finished cell yet: no time estimate")
    else:
        lines.append(f"{per_cell:.1f} s per finished cell; about {status['seconds_left'] / 60:.1f} min left "
                     f"at --jobs {status['jobs']} (cells of later phases not yet known are not counted)")
    return "\n".join(lines)


def show(out: Path, jobs: int | None = None) -> dict:
    status = grid_status(out, jobs)
    print(render(status))
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status"], help="status: where the grid in OUT stands")
    parser.add_argument("out", help="the grid's --out folder")
    parser.add_argument("--jobs", type=int, default=None, help="estimate the time left for this many jobs")


def main(args: argparse.Namespace) -> dict:
    if args.jobs is not None and args.jobs < 1:
        raise LoreError(f"--jobs must be >= 1, got {args.jobs}")
    status = show(Path(args.out), args.jobs)
    return {"phases": [{k: v for k, v in p.items() if k != "cells"} for p in status["phases"]]}
