"""LORE: locality-aware prompt learning for frozen pre-trained Vision Transformers."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public API is imported on first use, so ``import lore`` (and ``lore --help``) does not pay
# for torch and timm.
_API = {"build_model": "lore.models", "available_methods": "lore.models", "load_run": "lore.checkpoint"}

__all__ = ["build_model", "load_run", "available_methods", "__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
