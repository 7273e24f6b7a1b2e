"""Run a table's grid through the sweep machinery and lay the results out as the paper does.

Cells are ordinary ``lore train`` run directories, ``OUT/runs/<group tag>/<dataset>/<method>/
<K>shot/seed<S>``: a finished cell is skipped, an interrupted one resumes, a dataset missing under
the data root leaves its cells "not run: <path> not found" and the rest of the table intact.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoreError
from ..io import atomic_write_json, atomic_write_text
from ..sweep import Cell, Dataset, cell_config, refuse_changed_recipes
from .tables import Group, Table, dataset_groups, published_columns, published_rows


@dataclass
class Grid:
    """What to run: the table's groups narrowed by --methods / --datasets, and the seeds."""
    table: Table
    groups: list[Group]
    seeds: list[int]


def narrow(table: Table, seeds: list[int], methods: list[str] | None = None,
           datasets: list[str] | None = None, shots: list[int] | None = None) -> Grid:
    for flag, asked, offered in (("--methods", methods, {m for g in table.groups for m in g.methods}),
                                 ("--datasets", datasets, {d for g in table.groups for d in g.datasets}),
                                 ("--shots", shots, {k for g in table.groups for k in g.shots if k})):
        unknown = [v for v in asked or [] if v not in offered]
        if unknown:  # a typo would otherwise drop that part of the table without a word
            raise LoreError(f"{table.name}: {flag} {', '.join(map(str, unknown))} is not in this table "
                            f"(it has: {', '.join(map(str, sorted(offered)))})")
    groups = []
    for g in table.groups:
        ms = tuple(m for m in g.methods if not methods or m in methods)
        ds = tuple(d for d in g.datasets if not datasets or d in datasets)
        ks = tuple(k for k in g.shots if not shots or k in shots or k == 0)  # zero-shot rows stay
        if ms and ds and ks:
            groups.append(Group(g.tag, g.backbone, ms, ds, ks, g.curriculum))
    if not groups:
        raise LoreError(f"{table.name}: --methods / --datasets / --shots leave no cell to run "
                        f"(methods: {sorted({m for g in table.groups for m in g.methods})}, "
                        f"datasets: {sorted({d for g in table.groups for d in g.datasets})})")
    return Grid(table, groups, seeds)


def cells(grid: Grid, data_root: Path) -> list[tuple[Group, Cell]]:
    from ..data.catalog import dataset_dir

    out = []
    for g in grid.groups:
        for d in g.datasets:
            dataset = Dataset(d, str(dataset_dir(d, data_root)), options=(("dataset", d),))
            out += [(g, Cell(dataset, m, k, s)) for k in g.shots for m in g.methods for s in grid.seeds]
    return out


def run_grid(grid: Grid, data_root: Path, out: Path, base: dict,
             shots_cap: int | None = None, launch=None) -> dict[tuple, dict]:
    """Every cell's result: {"status": done | failed | missing, "final": ..., "error": ...}, the
    cells run on the launcher (:mod:`lore.grid`; default: one after another in this process)."""
    from ..data.catalog import missing
    from ..grid import run_phase

    todo = cells(grid, data_root)
    results: dict[tuple, dict] = {}
    absent = {d: missing(d, data_root) for g in grid.groups for d in g.datasets}
    # a re-run with changed options stops here, before table.md is rewritten with every cell failed
    refuse_changed_recipes([(cell, out / "runs" / group.tag, _cell_values(base, group),
                             {"recipe_backbone": group.backbone, "shots_cap": shots_cap})
                            for group, cell in todo if not absent[cell.dataset.name]])
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused grid leaves no empty --out behind
    runnable: dict[tuple, tuple] = {}
    for i, (group, cell) in enumerate(todo, 1):
        key = (group.tag, cell.method, cell.dataset.name, cell.shots, cell.seed)
        prefix = f"[{i}/{len(todo)}] {group.tag} / {cell.label()}:"
        if absent[cell.dataset.name]:
            print(f"{prefix} not run: {absent[cell.dataset.name]}", file=sys.stderr)
            continue
        runnable[key] = (cell_config(cell, out / "runs" / group.tag, _cell_values(base, group),
                                     recipe_backbone=group.backbone, shots_cap=shots_cap), prefix)
    outcomes = dict(zip(runnable, run_phase(out, "paper", list(runnable.values()), launch)))
    for group, cell in todo:
        key = (group.tag, cell.method, cell.dataset.name, cell.shots, cell.seed)
        results[key] = outcomes.get(key) or {"status": "missing", "error": f"not run: {absent[cell.dataset.name]}"}
    return results


def _cell_values(base: dict, group: Group) -> dict:
    values = {**base, "recipe": "paper", "curriculum": group.curriculum}
    values.setdefault("backbone", group.backbone)
    return values


# ---------------------------------------------------------------------------------------------
# measured values per table cell


@dataclass
class Value:
    """One measured table cell: a number, or why there is none."""
    value: float | None = None
    note: str = ""


def _runs(results: dict, tag: str, method: str, dataset: str, shots: int) -> list[dict]:
    return [r for (t, m, d, k, _), r in results.items() if (t, m, d, k) == (tag, method, dataset, shots)]


def _metric(final: dict, metric: str) -> float | None:
    if metric.startswith("stage_"):
        stage = (final.get("stages") or {}).get(metric[len("stage_"):])
        return None if stage is None else 100.0 * stage["test_acc1"]
    if metric == "accuracy":
        return 100.0 * final["test_acc1"]
    value = final.get(metric)
    return None if value is None else float(value)


def cell_value(results: dict, tag: str, method: str, dataset: str, shots: int,
               metric: str = "accuracy") -> Value:
    """Mean over seeds of one (method, dataset, shots) cell."""
    runs = _runs(results, tag, method, dataset, shots)
    if not runs:
        return Value(note="not in this grid")
    done = [_metric(r["final"], metric) for r in runs if r["status"] == "done"]
    done = [v for v in done if v is not None]
    if not done:
        first = next((r for r in runs if r["status"] != "done"), runs[0])
        error = first.get("error") or "no value"
        return Value(note=error if error.startswith("not run:") else f"failed: {error}")
    note = "" if len(done) == len(runs) else f"{len(done)}/{len(runs)} seeds"
    return Value(statistics.fmean(done), note)


def mean_of(values: list[Value]) -> Value:
    """The paper's averages: only over complete rows."""
    if values and all(v.value is not None for v in values):
        return Value(statistics.fmean(v.value for v in values))
    missing = [v for v in values if v.value is None]
    return Value(note=f"incomplete ({len(values) - len(missing)}/{len(values)})")


def _group_of(grid: Grid, method: str, shots: int, backbone_tag: str | None = None) -> Group | None:
    for g in grid.groups:
        if method in g.methods and shots in g.shots and (backbone_tag is None or g.tag == backbone_tag):
            return g
    return None


def measured_rows(grid: Grid, results: dict) -> list[dict]:
    """One dict per published row: the row's identity and {column: Value}."""
    layout, name = grid.table.layout, grid.table.name
    columns = published_columns(name)
    rows = []
    for prow in published_rows(name):
        method, shots = prow.get("method"), prow.get("shots", 0)
        stage = prow.get("stage")
        values: dict[str, Value] = {}
        if layout in ("datasets", "stages"):
            g = _group_of(grid, method, shots)
            if g is None:
                continue
            metric = f"stage_{stage}" if stage else "accuracy"
            for d in columns[:-1]:
                values[d] = (cell_value(results, g.tag, method, d, shots, metric) if d in g.datasets
                             else Value(note="not in this grid"))
            in_grid = [values[d] for d in g.datasets]
            values["average"] = mean_of(in_grid)
            if values["average"].value is not None and len(in_grid) < len(columns) - 1:
                values["average"].note = f"over {len(in_grid)} of {len(columns) - 1}"
        elif layout == "groups":
            g = _group_of(grid, method, shots)
            if g is None:
                continue
            for group, members in dataset_groups().items():
                values[group] = mean_of([cell_value(results, g.tag, method, d, shots) for d in members
                                         if d in g.datasets]) if set(members) & set(g.datasets) \
                    else Value(note="not in this grid")
            values["average"] = mean_of([values[c] for c in columns[:-1]])
        elif layout == "ablation":
            for column, tag in (("vit", "vit-b16"), ("clip", "clip-b16")):
                g = _group_of(grid, method, shots, tag)
                values[column] = (mean_of([cell_value(results, tag, method, d, shots) for d in g.datasets])
                                  if g else Value(note="not in this grid"))
        elif layout == "cost":
            g = _group_of(grid, method, shots)
            if g is None:
                continue
            # the paper's 5.7 % for LORE counts against CLIP's image + text towers (lore.flops)
            for column, metric in (("trainable_pct", "trainable_pct_clip"), ("gflops", "gflops"),
                                   ("images_per_s", "images_per_s"), ("accuracy", "accuracy")):
                values[column] = mean_of([cell_value(results, g.tag, method, d, shots, metric)
                                          for d in g.datasets])
        else:
            continue
        rows.append({"row": prow.get("paper_row", method), "method": method, "shots": shots,
                     "stage": stage, "values": values, "published": prow})
    return rows


# ---------------------------------------------------------------------------------------------
# output


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table_records(grid: Grid, rows: list[dict]) -> list[dict]:
    """Long form: one record per (row, column) with measured, published and their difference."""
    records = []
    for r in rows:
        for column, v in r["values"].items():
            pub = r["published"].get(column)
            records.append({"table": grid.table.name, "row": r["row"], "method": r["method"],
                            "shots": r["shots"], "stage": r["stage"] or "", "column": column,
                            "measured": v.value, "published": pub,
                            "difference": (v.value - pub) if v.value is not None and pub is not None else None,
                            "status": "measured" if v.value is not None else (v.note or "not measured")})
    return records


def _cell_text(v: Value, pub: float | None, notes: list[str], digits: int = 2) -> str:
    """measured / published (difference); a failure is numbered and explained under the table."""
    if v.value is not None:
        text = _fmt(v.value, digits)
        if pub is not None:
            text += f" / {_fmt(pub, digits)} ({v.value - pub:+.{digits}f})"
        return text + (f" [{v.note}]" if v.note else "")
    if v.note.startswith("failed"):
        if v.note not in notes:
            notes.append(v.note)
        text = f"failed [{notes.index(v.note) + 1}]"
    elif v.note == "not in this grid" or not v.note:
        text = "—"
    else:
        text = v.note
    return text + (f" / {_fmt(pub, digits)}" if pub is not None else "")


def render_markdown(grid: Grid, rows: list[dict], seeds: list[int]) -> str:
    table = grid.table
    columns = [c for c in published_columns(table.name) if any(c in r["values"] for r in rows)]
    notes: list[str] = []
    lines = [f"# {table.name}: {table.title}", "",
             f"Each cell: measured (mean over seeds {', '.join(map(str, seeds))}) / published "
             "(difference). Published numbers: LORE paper, ACM MM 2024.", "",
             "LORE cells (with and without L_kp) train as the reference code does: BatchNorm in the "
             "White Box (`--wb-norm batch`) and `--bn-mode reference` (eval mode from epoch 2 on), "
             "part of `--recipe paper`.", "",
             "| Row | Shots | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for r in rows:
        label = r["row"]
        # retrieval mAP is published in [0, 1] with three decimals
        cells = [_cell_text(r["values"].get(c, Value()), r["published"].get(c), notes,
                            3 if c.startswith(("roxford", "rparis")) else 2) for c in columns]
        stage = f"-{r['stage']}" if r["stage"] else ""
        lines.append(f"| {label}{stage if not label.endswith(stage) else ''} | {r['shots']} | "
                     + " | ".join(cells) + " |")
    if table.layout == "stages":
        lines += ["", "Gain h - e of the average:"]
        by = {(r["method"], r["shots"], r["stage"]): r for r in rows}
        for (m, k, s), r in by.items():
            if s == "h" and (m, k, "e") in by:
                e, h = by[(m, k, "e")]["values"]["average"], r["values"]["average"]
                pub = (r["published"].get("average") or 0) - (by[(m, k, "e")]["published"].get("average") or 0)
                gain = _fmt(h.value - e.value) if h.value is not None and e.value is not None else "—"
                lines.append(f"- {m} {k}/stage: measured {gain}, published {pub:+.2f}")
    if notes:
        lines += ["", "Failed runs:"] + [f"{i}. {n[len('failed: '):]}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def write_table_files(out: Path, records: list[dict], markdown: str, table: dict) -> None:
    """OUT/table.csv (the long-form records), table.md and table.json, each written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["table"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(out / "table.csv", buf.getvalue())
    atomic_write_text(out / "table.md", markdown)
    atomic_write_json(out / "table.json", table)


def write_outputs(grid: Grid, rows: list[dict], out: Path, results: dict) -> None:
    records = table_records(grid, rows)
    write_table_files(out, records, render_markdown(grid, rows, grid.seeds), {
        "table": grid.table.name, "records": records,
        "runs": [{"group": k[0], "method": k[1], "dataset": k[2], "shots": k[3], "seed": k[4],
                  "status": v["status"], "error": v.get("error"),
                  "test_acc1": (v.get("final") or {}).get("test_acc1")} for k, v in results.items()]})
