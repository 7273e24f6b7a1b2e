"""One grid cell, run by whichever process reaches it: ``run_cell_file(PATH)`` or
``python -m lore.grid.worker PATH`` (exit 0 whatever the cell's outcome: the outcome is on disk).

The worker takes the cell's run lock before it looks at the cell, so two processes never decide
about one cell at once: a finished cell is reused, one with a recorded failure stays failed, an
interrupted one resumes from its last checkpoint, one killed before its first checkpoint starts
again, and a cell whose lock another live process holds is "busy" (left to that process, never
recorded as failed). A failure is written to ``RUN/failed.json`` (atomically) so every process of
the grid reads the same outcome.

``python -m lore.grid.worker --serve`` reads cell file paths on stdin and answers one JSON line
per cell on stdout: the local launcher keeps one such worker per slot (one start-up per slot, not
per cell).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .. import rundir
from ..errors import LoreError
from ..io import atomic_write_json, read_json


def read_cell_file(path: str | os.PathLike):
    """(TrainConfig, progress prefix) of a cell file ``{"config": ..., "prefix": ...}``."""
    from .. import config as config_mod

    data = read_json(Path(path), "grid cell file")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise LoreError(f"{path}: not a lore grid cell file (no 'config' object)")
    return config_mod.make(data["config"], source=str(path)), str(data.get("prefix") or Path(path).stem)


def recorded_failure(run_dir: Path) -> str | None:
    """The one-line error of a failure recorded in the run directory, if any."""
    path = run_dir / rundir.FAILED
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["error"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path} is unreadable"


def record_failure(run_dir: Path, error: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / rundir.FAILED, {"error": error, "time": time.time(), "pid": os.getpid()})


def _clear_leftovers(run_dir: Path) -> None:
    """A run killed before its first checkpoint (config.yaml, a partial metrics.jsonl) has nothing
    to resume: it starts again. Only called while holding the run's lock."""
    for p in run_dir.iterdir():
        if p.name in (rundir.LOCK, rundir.FAILED):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def run_cell(cfg, prefix: str) -> dict:
    """Run one cell in this process: {"status": "done", "final", "how"} | {"status": "failed",
    "error"} | {"status": "busy", "pid"}."""
    from .. import cells, lock

    run_dir = Path(cfg.out).absolute()
    if rundir.finished(run_dir):  # the common case of a re-run: no lock needed to read a result
        return _done(cfg, prefix, time.time())
    error = recorded_failure(run_dir)
    if error is not None:
        return {"status": "failed", "error": error}
    try:
        fd = lock.acquire(run_dir)
    except LoreError as e:
        if lock.held_elsewhere(run_dir):
            return {"status": "busy", "pid": lock.holder(run_dir)[0]}
        return _failed(run_dir, prefix, e)
    lock.HELD_HERE.add(run_dir.resolve())
    started = time.time()
    try:
        if rundir.finished(run_dir):  # finished while we waited for the lock
            return _done(cfg, prefix, started)
        error = recorded_failure(run_dir)
        if error is not None:
            return {"status": "failed", "error": error}
        if not rundir.resumable(run_dir):
            _clear_leftovers(run_dir)
        final, how = cells.run(cfg)
        print(f"{prefix} {how}, test top-1 {100 * final['test_acc1']:.2f} ({time.time() - started:.1f} s)",
              file=sys.stderr)
        return {"status": "done", "final": final, "how": how}
    except Exception as e:  # noqa: BLE001 - one failing cell (a bug, out of memory) must not end the grid
        return _failed(run_dir, prefix, e)
    finally:
        lock.HELD_HERE.discard(run_dir.resolve())
        os.close(fd)
        _release_memory()


def _done(cfg, prefix: str, started: float) -> dict:
    from .. import cells

    try:
        cells.check_same_options(cfg)
    except LoreError as e:  # another grid's run in this folder: said, never counted as this grid's
        return {"status": "failed", "error": str(e)}
    final = read_json(Path(cfg.out) / rundir.FINAL, "cell result")
    print(f"{prefix} skipped, test top-1 {100 * final['test_acc1']:.2f} ({time.time() - started:.1f} s)",
          file=sys.stderr)
    return {"status": "done", "final": final, "how": "skipped"}


def _failed(run_dir: Path, prefix: str, e: BaseException) -> dict:
    error = (str(e).strip() or type(e).__name__).splitlines()[0]
    print(f"{prefix} FAILED: {error}", file=sys.stderr)
    record_failure(run_dir, error)
    return {"status": "failed", "error": error}


def _release_memory() -> None:
    gc.collect()
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_cell_file(path: str) -> dict:
    """Run the cell a grid cell file describes, in this process (see the module's docstring). Safe
    to call again on the same file after the process was killed: the run resumes."""
    try:
        cfg, prefix = read_cell_file(path)
    except LoreError as e:
        print(f"{path}: FAILED: {e}", file=sys.stderr)
        return {"status": "failed", "error": str(e)}
    return run_cell(cfg, prefix)


def _threads_from_env() -> None:
    """The launcher gives each worker its share of the CPU cores (LORE_GRID_THREADS)."""
    threads = os.environ.get("LORE_GRID_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        import torch
        torch.set_num_threads(int(threads))


def serve() -> None:
    """One cell file path per stdin line -> one JSON outcome line on stdout (status only)."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # whatever a run prints must not mix with the answers
    for line in sys.stdin:
        path = line.strip()
        if path:
            outcome = run_cell_file(path)
            answers.write(json.dumps({"path": path, "status": outcome["status"]}) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import lore.models  # noqa: F401  (every method registers)

    _threads_from_env()
    if argv == ["--serve"]:
        serve()
        return 0
    if len(argv) != 1:
        print("usage: python -m lore.grid.worker CELL_FILE | --serve", file=sys.stderr)
        return 2
    run_cell_file(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
