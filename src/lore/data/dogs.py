"""Stanford Dogs as distributed: ``train_list.mat`` / ``test_list.mat`` (from lists.tar) hold
``file_list`` (``<synset>-<breed>/<file>.jpg`` under ``Images/``) and 1-based ``labels``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LoreError
from ..io import inside_root
from . import catalog
from .datasets import Sample, Splits
from .layout import locate, read_mat, require_files

NESTS = ("", "lists")


def _read(mat: Path, images: Path, num_classes: int) -> list[Sample]:
    raw = read_mat("dogs", mat)
    if "file_list" not in raw or "labels" not in raw:
        raise LoreError(f"dogs: {mat} has no file_list / labels entries")
    files = np.atleast_1d(raw["file_list"])
    labels = np.atleast_1d(raw["labels"])
    if labels.dtype.kind not in "iuf" or not all(isinstance(f, str) for f in files.tolist()) or \
            (labels.size and not np.all(labels == np.round(labels))):
        raise LoreError(f"dogs: {mat}: file_list must hold file names and labels whole numbers 1..{num_classes}")
    labels = labels.astype(np.int64) - 1
    if len(files) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes):
        raise LoreError(f"dogs: {mat} holds {len(files)} files and {len(labels)} labels in 1..{num_classes}: "
                        "they do not match")
    return [(str(inside_root(images, str(f), mat)), int(y)) for f, y in zip(files, labels)]


def load_dogs(root: Path) -> Splits:
    mats = {s: locate("dogs", root, f"{s}_list.mat", NESTS) for s in ("train", "test")}
    images = root / "Images"
    if not images.is_dir():
        raise LoreError(f"dogs: expected the Images/ folder of images.tar in {root}")
    shipped = catalog.classnames("dogs")
    parts = {s: _read(m, images, len(shipped)) for s, m in mats.items()}
    for s, samples in parts.items():
        require_files("dogs", s, samples, mats[s])
    # a class's folder, <synset>-<breed>, names it; shipped names only fill labels with no file
    folders = {y: Path(p).parent.name for samples in parts.values() for p, y in samples}
    names = [folders[y].partition("-")[2].replace("_", " ") or shipped[y] if y in folders else shipped[y]
             for y in range(len(shipped))]
    return Splits(names, parts)
