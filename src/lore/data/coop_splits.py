"""Oxford Flowers, Stanford Cars, EuroSAT and UCF101 with CoOp's ``split_zhou_*.json`` (Zhou et al.):
read by the coop-split reader of :mod:`lore.data.datasets`; train and val form the pool."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from . import catalog
from .datasets import Splits, load_dataset
from .layout import locate

# dataset -> (split file, folder its image paths start from)
LAYOUT = {
    "flowers": ("split_zhou_OxfordFlowers.json", "jpg"),
    "cars": ("split_zhou_StanfordCars.json", ""),
    "eurosat": ("split_zhou_EuroSAT.json", "2750"),
    "ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes"),
}


def load_coop(name: str, root: Path) -> Splits:
    split_name, image_dir = LAYOUT[name]
    split_file = locate(name, root, split_name)
    if image_dir and not (root / image_dir).is_dir():
        raise LoreError(f"{name}: expected the image folder {image_dir}/ in {root} (the paths in "
                        f"{split_name} start there)")
    data = load_dataset(str(split_file), "coop-split", image_dir=image_dir or None)
    shipped = catalog.classnames(name)
    if len(data.classnames) > len(shipped):
        raise LoreError(f"{name}: {split_file} has labels up to {len(data.classnames) - 1}; "
                        f"{name} has {len(shipped)} classes")
    # the split file's own class names go with its labels; shipped ones only fill labels it lacks
    present = {y for samples in data.splits.values() for _, y in samples}
    names = [data.classnames[i].replace("_", " ") if i in present else n for i, n in enumerate(shipped)]
    val = data.splits.get("val", [])
    splits = {"train": data.splits.get("train", []) + val, "val": val, "test": data.splits.get("test", [])}
    return Splits(names, {k: v for k, v in splits.items() if v})


def load_flowers(root: Path) -> Splits:
    return load_coop("flowers", root)


def load_cars(root: Path) -> Splits:
    return load_coop("cars", root)


def load_eurosat(root: Path) -> Splits:
    return load_coop("eurosat", root)


def load_ucf101(root: Path) -> Splits:
    return load_coop("ucf101", root)
