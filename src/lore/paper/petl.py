"""``lore paper vtab`` / ``lore paper fgvc``: LORE against VPT on the parameter-efficient tuning
community's benchmarks, with VPT's protocol and VPT's published numbers beside the measured ones.

The protocol (``petl.yaml``, from VPT's own tuning scripts), per method and task:

1. tune: every (learning rate, weight decay) of the method's grid trains once (first seed) on the
   tuning split and is scored on its validation split (VTAB-1k train800 -> val200; FGVC
   train.json -> val.json). A run that fails (e.g. diverges at a large rate) is out of the choice.
2. choose: the best validation top-1; ties go to the smaller learning rate (VPT's rule).
3. final: the chosen pair trains once per seed on the final split (VTAB-1k train800val200 -> test;
   FGVC train.json -> test.json); the cell is the mean test top-1 over seeds.

Every run is an ordinary ``lore train`` run directory, ``OUT/runs/<benchmark>/<task>/<method>/
tune/lr<L>_wd<W>/seed<S>`` and ``.../final/lr<L>_wd<W>/seed<S>``, run through the sweep's cell runner: a
finished run is reused, an interrupted one resumes, a run made with other options is refused before
anything is written. A task missing under ``--data-root`` leaves its cells "not run: PATH not found".
``OUT/table.md`` / ``table.csv`` / ``table.json`` hold methods x tasks, the group means, and VPT's
published numbers (``published_vpt.yaml``) beside each measured cell; ``table.json`` also records
every tuning run and the chosen pair.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ..errors import LoreError
from ..sweep import Cell, Dataset, cell_config, refuse_changed_recipes
from ..models.registry import aliases, resolve
from .runner import Value, mean_of, write_table_files

HERE = Path(__file__).parent
BENCHMARKS = ("vtab", "fgvc")
# which VTAB-1k a table was made from (--vtab-source), said in --plan and table.md
SOURCE_TEXT = {
    "images": "VTAB-1k from the PETL repositories' image export (images/ + train800/val200/train800val200/test "
              "lists, as NOAH's get_vtab1k.py writes it): not VPT's data: its images are JPEG-compressed at "
              "PIL's default quality and users measure about 10 points less on CIFAR-100 than on VPT's (see "
              "the README, VTAB-1k sources); train800 / val200 are not class-stratified",
    "tfds": "VTAB-1k from the TensorFlow Datasets source with VPT's split definitions and preprocessing "
            "(224 x 224 bilinear resize, aspect not kept, ImageNet mean / std): the data VPT's numbers were "
            "made from",
}
# a task's classes without names get this class knowledge (--unnamed-classes)
UNNAMED_KNOWLEDGE = {"learned": "learned:512", "sentence": None}


@cache
def protocol() -> dict:
    return yaml.safe_load((HERE / "petl.yaml").read_text(encoding="utf-8"))


@cache
def published() -> dict:
    return yaml.safe_load((HERE / "published_vpt.yaml").read_text(encoding="utf-8"))


def groups(bench: str) -> dict[str, tuple[str, ...]]:
    """group -> tasks in VPT's column order (VTAB-1k: natural, specialized, structured; FGVC: one)."""
    return {g: tuple(tasks) for g, tasks in published()[bench]["groups"].items()}


def tasks(bench: str) -> tuple[str, ...]:
    return tuple(t for members in groups(bench).values() for t in members)


def find_task(bench: str, task: str, data_root: Path) -> Path | None:
    """The task's folder under the data root, by any name the PETL repositories give it."""
    if bench == "fgvc":
        from ..data.fgvc import find

        return find(task, data_root)
    from ..data.vtab import find

    return find(task, data_root)


def has_class_names(bench: str, task: str) -> bool:
    if bench == "fgvc":
        return task != "nabirds"  # its image folders are numbered
    from ..data.vtab import NAMED_BY

    return task in NAMED_BY or task == "svhn"


def lr_wd_grid(bench: str, method: str, lrs: list[float] | None = None,
               wds: list[float] | None = None) -> list[tuple[float, float]]:
    """(VPT base learning rate, weight decay) pairs a method is tuned over."""
    family = protocol()["method_grid"].get(method, "prompt")
    grid = protocol()["benchmarks"][bench]["grids"][family]
    return [(lr, wd) for lr in (lrs or grid["lr"]) for wd in (wds or grid["wd"])]


@dataclass(frozen=True)
class Run(Cell):
    """One run of the protocol: a tuning pair (``stage`` tune) or a final seed."""
    stage: str = "final"
    lr: float = 0.0
    wd: float = 0.0

    def run_dir(self, out: Path) -> Path:
        # the chosen pair names the final folder too: a new choice trains new runs, never mixes them
        return out / self.dataset.name / self.method / self.stage / f"lr{number(self.lr)}_wd{number(self.wd)}" / f"seed{self.seed}"

    def label(self) -> str:
        pair = f"lr {self.lr:g}, wd {self.wd:g}"
        return f"{self.method} / {self.dataset.name} / {self.stage} {pair} / seed {self.seed}"


def number(x: float) -> str:
    """A grid value in a folder name: ``:g`` (the names finished grids already use) unless that loses
    digits, then the shortest form that reads back as the same float (0.1 and 0.1000001 differ)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


@dataclass
class Plan:
    """What the grid is: benchmark, methods, tasks (with their folders or why not), seeds, grid."""
    bench: str
    methods: list[str]
    tasks: list[str]
    seeds: list[int]
    folders: dict[str, Path | None]
    lrs: list[float] | None = None
    wds: list[float] | None = None
    shots_cap: int | None = None
    unnamed: str = "learned"
    root: Path = Path(".")
    source: str = "images"  # vtab: the image export or a TFDS data dir (--vtab-source)


def run_options(plan: Plan, base: dict, task: str, method: str, lr: float, wd: float) -> dict:
    """A run's own options, over the protocol's schedule, the benchmark's and the user's flags."""
    batch = base.get("batch_size", protocol()["schedule"]["batch_size"])
    options = {"lr": lr / protocol()["lr_reference_batch"] * batch, "wd": wd}
    if resolve(method)[0].learned_knowledge and not has_class_names(plan.bench, task):
        knowledge = UNNAMED_KNOWLEDGE[plan.unnamed]
        if knowledge:  # --knowledge serves the tasks with class names
            options["knowledge"] = knowledge
    return options


def protocol_base(plan: Plan, base: dict) -> dict:
    p = protocol()
    values = {"backbone": p["backbone"], **p["schedule"], **p["benchmarks"][plan.bench]["options"], **base}
    if "epochs" in base and "warmup_epochs" not in base:
        values["warmup_epochs"] = scaled_warmup(values["epochs"])
    return values


def scaled_warmup(epochs: int) -> int:
    """VPT's warm-up share of a shorter (or longer) schedule: 10 of 100 epochs, rounded down, so a
    smoke run of a few epochs trains at its rates instead of warming up for all of them."""
    schedule = protocol()["schedule"]
    return schedule["warmup_epochs"] * epochs // schedule["epochs"]


def say_scaled_warmup(plan: Plan, base: dict) -> None:
    """One line when --epochs shortens (or lengthens) VPT's schedule and its warm-up with it."""
    schedule, values = protocol()["schedule"], protocol_base(plan, base)
    if values["warmup_epochs"] != schedule["warmup_epochs"] and "warmup_epochs" not in base:
        print(f"lore paper {plan.bench}: --epochs {values['epochs']}: VPT's warm-up is scaled to "
              f"{values['warmup_epochs']} epoch(s) ({schedule['warmup_epochs']} of its {schedule['epochs']}); "
              "--warmup-epochs N sets it", file=sys.stderr)


def make_run(plan: Plan, base: dict, task: str, method: str, stage: str, seed: int, lr: float,
             wd: float) -> Run:
    bench = protocol()["benchmarks"][plan.bench]
    fmt = bench["formats" if plan.source == "images" else f"formats_{plan.source}"][stage]
    options = run_options(plan, base, task, method, lr, wd)
    dataset = Dataset(task, str(plan.folders[task]), fmt, tuple(sorted(options.items())))
    return Run(dataset, method, plan.shots_cap or 0, seed, stage, lr, wd)


def tune_runs(plan: Plan, base: dict, task: str, method: str) -> list[Run]:
    return [make_run(plan, base, task, method, "tune", plan.seeds[0], lr, wd)
            for lr, wd in lr_wd_grid(plan.bench, method, plan.lrs, plan.wds)]


def choose(tuned: list[tuple[Run, dict]]) -> tuple[float, float] | None:
    """The pair with the best validation top-1; ties: the smaller learning rate, then the larger wd."""
    done = [(r["final"]["test_acc1"], -run.lr, run.wd, run) for run, r in tuned if r["status"] == "done"]
    if not done:
        return None
    best = max(done, key=lambda t: t[:3])[3]
    return best.lr, best.wd


# ---------------------------------------------------------------------------------------------
# running the grid


def run_plan(plan: Plan, out: Path, base: dict, launch=None) -> dict[tuple[str, str], dict]:
    """{(method, task): {"tuned": [...], "chosen": (lr, wd) | None, "finals": [...], "missing": str}}.

    Two grid phases on the launcher (:mod:`lore.grid`): every tuning run of every (method, task),
    then, once the whole tuning grid has an outcome (runs other processes hold are waited for),
    the choice of (lr, wd) per (method, task) and the final seeds on it. The choice is made on the
    complete tuning grid only, so every process sharing the --out picks the same pair."""
    from ..grid import run_phase

    runs_dir = out / "runs" / plan.bench
    values = protocol_base(plan, base)
    present = [t for t in plan.tasks if plan.folders[t] is not None]
    # every tuning run made earlier with other options is refused here, before anything is written
    refuse_changed_recipes([(run, runs_dir, values, {}) for t in present for m in plan.methods
                            for run in tune_runs(plan, base, t, m)])
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused grid leaves no empty --out behind
    results: dict[tuple[str, str], dict] = {}
    pairs = [(m, t) for t in plan.tasks for m in plan.methods]
    heads = {pair: f"[{i}/{len(pairs)}] {plan.bench} / {pair[1]} / {pair[0]}:" for i, pair in enumerate(pairs, 1)}
    tuning: dict[tuple[str, str], list[Run]] = {}
    for method, task in pairs:
        if plan.folders[task] is None:
            results[(method, task)] = {"missing": f"not run: {plan.root / task} not found"}
            print(f"{heads[(method, task)]} {results[(method, task)]['missing']}", file=sys.stderr)
        else:
            tuning[(method, task)] = tune_runs(plan, base, task, method)
    outcomes = iter(run_phase(out, f"{plan.bench}-tune", [
        (cell_config(run, runs_dir, values), f"{heads[pair]} tune lr {run.lr:g} wd {run.wd:g}:")
        for pair, runs in tuning.items() for run in runs], launch))
    finals: dict[tuple[str, str], list[Run]] = {}
    for (method, task), runs in tuning.items():
        tuned = [(run, next(outcomes)) for run in runs]
        results[(method, task)] = entry = _tuning_entry(tuned)
        if entry["chosen"] is not None:
            finals[(method, task)] = [make_run(plan, base, task, method, "final", seed, *entry["chosen"])
                                      for seed in plan.seeds]
    refuse_changed_recipes([(run, runs_dir, values, {}) for runs in finals.values() for run in runs])
    outcomes = iter(run_phase(out, f"{plan.bench}-final", [
        (cell_config(run, runs_dir, values), f"{heads[pair]} final lr {run.lr:g} wd {run.wd:g} seed {run.seed}:")
        for pair, runs in finals.items() for run in runs], launch))
    for pair, runs in finals.items():
        for run in runs:
            r = next(outcomes)
            results[pair]["finals"].append({"seed": run.seed, "status": r["status"], "error": r.get("error"),
                                            "test_acc1": (r.get("final") or {}).get("test_acc1")})
    return {pair: results[pair] for pair in pairs}


def _tuning_entry(tuned: list[tuple[Run, dict]]) -> dict:
    """A (method, task)'s tuning runs and its choice; none while a run is still pending (--no-wait)."""
    entry = {"tuned": [{"lr": run.lr, "wd": run.wd, "status": r["status"], "error": r.get("error"),
                        "val_acc1": (r.get("final") or {}).get("test_acc1")} for run, r in tuned],
             "chosen": None, "finals": []}
    if any(r["status"] == "pending" for _, r in tuned):
        entry["error"] = "the tuning grid is still running (submitted with --no-wait); run the command again"
    else:
        entry["chosen"] = choose(tuned)
        if entry["chosen"] is None:
            entry["error"] = "no (lr, wd) pair of the tuning grid trained"
    return entry


# ---------------------------------------------------------------------------------------------
# the table


def cell_value(entry: dict) -> Value:
    """Mean test top-1 (%) over the final seeds, or why there is none."""
    if "missing" in entry:
        return Value(note=entry["missing"])
    done = [100.0 * f["test_acc1"] for f in entry["finals"] if f["status"] == "done"]
    if not done:
        first = next((f for f in entry["finals"] if f["status"] != "done"), None)
        return Value(note=f"failed: {first['error'] if first else entry.get('error', 'no run')}")
    n = len(entry["finals"])
    return Value(statistics.fmean(done), "" if len(done) == n else f"{len(done)}/{n} seeds")


def table_rows(plan: Plan, results: dict) -> list[dict]:
    """One row per method: {task or group: Value} and the published row (VPT's methods)."""
    pub = {r["method"]: r for r in published()[plan.bench]["rows"]}
    rows = []
    for method in plan.methods:
        values = {t: cell_value(results[(method, t)]) for t in plan.tasks}
        for group, members in groups(plan.bench).items():
            measured = [values[t] for t in members if t in values and values[t].value is not None]
            if measured:  # a partial group says over how many of its tasks, and is not compared
                values[group] = mean_of(measured)
                if len(measured) < len(members):
                    values[group].note = f"over {len(measured)} of {len(members)}"
            elif any(t in values for t in members):
                values[group] = Value(note="no task measured")
        rows.append({"method": method, "values": values, "published": pub.get(method, {})})
    return rows


def _text(v: Value, published_value: float | None) -> str:
    pub = "" if published_value is None else f" / {published_value:.2f}"
    if v.value is None:
        return (v.note or "—") + pub
    partial = v.note.startswith("over ")
    diff = f" ({v.value - published_value:+.2f})" if published_value is not None and not partial else ""
    return f"{v.value:.2f}{pub}{diff}" + (f" [{v.note}]" if v.note else "")


def render_markdown(plan: Plan, rows: list[dict], results: dict) -> str:
    columns = list(plan.tasks) + [g for g in groups(plan.bench) if any(g in r["values"] for r in rows)]
    spec = published()
    lines = [f"# {plan.bench}: {spec[plan.bench]['caption']}", "",
             f"Each cell: measured (mean test top-1 over seeds {', '.join(map(str, plan.seeds))}) / "
             f"published (difference). Published: {spec['source']}.", "",
             "Protocol: VPT's (lore/paper/petl.yaml): learning rate and weight decay picked on the tuning "
             "split, then trained per seed on the final split.", "",
             *([f"Data (--vtab-source {plan.source}): {SOURCE_TEXT[plan.source]}.", ""] if plan.bench == "vtab" else []),
             "| Method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(_text(r["values"].get(c, Value()), r["published"].get(c))
                                                    for c in columns) + " |")
    unmeasured = [r for r in spec[plan.bench]["rows"] if r["method"] not in plan.methods]
    for r in unmeasured:  # VPT's rows not in this grid, for reference
        lines.append(f"| {r['paper_row']} (published) | " + " | ".join(
            "" if r.get(c) is None else f"{r[c]:.2f}" for c in columns) + " |")
    lines += ["", "Chosen (lr, wd) per method and task (VPT base learning rate; the rate used is "
              "lr / 256 x batch):", ""]
    for (method, task), entry in results.items():
        if entry.get("chosen"):
            lines.append(f"- {method} / {task}: lr {entry['chosen'][0]:g}, wd {entry['chosen'][1]:g}")
    return "\n".join(lines) + "\n"


def records(plan: Plan, rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        for column, v in r["values"].items():
            pub = r["published"].get(column)
            out.append({"benchmark": plan.bench, "method": r["method"], "column": column,
                        "measured": v.value, "published": pub,
                        "difference": None if v.value is None or pub is None or v.note else v.value - pub,
                        "status": "measured" if v.value is not None else (v.note or "not measured")})
    return out


def write_outputs(plan: Plan, rows: list[dict], results: dict, out: Path) -> None:
    recs = records(plan, rows)
    write_table_files(out, recs, render_markdown(plan, rows, results), {
        "benchmark": plan.bench, "seeds": plan.seeds, "records": recs,
        **({"vtab_source": plan.source} if plan.bench == "vtab" else {}),
        "runs": [{"method": m, "task": t, **entry} for (m, t), entry in results.items()]})


# ---------------------------------------------------------------------------------------------
# the command


def make_plan(bench: str, data_root: Path, seeds: list[int] | None, methods: list[str] | None,
              task_names: list[str] | None, **extra) -> Plan:
    offered = tasks(bench)
    allowed = set(protocol()["method_grid"])
    for flag, asked, known in (("--datasets", task_names, offered), ("--methods", methods, allowed)):
        unknown = [v for v in asked or [] if v not in known]
        if unknown:
            raise LoreError(f"lore paper {bench}: {flag} {', '.join(unknown)} not in this benchmark "
                            f"(it has: {', '.join(sorted(known))})")
    chosen = [t for t in offered if not task_names or t in task_names]
    if extra.get("source", "images") != "images":
        if bench != "vtab":
            raise LoreError(f"--vtab-source {extra['source']}: lore paper {bench} reads its own layout; "
                            "the TFDS source is VTAB-1k's")
        from ..data.vtab_tfds import locate
        # a run's --data is DATA_DIR/TASK: the reader finds the task's TFDS folder from it
        folders = {t: data_root / t if locate(data_root, t) else None for t in chosen}
    else:
        folders = {t: find_task(bench, t, data_root) for t in chosen}
    return Plan(bench, list(methods or protocol()["methods"]), chosen, list(seeds or protocol()["seeds"]),
                folders, root=data_root, **extra)


def check_tasks(plan: Plan, base: dict) -> None:
    """Read every found task once, with each protocol's lists and the checks a run makes, before the
    grid starts: a problem that would fail all of a task's runs (classes without images, a list
    naming a missing file) is said once, naming the task, not by each of its tuning runs."""
    from ..data.datasets import check_class_coverage, check_split_integrity, load_dataset

    if plan.source != "images":  # a TFDS data dir is read (and checked) by its own reader
        return
    allow = bool(protocol_base(plan, base).get("allow_missing_classes"))
    for task in (t for t in plan.tasks if plan.folders[t] is not None):
        for fmt in dict.fromkeys(protocol()["benchmarks"][plan.bench]["formats"].values()):
            try:
                data = load_dataset(str(plan.folders[task]), fmt)
                check_split_integrity(data)
                check_class_coverage(data, allow, warn=lambda message: None)
            except LoreError as e:
                raise LoreError(f"lore paper {plan.bench}: task {task} ({fmt}): {e}; every run of it would fail "
                                "(fix the folder, or leave the task out with --datasets)") from None


def check_base(base: dict) -> None:
    for key in ("lr", "wd"):
        if key in base:  # the protocol picks them; a fixed value would make the tuning meaningless
            raise LoreError(f"--{key}: lore paper vtab / fgvc picks the learning rate and weight decay on "
                            "the validation split; set the grid with --lrs / --wds instead")


def check_scaled_rates(plan: Plan, base: dict) -> None:
    """Every base rate of the grid, scaled to the batch (lr / 256 x batch), is a usable rate: named
    as --lrs, never as the scaled --lr of one run (1e308 x 512 / 256 overflows, 5e-324 / 256 is 0)."""
    batch = base.get("batch_size", protocol()["schedule"]["batch_size"])
    for method in plan.methods:
        for lr, _ in lr_wd_grid(plan.bench, method, plan.lrs, plan.wds):
            used = lr / protocol()["lr_reference_batch"] * batch
            if not math.isfinite(used) or used <= 0:
                raise LoreError(f"--lrs: {lr!r} scales to a learning rate of {used!r} at --batch-size {batch} "
                                f"(lr / {protocol()['lr_reference_batch']} x batch); give a rate that stays "
                                "finite and > 0")


def main(args, base: dict) -> dict:
    from ..sweep import split_values

    check_base(base)
    bench, root, out = args.table, Path(args.data_root).expanduser(), Path(args.out)
    if args.shots:
        raise LoreError(f"--shots: lore paper {bench} trains on all of each task's training images "
                        "(--shots-cap N caps them for smoke runs)")
    extra = {"lrs": split_values(args.lrs, float, "--lrs") if args.lrs is not None else None,
             "wds": split_values(args.wds, float, "--wds") if args.wds is not None else None,
             "shots_cap": args.shots_cap, "unnamed": args.unnamed_classes,
             "source": getattr(args, "vtab_source", "images")}
    plan = make_plan(bench, root, split_values(args.seeds, int, "--seeds") if args.seeds is not None else None,
                     split_values(args.methods, str, "--methods") if args.methods else None,
                     split_values(args.datasets, str, "--datasets") if args.datasets else None, **extra)
    from ..models.registry import refuse_row_options
    refuse_row_options(plan.methods, base, f"lore paper {bench}")
    check_scaled_rates(plan, base)
    say_scaled_warmup(plan, base)
    if args.plan:
        return print_plan(plan, base, args.bench, args.measure)
    check_tasks(plan, base)
    from ..grid import LaunchOptions
    results = run_plan(plan, out, base, LaunchOptions.from_args(args))
    rows = table_rows(plan, results)
    write_outputs(plan, rows, results, out)
    print((out / "table.md").read_text(encoding="utf-8"))
    failed = [k for k, e in results.items() if "missing" not in e and cell_value(e).value is None]
    if failed:
        raise LoreError(f"{len(failed)} of {len(results)} cells have no result (first: {' / '.join(failed[0])}: "
                        f"{cell_value(results[failed[0]]).note}); see {out / 'table.json'}")
    # a failed tuning run changes the choice of (lr, wd), a failed seed the mean: never a clean exit
    runs = [(k, stage, r) for k, e in results.items() if "missing" not in e
            for stage in ("tuned", "finals") for r in e.get(stage, [])]
    bad = [(k, stage, r) for k, stage, r in runs if r["status"] != "done"]
    if bad:
        (method, task), stage, r = bad[0]
        which = f"lr {r['lr']:g} wd {r['wd']:g}" if stage == "tuned" else f"seed {r['seed']}"
        raise LoreError(f"{len(bad)} of {len(runs)} runs failed (first: {method} / {task} "
                        f"{'tuning' if stage == 'tuned' else 'final'} {which}: {r['error']}); the table is "
                        f"written, see {out / 'table.json'}")
    return {"cells": len(results)}


def _entries(path: Path) -> int:
    """Entries of a split list, read and checked by the training reader (a broken list is refused
    here as `lore train` would refuse it): keys of a VPT .json, lines of a VTAB-1k .txt."""
    if path.suffix == ".json":
        from ..data.fgvc import _read_split
        return len(_read_split(path))
    from ..data.vtab import read_list
    return len(read_list(path, path.parent))


SPLIT_LISTS = {"vtab": {"tune_train": "train800.txt", "tune_val": "val200.txt", "train": "train800val200.txt",
                        "test": "test.txt"},
               "fgvc": {"tune_train": "train.json", "tune_val": "val.json", "train": "train.json",
                        "test": "test.json"}}


def _split_sizes(plan: Plan, task: str) -> dict[str, int]:
    """Images per split of a found task, read from its lists (0 where a list is absent or unreadable);
    from a TFDS data dir, from the shard lengths of dataset_info.json (no record read)."""
    if plan.source == "tfds":
        from ..data.vtab_tfds import list_sizes
        n = list_sizes(plan.root, task) or {"train800": 0, "val200": 0, "test": 0}
        return {"tune_train": n["train800"], "tune_val": n["val200"], "train": n["train800"] + n["val200"],
                "test": n["test"]}
    sizes = {}
    for key, name in SPLIT_LISTS[plan.bench].items():
        path = plan.folders[task] / name
        sizes[key] = _entries(path) if path.is_file() else 0
    return sizes


def _where(plan: Plan, task: str) -> Path | None:
    if plan.folders[task] is None or plan.source != "tfds":
        return plan.folders[task]
    from ..data.vtab_tfds import list_sizes, locate
    n = list_sizes(plan.root, task) or {}
    return Path(f"{locate(plan.root, task)}  ({', '.join(f'{k} {v}' for k, v in n.items())})")


def print_plan(plan: Plan, base: dict, bench_file: str | None, measure: bool) -> dict:
    """The grid and its cost: images per run from the task's own lists, rates as `lore paper --plan`."""
    from .plan import BENCH_PROXY, bench_rates, measure_rates

    values = protocol_base(plan, base)
    epochs = values["epochs"]
    lines = [f"lore paper {plan.bench}: {published()[plan.bench]['caption']}"]
    if plan.bench == "vtab":
        lines.append(f"data: {SOURCE_TEXT[plan.source]}")
    lines += [f"  {t:22s} {_where(plan, t) or 'MISSING'}" for t in plan.tasks]
    images = {m: 0 for m in plan.methods}
    runs = 0
    for t in plan.tasks:
        if plan.folders[t] is None:
            continue
        n = _split_sizes(plan, t)
        for m in plan.methods:
            grid = len(lr_wd_grid(plan.bench, m, plan.lrs, plan.wds))
            runs += grid + len(plan.seeds)
            images[m] += grid * (n["tune_train"] * epochs + n["tune_val"]) + \
                len(plan.seeds) * (n["train"] * epochs + n["test"])
    lines.append(f"methods: {', '.join(plan.methods)}; seeds: {', '.join(map(str, plan.seeds))}; "
                 f"{epochs} epochs per run")
    lines.append(f"total: {runs} runs (tuning grid + final seeds on the found tasks), "
                 f"{sum(images.values()):,} images to process")
    sources = {f"--bench {bench_file}": bench_rates(bench_file)} if bench_file else {}
    if measure:
        backbone = values["backbone"]
        sources[f"measured here ({backbone})"] = measure_rates(backbone, values)
    seconds = {}
    for name, rates in sources.items():
        total = 0.0
        for m, count in images.items():
            real = aliases().get(m, {}).get("method", m)
            rate = rates.get(BENCH_PROXY.get(real, "lore")) or rates.get("lore") or {}
            total += count / rate["train_images_per_s"] if rate.get("train_images_per_s") else 0.0
        seconds[name] = total
        lines.append(f"estimate from {name}: {total / 3600:.1f} h ({total / 86400:.2f} days)")
    text = "\n".join(lines)
    print(text)
    return {"runs": runs, "images": images, "estimate_seconds": seconds, "text": text}
