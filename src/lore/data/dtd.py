"""DTD (Describable Textures) with its official split 1: ``labels/train1.txt``, ``val1.txt`` and
``test1.txt`` list ``<class>/<file>.jpg`` paths under ``images/``. Train and val form the pool."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from ..io import inside_root
from . import catalog
from .datasets import Sample, Splits
from .layout import locate, read_lines, require_files

NESTS = ("", "dtd")


def _read(list_file: Path, images: Path, index: dict[str, int]) -> list[Sample]:
    samples = []
    for number, line in enumerate(read_lines(list_file), 1):
        cls = line.split("/", 1)[0]
        if cls not in index:
            raise LoreError(f"dtd: {list_file} lists {line}, whose class {cls!r} is not a DTD class")
        samples.append((str(inside_root(images, line, list_file, number)), index[cls]))
    return samples


def load_dtd(root: Path, fold: int = 1) -> Splits:
    index = {c: i for i, c in enumerate(catalog.class_keys("dtd"))}
    lists = {s: locate("dtd", root, f"labels/{s}{fold}.txt", NESTS) for s in ("train", "val", "test")}
    images = lists["train"].parent.parent / "images"
    if not images.is_dir():
        raise LoreError(f"dtd: expected images/ next to labels/ (looked for {images})")
    parts = {s: _read(f, images, index) for s, f in lists.items()}
    for s, samples in parts.items():
        require_files("dtd", s, samples, lists[s])
    return Splits(catalog.classnames("dtd"),
                  {"train": parts["train"] + parts["val"], "val": parts["val"], "test": parts["test"]})
