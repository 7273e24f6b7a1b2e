"""EuroSAT (RGB) as distributed: class folders of ``<Class>_<n>.jpg``, unpacked as ``2750/`` (the
first release, the name CoOp uses) or ``EuroSAT_RGB/`` (the current archive). With CoOp's split file
present (paths relative to the image folder), that split is read (the paper's). EuroSAT has no
official split: without CoOp's file lore uses the one it ships (``meta/splits/eurosat.json``, made by
``scripts/make_eurosat_split.py``: per class 50 % train, 20 % val, 30 % test as CoOp's proportions,
by the number in the file name), train + val as the pool."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from . import catalog
from .coop_splits import find_split_file, load_with_split_file, not_the_paper_split
from .datasets import Sample, Splits
from .layout import file_number, list_images

IMAGE_FOLDERS = ("2750", "EuroSAT_RGB", "eurosat/2750", "eurosat/EuroSAT_RGB", "EuroSAT_RGB/EuroSAT_RGB")


def image_folder(root: Path) -> Path:
    keys = catalog.class_keys("eurosat")
    found = [root / f for f in IMAGE_FOLDERS if any((root / f / k).is_dir() for k in keys)]
    if not found:
        raise LoreError(f"eurosat: expected the class folders ({keys[0]}/, ...) in {root}/2750 or "
                        f"{root}/EuroSAT_RGB, as the archives unpack")
    if len(found) > 1:
        raise LoreError(f"eurosat: both {found[0]} and {found[1]} hold EuroSAT class folders; keep one")
    return found[0]


def load_shipped_split(root: Path, images: Path) -> Splits:
    keys = catalog.class_keys("eurosat")
    shipped = catalog.split_list("eurosat")
    unknown = [p.name for p in images.iterdir() if p.is_dir() and p.name not in keys]
    if unknown:
        raise LoreError(f"eurosat: {images / unknown[0]} is not a EuroSAT class folder")
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label, key in enumerate(keys):
        folder = images / key
        if not folder.is_dir():
            continue
        train, val = set(shipped["train"][key]), set(shipped["val"][key])
        for path in list_images(folder):
            number = file_number(path)
            if number is None:
                raise LoreError(f"eurosat: {path} does not end in an image number; the shipped split "
                                "assigns images by that number")
            part = "train" if number in train else "val" if number in val else "test"
            splits[part].append((str(path), label))
    splits["train"] += splits["val"]
    used = "lore's shipped split (CoOp's proportions; EuroSAT has no official split)"
    return Splits(catalog.classnames("eurosat"), splits, split=used,
                  note=not_the_paper_split("eurosat", root, used))


def load_eurosat(root: Path, split_file: str | None = None) -> Splits:
    images = image_folder(root)
    found = find_split_file("eurosat", root, split_file) or find_split_file("eurosat", images.parent)
    if found is not None:
        return load_with_split_file("eurosat", found, images)
    return load_shipped_split(root, images)
