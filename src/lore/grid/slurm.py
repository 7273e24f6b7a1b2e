"""``--launcher slurm``: one SLURM job array per grid phase, submitted through submitit.

Each array task runs one cell file with :func:`lore.grid.worker.run_cell_file` inside
:class:`CellTask`, a submitit ``Checkpointable``: when SLURM warns a task that it is about to be
preempted or to reach its ``--slurm-time`` (``USR2``, ``signal_delay_s`` before the limit), submitit
calls its ``checkpoint()``, which resubmits the same call, and requeues the task. The requeued task
runs the same cell file again, and the worker resumes the run from its last checkpoint (a task
killed outright, e.g. ``scontrol requeue``, resumes the same way). Logs and submitit's files
(the batch script, pickles, stdout / stderr of every task) go under ``OUT/slurm/<job id>/``;
``OUT/slurm/<phase>.json`` names the array a phase last submitted, so running the same command
again while it is queued or running waits for it (or, with ``--no-wait``, leaves it) instead of
submitting the cells twice, and cells that already hold a finished run are never submitted.

A cell with ``--slurm-gpus-per-job G > 1`` is one job of G tasks on one node, one GPU each; the
tasks join one DDP process group from submitit's environment, as ``torchrun`` would set it.

submitit is optional (``pip install 'lore-vit[slurm]'``) and imported only here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from .. import rundir
from ..errors import LoreError
from ..io import atomic_write_json, read_json
from .options import LaunchOptions

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # the launcher says what to install (launch); CellTask is unusable without it
    submitit = None
    Checkpointable = object

INSTALL_HINT = "--launcher slurm needs submitit: pip install 'lore-vit[slurm]'"
POLL_SECONDS = float(os.environ.get("LORE_SLURM_POLL_SECONDS", "10"))
# SLURM's warning before the time limit; submitit's default (90 s) unless the limit is short
MAX_SIGNAL_DELAY_S = 90
# a cell reaching --slurm-time is requeued this often (each time resuming from its checkpoint)
# before submitit gives up on it; preemptions do not count
MAX_TIMEOUT_REQUEUES = 10


def require_submitit():
    if submitit is None:
        raise LoreError(INSTALL_HINT)
    return submitit


def time_limit_seconds(text: str) -> int:
    """``[D-]HH:MM:SS`` (LaunchOptions checked its form) in seconds."""
    days, _, clock = text.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def executor_parameters(opts: LaunchOptions, name: str) -> dict:
    """submitit's ``update_parameters`` for one phase's job array."""
    seconds = time_limit_seconds(opts.slurm_time)
    gpus = opts.slurm_gpus_per_job
    params: dict = {
        "name": name,
        # submitit's limit is whole minutes: round up, never cut a job short
        "timeout_min": max(1, math.ceil(seconds / 60)),
        "slurm_array_parallelism": opts.slurm_array_parallelism,
        "nodes": 1,
        # one task per GPU: a multi-GPU cell is one DDP process per GPU
        "tasks_per_node": max(1, gpus),
        "cpus_per_task": opts.slurm_cpus_per_task or 1,
        # a short limit still leaves the task time to run before the warning (most of it)
        "slurm_signal_delay_s": min(MAX_SIGNAL_DELAY_S, max(5, seconds // 6)),
        # torch would start a thread per core of the node, not per CPU the job was given
        "slurm_setup": ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"],
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.slurm_partition:
        params["slurm_partition"] = opts.slurm_partition
    if opts.slurm_mem_gb:
        params["mem_gb"] = opts.slurm_mem_gb
    for option in ("account", "qos", "constraint"):
        value = getattr(opts, f"slurm_{option}")
        if value:
            params[f"slurm_{option}"] = value
    return params


class CellTask(Checkpointable):
    """One array task: the cell file given to ``__call__`` run by the grid worker. The inherited
    ``checkpoint()`` resubmits the same call: the worker resumes the cell from its checkpoints."""

    def __call__(self, cell_file: str) -> dict:
        from . import worker
        import lore.models  # noqa: F401  (every method registers, as in `python -m lore.grid.worker`)

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            return run_distributed(cell_file, env.global_rank)
        return worker.run_cell_file(cell_file)


def run_distributed(cell_file: str, rank: int) -> dict:
    """A cell on all tasks of its job: rank 0 decides under the cell's lock (and records the
    outcome); every rank trains, joined into one DDP process group before anyone decides, so a
    cell rank 0 finds finished, failed or busy sends no rank into a rendezvous alone."""
    import torch.distributed as dist

    from .. import cells, lock, rundir
    from ..distributed import init_distributed
    from ..runs import resolve_device
    from . import worker

    # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK as torchrun sets them; lore pins the GPU itself
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    import torch
    if torch.cuda.is_available() and torch.cuda.device_count() == 1:
        os.environ["LOCAL_RANK"] = "0"  # the cluster bound one GPU to this task: it is cuda:0 here
    cfg, _ = worker.read_cell_file(cell_file)
    init_distributed(resolve_device(cfg.device).type)
    run_dir = Path(cfg.out).absolute()
    decision = [None]
    if rank == 0:
        decision[0] = ("skip" if rundir.finished(run_dir) or worker.recorded_failure(run_dir) is not None
                       or lock.held_elsewhere(run_dir) else "train")
    dist.broadcast_object_list(decision, src=0)
    if rank == 0 or decision[0] == "skip":
        return worker.run_cell_file(cell_file)
    # rank 0 holds the run's lock and writes the run's files; this rank trains beside it
    final, how = cells.run(cfg)
    return {"status": "done", "final": final, "how": how}


def launch(cell_files: list[Path], opts: LaunchOptions, log_dir: Path, wait: bool) -> str | None:
    """Submit one job array running every cell file; wait until no task of it is queued or running
    (``wait``), else return its job id at once. The caller reads each cell's outcome from its run
    directory either way."""
    require_submitit()
    if not cell_files:
        return None
    phase = Path(cell_files[0]).parent.name
    log_dir = Path(log_dir).absolute()
    log_dir.mkdir(parents=True, exist_ok=True)
    record = log_dir / f"{phase}.json"
    earlier = _earlier_array(record, cell_files)
    if earlier is not None:  # a re-run while the array it submitted is still queued or running
        print(f"grid phase {phase}: SLURM job array {earlier} of an earlier invocation is still queued or "
              "running; not submitting again", file=sys.stderr)
        if wait:
            submitted = read_json(record, "SLURM job record")["cells"]
            wait_for_array(earlier, len(submitted), phase)
            for i, path in enumerate(submitted):
                record_unfinished(Path(path), log_dir / f"{earlier}_{i}")
        return earlier
    cell_files = [p for p in cell_files if not _finished(p)]
    if not cell_files:  # a re-run that only collects the table
        return None
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    executor.update_parameters(**executor_parameters(opts, f"lore-{phase}"))
    try:
        jobs = executor.map_array(CellTask(), [str(Path(p).absolute()) for p in cell_files])
    except (OSError, subprocess.CalledProcessError, RuntimeError) as e:
        detail = (getattr(e, "stderr", None) or getattr(e, "output", None) or str(e) or type(e).__name__)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        line = next((s.strip() for s in str(detail).splitlines() if s.strip()), type(e).__name__)
        raise LoreError(f"--launcher slurm: sbatch refused the job array of phase {phase}: {line}") from None
    job_id = jobs[0].job_id.split("_")[0]
    atomic_write_json(record, {"job": job_id, "cells": [str(Path(p).absolute()) for p in cell_files]})
    print(f"grid phase {phase}: SLURM job array {job_id} ({len(jobs)} cells, logs under {log_dir / job_id}_*)",
          file=sys.stderr)
    if not wait:  # the phase runner says how to collect
        return job_id
    try:
        wait_for_array(job_id, len(jobs), phase)
    except KeyboardInterrupt:
        print(f"grid phase {phase}: stopped waiting; SLURM job array {job_id} goes on (scancel {job_id} "
              "stops it); re-run the same command to collect the table", file=sys.stderr)
        raise
    for path, job in zip(cell_files, jobs):
        record_unfinished(path, Path(job.paths.stderr))
    return job_id


def record_unfinished(cell_file: Path, task_log: Path) -> None:
    """A cell its task left neither finished nor failed (the task crashed, was cancelled, or ran
    out of time requeues) is recorded as failed, naming the task's log: the command that submitted
    the array (often on a login node, without the job's GPUs) never trains it itself. Running the
    command again retries it."""
    from .. import lock
    from .worker import record_failure, recorded_failure

    try:
        run_dir = Path(read_json(Path(cell_file), "grid cell file")["config"]["out"]).absolute()
    except (LoreError, KeyError, TypeError):
        return
    if rundir.finished(run_dir) or recorded_failure(run_dir) is not None or lock.held_elsewhere(run_dir):
        return
    record_failure(run_dir, f"its SLURM task ended without finishing it; see {task_log}")


def _finished(cell_file: Path) -> bool:
    """The cell's run directory holds a finished run (the worker checks it is this cell's)."""
    try:
        out = read_json(Path(cell_file), "grid cell file")["config"]["out"]
    except (LoreError, KeyError, TypeError):
        return False  # the task reports what is wrong with the file
    return bool(out) and rundir.finished(Path(out))


def _earlier_array(record: Path, cell_files: list[Path]) -> str | None:
    """The job array an earlier invocation submitted for these cells, while any task of it is
    still queued or running."""
    try:
        earlier = read_json(record, "SLURM job record")
        job, cells = str(earlier["job"]), set(earlier["cells"])
    except (LoreError, KeyError, TypeError):
        return None
    if not cells <= {str(Path(p).absolute()) for p in cell_files}:
        return None
    return job if active_tasks(job) else None


def active_tasks(job_id: str) -> int | None:
    """Tasks of the array still pending, running or requeued (squeue), or None when squeue cannot
    answer. Waiting on squeue rather than sacct: it needs no accounting storage."""
    done = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True)
    if done.returncode != 0:
        # a job that left the controller's memory (MinJobAge) is "invalid": nothing of it is left
        return 0 if "Invalid job id" in done.stderr else None
    return sum(1 for line in done.stdout.splitlines() if line.strip())


def wait_for_array(job_id: str, n: int, phase: str) -> None:
    """Poll squeue until no task of the array is queued or running; a line when the count changes."""
    last = None
    while True:
        left = active_tasks(job_id)
        if left == 0:
            return
        if left is not None and left != last:
            print(f"grid phase {phase}: SLURM job array {job_id}: {n - left}/{n} tasks finished", file=sys.stderr)
            last = left
        time.sleep(POLL_SECONDS)
