"""Crash-safe file output and safe loading.

Every file the project writes goes through a temporary file in the same directory followed by an
atomic ``os.replace``, so a crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import LoreError


_UMASK = os.umask(0)
os.umask(_UMASK)


_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise LoreError(f"cannot write {path}: a file stands where its folder {path.parent} should be; "
                        "choose another --out") from None
    except OSError as e:
        raise LoreError(f"cannot write {path}: {e.strerror}; choose a writable --out") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results unreadable to others
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # some writers (safetensors) recreate the file as 0600
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _FULL_OR_READ_ONLY:
            raise LoreError(f"cannot write {path}: {e.strerror}; nothing was replaced (its previous "
                            "version, e.g. the last checkpoint, is intact). Free space or choose "
                            "another --out") from None
        if type(e).__name__ == "SafetensorError":  # safetensors reports a failed write as its own error
            raise LoreError(f"cannot write {path}: {str(e).strip()[:160]}; nothing was replaced (its "
                            "previous version, e.g. the last checkpoint, is intact). Free space or "
                            "choose another --out") from None
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


def read_json(path: str | os.PathLike, what: str = "JSON file", unique_keys: bool = False) -> Any:
    """``unique_keys``: an object naming a key twice is refused (Python keeps the last silently: an
    image listed twice with two labels would lose one)."""
    path = Path(path)
    if not path.is_file():
        raise LoreError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"), parse_constant=_refuse_constant,
                          object_pairs_hook=_unique_object if unique_keys else None)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise LoreError(f"{what} {path} is not valid JSON ({str(e)[:160]}); fix or re-create the file") from None
    except RecursionError:
        raise LoreError(f"{what} {path} is nested deeper than Python can read; a data file never "
                        "needs that (is it the right file?)") from None


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r:.80} appears twice")
        seen[key] = value
    return seen


def _refuse_constant(name: str):
    # NaN and Infinity are not JSON; Python accepts them, and a NaN label or lr then spreads silently
    raise ValueError(f"{name} is not a JSON value")


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
    # protocol 5 arrays: an out-of-band-capable buffer whose size must match the shape
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}
# The most elements (container items, array elements, characters) a pickle may expand to.
# Real revisited-Oxford/Paris ground truth holds well under a million.
PICKLE_MAX_ELEMENTS = 50_000_000


def _bytes_from_text(*args) -> bytes:
    """``bytes(...)`` as protocol 0/2 pickles call it (``bytes()`` for an empty array's data); an
    integer argument would allocate that many bytes, so only text or nothing is accepted."""
    if not args or isinstance(args[0], (str, bytes)):
        return bytes(*args)
    raise _Refused("refusing bytes() of a non-string (it would allocate memory of that size)")


class _Refused(pickle.UnpicklingError):
    """The pickle is well-formed but asks for something a data file may not hold."""


# an object array's elements are Python objects: far fewer than a numeric array's are plausible
PICKLE_MAX_OBJECT_ELEMENTS = 1_000_000


def _guarded_array_type(max_elements: int):
    """An ndarray subclass that checks an array's declared shape and dtype before numpy allocates
    it (the BUILD step of a pickled array), so a few hundred bytes cannot ask for gigabytes."""
    import numpy as np

    class GuardedArray(np.ndarray):
        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise _Refused("an array whose pickled state is not numpy's")
            shape, dtype, data = state[-4], state[-3], state[-1]
            if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple) or \
                    not all(isinstance(d, int) and d >= 0 for d in shape):
                raise _Refused("an array with a malformed shape or dtype")
            n = math.prod(shape)
            limit = PICKLE_MAX_OBJECT_ELEMENTS if dtype.hasobject else max_elements
            if n > limit or dtype.itemsize * n > 8 * max_elements:
                raise _Refused(f"an array of shape {shape} and dtype {dtype} (more than {limit:,} elements)")
            if not dtype.hasobject and (not isinstance(data, (bytes, bytearray)) or len(data) != n * dtype.itemsize):
                raise _Refused(f"an array of shape {shape} whose data does not have that size")
            super().__setstate__(state)

    return GuardedArray


def _plain_arrays(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """The loaded object with every guarded array turned back into a plain ndarray (each shared
    object converted once, so shared references stay shared; run after the size check)."""
    import numpy as np

    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    out = value
    if isinstance(value, np.ndarray) and type(value) is not np.ndarray:
        out = value.view(np.ndarray)
        if out.dtype.hasobject:
            flat = [_plain_arrays(v, memo) for v in out.reshape(-1)]
            out = np.empty(out.shape, dtype=object)
            out.reshape(-1)[:] = flat
    elif isinstance(value, dict):
        out = type(value)((_plain_arrays(k, memo), _plain_arrays(v, memo)) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        out = type(value)(_plain_arrays(v, memo) for v in value)
    memo[id(value)] = out
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, *args, max_elements: int = PICKLE_MAX_ELEMENTS, **kwargs):
        super().__init__(*args, **kwargs)
        self._guarded = _guarded_array_type(max_elements)

    def find_class(self, module: str, name: str) -> Any:
        if name.endswith("_reconstruct") and (module, name) in _ALLOWED_GLOBALS:
            real = super().find_class(module, name)
            guarded = self._guarded
            import numpy as np

            def reconstruct(cls, shape, dtype):
                if cls is not np.ndarray:
                    raise _Refused(f"refusing to rebuild an array of type {cls!r}")
                return real(guarded, shape, dtype)
            return reconstruct
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module in ("builtins", "__builtin__") and name == "bytes":
            return _bytes_from_text
        raise _Refused(f"refusing to load global {module}.{name}")


def expanded_size(obj: Any, limit: int = PICKLE_MAX_ELEMENTS) -> int:
    """How many elements ``obj`` holds once shared references are counted each time they appear
    (what code walking it, or ``np.asarray`` on it, would build). Stops counting past ``limit``.

    Iterative and memoised per object, so a few hundred bytes of nested shared lists (2^40 leaves)
    are measured in microseconds; a container that holds itself counts as unbounded.
    """
    import numpy as np

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        item, done = stack.pop()
        key = id(item)
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        elif isinstance(item, np.ndarray) and item.dtype == object:
            children = list(item.reshape(-1))
        else:
            if isinstance(item, np.ndarray):
                sizes[key] = max(int(item.size), 1)
            else:
                sizes[key] = len(item) if isinstance(item, (str, bytes)) else 1
            continue
        if done:
            on_path.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), limit + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return limit + 1  # a cycle: unbounded once expanded
        on_path.add(key)
        stack.append((item, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(obj)]


def load_pickle_safe(path: str | os.PathLike, what: str = "pickle file",
                     max_elements: int = PICKLE_MAX_ELEMENTS) -> Any:
    """Load a pickle holding only plain containers, strings, numbers and numpy arrays, expanding
    to at most ``max_elements`` elements."""
    path = Path(path)
    if not path.is_file():
        raise LoreError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            value = _RestrictedUnpickler(f, encoding="latin1", max_elements=max_elements).load()
    except _Refused as e:
        raise LoreError(f"{what} {path} was refused: {e}. Only plain data (lists, dicts, strings, "
                        "numbers, numpy arrays) may be stored in it") from None
    except pickle.UnpicklingError as e:
        raise LoreError(f"{what} {path} is not a pickle, or is corrupt or truncated ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError,
            UnicodeDecodeError) as e:
        raise LoreError(f"{what} {path} is not a pickle, or is corrupt or truncated "
                        f"({type(e).__name__}: {e})") from None
    except (MemoryError, RecursionError) as e:
        raise LoreError(f"{what} {path} was refused: it asks for more memory or nesting than a data "
                        f"file needs ({type(e).__name__})") from None
    if expanded_size(value, max_elements) > max_elements:
        raise LoreError(f"{what} {path} was refused: it expands to more than {max_elements:,} elements "
                        "(shared or self references); a real ground-truth file holds far fewer")
    return _plain_arrays(value)


# ---------------------------------------------------------------------------------------------
# where commands may write

# the run directory's files and the "is this a run" test have one owner
from .rundir import RUN_FILES, is_run_dir  # noqa: E402,F401


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Fail now, not after hours of compute, if ``path`` (a folder, existing or not) cannot be
    created or written: its nearest existing ancestor must be a writable folder."""
    path = Path(path)
    here = path.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise LoreError(f"{flag} {path}: {here} is a file, so no folder can be made under it; "
                        "choose another location")
    try:  # os.access is not enough: it says yes to root and on some read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".lore-write-check.", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LoreError(f"{flag} {path}: cannot write in {here} ({e.strerror}); choose a writable "
                        "location") from None


def check_output_dir(path: str | os.PathLike, flag: str = "--out", allow_run: bool = True) -> Path:
    """``path`` may be used as an output folder: not a file, writable, not inside a run directory,
    and (unless ``allow_run``: training, a run's own evaluation) not a run directory itself."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoreError(f"{flag} {path} is a file; give a directory")
    refuse_run_folder(path, flag, allow_run)
    check_writable(path, flag)
    return path


def refuse_run_folder(path: str | os.PathLike, flag: str = "--out", allow_run: bool = False) -> None:
    """An output folder is never inside a run directory, nor (unless ``allow_run``) one itself."""
    from .rundir import written_by_train

    path = Path(path)
    if not allow_run and written_by_train(path):
        raise LoreError(f"{flag} {path} is a run directory; its folder holds only what `lore train` writes "
                        "(give a folder of its own)")
    _refuse_inside_run(path, flag)


def _refuse_inside_run(path: Path, flag: str, allow_top: bool = False) -> None:
    """Nothing inside a run directory's own folders (checkpoints/, ...) is another command's output;
    ``allow_top``: a file directly in the run folder is (e.g. locality.json), its own files aside."""
    from .rundir import enclosing_run

    run = enclosing_run(path)
    if run is not None and not (allow_top and path.parent == run):
        raise LoreError(f"{flag} {path} is inside the run directory {run}; write outputs outside "
                        "runs (a run's folders hold only what `lore train` writes)")


def check_output_file(path: str | os.PathLike, flag: str = "--out", suffixes: tuple[str, ...] = (),
                      side_files: tuple[str, ...] = ()) -> Path:
    """``path`` may be written as a file: not a folder, one of ``suffixes`` (if given), writable,
    and neither it nor a side file (same stem, suffix from ``side_files``) replaces a run's own
    files (``RUN_FILES``)."""
    path = Path(path)
    if path.is_dir():
        example = path / f"out{suffixes[0] if suffixes else ''}"
        raise LoreError(f"{flag} {path} is a directory; give a file name such as {example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise LoreError(f"{flag} {path}: expected a file name ending in {' or '.join(suffixes)}")
    _refuse_inside_run(Path(os.path.abspath(path)), flag, allow_top=True)
    if is_run_dir(path.parent):
        for target in [path, *(path.with_suffix(s) for s in side_files)]:
            if target.name in RUN_FILES:
                raise LoreError(f"{flag} {path} would replace the run's own {target} in {path.parent}; "
                                "choose another file name")
    check_writable(path.parent, flag)
    return path


def inside_root(root: str | os.PathLike, name: str, source: str | os.PathLike, line: int | None = None) -> Path:
    """``root / name`` for a name read from a dataset file, refused unless it stays inside ``root``
    (no absolute paths, no ``..`` or symlink escapes)."""
    root = Path(root)
    where = f"{source}, line {line}" if line is not None else str(source)
    if not name or "\0" in name or os.path.isabs(name):
        raise LoreError(f"{where}: {name!r} is not a name inside {root}; dataset files may only name "
                        "files under their own folder")
    path = root / name
    resolved, base = resolve_listed(path, where), resolve_listed(root, where)
    if resolved == base or not resolved.is_relative_to(base):
        raise LoreError(f"{where}: {name!r} leads outside {root}; dataset files may only name files "
                        "under their own folder")
    return path


def resolve_listed(path: str | os.PathLike, where: str) -> Path:
    """``Path(path).resolve()`` for a path a dataset file lists; a symlink loop is one error naming
    ``where`` (the file and line), not Python's RuntimeError (OSError from Python 3.13)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise LoreError(f"{where}: {str(path)!r:.200} cannot be resolved ({e}); dataset files may only "
                        "name plain files") from None


# TrainConfig fields that name files or folders: stored absolute, so a run does not depend on the
# folder it was started from (``lore eval --run`` elsewhere reads the same data). Not image_dir: a
# relative one is read from the (now absolute) data folder.
# the path options and making them absolute belong to the options' facts
from .values import PATH_FIELDS, absolute_paths  # noqa: E402,F401
