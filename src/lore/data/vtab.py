"""VTAB-1k as the parameter-efficient tuning community distributes its preprocessed copy (the
layout NOAH, SSF, V-PETL Bench and most PETL repositories read): one folder per task holding the
images and the split lists ``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt``,
one ``relative/path label`` per line, paths relative to the task folder.

``--format vtab``: the final protocol, train800val200 as the training pool (val200 its val part),
test.txt as the test set. ``--format vtab-tune``: the tuning protocol, train800 to train, val200 as
the test set (VPT picks learning rate and weight decay this way, then trains on train800val200).
The class count comes from the task (its folder name) where it is one of the 19, else from the
labels listed. Class names: the tasks whose labels follow a class list lore has (TFDS orders them
as the official lists: CIFAR-100, DTD, Flowers102, EuroSAT, RESISC45; SVHN's digits); the others
(counts, distances, angles, positions, grades) are numeric, "class 3".
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from ..io import inside_root
from .splits import Sample, Splits
from .layout import folders_named, read_lines

# classes per task (VTAB-1k, Zhai et al. 2019), by the folder names the PETL repositories use
TASK_CLASSES = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}
# other spellings of the same folders in some repositories
ALIASES = {"cifar100": "cifar", "flowers102": "oxford_flowers102", "oxford_pet": "oxford_iiit_pet",
           "pets": "oxford_iiit_pet", "camelyon": "patch_camelyon", "retinopathy": "diabetic_retinopathy",
           "clevr_count_all": "clevr_count", "clevr_closest_object_distance": "clevr_dist",
           "kitti_distance": "kitti", "dsprites_location": "dsprites_loc", "dsprites_orientation": "dsprites_ori",
           "smallnorb_azimuth": "smallnorb_azi", "smallnorb_elevation": "smallnorb_ele"}
# tasks whose TFDS label order is that of one of lore's class lists (lore.data.catalog)
NAMED_BY = {"cifar": "cifar100", "dtd": "dtd", "oxford_flowers102": "flowers", "eurosat": "eurosat",
            "resisc45": "resisc45"}
LISTS = {"vtab": {"train": "train800val200.txt", "val": "val200.txt", "test": "test.txt"},
         "vtab-tune": {"train": "train800.txt", "test": "val200.txt"}}


def task_name(folder: Path) -> str | None:
    name = folder.name.lower()
    name = ALIASES.get(name, name)
    return name if name in TASK_CLASSES else None


def find(task: str, data_root: Path) -> Path | None:
    """The task's folder under the data root, by any name the PETL repositories give it, in any
    letter case (``KITTI/``), or None."""
    found = folders_named(data_root, [task] + [alias for alias, name in ALIASES.items() if name == task])
    if len(found) > 1:
        raise LoreError(f"--data-root {data_root}: both {found[0].name}/ and {found[1].name}/ hold the "
                        f"VTAB-1k task {task}; keep one")
    return found[0] if found else None


def read_list(path: Path, root: Path) -> list[tuple[Path, int, int]]:
    """(image path, label, line number) of every line; one error naming the file and line."""
    if not path.is_file():
        raise LoreError(f"--data {root}: expected the VTAB-1k split list {path.name} there")
    rows = []
    for number, line in enumerate(read_lines(path), 1):
        parts = line.rsplit(maxsplit=1)
        # isdigit() also accepts '²' and other digits int() refuses: ASCII digits only
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            raise LoreError(f"{path}, line {number}: expected 'relative/path label', got {line[:80]!r}")
        rows.append((inside_root(root, parts[0], path, number), int(parts[1]), number))
    if not rows:
        raise LoreError(f"{path} lists no image; every VTAB-1k split list must hold its images (is the "
                        "task folder complete?)")
    return rows


def load_vtab(root: Path, protocol: str = "vtab") -> Splits:
    if not root.is_dir():
        raise LoreError(f"--data {root}: --format {protocol} needs a VTAB-1k task folder (with train800.txt, "
                        "val200.txt, train800val200.txt, test.txt)")
    lists = {split: read_list(root / name, root) for split, name in LISTS[protocol].items()}
    task = task_name(root)
    listed = sum(len(rows) for rows in lists.values())
    num_classes = TASK_CLASSES[task] if task else max(y for rows in lists.values() for _, y, _ in rows) + 1
    splits: dict[str, list[Sample]] = {}
    for split, rows in lists.items():
        for path, y, number in rows:
            # a label beyond the task's classes (or, for an unknown task, the entry count) is corrupt
            if y >= (num_classes if task else listed):
                bound = (f"{task} has {num_classes} classes" if task else
                         f"the lists hold {listed} images, so a label is at most {listed - 1}")
                raise LoreError(f"{root / LISTS[protocol][split]}, line {number}: label {y} but {bound}")
        splits[split] = [(str(p), y) for p, y, _ in rows]
    return Splits(class_names(task, num_classes), splits, split=f"VTAB-1k {' / '.join(LISTS[protocol].values())}")


def class_names(task: str | None, num_classes: int) -> list[str]:
    if task in NAMED_BY:
        from .catalog import classnames

        return classnames(NAMED_BY[task])
    if task == "svhn":
        return [f"digit {i}" for i in range(10)]
    return [f"class {i}" for i in range(num_classes)]
