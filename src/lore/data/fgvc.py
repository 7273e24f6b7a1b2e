"""The FGVC group (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars) in VPT's
layout: each dataset's folder as downloaded, with VPT's split files ``train.json``, ``val.json``,
``test.json`` beside it (one object ``{relative image path: class id}`` each; VPT split the
official training set where no validation set is published).

``--format fgvc``: VPT's final protocol, train.json to train (val.json its val part), test.json as
the test set. ``--format fgvc-tune``: the tuning protocol, train.json to train and val.json as the
test set (learning rate and weight decay are picked on it). Class ids are mapped to 0..C-1 in
sorted order, as VPT's JSONDataset does; image paths start from the folder VPT reads them from.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from ..io import inside_root, read_json
from .layout import folders_named
from .splits import Sample, Splits

# dataset -> (folder names: VPT's recommended one first, then the archives'), classes, image folder
DATASETS = {
    "cub": (("CUB_200_2011", "CUB200", "cub"), 200, "images"),
    "nabirds": (("nabirds", "NABirds"), 555, "images"),
    "flowers": (("OxfordFlower", "oxford_flowers", "flowers102"), 102, ""),
    "dogs": (("Stanford-dogs", "StanfordDogs", "stanford_dogs"), 120, "Images"),
    "cars": (("Stanford-cars", "StanfordCars", "stanford_cars"), 196, ""),
}
LISTS = {"fgvc": {"train": "train.json", "val": "val.json", "test": "test.json"},
         "fgvc-tune": {"train": "train.json", "test": "val.json"}}


def folder_names(dataset: str) -> tuple[str, ...]:
    """Its folder names: VPT's, the archives', and lore's own key (``dogs/``), in any letter case."""
    return (*DATASETS[dataset][0], dataset)


def dataset_of(folder: Path) -> str | None:
    """The FGVC dataset a folder holds, from its name."""
    name = folder.name.lower()
    return next((d for d in DATASETS if name in {n.lower() for n in folder_names(d)}), None)


def find(name: str, data_root: Path) -> Path | None:
    """The dataset's folder under ``data_root`` (any of its names), or None."""
    found = folders_named(data_root, folder_names(name))
    if len(found) > 1:
        raise LoreError(f"--data-root {data_root}: both {found[0].name}/ and {found[1].name}/ hold {name}; "
                        "keep one")
    return found[0] if found else None


def _read_split(path: Path) -> dict:
    if not path.is_file():
        raise LoreError(f"--data {path.parent}: expected VPT's split file {path.name} there (VPT's FGVC "
                        "splits: train.json, val.json, test.json in the dataset's folder)")
    raw = read_json(path, "VPT FGVC split file", unique_keys=True)
    if not isinstance(raw, dict) or not raw:
        raise LoreError(f"{path}: expected an object mapping image path -> class id")
    for rel, y in raw.items():
        # ids are only sorted and renumbered, never used as sizes: any whole number >= 0 is safe
        if isinstance(y, bool) or not isinstance(y, int) or y < 0:
            raise LoreError(f"{path}: entry {rel!r:.80} has class id {y!r:.40}; expected a whole number")
    return raw


def _class_name(paths: list[str]) -> str | None:
    """CUB '001.Black_footed_Albatross/x.jpg', Dogs 'n02085620-Chihuahua/x.jpg' -> the breed / species."""
    parents = {Path(p).parent.name for p in paths}
    if len(parents) != 1:
        return None
    name = parents.pop()
    for sep in (".", "-"):  # CUB's number, Dogs' WordNet id
        head, found, tail = name.partition(sep)
        if found and head[:1].isalnum() and (head.isdigit() or head[0] == "n" and head[1:].isdigit()):
            name = tail
    return name.replace("_", " ") or None


def load_fgvc(root: Path, protocol: str = "fgvc") -> Splits:
    if not root.is_dir():
        raise LoreError(f"--data {root}: --format {protocol} needs an FGVC dataset folder holding VPT's "
                        "train.json, val.json, test.json")
    raw = {split: _read_split(root / name) for split, name in LISTS[protocol].items()}
    dataset = dataset_of(root)
    images = root / DATASETS[dataset][2] if dataset else root
    ids = sorted({y for entries in raw.values() for y in entries.values()})
    if dataset and len(ids) != DATASETS[dataset][1]:
        raise LoreError(f"--data {root}: the split files list {len(ids)} classes, {dataset} has "
                        f"{DATASETS[dataset][1]}; are they VPT's files for this dataset?")
    index = {y: i for i, y in enumerate(ids)}
    splits: dict[str, list[Sample]] = {}
    members: dict[int, list[str]] = {}
    for split, entries in raw.items():
        source = root / LISTS[protocol][split]
        splits[split] = [(str(inside_root(images, rel, source)), index[y]) for rel, y in sorted(entries.items())]
        for rel, y in entries.items():
            members.setdefault(index[y], []).append(rel)
    names = _names(dataset, members, len(ids))
    return Splits(names, splits, split=f"VPT FGVC {' / '.join(LISTS[protocol].values())}")


def _names(dataset: str | None, members: dict[int, list[str]], count: int) -> list[str]:
    if dataset in ("flowers", "cars"):  # one image folder for all classes: the official class lists
        from .catalog import classnames

        return classnames(dataset)
    found = [_class_name(members.get(i, [])) for i in range(count)]
    if None in found or len(set(found)) != count:
        return [f"class {i}" for i in range(count)]
    return found
