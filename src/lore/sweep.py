"""``lore sweep``: the comparison grid methods x datasets x shots x seeds, then one table.

Every cell is an ordinary ``lore train`` run directory, ``OUT/<dataset>/<method>/<K>shot/seed<S>``,
run in this process through :func:`lore.train.run` (same few-shot sampling, seeds, augmentation and
test sets for every method). Resumable: a cell with ``final.json`` is skipped, a cell with training
checkpoints continues with ``--resume``. A cell that fails with a :class:`LoreError` is recorded
and the sweep goes on; the command exits non-zero at the end if any cell failed.

``OUT/table.md`` and ``OUT/table.json`` hold mean +- std of test top-1 (%) over seeds per
(method, dataset, shots), in the paper's layout: methods as rows, datasets as columns, plus the
average over datasets. They are written once every cell has an outcome; `lore grid status OUT`
(or ``--status``) shows a running sweep's progress. ``--launcher local --jobs N`` / ``--launcher
slurm`` run the cells on several processes (:mod:`lore.grid`), with the same table.

``--datasets`` entries are ``NAME=PATH[:FORMAT][:OPTION=VALUE]...``: options after the path apply to
that dataset's cells only (e.g. ``flowers=~/data/flowers:dataset=flowers:wd=0.5``). Method
``lore-no-kp`` is ``--method lore --no-kp``. ``lore sweep merge DIR... --out DIR`` joins the tables of
several sweeps into one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import statistics
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from . import config as config_mod
from .config import TrainConfig
from .errors import LoreError
from .io import atomic_write_json, atomic_write_text, read_json
from .cells import refuse_changed

# TrainConfig fields the grid sets per cell (not passed through from the command line)
GRID_FIELDS = {"method", "data", "format", "shots", "seed", "out", "resume", "dry_run", "num_classes"}
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OPTION = re.compile(r"^([a-z][a-z0-9_-]*)=(.*)$")


@dataclass(frozen=True)
class Dataset:
    name: str
    path: str
    format: str = "imagefolder"
    options: tuple[tuple[str, object], ...] = ()  # training options for this dataset's cells only


@dataclass(frozen=True)
class Cell:
    dataset: Dataset
    method: str
    shots: int
    seed: int

    def run_dir(self, out: Path) -> Path:
        return out / self.dataset.name / self.method / f"{self.shots}shot" / f"seed{self.seed}"

    def label(self) -> str:
        return f"{self.method} / {self.dataset.name} / {self.shots}-shot / seed {self.seed}"


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("merge", nargs="*", metavar="merge DIR",
                        help="`lore sweep merge DIR... --out DIR`: join the tables of finished sweeps")
    parser.add_argument("--methods",
                        help="comma-separated methods, e.g. lore,lore-no-kp,coop,clip-adapter,tip-adapter-f,"
                             "vpt-deep,zeroshot")
    parser.add_argument("--datasets",
                        help="comma-separated NAME=PATH[:FORMAT][:OPTION=VALUE]... (FORMAT: imagefolder, "
                             "vpt-json, coop-split, csv; default imagefolder; OPTION: any training option, "
                             "for this dataset's cells only, e.g. flowers=~/data/flowers:dataset=flowers:wd=0.5)")
    parser.add_argument("--shots", help="comma-separated shots per class, e.g. 16,8")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default: 1,2,3)")
    parser.add_argument("--out", required=True, help="sweep directory (cells, table.md, table.json)")
    group = parser.add_argument_group("training options for every cell (as in `lore train`)")
    config_mod.add_arguments(group, skip=GRID_FIELDS)
    from .grid.options import add_launcher_arguments
    add_launcher_arguments(parser)


def main(args: argparse.Namespace) -> dict:
    from .io import refuse_run_folder

    refuse_run_folder(args.out)  # never a run's folder, nor inside one
    from .grid import LaunchOptions
    launch = LaunchOptions.from_args(args)
    if launch.status:
        from .grid.status import show
        return show(Path(args.out))
    if args.merge:
        if args.merge[0] != "merge" or len(args.merge) < 2:
            raise LoreError("lore sweep: the only positional form is `lore sweep merge DIR... --out DIR`")
        return merge([Path(d) for d in args.merge[1:]], Path(args.out))
    for flag in ("methods", "datasets", "shots"):
        if not getattr(args, flag):
            raise LoreError(f"lore sweep: --{flag} is required")
    methods = split_values(args.methods, str, "--methods")
    check_methods(methods)
    datasets = parse_datasets(args.datasets)
    shots = split_values(args.shots, int, "--shots")
    seeds = split_values(args.seeds, int, "--seeds")
    if min(shots) < 1:
        raise LoreError(f"--shots must all be >= 1, got {shots}")
    base = dict(config_mod.load_yaml(args.config)) if getattr(args, "config", None) else {}
    base.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in GRID_FIELDS and hasattr(args, f.name)})
    from .models.registry import refuse_row_options
    refuse_row_options(methods, base, "lore sweep")
    return run_sweep(Path(args.out), methods, datasets, shots, seeds, base, launch)


def split_values(text: str, cast, flag: str) -> list:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise LoreError(f"{flag}: empty list")
    try:
        values = [cast(s) for s in items]
    except ValueError:
        raise LoreError(f"{flag} {text!r}: expected comma-separated {cast.__name__} values") from None
    if cast is float:  # `--wds -0` is 0: one value, one folder name (wd0), never a second "wd-0"
        values = [v + 0.0 for v in values]
    if len(set(values)) != len(values):
        raise LoreError(f"{flag} {text!r}: repeated values")
    check_grid_values(flag, values)
    return values


def check_grid_values(flag: str, values: list) -> None:
    """A grid list's range, before the grid writes anything (a bad rate would otherwise fail every
    cell, and a re-run over a finished grid would replace its table with failures)."""
    from .values import GRID_RANGES, SEED_MAX

    if flag not in GRID_RANGES:
        return
    low, inclusive = GRID_RANGES[flag]
    for v in values:
        if not math.isfinite(v) or v < low or (v == low and not inclusive) or (flag == "--seeds" and v > SEED_MAX):
            bound = f"0..{SEED_MAX}" if flag == "--seeds" else f"{'>=' if inclusive else '>'} {low:g}"
            raise LoreError(f"{flag}: {v!r:.40} is out of range; every value must be {bound} (finite)")


def check_methods(methods: list[str]) -> None:
    from .models.registry import aliases, available_methods

    known = available_methods() + list(aliases())
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise LoreError(f"--methods: unknown {unknown}; choose from: {', '.join(known)}")


def parse_datasets(text: str) -> list[Dataset]:
    """``NAME=PATH[:FORMAT][:OPTION=VALUE]...,...`` -> datasets.

    Trailing ``:`` segments are read as a format (if they name one) or as ``option=value`` (if the
    option is a training option); everything before them is the path, which may itself hold ``:``."""
    from .data import FORMATS

    known = {f.name for f in fields(TrainConfig)} - GRID_FIELDS
    out: list[Dataset] = []
    for item in split_values(text, str, "--datasets"):
        name, sep, rest = item.partition("=")
        if not sep or not rest:
            raise LoreError(f"--datasets: expected NAME=PATH[:FORMAT][:OPTION=VALUE], got {item!r}")
        if not DATASET_NAME.match(name):
            raise LoreError(f"--datasets: dataset name {name!r} must be letters, digits, '_', '-', '.'")
        parts = rest.split(":")
        fmt, options = "imagefolder", {}
        while len(parts) > 1:
            last = parts[-1]
            match = OPTION.match(last)
            if match:
                key = match.group(1).replace("-", "_")
                if key not in known:
                    raise LoreError(f"--datasets {name}: {key!r} is not a training option the sweep "
                                    f"passes per dataset (e.g. wd, epochs, lr, dataset, template)")
                options.setdefault(key, _option_value(match.group(2)))
            elif last in FORMATS:
                fmt = last
            else:
                break
            parts.pop()
        path = ":".join(parts)
        if not path:
            raise LoreError(f"--datasets {name}: empty path in {item!r}")
        out.append(Dataset(name, path, fmt, tuple(sorted(options.items()))))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise LoreError(f"--datasets: repeated dataset name in {names}")
    return out


# ---------------------------------------------------------------------------------------------
# the grid


def run_sweep(out: Path, methods: list[str], datasets: list[Dataset], shots: list[int], seeds: list[int],
              base: dict, launch=None) -> dict:
    """Run (or skip) every cell on the launcher (:mod:`lore.grid`; default: in this process), then
    write the table; raise LoreError if any cell failed."""
    from .grid import run_phase

    cells = [Cell(d, m, k, s) for d in datasets for k in shots for m in methods for s in seeds]
    refuse_changed_recipes([(cell, out, base, {}) for cell in cells])
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_phase(out, "sweep", [(cell_config(cell, out, base), f"[{i}/{len(cells)}] {cell.label()}:")
                                        for i, cell in enumerate(cells, 1)], launch)
    results = {cell: ({"status": "done", "test_acc1": o["final"]["test_acc1"]} if o["status"] == "done" else o)
               for cell, o in zip(cells, outcomes)}
    table = summarise(out, cells, results, methods, datasets, shots, seeds)
    write_table(out, table)
    print(render_markdown(table))
    failed = table["failed"]
    if failed:
        raise LoreError(f"{len(failed)} of {len(cells)} sweep cells failed (first: {failed[0]['cell']}: "
                        f"{failed[0]['error']}); see {out / 'table.json'}; a re-run retries failed cells")
    return table


def refuse_changed_recipes(cells: list[tuple[Cell, Path, dict, dict]]) -> None:
    """A re-run with other options is refused before any file is touched: each (cell, output
    folder, options, cell_config keyword arguments) that already holds a run must have been run
    with them (:func:`lore.cells.refuse_changed`)."""
    refuse_changed([cell_config(cell, out, base, **kwargs) for cell, out, base, kwargs in cells])


def _option_value(text: str):
    """``0.5`` -> 0.5, ``true`` -> True, ``flowers`` -> 'flowers' (YAML scalars)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def cell_config(cell: Cell, out: Path, base: dict, recipe_backbone: str | None = None,
                shots_cap: int | None = None) -> TrainConfig:
    """The cell's options: defaults < recipe (``--recipe``) < ``base`` < the dataset's own options <
    the grid (method, data, shots, seed, out). A 0-shot cell trains on no sampled subset (zero-shot).

    ``recipe_backbone`` / ``shots_cap``: smoke runs on a stand-in backbone and tiny data keep the
    recipe of the cell's real backbone and shot count while training on at most ``shots_cap``."""
    from .recipes import apply_recipe

    shots = min(cell.shots, shots_cap) if cell.shots and shots_cap else cell.shots
    values = {**base, **dict(cell.dataset.options), "method": cell.method, "data": cell.dataset.path,
              "format": cell.dataset.format, "shots": shots or None, "seed": cell.seed,
              "out": str(cell.run_dir(out)), "resume": None, "dry_run": False}
    from .models.registry import aliases

    values.update(aliases().get(cell.method, {}))
    values = apply_recipe(values, config_mod.defaults(), recipe_backbone, recipe_shots=cell.shots or None)
    return config_mod.make(values, source="lore sweep")


# ---------------------------------------------------------------------------------------------
# the table


def summarise(out: Path, cells: list[Cell], results: dict[Cell, dict], methods: list[str],
              datasets: list[Dataset], shots: list[int], seeds: list[int]) -> dict:
    """Mean and std (sample, over seeds; 0 for one seed) of test top-1 in % per cell."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for cell in cells:
        run = {"seed": cell.seed, "run_dir": str(cell.run_dir(out)), "status": "pending"}
        run.update({k: v for k, v in results.get(cell, {}).items() if k != "how"})
        if "test_acc1" in run:
            run["test_acc1"] = 100.0 * run["test_acc1"]
        groups.setdefault((cell.method, cell.dataset.name, cell.shots), []).append(run)
    rows, failed = [], []
    for (method, dataset, k), runs in groups.items():
        accs = [r["test_acc1"] for r in runs if r["status"] == "done"]
        rows.append({"method": method, "dataset": dataset, "shots": k, "n": len(accs),
                     "mean": statistics.fmean(accs) if accs else None,
                     "std": statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None),
                     "runs": runs})
    return assemble(rows, methods, [dataclasses.asdict(d) for d in datasets], shots, seeds)


def assemble(rows: list[dict], methods: list[str], datasets: list[dict], shots: list[int],
             seeds: list[int]) -> dict:
    """The table from its per-(method, dataset, shots) rows: the average column and failed runs."""
    failed = [{"cell": f"{r['method']} / {r['dataset']} / {r['shots']}-shot / seed {run['seed']}",
               "error": run["error"]}
              for r in rows for run in r["runs"] if run["status"] == "failed"]
    means = {(r["method"], r["dataset"], r["shots"]): r["mean"] for r in rows}
    average = []
    for k in shots:
        for m in methods:
            vals = [means.get((m, d["name"], k)) for d in datasets]
            # the paper's average column: only over a complete row
            average.append({"method": m, "shots": k,
                            "mean": statistics.fmean(vals) if None not in vals else None})
    return {"metric": "test top-1 accuracy (%)", "methods": methods, "datasets": datasets,
            "shots": shots, "seeds": seeds, "cells": rows, "average": average, "failed": failed}


def merge(dirs: list[Path], out: Path) -> dict:
    """One table from the ``table.json`` of several sweeps (a cell measured twice is an error)."""
    rows: dict[tuple, dict] = {}
    where: dict[tuple, Path] = {}
    methods: list[str] = []
    datasets: dict[str, dict] = {}
    shots: list[int] = []
    seeds: list[int] = []
    if (out / "table.json").exists():  # an input's table, or another merge's: never replaced silently
        raise LoreError(f"lore sweep merge: --out {out} already holds a table.json"
                        f"{' (it is one of the tables merged)' if out.resolve() in [d.resolve() for d in dirs] else ''}; "
                        "choose a new --out")
    for d in dirs:
        path = d / "table.json"
        if not path.is_file():
            raise LoreError(f"lore sweep merge: {path} not found (not a finished sweep directory)")
        table = _sweep_table(read_json(path, "sweep table"), path)
        for key, target in (("methods", methods), ("shots", shots), ("seeds", seeds)):
            target += [v for v in table.get(key, []) if v not in target]
        for ds in table.get("datasets", []):
            datasets.setdefault(ds["name"], ds)
        for row in table.get("cells", []):
            key = (row["method"], row["dataset"], row["shots"])
            if key in rows and rows[key]["n"] and row["n"]:
                raise LoreError(f"lore sweep merge: {key[0]} / {key[1]} / {key[2]}-shot is in both "
                                f"{where[key]} and {d}; merge sweeps of different cells")
            if key not in rows or not rows[key]["n"]:
                rows[key], where[key] = row, d
    order = {m: i for i, m in enumerate(methods)}
    names = list(datasets)
    ordered = sorted(rows.values(), key=lambda r: (names.index(r["dataset"]), shots.index(r["shots"]),
                                                   order[r["method"]]))
    table = assemble(ordered, methods, list(datasets.values()), shots, seeds)
    table["merged_from"] = [str(d) for d in dirs]
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, table)
    print(render_markdown(table))
    return table


def _sweep_table(table, path: Path) -> dict:
    """A ``table.json`` as `lore sweep` writes it, or one error naming the file and what is wrong."""
    def bad(what: str):
        return LoreError(f"lore sweep merge: {path} is not a lore sweep table ({what})")

    if not isinstance(table, dict):
        raise bad(f"a JSON {type(table).__name__}, not an object")
    for key in ("methods", "shots", "seeds", "datasets", "cells"):
        if not isinstance(table.get(key), list):
            raise bad(f"no list {key!r}")
    if not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in table["datasets"]):
        raise bad("'datasets' entries need a name")
    for row in table["cells"]:
        if not (isinstance(row, dict) and isinstance(row.get("method"), str) and isinstance(row.get("dataset"), str)
                and isinstance(row.get("shots"), int) and isinstance(row.get("n"), int)):
            raise bad(f"a cell without method / dataset / shots / n: {str(row)[:80]}")
        if row["method"] not in table["methods"] or row["shots"] not in table["shots"] or \
                row["dataset"] not in [d["name"] for d in table["datasets"]]:
            raise bad(f"cell {row['method']} / {row['dataset']} / {row['shots']} is not in its own grid")
    return table


def render_markdown(table: dict) -> str:
    names = [d["name"] for d in table["datasets"]]
    cells = {(r["method"], r["dataset"], r["shots"]): r for r in table["cells"]}
    missing = {"n": 0, "runs": []}
    average = {(a["method"], a["shots"]): a["mean"] for a in table["average"]}
    seeds = table["seeds"]
    lines = [f"# lore sweep: {table['metric']}, mean ± std over seeds {', '.join(map(str, seeds))}", ""]
    for k in table["shots"]:
        lines += [f"## {k}-shot", "", "| Method | " + " | ".join(names) + " | Average |",
                  "|---|" + "---:|" * (len(names) + 1)]
        for m in table["methods"]:
            row = [_format_cell(cells.get((m, d, k), missing), len(seeds)) for d in names]
            avg = average[(m, k)]
            lines.append(f"| {m} | " + " | ".join(row) + f" | {'—' if avg is None else f'{avg:.2f}'} |")
        lines.append("")
    if table["failed"]:
        lines += ["## Failed cells", ""] + [f"- {f['cell']}: {f['error']}" for f in table["failed"]] + [""]
    return "\n".join(lines)


def _format_cell(row: dict, n_seeds: int) -> str:
    if row["n"] == 0:
        return "failed" if any(r["status"] == "failed" for r in row["runs"]) else "—"
    text = f"{row['mean']:.2f} ± {row['std']:.2f}"
    return text if row["n"] == n_seeds else f"{text} ({row['n']}/{n_seeds})"


def write_table(out: Path, table: dict) -> None:
    atomic_write_json(out / "table.json", table)
    atomic_write_text(out / "table.md", render_markdown(table))
