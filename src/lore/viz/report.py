"""``lore report RUN_DIR... --out report.html``: one self-contained HTML page for a study.

Reads whatever the runs hold, for any method and task:
``final.json`` (classification, ``lore train``), ``results.json`` (``lore retrieval / correspond /
vos``), ``bench.json`` (``lore bench``), ``model_summary.json`` (``lore train --dry-run``),
``metrics.jsonl`` (training curves), ``model.json``, ``locality.json`` and the PNG figures at the
top level of a run directory (``lore attention --out RUN/attention.png``, ``lore locality``).
A directory holding none of these is searched below for run directories (a sweep's output).

The page needs nothing but itself: CSS inline, images as base64 data URIs, no script, no
external request. All text taken from the runs is HTML-escaped. Scores are shown in percent.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LoreError
from .. import rundir

KNOWN_FILES = (rundir.FINAL, "results.json", "bench.json", rundir.SUMMARY, rundir.METRICS,
               "locality.json")
MAX_IMAGE_BYTES = 25 * 2**20  # a figure larger than this is listed, not inlined

# --------------------------------------------------------------------------------------------
# reading runs


@dataclass
class Run:
    path: Path
    name: str
    final: dict | None = None
    results: dict | None = None
    bench: dict | None = None
    summary: dict | None = None
    model: dict | None = None
    locality: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def info(self) -> dict:
        """The run's own description: method, backbone, dataset."""
        return self.final or self.results or self.summary or self.locality or {}

    @property
    def kinds(self) -> list[str]:
        kinds = []
        if self.final:
            kinds.append("classification")
        if self.results:
            kinds.append(str(self.results.get("task", "task")))
        if self.bench:
            kinds.append("bench")
        if self.summary and not self.final:
            kinds.append("dry run")
        if self.locality:
            kinds.append("locality")
        return kinds or ["figures"]


def _is_run_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in KNOWN_FILES)


def discover(paths: list[str]) -> list[Path]:
    """Run directories named on the command line, or found below them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise LoreError(f"{p}: not a directory (give run directories written by lore)")
        if _is_run_dir(p):
            found.append(p)
            continue
        below = []
        for root, dirs, _ in os.walk(p):
            dirs[:] = sorted(d for d in dirs if d != rundir.CHECKPOINTS and not d.startswith("."))
            if _is_run_dir(Path(root)):
                below.append(Path(root))
        if not below:
            raise LoreError(f"{p}: no lore results ({', '.join(KNOWN_FILES)}) in it or below it")
        found += below
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path}: skipped, not valid JSON ({e})")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path}: skipped, expected a JSON object")
        return None
    return value


def _read_jsonl(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path}: line {i} skipped, not valid JSON")
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


def read_run(path: Path, name: str, notes: list[str]) -> Run:
    run = Run(path, name)
    run.final = _read_json(path / rundir.FINAL, notes)
    run.results = _read_json(path / "results.json", notes)
    run.bench = _read_json(path / "bench.json", notes)
    run.summary = _read_json(path / "model_summary.json", notes)
    run.model = _read_json(path / rundir.MODEL, notes)
    run.locality = _read_json(path / "locality.json", notes)
    run.metrics = _read_jsonl(path / rundir.METRICS, notes)
    run.figures = sorted(path.glob("*.png"), key=_figure_order)
    return run


def _figure_order(path: Path) -> tuple[int, str]:
    # attention grids first (they have a sidecar JSON from `lore attention`), then locality plots
    if path.stem == "locality":
        return 1, path.name
    return (0 if path.with_suffix(".npz").is_file() else 2), path.name


def load_runs(paths: list[str], notes: list[str]) -> list[Run]:
    dirs = discover(paths)
    common = Path(os.path.commonpath([d.resolve() for d in dirs]))
    runs = []
    for d in dirs:
        rel = d.resolve().relative_to(common)  # "." for a single run: use its own name
        runs.append(read_run(d, str(rel) if str(rel) != "." else d.resolve().name, notes))
    return runs


# --------------------------------------------------------------------------------------------
# the results table: methods as rows, datasets / tasks as columns


def dataset_name(value) -> str:
    """A dataset path as a short name: ``/data/flowers102`` -> ``flowers102``,
    ``.../split_zhou_OxfordFlowers.json`` -> ``OxfordFlowers``."""
    text = str(value or "?").rstrip("/")
    p = Path(text)
    name = p.stem if p.suffix.lower() in (".json", ".csv") else p.name
    return name.removeprefix("split_zhou_") or text


def run_dataset(run: Run) -> str:
    """Classification runs name their dataset by path (shortened); task runs by name."""
    if run.final:
        return dataset_name(run.final.get("dataset"))
    value = run.info.get("dataset")
    return str(value) if value else "–"


def row_label(run: Run) -> str:
    """The method's own label for the run's options (e.g. LORE trained --no-kp)."""
    from ..models.registry import row_label as registered_label

    options = (run.model or {}).get("options") or {}
    return registered_label(str(run.info.get("method", "?")), options)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


TASK_ORDER = {"classification": 0, "retrieval": 1, "correspondence": 2, "vos": 3}


def scores(run: Run) -> list[tuple[tuple, str, float]]:
    """(column key, column label, score in %) of a run; higher is better for all of them.
    A column key is (task, dataset, rank within the dataset: shots, or 0 = M / 1 = H)."""
    out = []
    if run.final and _number(run.final.get("test_acc1")) is not None:
        ds = dataset_name(run.final.get("dataset"))
        shots = run.final.get("shots")
        label = f"{ds} {shots}-shot" if shots else ds
        out.append((("classification", ds, shots or 0), label, 100 * float(run.final["test_acc1"])))
    r = run.results or {}
    task, ds = r.get("task"), str(r.get("dataset", "?"))
    if task == "retrieval":
        for rank, (level, short) in enumerate((("medium", "M"), ("hard", "H"))):
            value = _number((r.get(level) or {}).get("map"))
            if value is not None:
                out.append(((task, ds, rank), f"{ds} mAP {short}", 100 * value))
    elif task == "correspondence" and _number(r.get("pck")) is not None:
        alpha = r.get("alpha", 0.1)
        out.append(((task, ds, 0), f"{ds} PCK@{alpha}", 100 * float(r["pck"])))
    elif task == "vos" and _number(r.get("JF")) is not None:
        out.append(((task, ds, 0), f"{ds} J&F", 100 * float(r["JF"])))
    return out


@dataclass
class Cell:
    text: str
    bold: bool = False
    title: str = ""


def _method_key(label: str) -> tuple[float, str]:
    # the registry's table order: baselines first, LORE last; unknown methods before LORE
    from ..models.registry import row_rank

    return row_rank(label), label


def _column_key(key: tuple) -> tuple:
    return TASK_ORDER[key[0]], str(key[1]).lower(), key[2]


def results_tables(runs: list[Run]) -> list[tuple[str, list[str], list[list[Cell]]]]:
    """One table per backbone: (backbone, header, rows). Runs of one method and column (seeds)
    are averaged; the best mean of each column is bold."""
    by_backbone: dict[str, dict[str, dict[tuple, list[float]]]] = {}
    labels: dict[str, dict[tuple, str]] = {}
    for run in runs:
        backbone = str(run.info.get("backbone", "?"))
        for key, label, value in scores(run):
            by_backbone.setdefault(backbone, {}).setdefault(row_label(run), {}).setdefault(key, []).append(value)
            labels.setdefault(backbone, {}).setdefault(key, label)
    tables = []
    for backbone, rows in by_backbone.items():
        # classification columns first (by dataset name), then retrieval, correspondence, VOS
        keys = sorted(labels[backbone], key=_column_key)
        cls_keys = [k for k in keys if k[0] == "classification"]
        means = {m: {k: statistics.fmean(v) for k, v in cols.items()} for m, cols in rows.items()}
        if len(cls_keys) >= 2:  # the paper's average over datasets
            for m in means:
                if all(k in means[m] for k in cls_keys):
                    means[m]["average"] = statistics.fmean(means[m][k] for k in cls_keys)
            keys.insert(len(cls_keys), "average")
        best = {k: max((f"{means[m][k]:.2f}" for m in means if k in means[m]), key=float, default=None)
                for k in keys}
        header = ["method"] + [labels[backbone][k] if k != "average" else "Average" for k in keys]
        body = []
        for m in sorted(means, key=_method_key):
            row = [Cell(m)]
            for k in keys:
                if k not in means[m]:
                    row.append(Cell("–"))
                    continue
                text = f"{means[m][k]:.2f}"
                values = rows[m].get(k, [])
                shown = text
                if len(values) > 1:
                    shown = f"{text} ± {statistics.stdev(values):.2f}"
                row.append(Cell(shown, bold=text == best[k],
                                title=f"mean of {len(values)} runs" if len(values) > 1 else ""))
            body.append(row)
        tables.append((backbone, header, body))
    return tables


# --------------------------------------------------------------------------------------------
# figures


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def curves_png(metrics: list[dict], title: str) -> bytes:
    """Loss terms, accuracies and learning rate per epoch; stages (easy-to-hard) side by side."""
    from matplotlib.figure import Figure

    x = list(range(1, len(metrics) + 1))
    fig = Figure(figsize=(11, 3), layout="constrained")
    axes = fig.subplots(1, 3)
    keys = list(dict.fromkeys(k for m in metrics for k in m))  # every key any epoch logged
    groups = ((axes[0], "loss", lambda k: k.startswith("loss")),
              (axes[1], "accuracy", lambda k: k.endswith("_acc")),
              (axes[2], "learning rate", lambda k: k == "lr"))
    for ax, name, wanted in groups:
        for key in filter(wanted, keys):
            points = [(xi, float(m[key])) for xi, m in zip(x, metrics) if _number(m.get(key)) is not None]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, label=key)
        stages = [m.get("stage") for m in metrics]
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch" + (" (stages: " + ", ".join(dict.fromkeys(map(str, stages))) + ")"
                                 if len(set(stages)) > 1 else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.6em; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: 700; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
ul.notes { color: #8a4b00; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def html_table(header: list[str], rows: list[list[Cell | str]], caption: str = "", numeric_from: int = 1,
               css_class: str = "") -> str:
    parts = [f'<table class="{esc(css_class)}">' if css_class else "<table>"]
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cell = cell if isinstance(cell, Cell) else Cell(str(cell))
            classes = (["num"] if i >= numeric_from else []) + (["best"] if cell.bold else [])
            attrs = (f' class="{" ".join(classes)}"' if classes else "") + \
                    (f' title="{esc(cell.title)}"' if cell.title else "")
            text = f"<strong>{esc(cell.text)}</strong>" if cell.bold else esc(cell.text)
            cells.append(f"<td{attrs}>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def _fmt(value, digits: int = 2, thousands: bool = False) -> str:
    v = _number(value)
    if v is None:
        return "–"
    if thousands:
        return f"{int(round(v)):,}"
    return f"{v:.{digits}f}"


def runs_section(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        info = r.info
        rows.append([r.name, ", ".join(r.kinds), row_label(r) if info.get("method") else "–",
                     info.get("backbone", "–"), run_dataset(r),
                     info.get("shots") if info.get("shots") is not None else "–",
                     info.get("seed") if info.get("seed") is not None else "–"])
    return "<h2>Runs</h2>\n" + html_table(["run", "contents", "method", "backbone", "dataset", "shots", "seed"],
                                         rows, numeric_from=5)


def results_section(runs: list[Run]) -> str:
    tables = results_tables(runs)
    if not tables:
        return ""
    parts = ["<h2>Results</h2>",
             '<p class="meta">Top-1 accuracy (classification), mAP (retrieval, Medium / Hard), '
             "PCK (correspondence), J&amp;F mean (video object segmentation), all in %. Best value "
             "per column in bold; several runs of a method on one column (seeds) are averaged "
             "(mean ± std).</p>"]
    for backbone, header, rows in tables:
        parts.append(html_table(header, rows, caption=f"backbone: {backbone}", css_class="results"))
    return "\n".join(parts)


def cost_section(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        src = r.final or r.summary
        if not src:
            continue
        rows.append([r.name, row_label(r), src.get("backbone", "–"), run_dataset(r),
                     _fmt(src.get("trainable_params"), thousands=True),
                     _fmt(src.get("total_params"), thousands=True), _fmt(src.get("trainable_pct"), 3),
                     _fmt(src.get("gflops"), 3), _fmt(src.get("images_per_s"), 1),
                     _fmt(src.get("seconds"), 1)])
    parts = []
    if rows:
        parts.append(html_table(["run", "method", "backbone", "dataset", "trainable params",
                                 "total params", "trainable %", "GFLOPs / image", "eval images/s",
                                 "train seconds"], rows, caption="per run", numeric_from=4))
    for r in runs:
        if not r.bench or not isinstance(r.bench.get("methods"), dict):
            continue
        config = r.bench.get("config") or {}
        described = ", ".join(f"{k}={v}" for k, v in config.items() if k in
                              ("backbone", "img_size", "batch", "device", "dtype"))
        brows = [[m, _fmt(v.get("infer_images_per_s"), 1), _fmt(v.get("train_images_per_s"), 1),
                  _fmt(v.get("peak_mem_mb"), 1), _fmt(v.get("gflops"), 3),
                  _fmt(v.get("trainable_params"), thousands=True)]
                 for m, v in r.bench["methods"].items() if isinstance(v, dict)]
        parts.append(html_table(["method", "inference images/s", "training images/s", "peak memory MB",
                                 "GFLOPs / image", "trainable params"], brows,
                                caption=f"benchmark {r.name}" + (f" ({described})" if described else "")))
        ratios = r.bench.get("ratios") or {}
        if ratios:
            keys = list(dict.fromkeys(k for v in ratios.values() if isinstance(v, dict) for k in v))
            parts.append(html_table(["ratio"] + keys,
                                    [[name] + [_fmt(v.get(k), 3) for k in keys]
                                     for name, v in ratios.items() if isinstance(v, dict)],
                                    caption=f"benchmark {r.name}: ratios"))
    if not parts:
        return ""
    return "<h2>Cost: parameters, GFLOPs, throughput</h2>\n" + "\n".join(parts)


def curves_section(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        if not r.metrics:
            continue
        title = f"{r.name}: {row_label(r)}"
        uri = png_data_uri(curves_png(r.metrics, title))
        parts.append(f'<figure><img src="{uri}" alt="{esc("training curves of " + r.name)}">'
                     f"<figcaption>{esc(title)} ({len(r.metrics)} epochs)</figcaption></figure>")
    return "<h2>Training curves</h2>\n" + "\n".join(parts) if parts else ""


def locality_section(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        loc = r.locality
        if not loc or not isinstance(loc.get("models"), dict):
            continue
        for model, s in loc["models"].items():
            md, ent = s.get("mean_distance") or [], s.get("cls_entropy") or []
            rows.append([r.name, model, loc.get("n_images", "–"),
                         _fmt(md[0] if md else None, 2), _fmt(md[-1] if md else None, 2),
                         _fmt((s.get("cls_distance") or [None])[-1], 2),
                         _fmt(ent[-1] if ent else None, 3), _fmt(loc.get("max_entropy"), 3)])
    if not rows:
        return ""
    return ("<h2>Locality</h2>\n" + '<p class="meta">Mean attention distance in pixels (ViT '
            "paper definition, patch queries over patch keys), CLS distance from the image centre "
            "and CLS entropy over the patches (nats; log N = uniform) — see <code>lore locality</code>.</p>\n"
            + html_table(["run", "model", "images", "mean distance, first block",
                          "mean distance, last block", "CLS distance, last block",
                          "CLS entropy, last block", "log N"], rows, numeric_from=2))


def figures_section(runs: list[Run], notes: list[str]) -> str:
    parts = []
    for r in runs:
        for path in r.figures:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                notes.append(f"{path}: {size / 2**20:.0f} MB, too large to inline")
                continue
            data = path.read_bytes()
            if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                notes.append(f"{path}: not a PNG file, skipped")
                continue
            caption = _figure_caption(path)
            parts.append(f'<figure><img src="{png_data_uri(data)}" alt="{esc(caption)}">'
                         f"<figcaption>{esc(r.name)}/{esc(path.name)}: {esc(caption)}</figcaption></figure>")
    return "<h2>Attention maps and locality plots</h2>\n" + "\n".join(parts) if parts else ""


def _figure_caption(path: Path) -> str:
    sidecar = path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = {}
    if path.stem == "locality" or "models" in info:
        return "locality per block: B-B vs the run's model"
    if "layer" in info and "images" in info:
        return (f"attention grid, block {info['layer']}: input, B-B CLS, KLA, "
                f"{info.get('method', 'run')} CLS ({len(info['images'])} images)")
    return "figure"


def render(runs: list[Run], title: str, notes: list[str]) -> str:
    sections = [runs_section(runs), results_section(runs), cost_section(runs), curves_section(runs),
                locality_section(runs), figures_section(runs, notes)]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes_html = ("<h2>Notes</h2>\n<ul class=\"notes\">" + "".join(f"<li>{esc(n)}</li>" for n in notes)
                  + "</ul>") if notes else ""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no favicon request, and nothing may be loaded from anywhere but this file
        '<link rel="icon" href="data:,">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{len(runs)} run(s), generated {esc(when)} by lore report.</p>',
        *[s for s in sections if s],
        notes_html,
        "</body>",
        "</html>",
        "",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (or folders holding them, e.g. a sweep's output)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--title", default="LORE study report", help="page title")


def main(args: argparse.Namespace) -> dict:
    from ..io import atomic_write_text, check_output_file

    out = check_output_file(args.out, suffixes=(".html", ".htm"))
    notes: list[str] = []
    runs = load_runs(args.runs, notes)
    page = render(runs, args.title, notes)
    atomic_write_text(out, page)
    for n in notes:
        print(f"note: {n}")
    print(f"report of {len(runs)} run(s): {out} ({len(page.encode()) / 1024:.0f} KB)")
    return {"out": str(out), "runs": [str(r.path) for r in runs], "notes": notes}
