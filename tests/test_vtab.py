"""VTAB-1k in the layout the PETL repositories distribute (NOAH, SSF, V-PETL Bench): a folder per
task with the images and four split lists, `relative/path label` per line, paths relative to the
task folder. Written here from that description, with nothing taken from the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_BACKBONE, lore_cli


def write_task(folder: Path, num_classes: int, per_class: int = 2) -> dict[str, list[str]]:
    """train800 / val200 of ``per_class`` and 1 image per class, test of 1 per class."""
    lists: dict[str, list[str]] = {"train800": [], "val200": [], "test": []}
    for c in range(num_classes):
        for split, n in (("train800", per_class), ("val200", 1), ("test", 1)):
            for i in range(n):
                rel = f"images/{split}/{c:03d}_{i}.jpg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8, 3), 10 * c % 256, np.uint8)).save(folder / rel)
                lists[split].append(f"{rel} {c}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, lines in lists.items():
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return lists


def load(folder: Path, fmt: str):
    from lore.data import load_dataset
    return load_dataset(str(folder), fmt)


def test_final_and_tuning_protocols(tmp_path: Path) -> None:
    task = tmp_path / "vtab-1k" / "dsprites_ori"  # 16 classes
    write_task(task, 16)
    final = load(task, "vtab")
    assert {k: len(v) for k, v in final.splits.items()} == {"train": 48, "val": 16, "test": 16}
    assert len(final.classnames) == 16 and final.classnames[3] == "class 3"
    assert final.splits["test"][5] == (str(task / "images/test/005_0.jpg"), 5)
    tune = load(task, "vtab-tune")
    assert {k: len(v) for k, v in tune.splits.items()} == {"train": 32, "test": 16}
    assert {p for p, _ in tune.splits["test"]} == {p for p, _ in final.splits["val"]}  # val200 tests the tuning


def test_the_task_fixes_the_class_count_and_an_alias_is_accepted(tmp_path: Path) -> None:
    task = tmp_path / "clevr_count_all"  # another repository's name for clevr_count (8 classes)
    write_task(task, 8)
    assert len(load(task, "vtab").classnames) == 8
    bad = tmp_path / "kitti"  # 4 classes: a label 5 is corrupt
    write_task(bad, 6)
    from lore.errors import LoreError
    with pytest.raises(LoreError, match=r"train800val200.txt, line \d+: label 4 but kitti has 4 classes"):
        load(bad, "vtab")


def test_malformed_lists_are_one_error_line(tmp_path: Path, capsys) -> None:
    for name, line in (("no-label", "images/a.jpg"), ("escape", "../outside.jpg 0"), ("text-label", "images/a.jpg x")):
        task = tmp_path / name
        write_task(task, 2)
        (task / "test.txt").write_text(line + "\n")
        assert lore_cli("train", *TINY_BACKBONE, "--method", "linear", "--data", task, "--format", "vtab",
                        "--out", tmp_path / f"run-{name}") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "test.txt, line 1" in err[0]


def test_trains_on_a_vtab_task(tmp_path: Path) -> None:
    task = tmp_path / "eurosat"
    write_task(task, 10)
    out = tmp_path / "run"
    assert lore_cli("train", *TINY_BACKBONE, "--method", "vpt-deep", "--data", task, "--format", "vtab",
                    "--epochs", 1, "--batch-size", 8, "--out", out) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["num_classes"] == 10 and final["test_samples"] == 10
