"""ImageNet-1k (ILSVRC-2012) as distributed: ``train/<wnid>/`` class folders; the 50,000
validation images (the paper's test set) either in ``val/<wnid>/`` class folders or flat in
``val/`` with their labels from the devkit (``ILSVRC2012_validation_ground_truth.txt`` +
``meta.mat``) or from Kaggle's ``LOC_val_solution.csv``. Labels follow the sorted WordNet ids."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import LoreError
from . import catalog
from .datasets import Sample, Splits
from .layout import list_images, read_lines, read_mat

NESTS = ("", "ILSVRC/Data/CLS-LOC")
DEVKIT = ("ILSVRC2012_devkit_t12/data", "ILSVRC2012_devkit_t12", "devkit/data", "")


def _split_dir(root: Path, split: str) -> Path:
    tried = [root / nest / split if nest else root / split for nest in NESTS]
    for path in tried:
        if path.is_dir():
            return path
    raise LoreError(f"imagenet: expected the {split}/ folder (looked in {', '.join(str(p.parent) for p in tried)})")


def _class_folders(folder: Path, index: dict[str, int]) -> list[Sample]:
    samples: list[Sample] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise LoreError(f"imagenet: {sub} is not an ImageNet-1k class folder (expected a WordNet "
                            "id such as n01440764)")
        samples += [(str(p), index[sub.name]) for p in list_images(sub)]
    return samples


def _devkit_labels(root: Path, index: dict[str, int]) -> list[int] | None:
    for nest in DEVKIT:
        base = root / nest if nest else root
        truth = base / "ILSVRC2012_validation_ground_truth.txt"
        if truth.is_file():
            meta = base / "meta.mat"
            if not meta.is_file():
                raise LoreError(f"imagenet: expected meta.mat next to {truth} (it maps the devkit's "
                                "class ids to WordNet ids)")
            synsets = read_mat("imagenet", meta).get("synsets")
            names = getattr(getattr(synsets, "dtype", None), "names", None) or ()
            if "ILSVRC2012_ID" not in names or "WNID" not in names:
                raise LoreError(f"imagenet: {meta} has no 'synsets' struct with ILSVRC2012_ID and WNID "
                                "(is it the devkit's meta.mat?)")
            id_to_wnid = {int(i): str(w) for i, w in zip(synsets["ILSVRC2012_ID"], synsets["WNID"])}
            labels = []
            for line, x in enumerate(read_lines(truth), 1):
                if not (x.isascii() and x.isdigit()) or int(x) not in id_to_wnid or id_to_wnid[int(x)] not in index:
                    raise LoreError(f"imagenet: {truth}, line {line}: {x[:40]!r} is not a class id that "
                                    f"{meta} maps to an ImageNet-1k class")
                labels.append(index[id_to_wnid[int(x)]])
            return labels
    return None


def _loc_labels(root: Path, index: dict[str, int]) -> dict[str, int] | None:
    for base in (root, root.parent):
        path = base / "LOC_val_solution.csv"
        if path.is_file():
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    rows = list(csv.DictReader(f))
            except (UnicodeDecodeError, csv.Error) as e:
                raise LoreError(f"imagenet: {path} is not a UTF-8 CSV file ({str(e)[:120]})") from None
            labels = {}
            for line, r in enumerate(rows, 2):
                image, prediction = r.get("ImageId"), r.get("PredictionString")
                wnid = prediction.split()[0] if isinstance(prediction, str) and prediction.split() else None
                if not image or wnid not in index:
                    raise LoreError(f"imagenet: {path}, line {line}: expected 'ImageId,PredictionString' with "
                                    "the ImageNet-1k WordNet id first (Kaggle's LOC_val_solution.csv)")
                labels[image] = index[wnid]
            return labels
    return None


def _flat_val(root: Path, val: Path, index: dict[str, int]) -> list[Sample]:
    images = list_images(val)
    by_stem = _loc_labels(root, index)
    if by_stem is not None:
        unlabelled = [p for p in images if p.stem not in by_stem]
        if unlabelled:
            raise LoreError(f"imagenet: {unlabelled[0]} has no row in LOC_val_solution.csv")
        return [(str(p), by_stem[p.stem]) for p in images]
    labels = _devkit_labels(root, index)
    if labels is None:
        raise LoreError(f"imagenet: {val} holds images but no class folders, and no ground truth was "
                        f"found: expected LOC_val_solution.csv or ILSVRC2012_devkit_t12/data/"
                        f"ILSVRC2012_validation_ground_truth.txt (+ meta.mat) in {root}")
    # the devkit's line k labels ILSVRC2012_val_<k>.JPEG (1-based, by the number in the name)
    samples = []
    for p in images:
        number = p.stem.rsplit("_", 1)[-1]
        if not (number.isascii() and number.isdigit()):
            raise LoreError(f"imagenet: {p} does not end in a number (ILSVRC2012_val_NNNNNNNN.JPEG): the "
                            "devkit's ground truth labels the images by it")
        k = int(number)
        if not 1 <= k <= len(labels):
            raise LoreError(f"imagenet: {p} has no line in the devkit ground truth ({len(labels)} lines)")
        samples.append((str(p), labels[k - 1]))
    return samples


def load_imagenet(root: Path) -> Splits:
    index = {w: i for i, w in enumerate(catalog.class_keys("imagenet"))}
    train = _class_folders(_split_dir(root, "train"), index)
    val = _split_dir(root, "val")
    has_classes = any(p.is_dir() for p in val.iterdir())
    test = _class_folders(val, index) if has_classes else _flat_val(root, val, index)
    return Splits(catalog.classnames("imagenet"), {"train": train, "test": test})
