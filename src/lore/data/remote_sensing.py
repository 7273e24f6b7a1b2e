"""NWPU-RESISC45 and PatternNet: class folders of numbered images, and no public train/test split.
lore ships one per dataset (``meta/splits/<name>.json``): the numbers of the training images of
every class, drawn once with a fixed seed in the paper's per-class counts (RESISC45 140 of 700,
PatternNet 640 of 800); every other image of the class is a test image."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from . import catalog
from .datasets import Sample, Splits
from .layout import file_number, list_images

NESTS = {"resisc45": ("NWPU-RESISC45", ""), "patternnet": ("PatternNet/images", "images", "")}


def _image_root(name: str, root: Path, keys: list[str]) -> Path:
    tried = [root / nest if nest else root for nest in NESTS[name]]
    for base in tried:
        if base.is_dir() and any((base / k).is_dir() for k in keys):
            return base
    raise LoreError(f"{name}: expected class folders such as {keys[0]}/ (looked in "
                    f"{', '.join(str(p) for p in tried)})")


def load_remote_sensing(name: str, root: Path) -> Splits:
    keys = catalog.class_keys(name)
    shipped = catalog.split_list(name)
    base = _image_root(name, root, keys)
    index = {k: i for i, k in enumerate(keys)}
    unknown = [p.name for p in base.iterdir() if p.is_dir() and p.name not in index]
    if unknown:
        raise LoreError(f"{name}: {base / unknown[0]} is not a {name} class folder")
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for key in keys:
        if not (base / key).is_dir():
            continue
        train_numbers = set(shipped["train"][key])
        for path in list_images(base / key):
            number = file_number(path)
            if number is None:
                raise LoreError(f"{name}: {path} does not end in an image number; the shipped split "
                                "assigns images by that number")
            splits["train" if number in train_numbers else "test"].append((str(path), index[key]))
    return Splits(catalog.classnames(name), splits)


def load_resisc45(root: Path) -> Splits:
    return load_remote_sensing("resisc45", root)


def load_patternnet(root: Path) -> Splits:
    return load_remote_sensing("patternnet", root)
