"""Crash-safe file output and safe loading.

Every file the project writes goes through a temporary file in the same directory followed by an
atomic ``os.replace``, so a crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import LoreError


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results unreadable to others
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | os.PathLike, save: Callable[[str], None]) -> Path:
    """Run ``save(tmp_path)`` (e.g. safetensors' ``save_file``) and publish the result atomically."""
    return _atomic(path, save)


def state_dict_mismatch(own: dict, state: dict, optional: tuple[str, ...] = ()) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own`` ('' if nothing).

    Keys of ``own`` starting with one of ``optional`` may be absent from ``state``.
    """
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    missing = [k for k in own if k not in state and not k.startswith(optional or ("\0",))]
    unexpected = [k for k in state if k not in own]
    parts = []
    if wrong:
        parts.append(f"shape mismatch for {wrong[0]}: file {tuple(state[wrong[0]].shape)} vs model "
                     f"{tuple(own[wrong[0]].shape)}")
    if missing:
        parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    return "; ".join(parts)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise LoreError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoreError(f"{what} {path} is not valid JSON ({e}); fix or re-create the file") from None


# Modules and names a ground-truth pickle (revisited Oxford/Paris gnd_*.pkl) may reference:
# numpy arrays and their dtypes. Anything else (os.system, builtins.eval, ...) is refused.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "core.multiarray._reconstruct"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_pickle_safe(path: str | os.PathLike, what: str = "pickle file") -> Any:
    """Load a pickle holding only plain containers, strings, numbers and numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise LoreError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "truncated" in str(e):
            raise LoreError(f"{what} {path} is corrupt or truncated ({e})") from None
        raise LoreError(f"{what} {path} was refused: {e}. Only plain data (lists, dicts, strings, "
                        "numbers, numpy arrays) may be stored in it") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise LoreError(f"{what} {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
