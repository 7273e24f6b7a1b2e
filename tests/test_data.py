"""lore.data: the same samples from every format, deterministic balanced few-shot sampling,
the shots recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import TINY_BACKBONE, lore_cli
from lore.data import few_shot_indices, load_dataset


def test_formats_load_the_same_samples(colors, tmp_path):
    from lore.synthetic.colors import write_other_formats

    ref = load_dataset(str(colors), "imagefolder")
    paths = write_other_formats(colors, tmp_path)
    for fmt, root in paths.items():
        image_dir = str(colors)
        got = load_dataset(str(root), fmt, image_dir=image_dir)
        assert got.classnames == ref.classnames, fmt
        for split in ("train", "test"):
            assert sorted(got.splits[split]) == sorted(ref.splits[split]), (fmt, split)
    assert ref.classnames == ["blue", "green", "red", "yellow"]
    assert len(ref.splits["train"]) == 48 and len(ref.splits["test"]) == 24


def test_few_shot_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(5), [7, 9, 4, 12, 6])
    a = few_shot_indices(labels, 3, seed=1)
    b = few_shot_indices(labels, 3, seed=1)
    c = few_shot_indices(labels, 3, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [3] * 5
    assert len(set(a.tolist())) == 15


def test_shots_are_recorded(colors, tmp_path):
    out = tmp_path / "run"
    assert lore_cli("train", "--method", "linear", *TINY_BACKBONE, "--data", colors, "--out", out,
                    "--epochs", "1", "--batch-size", "8", "--shots", "2", "--seed", "5") == 0
    chosen = json.loads((out / "fewshot.json").read_text())
    assert len(chosen["files"]) == 8 and sorted(np.bincount(chosen["labels"]).tolist()) == [2, 2, 2, 2]
    assert all(Path(f).is_file() for f in chosen["files"])
