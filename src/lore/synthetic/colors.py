"""Tiny generated image-classification sets in the real on-disk formats (tests, examples)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 220, 40)}


def color_images(n_per_class: int, size: int = 32, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(class name, HxWx3 uint8 image) pairs: each class a noisy patch of its own colour."""
    rng = np.random.default_rng(seed)
    out = []
    for name, rgb in COLORS.items():
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (size, size, 3)).astype(np.int16)
            y, x = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2] += np.array(rgb, dtype=np.int16)
            out.append((name, img.clip(0, 255).astype(np.uint8)))
    return out


def write_imagefolder(root: Path, n_train: int = 12, n_test: int = 6, size: int = 32, seed: int = 0) -> Path:
    """``root/{train,test}/<colour>/<i>.png``."""
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        counters: dict[str, int] = {}
        for name, img in color_images(n, size, s):
            i = counters[name] = counters.get(name, -1) + 1
            path = root / split / name / f"{name}_{split}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return root


def write_other_formats(folder_root: Path, out: Path) -> dict[str, Path]:
    """The same images described as vpt-json, coop-split and csv datasets (paths relative)."""
    classes = sorted(d.name for d in (folder_root / "train").iterdir())
    listing = {s: [(str(p.relative_to(folder_root)), classes.index(p.parent.name))
                   for p in sorted((folder_root / s).rglob("*.png"))] for s in ("train", "test")}
    vpt = out / "vpt"
    vpt.mkdir(parents=True, exist_ok=True)
    coop = out / "coop"
    coop.mkdir(parents=True, exist_ok=True)
    csv_dir = out / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    for s, items in listing.items():
        (vpt / f"{s}.json").write_text(json.dumps({p: y for p, y in items}))
        with open(csv_dir / f"{s}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows([(p, classes[y]) for p, y in items])
    (coop / "split_zhou_Colors.json").write_text(json.dumps(
        {s: [[p, y, classes[y]] for p, y in items] for s, items in listing.items()}))
    return {"vpt-json": vpt, "coop-split": coop, "csv": csv_dir}
