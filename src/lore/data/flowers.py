"""Oxford Flowers-102 as distributed by the VGG: ``jpg/image_NNNNN.jpg`` (102flowers.tgz),
``imagelabels.mat`` (``labels``: the 1-based class of image k at position k) and ``setid.mat``
(``trnid``, ``valid``, ``tstid``: 1-based image numbers). With CoOp's split file present, that split
is read instead (the paper's); without it the official one: train + val as the pool, test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LoreError
from . import catalog
from .coop_splits import find_split_file, load_with_split_file, not_the_paper_split
from .datasets import Sample, Splits
from .layout import locate, read_mat, require_files

NESTS = ("", "oxford_flowers", "flowers", "flowers-102")


def _root(root: Path) -> Path:
    """The folder holding jpg/ (the dataset's folder, or one level down)."""
    return locate("flowers", root, "jpg", NESTS).parent


def _numbers(mat: dict, key: str, path: Path, limit: int) -> np.ndarray:
    if key not in mat:
        raise LoreError(f"flowers: {path} has no {key!r} entry (expected trnid, valid, tstid)")
    ids = np.atleast_1d(mat[key])
    if ids.dtype.kind not in "iuf" or (ids.size and not (np.all(ids == np.round(ids)) and
                                                          1 <= ids.min() and ids.max() <= limit)):
        raise LoreError(f"flowers: {path} {key} must hold image numbers 1..{limit}")
    return ids.astype(np.int64)


def load_official(root: Path) -> Splits:
    images = root / "jpg"
    labels_path, setid_path = (locate("flowers", root, f) for f in ("imagelabels.mat", "setid.mat"))
    shipped = catalog.classnames("flowers")
    raw = read_mat("flowers", labels_path)
    labels = np.atleast_1d(raw.get("labels", np.array([])))
    if labels.dtype.kind not in "iuf" or labels.size == 0 or labels.min() < 1 or labels.max() > len(shipped) \
            or not np.all(labels == np.round(labels)):
        raise LoreError(f"flowers: {labels_path} must hold 'labels', one class 1..{len(shipped)} per image")
    labels = labels.astype(np.int64) - 1
    setid = read_mat("flowers", setid_path)
    parts = {s: _numbers(setid, k, setid_path, len(labels)) for s, k in
             (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}

    def samples(ids: np.ndarray) -> list[Sample]:
        return [(str(images / f"image_{k:05d}.jpg"), int(labels[k - 1])) for k in ids.tolist()]

    splits = {"train": samples(np.concatenate([parts["train"], parts["val"]])), "val": samples(parts["val"]),
              "test": samples(parts["test"])}
    for s, items in splits.items():
        require_files("flowers", s, items, setid_path)
    used = "the official split of setid.mat (trnid + valid as the pool, tstid as test)"
    return Splits(shipped, splits, split=used, sizes="expected_official",
                  note=not_the_paper_split("flowers", root, used))


def load_flowers(root: Path, split_file: str | None = None) -> Splits:
    root = _root(root)
    found = find_split_file("flowers", root, split_file)
    if found is not None:
        return load_with_split_file("flowers", found, root / "jpg")
    return load_official(root)
