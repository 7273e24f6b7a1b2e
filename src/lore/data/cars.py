"""Stanford Cars as distributed, in either of its two forms:

* ``cars_train/``, ``cars_test/`` with the devkit: ``devkit/cars_meta.mat`` (``class_names``),
  ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (in the folder, as
  torchvision expects it, or in ``devkit/``): ``annotations`` structs with ``fname`` and the 1-based
  ``class``;
* ``car_ims/`` with ``cars_annos.mat``: ``annotations`` with ``relative_im_path``, ``class`` and
  ``test`` (1 for a test image), and ``class_names``.

With CoOp's split file present (its paths start at the dataset's folder), that split is read
instead (the paper's); without it the official 8,144 / 8,041 train / test split."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from ..errors import LoreError
from ..io import inside_root
from . import catalog
from .coop_splits import find_split_file, load_with_split_file, not_the_paper_split
from .datasets import Sample, Splits
from .layout import read_mat, require_files

NESTS = ("", "stanford_cars", "cars")
MARKERS = ("cars_train", "car_ims")


def _root(root: Path) -> Path:
    for nest in NESTS:
        base = root / nest if nest else root
        if any((base / m).is_dir() for m in MARKERS):
            return base
    raise LoreError(f"cars: expected cars_train/ + cars_test/ (with devkit/) or car_ims/ + cars_annos.mat "
                    f"in {root} (or one of {', '.join(n for n in NESTS if n)} inside it)")


def _annotations(path: Path, fields: tuple[str, ...]) -> list[dict]:
    raw = read_mat("cars", path, simplify=True)
    ann = raw.get("annotations")
    if isinstance(ann, dict):  # a single annotation
        ann = [ann]
    if not isinstance(ann, list) or not all(isinstance(a, dict) and all(f in a for f in fields) for a in ann):
        raise LoreError(f"cars: {path} must hold an 'annotations' struct array with fields {', '.join(fields)}")
    return ann


def _label(value, path: Path, num_classes: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or value != int(value) \
            or not 1 <= value <= num_classes:
        raise LoreError(f"cars: {path} holds class {value!r:.40}; classes are 1..{num_classes}")
    return int(value) - 1


def _class_names(path: Path, num_classes: int) -> list[str] | None:
    if not path.is_file():
        return None
    names = read_mat("cars", path, simplify=True).get("class_names")
    if names is None or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise LoreError(f"cars: {path} must hold 'class_names', {num_classes} strings")
    return [str(n) for n in names]


def _devkit_form(root: Path, n: int) -> tuple[dict[str, list[Sample]], Path, list[str] | None]:
    devkit = root / "devkit"
    train_annos = devkit / "cars_train_annos.mat"
    test_annos = next((p for p in (root / "cars_test_annos_withlabels.mat",
                                   devkit / "cars_test_annos_withlabels.mat") if p.is_file()), None)
    if not train_annos.is_file() or test_annos is None:
        raise LoreError(f"cars: expected devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat "
                        f"(in {root} or its devkit/); the test labels come from the latter")
    splits = {}
    for split, annos, folder in (("train", train_annos, root / "cars_train"), ("test", test_annos, root / "cars_test")):
        splits[split] = [(str(inside_root(folder, str(a["fname"]), annos)), _label(a["class"], annos, n))
                         for a in _annotations(annos, ("fname", "class"))]
    return splits, train_annos, _class_names(devkit / "cars_meta.mat", n)


def _car_ims_form(root: Path, n: int) -> tuple[dict[str, list[Sample]], Path, list[str] | None]:
    annos = root / "cars_annos.mat"
    if not annos.is_file():
        raise LoreError(f"cars: expected cars_annos.mat next to car_ims/ in {root}")
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for a in _annotations(annos, ("relative_im_path", "class", "test")):
        sample = (str(inside_root(root, str(a["relative_im_path"]), annos)), _label(a["class"], annos, n))
        splits["test" if a["test"] else "train"].append(sample)
    return splits, annos, _class_names(annos, n)


def load_official(root: Path) -> Splits:
    shipped = catalog.classnames("cars")
    form = _devkit_form if (root / "cars_train").is_dir() else _car_ims_form
    splits, listed_in, names = form(root, len(shipped))
    for s, items in splits.items():
        require_files("cars", s, items, listed_in)
    used = "the official train / test split of the annotation files"
    return Splits(names or shipped, splits, split=used, sizes="expected_official",
                  note=not_the_paper_split("cars", root, used))


def load_cars(root: Path, split_file: str | None = None) -> Splits:
    root = _root(root)
    found = find_split_file("cars", root, split_file)
    if found is not None:
        return load_with_split_file("cars", found, root)
    return load_official(root)
