"""Tiny copies of the paper's 12 datasets in their real distributed on-disk formats.

``write_paper_datasets(ROOT)`` writes one folder per dataset, ``ROOT/<name>`` (where
:func:`lore.data.catalog.dataset_dir` expects it), each laid out like the real download: CIFAR
pickle batches, the ImageNet devkit, DTD label lists, Aircraft variant files, Stanford Dogs
``.mat`` lists, CoOp ``split_zhou_*.json`` files, RESISC45 / PatternNet numbered class folders.
Every class gets ``per_class`` pool images (train, plus one val image where the format has a val
list and ``per_class >= 2``) and ``test_per_class`` test images: flat colours per class with
noise, so a model can learn them. Used by the tests and by ``lore paper ... --data-root FAKE``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import catalog


def _pixels(labels: np.ndarray, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    colours = np.random.default_rng(num_classes).integers(20, 236, (num_classes, 3))
    noise = rng.normal(0, 12, (len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _write_images(paths: list[Path], labels: np.ndarray, num_classes: int, size: int,
                  rng: np.random.Generator) -> None:
    for path, pixels in zip(paths, _pixels(labels, num_classes, size, rng)):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=92)


def _plan(num_classes: int, per_class: int, test_per_class: int, with_val: bool) -> dict[str, np.ndarray]:
    """Labels of each split: class-major, ``per_class`` pool images (the last one in val)."""
    n_val = 1 if with_val and per_class >= 2 else 0
    parts = {"train": per_class - n_val, "val": n_val, "test": test_per_class}
    return {s: np.repeat(np.arange(num_classes), k) for s, k in parts.items() if k}


def _within(labels: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each class (labels are class-major)."""
    starts = np.searchsorted(labels, labels)
    return np.arange(len(labels)) - starts


# ---------------------------------------------------------------------------------------------
# one writer per format


def _cifar(name: str, out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    from ..data.cifar import BATCHES
    spec = BATCHES[name]
    base = out / spec["nests"][1]
    base.mkdir(parents=True, exist_ok=True)
    names = [n.replace(" ", "_") for n in catalog.classnames(name)]
    meta = {spec["names"]: names}
    with open(base / spec["meta"], "wb") as f:
        pickle.dump(meta, f, protocol=2)
    plan = _plan(len(names), per_class, test_per_class, with_val=False)
    for split in ("train", "test"):
        labels = plan[split]
        order = rng.permutation(len(labels))  # batches hold the classes mixed, as the real ones do
        pixels = _pixels(labels[order], len(names), 32, rng)
        rows = pixels.transpose(0, 3, 1, 2).reshape(len(labels), -1)
        files = spec[split]
        for file, idx in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            batch = {"batch_label": f"{file} of the tiny copy", "data": rows[idx],
                     spec["labels"]: labels[order][idx].tolist(),
                     "filenames": [f"img_{i}.png" for i in idx]}
            with open(base / file, "wb") as f:
                pickle.dump(batch, f, protocol=2)


def _imagenet(out: Path, per_class: int, test_per_class: int, size: int, rng, val_format: str = "devkit") -> None:
    wnids = catalog.class_keys("imagenet")
    plan = _plan(len(wnids), per_class, test_per_class, with_val=False)
    train = plan["train"]
    _write_images([out / "train" / wnids[y] / f"{wnids[y]}_{k}.JPEG" for y, k in zip(train, _within(train))],
                  train, len(wnids), size, rng)
    test = rng.permutation(plan["test"])  # the real val set is not ordered by class
    names = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(len(test))]
    if val_format == "folders":
        paths = [out / "val" / wnids[y] / f"{n}.JPEG" for y, n in zip(test, names)]
    else:
        paths = [out / "val" / f"{n}.JPEG" for n in names]
    _write_images(paths, test, len(wnids), size, rng)
    if val_format == "loc":
        rows = [f"{n},{wnids[y]} 10 10 20 20" for n, y in zip(names, test)]
        (out / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif val_format == "devkit":
        from scipy.io import savemat
        data = out / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True, exist_ok=True)
        # the devkit numbers classes 1..1000 in its own order, not by WordNet id: shuffle to show it
        ids = rng.permutation(len(wnids)) + 1
        synsets = np.zeros(len(wnids), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                              ("num_children", "O")])
        synsets["ILSVRC2012_ID"] = [int(i) for i in ids]
        synsets["WNID"] = wnids
        synsets["words"] = catalog.classnames("imagenet")
        synsets["num_children"] = [0] * len(wnids)
        savemat(str(data / "meta.mat"), {"synsets": synsets.reshape(-1, 1)})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(str(ids[y]) for y in test) + "\n")


def _dtd(out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    base = out / "dtd"
    keys = catalog.class_keys("dtd")
    (base / "labels").mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, labels in _plan(len(keys), per_class, test_per_class, with_val=True).items():
        rel = [f"{keys[y]}/{keys[y]}_{offset + k:04d}.jpg" for y, k in zip(labels, _within(labels))]
        offset += 10000
        _write_images([base / "images" / r for r in rel], labels, len(keys), size, rng)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(rel) + "\n")


def _aircraft(out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    data = out / "fgvc-aircraft-2013b" / "data"
    variants = catalog.class_keys("aircraft")
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    next_id = 1000000
    for split, labels in _plan(len(variants), per_class, test_per_class, with_val=True).items():
        ids = [str(next_id + i) for i in range(len(labels))]
        next_id += len(labels)
        _write_images([data / "images" / f"{i}.jpg" for i in ids], labels, len(variants), size, rng)
        lines = [f"{i} {variants[y]}" for i, y in zip(ids, labels)]
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


def _dogs(out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    from scipy.io import savemat
    keys = catalog.class_keys("dogs")
    out.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, labels in _plan(len(keys), per_class, test_per_class, with_val=False).items():
        rel = [f"{keys[y]}/{keys[y].split('-')[0]}_{offset + k}.jpg" for y, k in zip(labels, _within(labels))]
        offset += 100000
        _write_images([out / "Images" / r for r in rel], labels, len(keys), size, rng)
        files = np.empty((len(rel), 1), dtype=object)
        files[:, 0] = rel
        annotations = np.empty((len(rel), 1), dtype=object)
        annotations[:, 0] = [r.rsplit(".", 1)[0] for r in rel]
        savemat(str(out / f"{split}_list.mat"), {"file_list": files, "annotation_list": annotations,
                                                 "labels": (labels + 1).astype(np.float64).reshape(-1, 1)})


_COOP_PATHS = {
    "flowers": lambda key, split, i: f"image_{i:05d}.jpg",
    "cars": lambda key, split, i: f"cars_{'test' if split == 'test' else 'train'}/{i:05d}.jpg",
    "eurosat": lambda key, split, i: f"{key}/{key}_{i}.jpg",
    "ucf101": lambda key, split, i: f"{key}/v_{key.replace('_', '')}_g{i % 25 + 1:02d}_c{i:03d}.jpg",
}


# CoOp's DATASETS.md: each split file and the folder its image paths start from
_COOP_LAYOUT = {
    "flowers": ("split_zhou_OxfordFlowers.json", "jpg"),
    "cars": ("split_zhou_StanfordCars.json", ""),
    "eurosat": ("split_zhou_EuroSAT.json", "2750"),
    "ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes"),
}


def _coop(name: str, out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    split_name, image_dir = _COOP_LAYOUT[name]
    keys, names = catalog.class_keys(name), catalog.classnames(name)
    image_root = out / image_dir if image_dir else out
    split: dict[str, list] = {}
    counter = 1
    for s, labels in _plan(len(keys), per_class, test_per_class, with_val=True).items():
        rel = [_COOP_PATHS[name](keys[y], s, counter + i) for i, y in enumerate(labels)]
        counter += len(labels)
        _write_images([image_root / r for r in rel], labels, len(keys), size, rng)
        split[s] = [[r, int(y), names[y]] for r, y in zip(rel, labels)]
    (out / split_name).write_text(json.dumps(split))


def _remote_sensing(name: str, out: Path, per_class: int, test_per_class: int, size: int, rng) -> None:
    keys = catalog.class_keys(name)
    shipped = catalog.split_list(name)
    nest = {"resisc45": "NWPU-RESISC45", "patternnet": "PatternNet/images"}[name]
    paths, labels = [], []
    for y, key in enumerate(keys):
        train = shipped["train"][key][:per_class]
        test = sorted(set(range(1, shipped["images_per_class"] + 1)) - set(shipped["train"][key]))[:test_per_class]
        # RESISC45 names files <class>_NNN.jpg; PatternNet drops the underscores: <class>NNN.jpg
        stem = f"{key}_" if name == "resisc45" else key.replace("_", "")
        paths += [out / nest / key / f"{stem}{n:03d}.jpg" for n in train + test]
        labels += [y] * (len(train) + len(test))
    _write_images(paths, np.asarray(labels), len(keys), size, rng)


WRITERS = {
    "cifar10": lambda *a: _cifar("cifar10", *a),
    "cifar100": lambda *a: _cifar("cifar100", *a),
    "imagenet": _imagenet,
    "dtd": _dtd,
    "aircraft": _aircraft,
    "dogs": _dogs,
    "flowers": lambda *a: _coop("flowers", *a),
    "cars": lambda *a: _coop("cars", *a),
    "eurosat": lambda *a: _coop("eurosat", *a),
    "ucf101": lambda *a: _coop("ucf101", *a),
    "resisc45": lambda *a: _remote_sensing("resisc45", *a),
    "patternnet": lambda *a: _remote_sensing("patternnet", *a),
}


def write_paper_datasets(root: str | Path, names: list[str] | tuple[str, ...] | None = None,
                         per_class: int = 2, test_per_class: int = 1, size: int = 32,
                         seed: int = 0) -> dict[str, Path]:
    """Write tiny copies of ``names`` (default: all 12) under ``root``; returns name -> folder."""
    if per_class < 1 or test_per_class < 1:
        raise ValueError("per_class and test_per_class must be at least 1")
    rng = np.random.default_rng(seed)
    written = {}
    for name in names or catalog.PAPER_DATASETS:
        out = catalog.dataset_dir(name, root)
        WRITERS[catalog.check_name(name)](out, per_class, test_per_class, size, rng)
        written[name] = out
    return written
