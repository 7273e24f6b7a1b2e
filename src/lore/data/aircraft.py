"""FGVC-Aircraft at the variant level (100 classes), as distributed: ``data/variants.txt`` names
the classes in label order, ``data/images_variant_{train,val,test}.txt`` hold ``<image id>
<variant>`` lines, images are ``data/images/<id>.jpg``. Train and val form the pool."""

from __future__ import annotations

from pathlib import Path

from ..errors import LoreError
from ..io import inside_root
from . import catalog
from .datasets import Sample, Splits
from .layout import locate, read_lines, require_files

NESTS = ("data", "fgvc-aircraft-2013b/data", "")


def _read(list_file: Path, images: Path, index: dict[str, int]) -> list[Sample]:
    samples = []
    for number, line in enumerate(read_lines(list_file), 1):
        image_id, _, variant = line.partition(" ")
        if variant not in index:
            raise LoreError(f"aircraft: {list_file} lists variant {variant!r}, which variants.txt "
                            "does not name")
        samples.append((str(inside_root(images, f"{image_id}.jpg", list_file, number)), index[variant]))
    return samples


def load_aircraft(root: Path) -> Splits:
    variants_file = locate("aircraft", root, "variants.txt", NESTS)
    base = variants_file.parent
    variants = read_lines(variants_file)  # label order and class names
    if sorted(variants) != sorted(catalog.class_keys("aircraft")):
        raise LoreError(f"aircraft: {variants_file} does not list the 100 FGVC-Aircraft variants")
    index = {v: i for i, v in enumerate(variants)}
    lists = {s: locate("aircraft", base, f"images_variant_{s}.txt") for s in ("train", "val", "test")}
    parts = {s: _read(f, base / "images", index) for s, f in lists.items()}
    for s, samples in parts.items():
        require_files("aircraft", s, samples, lists[s])
    return Splits(variants,
                  {"train": parts["train"] + parts["val"], "val": parts["val"], "test": parts["test"]})
