"""``lore data``: the paper's datasets on disk.

``lore data check NAME --root DIR`` reads the dataset as distributed and prints the split sizes
and class count found beside the expected ones (exit 0 when they match, 2 otherwise);
``lore data list`` prints what each dataset is expected to look like.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LoreError
from . import catalog

ROWS = ("train", "val", "test", "classes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    check = sub.add_parser("check", help="compare a dataset folder with the paper's split sizes",
                           description="Read NAME as distributed from --root and compare its split "
                                       "sizes and class count with the expected ones.")
    check.add_argument("name", choices=(*catalog.PAPER_DATASETS, "vtab"), metavar="NAME",
                       help=f"one of {', '.join(catalog.PAPER_DATASETS)}; or vtab: a VTAB-1k image export "
                            "(per task the classes train800 lacks and each list's label histogram)")
    check.add_argument("--root", required=True,
                       help="the dataset's folder, as given to `lore train --dataset NAME --data DIR`")
    check.add_argument("--split-file", default=None,
                       help="as `lore train --split-file` (flowers, cars, eurosat: CoOp's JSON; resisc45: "
                            "TorchGeo's resisc45-train.txt)")
    sub.add_parser("list", help="the 12 datasets: expected sizes, split and on-disk layout")


def found_sizes(data) -> dict[str, int]:
    sizes = {s: len(v) for s, v in data.splits.items() if v}
    sizes["classes"] = len({y for samples in data.splits.values() for _, y in samples})
    return sizes


def table(found: dict[str, int], expected: dict[str, int], paper: dict[str, int]) -> str:
    lines = [f"{'':8} {'found':>9} {'expected':>9} {'Table 6':>9}"]
    for row in ROWS:
        if row in found or row in expected:
            cells = [found.get(row), expected.get(row), paper.get(row)]
            lines.append(f"{row:8} " + " ".join(f"{'-' if c is None else c:>9}" for c in cells))
    return "\n".join(lines)


def check(name: str, root: str | Path, split_file: str | None = None) -> dict:
    folder = Path(root).expanduser()
    if folder.is_file():
        raise LoreError(f"--root {folder} is a file; give the folder {name} was extracted to")
    data = catalog.load_paper_dataset(name, folder, split_file)
    info = catalog.info(name)
    found = found_sizes(data)
    expected = {**info.get(data.sizes, info["expected"]), "classes": info["classes"]}
    print(f"{info['title']} in {data.root}")
    print(f"split: {data.split or info['split']}")
    if data.note:
        print(f"note: {data.note}")
    print(table(found, expected, {**info["paper_table6"], "classes": info["classes"]}))
    wrong = [r for r in ROWS if r in expected and found.get(r, 0) != expected[r]]
    if wrong:
        r = wrong[0]
        raise LoreError(f"{name} in {folder}: {r} has {found.get(r, 0)} "
                        f"{'classes' if r == 'classes' else 'images'}, expected {expected[r]}"
                        + (f" (and {len(wrong) - 1} more row(s) differ)" if len(wrong) > 1 else ""))
    print("ok: every split matches")
    return {"name": name, "folder": data.root, "split": data.split, "found": found, "expected": expected}


def list_datasets() -> dict:
    print(f"{'name':11} {'group':12} {'classes':>7} {'train':>8} {'val':>6} {'test':>6}  layout")
    for name in catalog.PAPER_DATASETS:
        info = catalog.info(name)
        e = info["expected"]
        print(f"{name:11} {info['group']:12} {info['classes']:>7} {e['train']:>8} {e.get('val', '-'):>6} "
              f"{e['test']:>6}  {info['layout']}")
    print("\nUnder --data-root ROOT each dataset is looked for as:")
    for name in catalog.PAPER_DATASETS:
        print(f"  {name:11} " + ", ".join(f"ROOT/{n}" for n in catalog.folder_names(name)))
    return {"datasets": list(catalog.PAPER_DATASETS)}


def main(args: argparse.Namespace) -> dict:
    if args.action == "list":
        return list_datasets()
    if args.name == "vtab":
        from .vtab_check import check_export
        return check_export(args.root)
    return check(args.name, args.root, args.split_file)
