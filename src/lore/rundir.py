"""The run directory ``lore train`` writes, in one place: its file names and the questions every
command asks of it (is this a run, has it finished, can it resume).

``config.yaml`` (resolved options; a first comment line names the split read), ``metrics.jsonl``
(one line per epoch), ``final.json`` (test accuracy, parameters, GFLOPs, speed),
``checkpoint.safetensors`` (trainable tensors) + ``model.json`` (how to rebuild), ``fewshot*.json``
(the chosen training files), ``knowledge.safetensors`` / ``zeroshot_text.safetensors`` (cached
class embeddings), ``checkpoints/<stage>-step-*.safetensors`` (resumable state), ``.lock`` (the one
writer's lock), ``model_summary.json`` (``--dry-run``).
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL = "final.json"
WEIGHTS = "checkpoint.safetensors"
MODEL = "model.json"
FEWSHOT = "fewshot.json"
KNOWLEDGE = "knowledge.safetensors"
ZEROSHOT_TEXT = "zeroshot_text.safetensors"
SUMMARY = "model_summary.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
FAILED = "failed.json"  # a grid cell's recorded failure (its one-line error), for every process of the grid

# What `lore train` keeps in a run directory; no other command may replace these.
RUN_FILES = frozenset({CONFIG, METRICS, FINAL, WEIGHTS, MODEL, FEWSHOT, "fewshot_e.json", "fewshot_h.json",
                       KNOWLEDGE, ZEROSHOT_TEXT, SUMMARY, CHECKPOINTS, LOCK, FAILED})


def is_run_dir(folder: str | os.PathLike) -> bool:
    """A folder `lore train` has started writing (its options or its finished model are there)."""
    folder = Path(folder)
    return (folder / CONFIG).is_file() or (folder / MODEL).is_file()


def written_by_train(folder: str | os.PathLike) -> bool:
    """``is_run_dir`` with evidence beyond a ``config.yaml`` (which a project folder above the
    runs may hold too): model.json, or config.yaml beside the lock, metrics or checkpoints."""
    folder = Path(folder)
    if (folder / MODEL).is_file():
        return True
    return (folder / CONFIG).is_file() and any((folder / name).exists()
                                               for name in (LOCK, METRICS, FINAL, CHECKPOINTS, FEWSHOT))


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The run directory strictly above ``path`` (``RUN/checkpoints/x`` -> ``RUN``), if any: another
    command writing there would replace or mix with a run's own state."""
    for folder in Path(os.path.abspath(path)).parents:
        if written_by_train(folder):
            return folder
    return None


def finished(folder: str | os.PathLike) -> bool:
    """final.json is there: the run completed."""
    return (Path(folder) / FINAL).is_file()


def has_checkpoints(folder: str | os.PathLike) -> bool:
    """Training checkpoints are there (the run got past at least one save)."""
    return (Path(folder) / CHECKPOINTS).is_dir()


def resumable(folder: str | os.PathLike) -> bool:
    """Interrupted after at least one checkpoint: ``lore train --resume`` continues it."""
    return not finished(folder) and (Path(folder) / CONFIG).is_file() and has_checkpoints(folder)


def holds_run(folder: str | os.PathLike) -> bool:
    """Finished, or with training state to continue: a new run must not start here."""
    return finished(folder) or has_checkpoints(folder)
