"""``lore paper TABLE --plan``: the grid and what it will cost, before anything runs.

Images to process per run = training images (classes x shots x epochs, plus the hard stage) +
test images (once per stage), with the paper's Table 6 counts. Seconds = images / the images-per-
second of a short training and inference step measured on this machine with ``lore.bench``
(random weights, same architecture), or read from a ``lore bench`` result (``--bench FILE``).
"""

from __future__ import annotations

import math

from pathlib import Path

from ..errors import LoreError
from ..io import read_json
from ..recipes import lookup
from ..models.registry import aliases
from .runner import Grid
from .tables import paper_counts

# the bench model whose speed stands for a method's (lore bench measures these three)
BENCH_PROXY = {"zeroshot": "b-b", "linear": "b-b", "vpt-deep": "vpt-deep", "vpt-shallow": "vpt-deep",
               "lore": "lore"}
TEST_PROXY = {"zeroshot": "b-b", "lore": "lore"}


def run_images(group, method: str, dataset: str, shots: int, base: dict) -> tuple[int, int]:
    """(training images, test images) one run of the grid processes."""
    counts = paper_counts(dataset)
    real = aliases().get(method, {}).get("method", method)
    if real == "zeroshot" or shots == 0:
        return 0, counts["test"]
    recipe = lookup(dataset, real, group.backbone, shots, group.curriculum)
    epochs = base.get("epochs", recipe.get("epochs", 50))
    train = counts["classes"] * shots * epochs
    tests = counts["test"]
    if group.curriculum == "easy-to-hard":
        train += counts["classes"] * shots * base.get("stage_h_epochs", recipe.get("stage_h_epochs", 5))
        tests *= 2
    return train, tests


def measure_rates(backbone: str, base: dict) -> dict:
    """images/s of training and inference per bench model, from a short step on this machine."""
    from ..bench import run as bench_run

    report = bench_run(backbone, ["b-b", "vpt-deep", "lore"], img_size=base.get("img_size", 224), batch=4,
                       device=base.get("device", "auto"), repeats=2, warmup=1,
                       backbone_args=base.get("backbone_args"), pretrained=False)
    return report["methods"]


def bench_rates(path: str) -> dict:
    report = read_json(Path(path), "lore bench result")
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict):
        raise LoreError(f"--bench {path}: not a `lore bench` result (no 'methods' object)")
    for method, rates in report["methods"].items():
        if not isinstance(rates, dict):
            raise LoreError(f"--bench {path}: methods.{method} must be an object of rates")
        for key in ("train_images_per_s", "infer_images_per_s"):
            value = rates.get(key)
            # a rate that is not a positive, finite, plausible number would print negative or NaN hours
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or not 0 < value < 1e9):
                raise LoreError(f"--bench {path}: methods.{method}.{key} is {value!r:.40}; expected images "
                                "per second, a positive number")
    return report["methods"]


def plan(grid: Grid, data_root: Path, base: dict, bench: str | None = None, measure: bool = True) -> dict:
    from ..data.catalog import missing

    datasets = sorted({d for g in grid.groups for d in g.datasets})
    absent = {d: missing(d, data_root) for d in datasets}
    lines = [f"lore paper {grid.table.name}: {grid.table.title}", f"data root: {data_root}"]
    lines += [f"  {d:11s} {'MISSING: ' + absent[d] if absent[d] else 'found'}" for d in datasets]
    sources: dict[str, dict] = {}
    if bench:
        sources[f"--bench {bench}"] = bench_rates(bench)
    backbones = {base.get("backbone") or g.backbone for g in grid.groups}
    totals = {"runs": 0, "runs_missing": 0, "train_images": 0, "test_images": 0}
    seconds = {name: 0.0 for name in sources}
    if measure:
        for bb in sorted(backbones):
            sources[f"measured here ({bb})"] = {"backbone": bb, **measure_rates(bb, base)}
            seconds[f"measured here ({bb})"] = 0.0
    lines.append("runs:")
    for g in grid.groups:
        for d in g.datasets:
            for k in g.shots:
                for m in g.methods:
                    train, test = run_images(g, m, d, k, base)
                    n = len(grid.seeds)
                    totals["runs"] += n
                    if absent[d]:
                        totals["runs_missing"] += n
                        continue
                    totals["train_images"] += n * train
                    totals["test_images"] += n * test
                    real = aliases().get(m, {}).get("method", m)
                    for name, rates in sources.items():
                        if "backbone" in rates and rates["backbone"] != (base.get("backbone") or g.backbone):
                            continue
                        proxy = rates.get(BENCH_PROXY.get(real, "lore")) or rates.get("lore") or {}
                        tproxy = rates.get(TEST_PROXY.get(real, "lore")) or proxy
                        if proxy.get("train_images_per_s") and tproxy.get("infer_images_per_s"):
                            seconds[name] += n * (train / proxy["train_images_per_s"]
                                                  + test / tproxy["infer_images_per_s"])
        lines.append(f"  {g.tag:13s} {','.join(g.methods)} x {len(g.datasets)} datasets x shots "
                     f"{','.join(map(str, g.shots))} x {len(grid.seeds)} seeds"
                     f"{' (easy-to-hard)' if g.curriculum == 'easy-to-hard' else ''}")
    lines.append(f"total: {totals['runs']} runs ({totals['runs_missing']} on missing datasets, not run), "
                 f"{totals['train_images']:,} training and {totals['test_images']:,} test images")
    for name, s in seconds.items():
        lines.append(f"estimate from {name}: {s / 3600:.1f} h ({s / 86400:.2f} days)")
    lines.append("(methods other than zero-shot, VPT and LORE are timed as LORE; data loading not included)")
    text = "\n".join(lines)
    print(text)
    return {"datasets": {d: absent[d] or "found" for d in datasets}, **totals,
            "estimate_seconds": seconds, "text": text}
