"""Table 4: the White Box trained on classification, evaluated on other tasks without training.

The classification run that feeds them is part of the table's grid: LORE, 16-shot ImageNet
(the paper's Figure 3 shows ImageNet), on CLIP ViT-B/16 and on the ImageNet-21k ViT-B/16 (first
seed). Each task then runs twice per backbone: B-B (``--run RUN --bb``: the plain frozen backbone)
and LORE (``--run RUN``). Expected under the data root: ``revisitop/`` (ROxford5k, RParis6k),
``SPair-71k/`` and ``DAVIS/``. Results: ``OUT/tasks/<backbone>/<b-b|lore>/<task>/results.json``
(kept: a finished task is not rerun).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import read_json
from .runner import Grid, Value

# column -> (command, data folder under the root, extra arguments, how to read the result)
TASKS = {
    "roxford5k": ("retrieval", "revisitop", ["--dataset", "roxford5k"]),
    "rparis6k": ("retrieval", "revisitop", ["--dataset", "rparis6k"]),
    "spair": ("correspond", "SPair-71k", ["--split", "test"]),
    "davis": ("vos", "DAVIS", ["--set", "val"]),
}
COLUMNS = {"roxford5k-M": ("roxford5k", lambda r: r["medium"]["map"]),
           "roxford5k-H": ("roxford5k", lambda r: r["hard"]["map"]),
           "rparis6k-M": ("rparis6k", lambda r: r["medium"]["map"]),
           "rparis6k-H": ("rparis6k", lambda r: r["hard"]["map"]),
           "spair-pck": ("spair", lambda r: 100.0 * r["pck"]),
           "davis-jf": ("davis", lambda r: 100.0 * r["JF"])}
TAGS = {"clip": "clip-b16", "vit": "vit-b16"}


def run_tasks(grid: Grid, results: dict, data_root: Path, out: Path, base: dict) -> dict:
    """{(backbone, model, task): results dict | Value with the reason it is missing}."""
    from ..protocols import run_protocol

    measured: dict[tuple, object] = {}
    for short, tag in TAGS.items():
        run = next((out / "runs" / tag / "imagenet" / "lore" / "16shot" / f"seed{k[4]}"
                    for k, r in results.items() if k[:4] == (tag, "lore", "imagenet", 16)
                    and r["status"] == "done"), None)
        for task, (command, folder, extra) in TASKS.items():
            for model in ("b-b", "lore"):
                key = (short, model, task)
                root = data_root / folder
                if run is None:
                    measured[key] = Value(note=f"not run: no finished LORE ImageNet 16-shot run in {tag}")
                    continue
                if not root.is_dir():
                    measured[key] = Value(note=f"not run: {root} not found")
                    continue
                target = out / "tasks" / tag / model / task
                if not (target / "results.json").is_file():
                    argv = [command, "--root", str(root), *extra, "--run", str(run), "--out", str(target),
                            "--device", base.get("device", "auto")]
                    if model == "b-b":
                        argv.append("--bb")
                    print(f"table4: {model} on {tag}: lore {' '.join(argv)}", file=sys.stderr)
                    try:
                        run_protocol(argv[0], argv[1:])
                    except Exception as e:  # noqa: BLE001 - one failing task must not end the table
                        measured[key] = Value(note=f"failed: lore {command}: {str(e).splitlines()[0]}")
                        continue
                measured[key] = read_json(target / "results.json", "task result")
    return measured


def task_rows(grid: Grid, measured: dict) -> list[dict]:
    from .tables import published_rows

    rows = []
    for prow in published_rows("table4"):
        values = {}
        for column, (task, read) in COLUMNS.items():
            got = measured.get((prow["backbone"], prow["method"], task))
            if isinstance(got, dict):
                try:
                    values[column] = Value(float(read(got)))
                except (KeyError, TypeError):
                    values[column] = Value(note="no such value in results.json")
            else:
                values[column] = got or Value(note="not run")
        rows.append({"row": prow["paper_row"], "method": prow["method"], "shots": 16, "stage": None,
                     "values": values, "published": prow})
    return rows
