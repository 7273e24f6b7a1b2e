"""``lore paper TABLE --data-root ROOT --out DIR``: reproduce one of the paper's tables.

The table's grid (backbone, methods, datasets, shots, regime; see :mod:`lore.paper.tables`) runs
with ``--recipe paper`` through the sweep machinery (resumable). ``OUT/table.md`` and
``OUT/table.csv`` hold the paper's layout with the published number beside each measured cell and
the difference; ``--plan`` prints the grid and a cost estimate instead of running it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from .. import config as config_mod
from ..config import TrainConfig
from ..errors import LoreError
from ..models.registry import refuse_row_options
from ..sweep import GRID_FIELDS, split_values

# set per cell by the table (the grid, the recipe, the dataset as distributed) rather than by a flag
PAPER_FIELDS = GRID_FIELDS | {"recipe", "dataset", "curriculum", "classnames", "image_dir", "holdout"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .tables import TABLES

    parser.add_argument("table", choices=list(TABLES) + ["vtab", "fgvc"],
                        help="the paper's table to reproduce, or vtab / fgvc: LORE against VPT on VTAB-1k or "
                             "the FGVC group with VPT's protocol and published numbers")
    parser.add_argument("--data-root", required=True, help="folder holding one folder per dataset "
                        "(as `lore data` expects them); table4 also revisitop/, SPair-71k/, DAVIS/")
    parser.add_argument("--out", required=True, help="output folder (runs/, table.md, table.csv)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 1993, the reference's; vtab / fgvc: "
                        "VPT's 42,44,82,100,800)")
    parser.add_argument("--methods", help="comma-separated: only these methods of the table")
    parser.add_argument("--datasets", help="comma-separated: only these datasets of the table")
    parser.add_argument("--shots", help="comma-separated: only these shot columns of the table (e.g. 16)")
    parser.add_argument("--shots-cap", type=int, help="train on at most N images per class (smoke runs on "
                        "tiny copies; the table's shot count still picks the recipe and the row)")
    parser.add_argument("--plan", action="store_true", help="print the grid and a cost estimate, run nothing")
    parser.add_argument("--bench", help="with --plan: also estimate from this `lore bench` result (bench.json)")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="with --plan: skip the short measured step on this machine")
    petl = parser.add_argument_group("vtab / fgvc only")
    petl.add_argument("--lrs", help="comma-separated VPT base learning rates to tune over (default: VPT's "
                      "grid for the method; the rate used is lr / 256 x batch)")
    petl.add_argument("--wds", help="comma-separated weight decays to tune over (default: VPT's 0.01,0.001,"
                      "0.0001,0)")
    petl.add_argument("--vtab-source", choices=["images", "tfds"], default="images",
                      help="vtab: where VTAB-1k is read from: images = the PETL repositories' image export "
                           "(one folder per task with train800.txt, val200.txt, train800val200.txt, test.txt); "
                           "tfds = a TensorFlow Datasets data dir, with VPT's split definitions and preprocessing")
    petl.add_argument("--unnamed-classes", choices=["learned", "sentence"], default="learned",
                      help="LORE's class knowledge on tasks whose classes have no names (VTAB counts, "
                           "distances, angles; NABirds): a class-embedding matrix learned with the White "
                           "Box (learned:512, default) or the knowledge encoder on 'class 3' sentences")
    from ..grid.options import add_launcher_arguments
    add_launcher_arguments(parser)
    group = parser.add_argument_group("training options for every run (win over the recipe; e.g. "
                                      "--backbone + --backbone-args + --no-pretrained for a smoke test)")
    config_mod.add_arguments(group, skip=PAPER_FIELDS)


def check_out(out: Path) -> None:
    """A table's folder is never a run directory (nor inside one): its runs/ and table files would
    mix with the run's own."""
    from ..io import check_output_dir

    check_output_dir(out, allow_run=False)


def base_options(args: argparse.Namespace) -> dict:
    base = dict(config_mod.load_yaml(args.config)) if getattr(args, "config", None) else {}
    base.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in PAPER_FIELDS and hasattr(args, f.name)})
    return base


def main(args: argparse.Namespace) -> dict:
    from .runner import measured_rows, narrow, run_grid, write_outputs
    from .tables import get_table
    from ..grid import LaunchOptions

    if LaunchOptions.from_args(args).status:
        from ..grid.status import show
        return show(Path(args.out))
    if args.table in ("vtab", "fgvc"):
        return _petl(args)
    for flag in ("lrs", "wds"):
        if getattr(args, flag):
            raise LoreError(f"--{flag} is read by lore paper vtab / fgvc only")
    table = get_table(args.table)
    seeds = split_values(args.seeds or "1993", int, "--seeds")
    methods = split_values(args.methods, str, "--methods") if args.methods else None
    datasets = split_values(args.datasets, str, "--datasets") if args.datasets else None
    shots = split_values(args.shots, int, "--shots") if args.shots else None
    grid = narrow(table, seeds, methods, datasets, shots)
    root, out = Path(args.data_root).expanduser(), Path(args.out)
    if not root.is_dir():
        raise LoreError(f"--data-root {root}: no such folder")
    check_out(out)
    base = base_options(args)
    refuse_row_options(sorted({m for g in grid.groups for m in g.methods}), base, f"lore paper {args.table}")
    if args.plan:
        from .plan import plan
        return plan(grid, root, base, args.bench, args.measure)
    if args.bench:
        raise LoreError("--bench is read by --plan only")
    if args.shots_cap is not None and args.shots_cap < 1:
        raise LoreError(f"--shots-cap must be >= 1, got {args.shots_cap}")
    results = run_grid(grid, root, out, base, args.shots_cap, LaunchOptions.from_args(args))
    if table.layout == "tasks":
        from .tasks import run_tasks, task_rows
        rows = task_rows(grid, run_tasks(grid, results, root, out, base))
    else:
        rows = measured_rows(grid, results)
    write_outputs(grid, rows, out, results)
    print((out / "table.md").read_text(encoding="utf-8"))
    failed = [k for k, v in results.items() if v["status"] == "failed"]
    if failed:
        raise LoreError(f"{len(failed)} of {len(results)} runs failed (first: {' / '.join(map(str, failed[0]))}: "
                        f"{results[failed[0]]['error']}); see {out / 'table.json'}")
    return {"rows": len(rows), "runs": len(results)}


def _petl(args: argparse.Namespace) -> dict:
    from .petl import main as petl_main

    root = Path(args.data_root).expanduser()
    if not root.is_dir():
        raise LoreError(f"--data-root {root}: no such folder")
    if args.bench and not args.plan:
        raise LoreError("--bench is read by --plan only")
    if args.shots_cap is not None and args.shots_cap < 1:
        raise LoreError(f"--shots-cap must be >= 1, got {args.shots_cap}")
    check_out(Path(args.out))
    return petl_main(args, base_options(args))
