"""NWPU-RESISC45 and PatternNet: class folders of numbered images. The paper names no split for
either; lore ships one per dataset (``meta/splits/<name>.json``): the numbers of the training images
of every class, drawn once with a fixed seed in the paper's per-class counts (RESISC45 140 of 700,
PatternNet 640 of 800); every other image of the class is a test image. TorchGeo publishes a
RESISC45 split (60 / 20 / 20 %), read with ``--split-file``."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from . import catalog
from .datasets import Sample, Splits
from .layout import file_number, list_images, read_lines

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


def load_resisc45(root: Path, split_file: str | None = None) -> Splits:
    if split_file:
        return load_torchgeo_split(root, Path(split_file).expanduser())
    return load_remote_sensing("resisc45", root)


TORCHGEO_LISTS = {s: f"resisc45-{s}.txt" for s in ("train", "val", "test")}


def load_torchgeo_split(root: Path, split_file: Path) -> Splits:
    """TorchGeo's published RESISC45 split (``resisc45-train.txt``, ``-val.txt``, ``-test.txt``: one
    image file name per line, 60 / 20 / 20 %); ``split_file`` is any of the three, the others sit
    beside it. Train + val form the pool."""
    if split_file.name not in TORCHGEO_LISTS.values():
        raise LoreError(f"--split-file {split_file}: for resisc45 give TorchGeo's resisc45-train.txt "
                        "(resisc45-val.txt and resisc45-test.txt beside it)")
    lists = {s: split_file.parent / f for s, f in TORCHGEO_LISTS.items()}
    absent = [str(p) for p in lists.values() if not p.is_file()]
    if absent:
        raise LoreError(f"--split-file {split_file}: {absent[0]} not found (TorchGeo's three lists go together)")
    keys = catalog.class_keys("resisc45")
    base = _image_root("resisc45", root, keys)
    index = {k: i for i, k in enumerate(keys)}
    where = {}
    for key in keys:
        if (base / key).is_dir():
            where.update({p.name: (str(p), index[key]) for p in list_images(base / key)})
    splits: dict[str, list[Sample]] = {}
    for s, path in lists.items():
        names = read_lines(path)
        absent = [n for n in names if n not in where]
        if absent:
            raise LoreError(f"resisc45: {path} lists {absent[0]}, which is not an image of the class "
                            f"folders in {base} ({len(absent)} such line(s))")
        splits[s] = [where[n] for n in names]
    splits["train"] = splits["train"] + splits["val"]
    return Splits(catalog.classnames("resisc45"), splits,
                  sizes="expected_torchgeo",
                  split=f"TorchGeo's published split ({split_file.parent}/resisc45-{{train,val,test}}.txt)",
                  note="resisc45: TorchGeo's split (60/20/20 %) is not the paper's 140-per-class training "
                       "split; without --split-file lore uses its shipped split with the paper's counts")


def load_patternnet(root: Path) -> Splits:
    return load_remote_sensing("patternnet", root)
