"""``lore data check vtab --root DIR``: what the PETL repositories' VTAB-1k image export holds, per
task: the images and classes of each list, the classes train800 lacks (its lists are the first 800 /
200 records of a TFDS split, not stratified by class), and each list's label histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LoreError
from .vtab import TASK_CLASSES, read_list, task_name

LISTS = ("train800", "val200", "train800val200", "test")


def task_report(folder: Path, task: str) -> dict:
    classes = TASK_CLASSES[task]
    report = {"task": task, "folder": str(folder), "classes": classes, "lists": {}}
    for name in LISTS:
        path = folder / f"{name}.txt"
        if not path.is_file():
            report["lists"][name] = None
            continue
        labels = np.asarray([y for _, y, _ in read_list(path, folder)])
        if labels.max() >= classes:
            raise LoreError(f"{path}: label {labels.max()} but {task} has {classes} classes")
        report["lists"][name] = np.bincount(labels, minlength=classes).tolist()
    train = report["lists"]["train800"]
    report["missing_from_train800"] = [c for c in range(classes) if train is not None and train[c] == 0]
    return report


def _line(name: str, histogram: list[int] | None) -> str:
    if histogram is None:
        return f"  {name:15} absent"
    present = sum(1 for n in histogram if n)
    counts = " ".join(f"{c}:{n}" for c, n in enumerate(histogram))
    return f"  {name:15} {sum(histogram):6d} images, {present:3d} classes | {counts}"


def check_export(root: str | Path) -> dict:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise LoreError(f"--root {folder}: give the VTAB-1k image export's folder (one folder per task)")
    tasks = sorted((task_name(d), d) for d in folder.iterdir() if d.is_dir() and task_name(d))
    if not tasks:
        raise LoreError(f"--root {folder}: no VTAB-1k task folder (cifar, svhn, dsprites_loc, ...) there")
    reports = []
    for task, path in tasks:
        r = task_report(path, task)
        reports.append(r)
        missing = r["missing_from_train800"]
        print(f"{task} ({r['classes']} classes) in {path}")
        print(f"  classes missing from train800: {', '.join(map(str, missing)) if missing else 'none'}")
        for name in LISTS:
            print(_line(name, r["lists"][name]))
    print("(label:count per list; the lists are the first records of the TFDS splits as VPT's data code "
          "slices them, not stratified by class)")
    return {"root": str(folder), "tasks": reports}
