"""The 12 classification datasets of the paper, read as they are distributed.

Facts (class names, expected split sizes, templates, shipped split lists) live in ``meta/``;
each dataset family has its own reader module. Every reader returns a :class:`Splits` whose
``train`` is the pool few-shot images are drawn from: the official / CoOp train and val parts
together, as the reference code samples its shots from one folder holding both (the paper's
Table 6 counts). ``val`` is the split's own val part where it has one (a subset of that pool),
``test`` the test set.
"""

from __future__ import annotations

import importlib
import json
from functools import cache
from pathlib import Path

from ..errors import LoreError
from .splits import Splits

PAPER_DATASETS = ("cifar10", "cifar100", "imagenet", "dtd", "aircraft", "dogs", "flowers", "cars",
                  "eurosat", "ucf101", "resisc45", "patternnet")

META = Path(__file__).with_name("meta")

# dataset -> "module:function" of its reader, imported only when used
READERS = {
    "cifar10": "cifar:load_cifar10",
    "cifar100": "cifar:load_cifar100",
    "imagenet": "imagenet:load_imagenet",
    "dtd": "dtd:load_dtd",
    "aircraft": "aircraft:load_aircraft",
    "dogs": "dogs:load_dogs",
    "flowers": "flowers:load_flowers",
    "cars": "cars:load_cars",
    "eurosat": "eurosat:load_eurosat",
    "ucf101": "coop_splits:load_ucf101",
    "resisc45": "remote_sensing:load_resisc45",
    "patternnet": "remote_sensing:load_patternnet",
}


# the readers that take --split-file: CoOp's split_zhou_*.json kept elsewhere; TorchGeo's RESISC45 lists
SPLIT_FILE_READERS = ("flowers", "cars", "eurosat", "resisc45")

# folder names a dataset is found under in a data root, besides its lore name: CoOp's DATA/ folder
# names (DATASETS.md) and the folders the official archives extract to
FOLDER_NAMES = {
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "imagenet": (),
    "dtd": (),
    "aircraft": ("fgvc_aircraft", "fgvc-aircraft-2013b"),
    "dogs": ("stanford_dogs",),
    "flowers": ("oxford_flowers",),
    "cars": ("stanford_cars",),
    "eurosat": (),
    "ucf101": (),
    "resisc45": ("NWPU-RESISC45",),
    "patternnet": ("PatternNet",),
}


def folder_names(name: str) -> tuple[str, ...]:
    """Every folder name ``name`` is looked for under a data root, its lore name first."""
    return (check_name(name), *FOLDER_NAMES[name])


def check_name(name: str) -> str:
    if name not in PAPER_DATASETS:
        raise LoreError(f"unknown dataset {name!r}: choose one of {', '.join(PAPER_DATASETS)}")
    return name


@cache
def _table() -> dict:
    return json.loads((META / "datasets.json").read_text(encoding="utf-8"))


def info(name: str) -> dict:
    """The dataset's facts: title, group, classes, expected / paper split sizes, split, templates."""
    return _table()[check_name(name)]


@cache
def _lines(kind: str, name: str) -> tuple[str, ...]:
    path = META / kind / f"{check_name(name)}.txt"
    return tuple(ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def classnames(name: str) -> list[str]:
    """Readable class names in label order (what the class knowledge is computed from). Readers
    whose files name the classes (CIFAR meta, variants.txt, Dogs folders, CoOp JSON) use those
    names, made readable, so a split file always agrees with its own labels."""
    return list(_lines("classnames", name))


def class_keys(name: str) -> list[str]:
    """The names classes have on disk (folders, WordNet ids), in label order."""
    if (META / "keys" / f"{check_name(name)}.txt").is_file():
        return list(_lines("keys", name))
    return classnames(name)


def split_list(name: str) -> dict:
    """A split shipped with lore for a dataset that has no public one (RESISC45, PatternNet)."""
    return json.loads((META / "splits" / f"{check_name(name)}.json").read_text(encoding="utf-8"))


def expected_sizes(name: str) -> dict[str, int]:
    """Images per split as distributed ('train' = the few-shot pool), plus 'classes'."""
    return {**info(name)["expected"], "classes": info(name)["classes"]}


def knowledge_template(name: str) -> str:
    """The reference code's LORE knowledge sentence for this dataset."""
    return info(name)["knowledge_template"]


def zeroshot_templates(name: str) -> list[str]:
    """Published zero-shot templates (CoOp's per-dataset ones where CoOp has the dataset)."""
    return list(info(name)["zeroshot_templates"])


def prograd_templates(name: str) -> list[str]:
    """ProGrad's zero-shot teacher templates: its own per-dataset one where its official code
    has the dataset, else the published zero-shot templates."""
    template = info(name).get("prograd_template")
    return [template] if template else zeroshot_templates(name)


def dataset_dir(name: str, data_root: str | Path) -> Path:
    """The folder a dataset is in under a common ROOT: ``ROOT/<name>`` or ``ROOT/<CoOp's or the
    archive's folder name>`` (see :func:`folder_names`); two of them present is an error."""
    root = Path(data_root).expanduser()
    found = [root / n for n in folder_names(name) if (root / n).is_dir()]
    if len(found) > 1:
        raise LoreError(f"{name}: both {found[0]} and {found[1]} are in the data root; keep one, or "
                        f"pass the folder itself with --dataset {name} --data DIR")
    return found[0] if found else root / name


def missing(name: str, data_root: str | Path) -> str | None:
    """None if the dataset's folder exists under ROOT, else ``"<paths> not found"``."""
    path = dataset_dir(name, data_root)
    if path.is_dir():
        return None
    root = Path(data_root).expanduser()
    return f"{' or '.join(str(root / n) for n in folder_names(name))} not found"


def load_paper_dataset(name: str, root: str | Path, split_file: str | None = None) -> Splits:
    """Read dataset ``name`` from its folder ``root`` as distributed (no conversion); ``split_file``
    for the datasets in :data:`SPLIT_FILE_READERS`."""
    check_name(name)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LoreError(f"{name}: dataset folder {path} not found")
    below = dataset_dir(name, path)
    if below.is_dir():  # given the folder above the dataset's (a data root)
        path = below
    module, function = READERS[name].split(":")
    reader = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    if split_file and name not in SPLIT_FILE_READERS:
        raise LoreError(f"--split-file: {name} has one split; only {', '.join(SPLIT_FILE_READERS)} take a split file")
    data: Splits = reader(path, split_file=split_file) if split_file else reader(path)
    data.root = str(path)
    n = len(data.classnames)
    for split, samples in data.splits.items():
        bad = [y for _, y in samples if not 0 <= y < n]
        if bad:
            raise LoreError(f"{name}: label {bad[0]} of the {split} split in {path} is outside 0..{n - 1}")
    if not data.splits.get("train") or not data.splits.get("test"):
        raise LoreError(f"{name}: no {'train' if not data.splits.get('train') else 'test'} images "
                        f"found in {path}")
    return data
