"""CoOp's split files (``split_zhou_*.json``, Zhou et al., IJCV 2022): the splits the paper uses for
Oxford Flowers, Stanford Cars, EuroSAT and UCF101. Train and val form the few-shot pool.

The file is looked for in the dataset's folder and in the folder above it (where a downloaded
split file often lands); its image paths start at the dataset's image folder. Flowers, Cars and
EuroSAT also read without it (:mod:`.flowers`, :mod:`.cars`, :mod:`.eurosat`), with a note that the
split is then not the paper's."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from . import catalog
from .datasets import Splits, load_dataset

SPLIT_FILES = {
    "flowers": "split_zhou_OxfordFlowers.json",
    "cars": "split_zhou_StanfordCars.json",
    "eurosat": "split_zhou_EuroSAT.json",
    "ucf101": "split_zhou_UCF101.json",
}
WHERE = "CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md) links each split_zhou_*.json"


def find_split_file(name: str, root: Path, explicit: str | None = None) -> Path | None:
    """``--split-file`` if given, else CoOp's file in ``root`` or beside it, else None."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LoreError(f"--split-file {explicit}: not found")
        return path
    for folder in (root, root.parent):
        path = folder / SPLIT_FILES[name]
        if path.is_file():
            return path
    return None


def load_with_split_file(name: str, split_file: Path, images: Path) -> Splits:
    """CoOp's split of ``name``: paths in ``split_file`` relative to the image folder ``images``."""
    data = load_dataset(str(split_file), "coop-split", image_dir=str(images.resolve()))
    shipped = catalog.classnames(name)
    if len(data.classnames) > len(shipped):
        raise LoreError(f"{name}: {split_file} has labels up to {len(data.classnames) - 1}; "
                        f"{name} has {len(shipped)} classes")
    # the split file's own class names go with its labels; shipped ones only fill labels it lacks
    present = {y for samples in data.splits.values() for _, y in samples}
    names = [data.classnames[i].replace("_", " ") if i in present else n for i, n in enumerate(shipped)]
    val = data.splits.get("val", [])
    splits = {"train": data.splits.get("train", []) + val, "val": val, "test": data.splits.get("test", [])}
    return Splits(names, {k: v for k, v in splits.items() if v},
                  split=f"CoOp's {split_file.name} (the paper's split): {split_file}")


def not_the_paper_split(name: str, root: Path, used: str) -> str:
    return (f"{name}: using {used}, not the paper's split: CoOp's {SPLIT_FILES[name]} was not found in "
            f"{root} or beside it (put it there or pass --split-file; {WHERE})")


def load_ucf101(root: Path) -> Splits:
    """UCF101's middle frames exist only as CoOp's release, so its split file is required."""
    split_file = find_split_file("ucf101", root)
    images = root / "UCF-101-midframes"
    if split_file is None:
        raise LoreError(f"ucf101: expected CoOp's {SPLIT_FILES['ucf101']} in {root} or beside it ({WHERE})")
    if not images.is_dir():
        raise LoreError(f"ucf101: expected the image folder UCF-101-midframes/ in {root} (the paths in "
                        f"{split_file.name} start there)")
    return load_with_split_file("ucf101", split_file, images)
