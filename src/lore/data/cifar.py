"""CIFAR-10 / CIFAR-100 from the python pickle batches they are distributed as.

The pickles are read with lore's restricted unpickler (plain data and numpy arrays only: a pickle
can run code). Their images are written once as PNG files under the user cache (keyed by a hash of
the batches), so every sample is an ordinary image path that ImageDataset, the attention tools
and ``fewshot.json`` handle like any other dataset's.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import LoreError
from ..io import load_pickle_safe
from . import catalog
from .datasets import Sample, Splits
from .layout import cache_dir, locate

BATCHES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "names": "label_names", "labels": "labels",
                "nests": ("", "cifar-10-batches-py")},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "names": "fine_label_names",
                 "labels": "fine_labels", "nests": ("", "cifar-100-python")},
}
# a CIFAR-100 train pickle holds 50,000 x 3,072 bytes: allow that much, not more
MAX_ELEMENTS = 60_000 * 3 * 32 * 32


def read_batch(path: Path) -> dict[str, object]:
    """One CIFAR pickle as a dict with str keys (restricted unpickler: plain data and arrays)."""
    raw = load_pickle_safe(path, what="CIFAR batch", max_elements=MAX_ELEMENTS)
    if not isinstance(raw, dict):
        raise LoreError(f"{path} is not a CIFAR python batch (expected a dict)")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _images(batch: dict, path: Path, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get(labels_key)
    if data is None or labels is None:
        raise LoreError(f"{path} has no 'data' / '{labels_key}' entries: not a batch of this dataset")
    # CIFAR's own types: uint8 pixels (N, 3072), integer labels in range (nothing converted silently)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise LoreError(f"{path}: 'data' must be a uint8 array of shape (N, 3072) as CIFAR ships it, got {got}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise LoreError(f"{path}: {len(data)} images but '{labels_key}' is not a list of {len(data)} labels")
    ys = np.asarray(labels)
    if ys.dtype.kind not in "iu" or (ys.size and not 0 <= ys.min() <= ys.max() < num_classes):
        bad = next((y for y in labels if isinstance(y, bool) or not isinstance(y, (int, np.integer))
                    or not 0 <= y < num_classes), labels[0] if len(labels) else None)
        raise LoreError(f"{path}: '{labels_key}' holds {bad!r:.40}; labels are integers 0..{num_classes - 1}")
    # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), ys.astype(np.int64)


def _materialise(name: str, files: dict[str, list[Path]], labels_key: str, target: Path, num_classes: int) -> None:
    """Write every image as ``target/<split>/<index>.png`` (once; a finished folder is reused)."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    labels: dict[str, list[int]] = {}
    # every batch validated before the cache is touched
    read = {split: [_images(read_batch(path), path, labels_key, num_classes) for path in paths]
            for split, paths in files.items()}
    try:  # an interrupt or a full disk leaves no half-written folder in the cache
        for split, batches in read.items():
            (tmp / split).mkdir(parents=True)
            images = np.concatenate([b[0] for b in batches])
            labels[split] = np.concatenate([b[1] for b in batches]).tolist()
            for index, image in enumerate(tqdm(images, desc=f"{name} {split}: writing images once as PNG")):
                Image.fromarray(image).save(tmp / split / f"{index:05d}.png", compress_level=1)
        buf = io.StringIO()
        for split, ys in labels.items():
            buf.write(f"{split} " + " ".join(map(str, ys)) + "\n")
        (tmp / "labels.txt").write_text(buf.getvalue())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "labels.txt").is_file():
            raise


def _load(name: str, root: Path) -> Splits:
    spec = BATCHES[name]
    meta = locate(name, root, spec["meta"], spec["nests"])
    base = meta.parent
    files = {split: [locate(name, base, f) for f in spec[split]] for split in ("train", "test")}
    raw_names = read_batch(meta).get(spec["names"], [])
    if not isinstance(raw_names, list) or not all(isinstance(n, (str, bytes)) for n in raw_names):
        raise LoreError(f"{meta}: '{spec['names']}' must be a list of class names")
    names = [_text(n) for n in raw_names]
    shipped = catalog.classnames(name)
    if len(names) != len(shipped):
        raise LoreError(f"{meta} lists {len(names)} classes; {name} has {len(shipped)}")
    target = cache_dir() / name / _digest([meta, *files["train"], *files["test"]])
    if not (target / "labels.txt").is_file():
        _materialise(name, files, spec["labels"], target, len(shipped))
    splits: dict[str, list[Sample]] = {}
    for line in (target / "labels.txt").read_text().splitlines():
        split, *ys = line.split()
        splits[split] = [(str(target / split / f"{i:05d}.png"), int(y)) for i, y in enumerate(ys)]
    return Splits([n.replace("_", " ") for n in names], splits)


def load_cifar10(root: Path) -> Splits:
    return _load("cifar10", root)


def load_cifar100(root: Path) -> Splits:
    return _load("cifar100", root)
