"""Classification datasets from disk: ImageFolder, VPT/FGVC JSON, CoOp split JSON and CSV.

Every reader returns the same :class:`Splits`: class names plus, per split, a list of
``(absolute image path, label)``. The same tiny dataset stored in any of the formats loads to the
same samples (tested).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import LoreError
from ..io import inside_root, read_json, resolve_listed
# the shared record types live in .splits (the format readers import them without this module)
from .splits import IMAGE_EXTENSIONS, SPLITS, Sample, Splits  # noqa: F401

FORMATS = ("imagefolder", "vpt-json", "coop-split", "csv", "vtab", "vtab-tune", "vtab-tfds", "vtab-tfds-tune",
           "fgvc", "fgvc-tune")


def load_dataset(root: str, fmt: str = "imagefolder", classnames_file: str | None = None,
                 image_dir: str | None = None, holdout: float = 0.2) -> Splits:
    """Read a dataset's file lists (no image is decoded here) and check every listed file exists."""
    path = Path(root)
    # vtab-tfds: --data is TFDS_DATA_DIR/TASK, a task name rather than a folder
    if not path.exists() and not (fmt.startswith("vtab-tfds") and path.parent.is_dir()):
        raise LoreError(f"--data {root}: no such file or directory")
    if fmt not in FORMATS:
        raise LoreError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt.startswith("vtab-tfds"):  # VTAB-1k from a TFDS data dir, VPT's split definitions
        from .vtab_tfds import load_vtab_tfds
        data = load_vtab_tfds(path, fmt)
    elif fmt.startswith("vtab"):  # its own room: VTAB-1k's split lists
        from .vtab import load_vtab
        data = load_vtab(path, fmt)
    elif fmt.startswith("fgvc"):  # VPT's FGVC split files
        from .fgvc import load_fgvc
        data = load_fgvc(path, fmt)
    else:
        reader = {"imagefolder": _imagefolder, "vpt-json": _vpt_json, "coop-split": _coop_split,
                  "csv": _csv}[fmt]
        data = reader(path, image_dir, holdout)
    if classnames_file:
        names = _read_classnames(classnames_file)
        if len(names) != len(data.classnames):
            raise LoreError(f"--classnames {classnames_file}: lists {len(names)} classes but the "
                            f"dataset has {len(data.classnames)}")
        data.classnames = names
    data.root = str(root)
    for split, samples in data.splits.items():
        missing = [p for p, _ in samples if not Path(p).is_file()]
        if missing:
            raise LoreError(f"--data {root}: {len(missing)} image(s) of the {split} split are missing, "
                            f"e.g. {missing[0]}")
        bad = [y for _, y in samples if not 0 <= y < len(data.classnames)]
        if bad:
            raise LoreError(f"--data {root}: label {bad[0]} in the {split} split is outside "
                            f"0..{len(data.classnames) - 1}")
    if not data.splits.get("train") and not data.splits.get("test"):
        raise LoreError(f"--data {root}: no images found for format {fmt}")
    if len(data.classnames) < 2:
        raise LoreError(f"--data {root}: only one class ({data.classnames[0]!r}); classification needs "
                        "at least two (is --data one class folder instead of the dataset folder?)")
    return data  # a class without images: check_class_coverage, where the run decides


def _read_classnames(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise LoreError(f"--classnames {path}: file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM is not part of the first name
        names = json.loads(text) if p.suffix == ".json" else None
    except UnicodeDecodeError as e:
        raise LoreError(f"--classnames {path} is not a UTF-8 text file ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise LoreError(f"--classnames {path} is not valid JSON ({e})") from None
    if p.suffix == ".json":
        if isinstance(names, dict):  # {"0": "name", ...} or {"name": 0, ...}
            if all(isinstance(v, int) for v in names.values()):
                names = sorted(names, key=names.get)
            else:
                names = [names[k] for k in sorted(names, key=int)]
        return [str(n) for n in names]
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def list_images_recursive(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted; listed once per process while no folder under it
    changed (lore.data.file_index)."""
    from .file_index import listing
    return listing(folder, True, lambda f: sorted(p for p in f.rglob("*")
                                                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))


def _imagefolder(root: Path, image_dir: str | None, holdout: float) -> Splits:
    if not root.is_dir():
        raise LoreError(f"--data {root}: --format imagefolder needs a directory")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    parts = split_dirs or {"all": root}
    classes = sorted({d.name for folder in parts.values() for d in folder.iterdir() if d.is_dir()})
    if not classes:
        raise LoreError(f"--data {root}: no class folders found (expected {root}/<class>/<image>)")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, folder in parts.items():
        samples = []
        for c in sorted(d.name for d in folder.iterdir() if d.is_dir()):
            images = list_images_recursive(folder / c)
            if not images:
                raise LoreError(f"--data {root}: class folder {folder / c} has no images")
            samples += [(str(p.resolve()), index[c]) for p in images]
        splits[split] = samples
    if "all" in splits:
        splits = _holdout_split(splits.pop("all"), holdout)
    return Splits(classes, splits, files={s: str(folder) for s, folder in split_dirs.items()})


def _holdout_split(samples: list[Sample], holdout: float) -> dict[str, list[Sample]]:
    """Stable train/test split for a folder without split sub-folders: a file is held out by a hash
    of its class folder and name (not the name alone, or ``0.png`` of every class would fall on the
    same side), so adding files never moves the others."""
    def held(path: str) -> bool:
        key = f"{Path(path).parent.name}/{Path(path).name}"
        h = int(hashlib.md5(key.encode()).hexdigest()[:8], 16)
        return h / 0xFFFFFFFF < holdout
    split = {"train": [s for s in samples if not held(s[0])], "test": [s for s in samples if held(s[0])]}
    if not split["test"]:
        raise LoreError(f"--holdout {holdout}: no image was held out for testing (the dataset has no "
                        "train/ and test/ parts); use a larger --holdout (default 0.2) or add split folders")
    return split


def _resolve_image_root(root: Path, image_dir: str | None, first: str) -> Path:
    if image_dir:
        base = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
        if not base.is_dir():
            raise LoreError(f"--image-dir {image_dir}: directory not found")
        return base
    for base in (root, root / "images", root / "jpg", root / "image"):
        if (base / first).is_file():
            return base
    return root


def _vpt_json(root: Path, image_dir: str | None, holdout: float) -> Splits:
    if not root.is_dir():
        raise LoreError(f"--data {root}: --format vpt-json needs the directory holding train.json/test.json")
    raw = {}
    for split in SPLITS:
        f = root / f"{split}.json"
        if f.is_file():
            raw[split] = read_json(f, "vpt-json split file")
            if not isinstance(raw[split], dict):
                raise LoreError(f"{f}: expected an object mapping image path -> class id")
    if not raw:
        raise LoreError(f"--data {root}: no train.json / val.json / test.json found for --format vpt-json")
    first = next(iter(next(iter(raw.values()))), "")
    base = _resolve_image_root(root, image_dir, first)
    total = sum(len(m) for m in raw.values())
    names: dict[int, str] = {}
    splits = {}
    for s, m in raw.items():
        samples = []
        for rel, y in sorted(m.items()):
            # every class has an entry: a label beyond the entry count is a corrupt file, and a class
            # list built up to it could exhaust memory
            if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < total:
                raise LoreError(f"{root / (s + '.json')}: entry {rel!r:.80} has label {y!r:.40}; labels must "
                                f"be integers 0..{total - 1}")
            names.setdefault(y, Path(rel).parent.name or f"class_{y}")  # FGVC: one folder per class
            samples.append((str(inside_root(base, rel, root / f"{s}.json").resolve()), y))
        splits[s] = samples
    classnames = [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []
    return Splits(classnames, splits, files={s: str(root / f"{s}.json") for s in raw})


def _coop_split(root: Path, image_dir: str | None, holdout: float) -> Splits:
    if root.is_file():
        split_file, root = root, root.parent
    else:
        found = sorted(root.glob("split_zhou_*.json"))
        if not found:
            raise LoreError(f"--data {root}: no split_zhou_*.json file for --format coop-split")
        split_file = found[0]
    raw = read_json(split_file, "CoOp split file")
    if not isinstance(raw, dict) or not any(s in raw for s in SPLITS):
        raise LoreError(f"{split_file}: expected keys train/val/test holding [path, label, classname] lists")
    for s in SPLITS:
        if s in raw and not isinstance(raw[s], list):
            raise LoreError(f"{split_file}: {s} must be a list of [path, label, classname] entries")
    first = next((item[0] for s in SPLITS for item in (raw.get(s) or [])[:1]
                  if isinstance(item, list) and item and isinstance(item[0], str)), "")
    base = _resolve_image_root(root, image_dir, first)
    names: dict[int, str] = {}
    splits: dict[str, list[Sample]] = {}
    total = sum(len(raw.get(s) or []) for s in SPLITS)
    for s in SPLITS:
        items = raw.get(s) or []
        if not isinstance(items, list):
            raise LoreError(f"{split_file}: {s} must be a list of [path, label, classname] entries")
        samples = []
        for number, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                raise LoreError(f"{split_file}: {s} entries must be [path, label, classname], got {item!r:.120}")
            label = item[1]
            # every class is named by at least one entry: a label beyond the entry count is a
            # corrupt file, and building a class list up to it could exhaust memory
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < total:
                raise LoreError(f"{split_file}: {s} entry {number} has label {label!r:.40}; labels must be "
                                f"integers 0..{total - 1} (one per class, counted from 0)")
            names.setdefault(label, str(item[2]))
            path = inside_root(base, item[0], f"{split_file} ({s} entry {number})")
            samples.append((str(path.resolve()), label))
        splits[s] = samples
    if not names:
        raise LoreError(f"{split_file}: lists no images")
    classnames = [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
    # a split the file names stays, even empty: an empty test list is an error, not a reason to test on val
    return Splits(classnames, {k: v for k, v in splits.items() if k in raw},
                  files={s: f"{split_file} ({s!r} list)" for s in raw if s in SPLITS})


def _csv(root: Path, image_dir: str | None, holdout: float) -> Splits:
    files = {s: root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").is_file()} if root.is_dir() \
        else {"all": root}
    if not files:
        raise LoreError(f"--data {root}: no train.csv / val.csv / test.csv found for --format csv")
    rows: dict[str, list[tuple[str, str]]] = {}
    for s, f in files.items():
        rows[s] = _csv_rows(f)
    labels = [y for r in rows.values() for _, y in r]
    if not labels:
        raise LoreError(f"--data {root}: the CSV file(s) {', '.join(str(f) for f in files.values())} "
                        "list no images (only a header?)")
    numeric = all(y.strip().isascii() and y.strip().isdigit() for y in labels)
    if numeric:
        # a label beyond the row count is a corrupt file (and a class list up to it, a memory bomb)
        top = max(labels, key=lambda y: (len(y.strip().lstrip("0")), y.strip().lstrip("0")))
        if int(top) >= len(labels):
            raise LoreError(f"--data {root}: numeric label {top.strip()[:40]} but only {len(labels)} rows; "
                            "numeric labels must be 0..rows-1 (or use class names)")
        classnames = [f"class_{i}" for i in range(max(int(y) for y in labels) + 1)]
        to_id = {y: int(y) for y in labels}
    else:
        classnames = sorted(set(labels))
        to_id = {c: i for i, c in enumerate(classnames)}
    base = Path(files[next(iter(files))]).parent
    first = next((p for r in rows.values() for p, _ in r[:1]), "")
    base = _resolve_image_root(base, image_dir, first)
    splits = {s: [(str(resolve_listed(base / p, f"{files[s]}, row {i}")), to_id[y])
                  for i, (p, y) in enumerate(r, 1)] for s, r in rows.items()}
    if "all" in splits:
        splits = _holdout_split(splits.pop("all"), holdout)
    return Splits(classnames, splits, files={s: str(f) for s, f in files.items()})


# ---------------------------------------------------------------------------------------------
# decoding


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    """(path, label) of every row, or a LoreError naming the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM would hide the "path" column
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise LoreError(f"{path}: expected a header with columns 'path' and 'label'")
            rows = []
            for r in reader:
                if r["path"] is None or r["label"] is None or not r["path"].strip() or not r["label"].strip():
                    raise LoreError(f"{path}, line {reader.line_num}: a row without a path and a label; "
                                    "every row needs both")
                rows.append((r["path"], r["label"]))
            return rows
    except UnicodeDecodeError as e:
        raise LoreError(f"{path} is not a UTF-8 text file ({e.reason} at byte {e.start}); save it as "
                        "UTF-8") from None
    except csv.Error as e:
        raise LoreError(f"{path}: not a valid CSV file ({e})") from None


def check_headers(samples: list[Sample], what: str = "test") -> None:
    """Read every image's header (no decoding, about a millisecond each), so a file that is not
    an image fails before hours of training rather than at the final evaluation."""
    from tqdm.auto import tqdm

    for path, _ in tqdm(samples, desc=f"checking {what} images", leave=False, disable=None, file=sys.stderr):
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - the header is parsed by open
        except Image.DecompressionBombError as e:
            raise LoreError(f"{what} image {path} was refused: {e}; remove it or shrink it") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise LoreError(f"cannot decode {what} image {path} ({type(e).__name__}: {e}); remove or "
                            "replace the file") from None


def load_image(path: str) -> Image.Image:
    """Open any common image as 8-bit RGB (grayscale, RGBA, palette, CMYK and 16-bit all work).
    The pixels as stored: an EXIF orientation tag is not applied, as the reference pipelines of the
    benchmarks (PIL ``open().convert("RGB")``) read them; every command decodes through here."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                hi = float(arr.max()) or 1.0
                im = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), "L")
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise LoreError(f"image {path} was refused: {e}; remove it or shrink it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LoreError(f"cannot decode image {path} ({type(e).__name__}: {e}); remove or replace "
                        "the file") from None


class ImageDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (image tensor, label, index).

    An item may be ``(index, seed)``: the augmentation then draws from a generator seeded by
    ``seed``, so a sample's augmentation depends only on (run seed, epoch, position), not on which
    worker or rank loads it, nor on where a resumed run restarts.
    """

    def __init__(self, samples: list[Sample], transform=None):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image = self.transform(image)
        return image, label, index


def check_class_coverage(data: Splits, allow_missing: bool = False, warn=None) -> list[str]:
    """Every class of the dataset's class list has a training and a test image: a partly extracted
    copy otherwise trains on fewer classes than it names. Returns the problems; raises unless
    ``allow_missing`` (then ``warn`` gets each one)."""
    import numpy as np

    problems = []
    n = len(data.classnames)
    test_split = "test" if "test" in data.splits else "val"
    for split in ("train", test_split):
        samples = data.splits.get(split) or []
        if not samples:
            continue
        counts = np.bincount(np.array([y for _, y in samples], dtype=np.int64), minlength=n)
        empty = np.flatnonzero(counts[:n] == 0)
        if empty.size:  # each shown class with its own label, the count of the rest
            names = ", ".join(f"{data.classnames[i]!r} (label {i})" for i in empty[:3].tolist())
            what = f"class {names} has" if empty.size == 1 else \
                f"{empty.size} classes ({names}{', ...' if empty.size > 3 else ''}) have"
            problems.append(f"{data.root or 'the dataset'}: {what} no image in the {split} split of the {n} "
                            "classes the dataset lists; is the copy complete?")
    if problems and not allow_missing:
        raise LoreError(problems[0] + " (--allow-missing-classes trains anyway)")
    for p in problems:
        (warn or print)(f"lore: warning: {p}")
    return problems


def check_split_integrity(data: Splits) -> None:
    """No image listed twice in a split, and no test image in the training pool: either would
    silently weight or leak images (a careless list edit, a test list pasted into a train list)."""
    from collections import Counter

    for split, samples in data.splits.items():  # (a pool of train + val repeats an image listed in both)
        twice = next((p for p, k in Counter(p for p, _ in samples).items() if k > 1), None)
        if twice is not None:
            raise LoreError(f"{data.root or 'the dataset'}: {twice} is listed twice in the {split} split; "
                            "remove the duplicate line")
    test = {p for p, _ in data.splits.get("test") or []}
    leaked = next((p for p, _ in data.splits.get("train") or [] if p in test), None)
    if leaked is not None:
        raise LoreError(f"{data.root or 'the dataset'}: {leaked} is in both the train and the test split; "
                        "a test image must not be trained on")


def write_coop_split(path: Path, classnames: list[str], splits: dict[str, list[Sample]]) -> Path:
    """Write ``splits`` as a CoOp ``split_zhou_*.json`` beside its images: paths relative to the
    file's folder, as the reader requires (unchanged files are not rewritten)."""
    from ..io import atomic_write_text

    folder = path.parent.resolve()
    rows = {}
    for name, samples in splits.items():
        rows[name] = []
        for p, y in samples:
            resolved = Path(p).resolve()
            if not resolved.is_relative_to(folder):
                raise ValueError(f"{p} is not under {folder}, where {path.name} must sit")
            rows[name].append([resolved.relative_to(folder).as_posix(), int(y), classnames[y]])
    text = json.dumps(rows, indent=0)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path
