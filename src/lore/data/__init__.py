"""Datasets, few-shot sampling and transforms.

Names are imported on first use, so the dataset catalog and readers (``lore data check``) do not
pay for torch and torchvision.
"""

from __future__ import annotations

import importlib

_API = {
    "FORMATS": "datasets", "ImageDataset": "datasets", "Splits": "datasets", "load_dataset": "datasets",
    "load_image": "datasets",
    "EpochBatchSampler": "sampling", "ShardedSampler": "sampling", "few_shot_indices": "sampling",
    "first_per_class": "sampling",
    "train_transform": "transforms", "eval_transform": "transforms",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
