"""Option values as the user means them, whatever wrote them; and the facts about options that
several commands need: their ranges, which ones are paths, which ones may change on resume and
which ones do not change a run's result.

A YAML file, a recipe or the command line may hand ``TrainConfig`` a value of the wrong type:
PyYAML reads ``lr: 1e-3`` as the *string* "1e-3" (YAML 1.1 wants a dot), ``epochs: 1.5`` as a
float, ``kp: "no"`` as a string that Python would call true. Each value is converted to its
field's type or refused with one line naming the option; numbers must be finite.
"""

from __future__ import annotations

import math
import os
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable

from .errors import LoreError

_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}

# int options of the harness with a lower bound
INT_RANGES = {"epochs": 0, "batch_size": 1, "img_size": 8, "workers": 0, "keep_last": 1, "save_every": 0,
              "val_every": 0, "stage_h_epochs": 1, "warmup_epochs": 0, "bn_freeze_steps": 1}
# seeds: numpy's legacy RandomState and most tools take 32 bits; lore derives per-epoch generator
# seeds from them (seed * 100003 + epoch must stay a 64-bit torch seed)
SEED_MAX = 2**32 - 1
# the grids' own lists (`lore sweep`, `lore paper`): flag -> (lowest, lowest allowed?) checked
# before a grid writes anything, named as the grid's flag
GRID_RANGES = {"--lrs": (0.0, False), "--wds": (0.0, True), "--seeds": (0, True), "--shots": (1, True)}
# options holding a path (stored absolute in a run's config.yaml)
PATH_FIELDS = ("data", "classnames", "checkpoint", "out", "resume", "feature_cache")
# options that may differ between two runs of the same cell without changing its result (sweep reuse)
EXECUTION_FIELDS = frozenset({"device", "workers", "save_every", "keep_last", "resume", "out", "compile",
                              "val_every", "feature_cache", "cache_images"})
# float options with a range (low, high, high inclusive?) beyond "finite"
# (methods declare their own options' ranges with opt(low=, high=))
FLOAT_RANGES = {"momentum": (0.0, 1.0, False), "stage_h_lr": (0.0, math.inf, False)}


def default_workers() -> int:
    """Data-loader worker processes by default: up to 4, never more than this process may use
    (more only add start-up time and trigger PyTorch's warning about the machine's cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores))


def _kind(annotation: str) -> str | None:
    text = str(annotation)
    for kind in ("bool", "int", "float"):
        if kind in text:
            return kind
    return None


def convert(name: str, annotation: str, value: Any, source: str) -> Any:
    """``value`` as the type ``annotation`` names (bool, int, float; others pass), or a LoreError."""
    kind = _kind(annotation)
    flag = "--" + name.replace("_", "-")
    if kind is None and "str" in str(annotation) and value is not None and not isinstance(value, str):
        if isinstance(value, (bool, list, dict, bytes, bytearray)):
            raise LoreError(f"{source}: {flag} must be text, got {value!r:.60}")
        return str(value)  # `template: 2024` or `data: 42` in YAML: the text the user typed
    if value is None or kind is None:
        if kind is not None and "None" not in str(annotation):
            raise LoreError(f"{source}: {flag} needs a value")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise LoreError(f"{source}: {flag} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise LoreError(f"{source}: {flag} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind == "float" else _int_text(value)
        except ValueError:
            raise LoreError(f"{source}: {flag} must be {'a number' if kind == 'float' else 'an integer'}, "
                            f"got {value!r}") from None
    if kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise LoreError(f"{source}: {flag} must be a whole number, got {value!r}")
            value = int(value)
        if not isinstance(value, int):
            raise LoreError(f"{source}: {flag} must be an integer, got {value!r}")
        return value
    if not isinstance(value, (int, float)):
        raise LoreError(f"{source}: {flag} must be a number, got {value!r:.60}")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise LoreError(f"{source}: {flag} {str(value)[:20]}... is too large for a number") from None
    if not math.isfinite(value):
        raise LoreError(f"{source}: {flag} must be a finite number, got {value}")
    if name in FLOAT_RANGES:
        low, high, high_ok = FLOAT_RANGES[name]
        if value < low or value > high or (value == high and not high_ok):
            bracket = "]" if high_ok else ")"
            raise LoreError(f"{source}: {flag} must be in [{low:g}, {high:g}{bracket}, got {value}")
    return value


def _int_text(text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "1e3" is an integer a user may write; "1.5" is not
        if not number.is_integer():
            raise
        return int(number)


def opt(default, help: str, choices=None, short=None, low: float | None = None, high: float | None = None):
    """An option: its default, ``--help`` text, allowed values, and range [low, high] (inclusive)."""
    return field(default=default, metadata={"help": help, "choices": choices, "short": short,
                                            "low": low, "high": high})


def typed(values: dict, fields: Iterable, source: str) -> dict:
    """``values`` with every known field converted to its declared type and checked against the
    field's own range (``opt(low=, high=)``)."""
    by_name = {f.name: f for f in fields}
    out = {}
    for k, v in values.items():
        f = by_name.get(k)
        out[k] = convert(k, f.type, v, source) if f else v
        if f is not None and out[k] is not None:
            _check_range(k, out[k], f.metadata.get("low"), f.metadata.get("high"), source)
    return out


def _check_range(name: str, value, low, high, source: str) -> None:
    flag = "--" + name.replace("_", "-")
    if high is not None and low is not None and not low <= value <= high:
        raise LoreError(f"{source}: {flag} must be in [{low:g}, {high:g}], got {value}")
    if low is not None and value < low:
        raise LoreError(f"{source}: {flag} must be >= {low:g}, got {value}")


def check_patch_multiple(size: tuple[int, int], patch: int) -> None:
    """A ViT's input sides must be multiples of its patch size (timm would assert)."""
    h, w = int(size[0]), int(size[1])
    if h % patch or w % patch:
        near = max(patch, round(h / patch) * patch)
        raise LoreError(f"--img-size {h if h == w else f'{h}x{w}'} is not a multiple of the backbone's "
                        f"patch size {patch}; use e.g. --img-size {near}")


# options a resumed run may change: where and how it runs, not what it computes
RESUME_MAY_CHANGE = frozenset({"device", "workers", "save_every", "keep_last", "log", "log_images",
                               "resume", "out", "feature_cache", "cache_images"})


def refuse_recipe_changes(cfg: Any, saved: dict, run_dir: Any) -> None:
    """``lore train --resume RUN --lr 0.1`` would silently keep the run's own lr: refuse instead.
    An option counts as given when it differs from its default (``cfg`` from the command line)."""
    import dataclasses

    given = absolute_paths(cfg)
    for f in dataclasses.fields(given):
        if f.name in RESUME_MAY_CHANGE or f.name not in saved:
            continue
        value = getattr(given, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if getattr(cfg, f.name) != default and value != saved[f.name]:
            flag = "--" + f.name.replace("_", "-")
            raise LoreError(f"--resume {run_dir}: {flag} {value!r} differs from the run's {saved[f.name]!r}; "
                            "a resumed run keeps its recipe (only --device, --workers, --save-every, "
                            "--keep-last, --log and --log-images may change); start a new run with --out to change it")


def absolute_paths(cfg: Any, names: tuple[str, ...] = PATH_FIELDS) -> Any:
    """A copy of the dataclass ``cfg`` with its path fields (and a ``file:`` knowledge or a
    template file) made absolute."""
    import dataclasses

    changes = {n: str(Path(getattr(cfg, n)).absolute()) for n in names if getattr(cfg, n, None)}
    knowledge = getattr(cfg, "knowledge", None)
    if isinstance(knowledge, str) and knowledge.startswith("file:") and knowledge[5:].strip():
        changes["knowledge"] = "file:" + str(Path(knowledge[5:]).absolute())
    template = getattr(cfg, "template", None)
    if isinstance(template, str) and "{}" not in template and Path(template).is_file():
        changes["template"] = str(Path(template).absolute())
    return dataclasses.replace(cfg, **changes)
