"""How a grid's cells are run: the launcher options every grid command takes
(:func:`add_launcher_arguments`), gathered and checked in :class:`LaunchOptions`."""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field, fields

from ..errors import LoreError

LAUNCHERS = ("inline", "local", "slurm")
SLURM_TIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")


@dataclass
class LaunchOptions:
    launcher: str = "inline"
    jobs: int = 1
    no_wait: bool = False
    status: bool = False
    slurm_partition: str | None = None
    slurm_gpus_per_job: int = 1
    slurm_cpus_per_task: int | None = None
    slurm_time: str = "04:00:00"
    slurm_array_parallelism: int = 64
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_constraint: str | None = None
    slurm_mem_gb: float | None = None
    # when the command started: a cell failure recorded before it is an earlier attempt's (retried),
    # one recorded after it was recorded by this command or a process beside it (kept)
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise LoreError(f"--launcher {self.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
        if self.jobs < 1:
            raise LoreError(f"--jobs must be >= 1, got {self.jobs}")
        if self.no_wait and self.launcher != "slurm":
            raise LoreError("--no-wait needs --launcher slurm (the other launchers run the cells in this command)")
        for name in ("slurm_gpus_per_job", "slurm_array_parallelism"):
            if getattr(self, name) < (0 if name == "slurm_gpus_per_job" else 1):
                raise LoreError(f"--{name.replace('_', '-')} must be >= "
                                f"{0 if name == 'slurm_gpus_per_job' else 1}, got {getattr(self, name)}")
        if self.slurm_cpus_per_task is not None and self.slurm_cpus_per_task < 1:
            raise LoreError(f"--slurm-cpus-per-task must be >= 1, got {self.slurm_cpus_per_task}")
        if self.slurm_mem_gb is not None and not self.slurm_mem_gb > 0:
            raise LoreError(f"--slurm-mem-gb must be > 0, got {self.slurm_mem_gb}")
        if not SLURM_TIME.match(self.slurm_time):
            raise LoreError(f"--slurm-time {self.slurm_time!r}: give HH:MM:SS (or D-HH:MM:SS), e.g. 04:00:00")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LaunchOptions":
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        if values.get("launcher") is None:  # --jobs N alone means N local processes
            values["launcher"] = "local" if values.get("jobs", 1) > 1 else "inline"
        return cls(**values)


def add_launcher_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher flags of every grid command (lore sweep, lore paper ...)."""
    g = parser.add_argument_group("running the grid (several processes, GPUs or SLURM jobs on one --out)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="inline: one cell after another in this process (default); local: --jobs worker "
                        "processes on this machine, one GPU each (or cores // jobs threads each); slurm: one "
                        "SLURM job array per grid phase (needs lore-vit[slurm])")
    g.add_argument("--jobs", type=int, default=None,
                   help="cells run at once (--launcher local; --jobs N alone implies it); default 1")
    g.add_argument("--no-wait", action="store_true", default=None,
                   help="--launcher slurm: submit and return; re-run the same command to collect the table")
    g.add_argument("--status", action="store_true", default=None,
                   help="print where the grid in --out stands (done / running / failed / pending) and exit")
    g.add_argument("--slurm-partition", help="SLURM partition")
    g.add_argument("--slurm-gpus-per-job", type=int, help="GPUs per cell's job (default 1; >1 runs DDP)")
    g.add_argument("--slurm-cpus-per-task", type=int, help="CPUs per job")
    g.add_argument("--slurm-time", help="time limit per job, HH:MM:SS (default 04:00:00)")
    g.add_argument("--slurm-array-parallelism", type=int, help="jobs of an array running at once (default 64)")
    g.add_argument("--slurm-account", help="SLURM account")
    g.add_argument("--slurm-qos", help="SLURM quality of service")
    g.add_argument("--slurm-constraint", help="SLURM node constraint")
    g.add_argument("--slurm-mem-gb", type=float, help="memory per job (GB)")
