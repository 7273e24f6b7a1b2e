"""Small helpers shared by the readers of datasets as they are distributed: where a file is looked
for, a clear error when it is not there, image listing, and the user cache directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import LoreError
from .splits import IMAGE_EXTENSIONS, Sample

_NUMBER = re.compile(r"(\d+)\.[A-Za-z]+$")


def folders_named(root: Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """The folders under ``root`` named one of ``names`` in any letter case (``KITTI/`` is ``kitti/``:
    found, not "missing"), in the order of ``names``."""
    if not root.is_dir():
        return []
    by_name: dict[str, list[Path]] = {}
    for p in root.iterdir():
        if p.is_dir():
            by_name.setdefault(p.name.lower(), []).append(p)
    return [p for n in dict.fromkeys(x.lower() for x in names) for p in sorted(by_name.get(n, []))]


def locate(name: str, root: Path, relative: str, nests: tuple[str, ...] = ("",)) -> Path:
    """``root/nest/relative`` for the first nest where it exists (archives extract into a folder of
    their own, so a dataset folder may hold the files directly or one level down)."""
    tried = [root / nest / relative if nest else root / relative for nest in nests]
    for path in tried:
        if path.exists():
            return path
    where = ", ".join(str(p.parent) for p in tried)
    raise LoreError(f"{name}: expected {relative} (looked in {where}); is that the folder the "
                    "dataset was extracted to?")


def require_files(name: str, split: str, samples: list[Sample], listed_in: Path) -> None:
    absent = [p for p, _ in samples if not os.path.isfile(p)]
    if absent:
        raise LoreError(f"{name}: {len(absent)} image(s) of the {split} split listed in {listed_in} "
                        f"are missing, e.g. {absent[0]}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (os.scandir: ImageNet's train set has 1.3M files),
    listed once per process while the folder is unchanged (lore.data.file_index)."""
    from .file_index import listing
    return listing(folder, False, _scan_images)


def _scan_images(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


def file_number(path: Path) -> int | None:
    """The number a file name ends with (``airplane_007.jpg`` -> 7), None without one."""
    m = _NUMBER.search(path.name)
    return int(m.group(1)) if m else None


def read_mat(name: str, path: Path, simplify: bool = False) -> dict:
    """A MATLAB .mat file's variables; any file scipy cannot read (text, empty, v7.3 / HDF5) is one
    error naming it."""
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True, simplify_cells=simplify)
    except MemoryError:
        raise
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, NotImplementedError (v7.3)
        raise LoreError(f"{name}: {path} is not a readable MATLAB file ({type(e).__name__}: "
                        f"{str(e).strip()[:120] or 'empty'})") from None


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of line 1
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise LoreError(f"{path}, line {line}: not UTF-8 text (byte {e.start}); is it the right file?") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def cache_dir() -> Path:
    """lore's folder under the user's cache directory ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lore"
