"""``--launcher local --jobs N``: N slots on this machine, each a worker process
(``python -m lore.grid.worker --serve``) that runs one cell after another.

Each slot's worker sees one GPU (``CUDA_VISIBLE_DEVICES``) when CUDA GPUs exist, else its share of
the CPU cores (``cores // N`` threads). Cells are handed out in order, to whichever slot is free. A
worker that dies in a cell (SIGKILL, out of memory) is replaced for the next cell; the cell it left
is found unfinished by the phase runner, which resumes it.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path


def slot_environment(slot: int, jobs: int) -> dict[str, str]:
    """The environment of slot ``slot``'s worker: its GPU, or its share of the cores."""
    import torch

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the worker imports this same lore
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, LORE_GRID_THREADS=threads)
    return env


class _Slot:
    def __init__(self, slot: int, jobs: int):
        self.env = slot_environment(slot, jobs)
        self.proc: subprocess.Popen | None = None

    def run(self, path: Path) -> str:
        """The cell's status as the worker answered it, or 'died'."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "lore.grid.worker", "--serve"], env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            answer = ""
        if not answer:
            self.proc.wait()
            print(f"{path}: its worker (pid {self.proc.pid}) ended with status {self.proc.returncode}; "
                  "the cell is resumed later", file=sys.stderr)
            self.proc = None
            return "died"
        return answer

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def launch(cell_files: list[Path], jobs: int) -> None:
    """Run every cell file on ``jobs`` worker processes; returns when all are through."""
    todo: queue.Queue[Path] = queue.Queue()
    for path in cell_files:
        todo.put(path)

    def work(slot: _Slot) -> None:
        try:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                slot.run(path)
        finally:
            slot.close()

    threads = [threading.Thread(target=work, args=(_Slot(i, jobs),), daemon=True)
               for i in range(min(jobs, len(cell_files)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
